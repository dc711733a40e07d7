"""Inputs users pipe: `replay -` (standard input), named pipes, directories of captures."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import PCAPS

from sensor.capture.inputs import expand, is_stream
from sensor.capture.pcap import CaptureFile

META, MIXPANEL = PCAPS / "meta-pixel-portal.pcap", PCAPS / "mixpanel-plaintext.pcap"


def replay(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor", "replay", "--quiet", "--output", "-", *args],
        input=stdin, capture_output=True, timeout=timeout,
    )


def domains(stdout: bytes) -> list[str]:
    return sorted({json.loads(line)["destination"]["domain"] for line in stdout.splitlines()})


@pytest.fixture(scope="module")
def pcapng(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ng") / "meta.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(META), str(out)], check=True)
    return out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_stdin_pcap_gzip_and_pcapng(pcapng: Path, workers: str) -> None:
    for data in (META.read_bytes(), gzip.compress(META.read_bytes()), pcapng.read_bytes()):
        result = replay("-", "--workers", workers, "--prefilter", "always", stdin=data)
        assert result.returncode == 0, result.stderr
        assert domains(result.stdout) == ["www.facebook.com"]


def test_tcpdump_writing_to_standard_output_is_read() -> None:
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump not installed")
    tcpdump = subprocess.Popen(["tcpdump", "-r", str(MIXPANEL), "-w", "-"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    result = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", "-", "--quiet", "--output", "-"],
        stdin=tcpdump.stdout, capture_output=True, timeout=60,
    )
    tcpdump.wait()
    assert result.returncode == 0, result.stderr
    assert domains(result.stdout) == ["api.mixpanel.com"]


def test_broken_stdin_is_one_line_and_exit_3() -> None:
    for data, says in ((b"", "empty file"), (b"hello", "not a capture file"), (META.read_bytes()[:-10], "truncated")):
        result = replay("-", stdin=data)
        assert result.returncode == 3
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "Z phi-sensor: standard input: " in lines[0] and says in lines[0]


@pytest.mark.parametrize("extra", [[], ["--workers", "2", "--prefilter", "always"]])
def test_named_pipe_is_opened_once(tmp_path: Path, extra: list[str]) -> None:
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    data = gzip.compress(MIXPANEL.read_bytes())

    def write() -> None:
        with open(fifo, "wb") as out:
            for i in range(0, len(data), 7):  # small pieces: reads come back short
                out.write(data[i : i + 7])
                out.flush()

    writer = threading.Thread(target=write)
    writer.start()
    result = replay(str(fifo), str(META), *extra, timeout=60)
    writer.join(5)
    assert result.returncode == 0, result.stderr
    assert domains(result.stdout) == ["api.mixpanel.com", "www.facebook.com"]
    assert is_stream(fifo) and not is_stream(META)


def test_reader_takes_a_pipe_handing_over_a_few_bytes_at_a_time(pcapng: Path) -> None:
    for source in (META.read_bytes(), pcapng.read_bytes()):
        read_end, write_end = os.pipe()

        def feed(data: bytes = source, fd: int = write_end) -> None:
            for i in range(0, len(data), 3):
                os.write(fd, data[i : i + 3])
            os.close(fd)

        thread = threading.Thread(target=feed)
        thread.start()
        capture = CaptureFile(f"/dev/fd/{read_end}")
        got = list(capture.packets())
        thread.join()
        os.close(read_end)
        assert [(round(ts, 6), lt, f) for ts, lt, f in got] == [
            (round(ts, 6), lt, f) for ts, lt, f in CaptureFile(META).packets()
        ]
        assert capture.errors == []


def test_directories_sorted_recursive_and_hidden_skipped(tmp_path: Path) -> None:
    top = tmp_path / "caps"
    (top / "sub").mkdir(parents=True)
    (top / ".snapshots").mkdir()
    shutil.copy(META, top / "b.pcap")
    shutil.copy(MIXPANEL, top / "sub" / "a.pcap")
    (top / "a-capture-without-suffix").write_bytes(MIXPANEL.read_bytes())
    shutil.copy(META, top / ".snapshots" / "old.pcap")
    (top / "README").write_text("notes")
    assert expand([top]) == [top / "a-capture-without-suffix", top / "b.pcap"]
    assert expand([top], recursive=True) == [top / "a-capture-without-suffix", top / "b.pcap", top / "sub" / "a.pcap"]
    assert expand([Path("-"), META]) == [Path("-"), META]
    result = replay(str(top), "-r", "--stats")
    assert result.returncode == 0, result.stderr
    assert b"files                " in result.stderr and b" 3\n" in result.stderr
    assert domains(result.stdout) == ["api.mixpanel.com", "www.facebook.com"]


def test_a_directory_without_captures_is_reported(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing")
    result = replay(str(tmp_path), str(META))
    assert result.returncode == 3
    assert f"{tmp_path}: no capture files in this directory".encode() in result.stderr
    assert domains(result.stdout) == ["www.facebook.com"]
