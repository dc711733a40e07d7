"""A broken capture costs only itself: beside good captures, every fault a file can carry gives one
line naming it and exit 3, after everything readable (in it and in the others) was processed and
shipped. Suspicious but readable files are counted and reported."""
from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PCAPS

from sensor.capture.pcap import CaptureFile

GOOD = [PCAPS / "meta-pixel-portal.pcap", PCAPS / "mixpanel-plaintext.pcap"]
WORKER_MODES = [["--workers", "1"], ["--workers", "2"], ["--workers", "1", "--prefilter", "always"]]


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor", "replay", "--quiet", "--stats", *args],
        capture_output=True, text=True, timeout=120,
    )


def alert_keys(stdout: str) -> set[tuple]:
    found = set()
    for line in stdout.splitlines():
        doc = json.loads(line)
        found.add((doc["rule"]["id"], doc["destination"].get("domain")))
    return found


def stat(stderr: str, name: str) -> int:
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return int(parts[1])
    return 0


@pytest.fixture(scope="module")
def good_alerts() -> set[tuple]:
    result = replay(*map(str, GOOD), "--output", "-")
    assert result.returncode == 0, result.stderr
    assert len(alert_keys(result.stdout)) >= 4
    return alert_keys(result.stdout)


def pcapng_of(tmp: Path, source: Path) -> bytes:
    out = tmp / (source.stem + ".pcapng")
    subprocess.run(["editcap", "-F", "pcapng", str(source), str(out)], check=True)
    return out.read_bytes()


def records(data: bytes) -> list[bytes]:
    found, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        found.append(data[pos : pos + 16 + incl])
        pos += 16 + incl
    return found


def broken_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what its one line says)"""
    good = GOOD[1].read_bytes()
    header = good[:24]
    body = b"".join(records(good))
    made: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, says: str) -> None:
        path = tmp / name
        path.write_bytes(data)
        made[name] = (path, says)

    ng = pcapng_of(tmp, GOOD[0])
    put("short-last-block.pcapng", ng[:-7], "truncated")
    put("tiny-packet-block.pcapng", ng + struct.pack("<III", 6, 12, 12), "bad packet block")
    big = header + body * 300  # ~2 MB: the decompressor fails long after the first packets
    packed = bytearray(gzip.compress(big, mtime=0))
    for i in range(len(packed) // 2, len(packed) // 2 + 64):
        packed[i] ^= 0x5A
    put("corrupt-mid-stream.pcap.gz", bytes(packed), "corrupt")
    put("cut-short.pcap.gz", gzip.compress(big, mtime=0)[:-4000], "corrupt compressed data")
    put("lying-length.pcap", good + struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 0x7FFFFFFF) + b"x" * 64, "corrupt record")
    put("not-a-capture.pcap", b"hello world, no capture here", "not a capture file")
    put("empty.pcap", b"", "empty file")
    return made


@pytest.mark.parametrize("mode", WORKER_MODES, ids=["one-worker", "two-workers", "prefilter"])
def test_each_broken_file_costs_only_itself(tmp_path: Path, good_alerts: set[tuple], mode: list[str]) -> None:
    for name, (path, says) in broken_files(tmp_path).items():
        result = replay(str(GOOD[0]), str(path), str(GOOD[1]), "--output", "-", *mode)
        assert result.returncode == 3, (name, result.stderr)
        assert "Traceback" not in result.stderr
        problem_lines = [line for line in result.stderr.splitlines() if "Z phi-sensor: " in line and str(path) in line]
        assert len(problem_lines) == 1, (name, result.stderr)
        assert says in problem_lines[0], (name, problem_lines)
        assert alert_keys(result.stdout) >= good_alerts, name


def test_readable_part_of_a_broken_file_is_processed(tmp_path: Path) -> None:
    files = broken_files(tmp_path)
    for name in ("corrupt-mid-stream.pcap.gz", "cut-short.pcap.gz", "short-last-block.pcapng", "lying-length.pcap"):
        capture = CaptureFile(files[name][0])
        assert sum(1 for _ in capture.packets()) > 0, name
        assert len(capture.errors) == 1, (name, capture.errors)
    result = replay(str(files["corrupt-mid-stream.pcap.gz"][0]), "--output", "-", "--workers", "1")
    assert result.returncode == 3
    assert stat(result.stderr, "packets") > 1000  # the packets before the damage were decoded
    assert alert_keys(result.stdout)  # and raised their alerts


def test_every_fault_of_a_stream_stays_in_the_reader() -> None:
    """Whatever bytes a decompressor or a pcapng block throws up, packets() never raises."""
    import random
    import tempfile

    rnd = random.Random(7)
    good = GOOD[0].read_bytes()
    for _ in range(300):
        data = bytearray(gzip.compress(good) if rnd.random() < 0.5 else good)
        for _ in range(rnd.randint(1, 8)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            del data[rnd.randrange(len(data)) :]
        with tempfile.NamedTemporaryFile(suffix=".pcap") as handle:
            handle.write(bytes(data))
            handle.flush()
            capture = CaptureFile(handle.name)
            try:
                for _ in capture.packets():
                    pass
            except Exception as exc:  # noqa: BLE001 - the point of the test
                if type(exc).__name__ != "CaptureError":
                    raise


def test_empty_records_and_time_running_back_are_counted_and_reported(tmp_path: Path) -> None:
    good = GOOD[1].read_bytes()
    header, recs = good[:24], records(good)
    empty = tmp_path / "empty-records.pcap"
    empty.write_bytes(header + struct.pack("<IIII", 1_700_000_000, 0, 0, 0) * 500 + b"".join(recs))
    back = bytearray(recs[len(recs) // 2])
    first_second = struct.unpack_from("<I", recs[0])[0]
    struct.pack_into("<I", back, 0, first_second - 5 * 3600)
    jumpy = tmp_path / "time-runs-back.pcap"
    jumpy.write_bytes(header + b"".join(recs[: len(recs) // 2]) + bytes(back) + b"".join(recs[len(recs) // 2 + 1 :]))
    for mode in WORKER_MODES:
        result = replay(str(empty), str(jumpy), "--output", "-", *mode)
        assert result.returncode == 0, result.stderr
        assert stat(result.stderr, "capture.empty_records") == 500
        assert stat(result.stderr, "capture.late_records") == 1
        assert f"{empty}: suspicious: 500 empty record(s)" in result.stderr
        assert f"{jumpy}: suspicious: 1 record(s) stamped over 1 h before an earlier one" in result.stderr
        assert alert_keys(result.stdout)
