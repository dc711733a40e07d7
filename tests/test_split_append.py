"""The second replay worker appends its documents to the outputs' files itself, in blocks of whole
lines: its lines and the first worker's must never cut into each other, whatever their sizes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PCAPS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.app.replay.split import _AppendSink
from sensor.output.files import appends_atomically
from sensor.output.jsonl import JsonlSink


def test_only_a_plain_file_offers_its_descriptor(tmp_path: Path) -> None:
    plain = JsonlSink(tmp_path / "out.jsonl")
    assert isinstance(plain.append_fd(), int)
    assert JsonlSink("-").append_fd() is None
    assert JsonlSink(tmp_path / "high.jsonl", min_severity="high").append_fd() is None
    assert _AppendSink.of([plain]) is not None
    assert _AppendSink.of([plain, JsonlSink("-")]) is None  # one output it cannot write to: the spill
    assert _AppendSink.of([]) is None


def test_only_a_local_file_system_is_appended_to_by_both() -> None:
    """O_APPEND writes of two processes land whole on a local file system; NFS and SMB clients
    may interleave them, so a file there keeps the spill."""
    mounts = "\n".join([
        "/dev/vda1 / ext4 rw,relatime 0 0",
        "server:/export /mnt/share nfs4 rw 0 0",
        "//host/x /mnt/my\\040smb cifs rw 0 0",
        "tmpfs /mnt/share/scratch tmpfs rw 0 0",
        "garbage",
    ])
    assert appends_atomically(Path("/var/log/out.jsonl"), mounts)
    assert not appends_atomically(Path("/mnt/share/out.jsonl"), mounts)
    assert appends_atomically(Path("/mnt/sharex/out.jsonl"), mounts)  # under /, not under /mnt/share
    assert appends_atomically(Path("/mnt/share/scratch/out.jsonl"), mounts)  # the deeper mount decides
    assert not appends_atomically(Path("/mnt/my smb/out.jsonl"), mounts)
    assert not appends_atomically(Path("/anything"), "")  # no table: not told


def _line(index: int, size: int) -> bytes:
    return json.dumps({"n": index, "pad": "x" * size}).encode() + b"\n"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["line", "block", "child", "child_block", "child_flush"]),
                                st.integers(0, 400_000), st.integers(1, 5)), min_size=1, max_size=40))
def test_lines_of_both_processes_stay_whole(tmp_path_factory: pytest.TempPathFactory, steps: list) -> None:
    """The first worker's sink (a 1 MiB buffer, lines and blocks of any size) and the second's
    appends, in any order: every line of the file is one of the lines written, each once."""
    path = tmp_path_factory.mktemp("append") / "out.jsonl"
    sink = JsonlSink(path)
    child = _AppendSink.of([sink])
    assert child is not None
    written: list[bytes] = []
    index = 0
    for kind, size, count in steps:
        lines = [_line(index + k, size // count) for k in range(count)]
        index += count
        written += lines
        if kind == "line":
            for line in lines:
                sink.send_line(line)
        elif kind == "block":
            sink.send_lines(b"".join(lines), count)
        elif kind == "child":
            write = child.line_writer()
            for line in lines:
                write(line)
        else:
            child.send_lines(b"".join(lines), None if kind == "child_block" else count)
            if kind == "child_flush":
                child.flush()
    child.flush()
    sink.close()
    got = path.read_bytes().splitlines(keepends=True)
    assert sorted(got) == sorted(written)
    assert sink.stats()["sent"] + child.lines == len(written)


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_two_workers_write_one_file_as_one_worker_does(tmp_path: Path) -> None:
    outputs, sent = {}, {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.jsonl"
        proc = subprocess.run(
            [sys.executable, "-m", "sensor", "replay", str(PCAPS / "demo.pcap"), "--workers", workers,
             "--prefilter", "always", "--emit", "all", "--output", str(out), "--stats", "--quiet"],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        outputs[workers] = sorted(out.read_bytes().splitlines())
        stats = dict(line.split() for line in proc.stderr.splitlines()[1:])
        sent[workers] = int(stats[f"sink.jsonl:{out}.sent"])
        if workers == "2":
            assert stats["replay.workers"] == "2"
    assert outputs["1"] == outputs["2"]
    assert sent["1"] == sent["2"] == len(outputs["1"])
    assert all(json.loads(line) for line in outputs["2"])
