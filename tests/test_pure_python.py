"""Without the compiled extension (a machine without a C compiler) the sensor gives the same output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensor.compiled import pure_python_command

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
CAPTURES = sorted((ROOT / "pcaps").glob("*.pcap")) + sorted(CORPUS.glob("*.pcap*"))


def _replay(captures: list[Path], emit: str, pure: bool) -> bytes:
    args = ["replay", *map(str, captures), "--emit", emit, "--output", "-", "--quiet", "--prefilter", "never",
            "--workers", "1"]  # fmt: skip
    command = pure_python_command(args) if pure else [sys.executable, "-m", "sensor", *args]
    result = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=600, check=False)
    assert result.returncode in (0, 3), result.stderr.decode(errors="replace")  # 3: a damaged capture, reported
    return result.stdout


@pytest.mark.parametrize("emit", ["events", "all"])
def test_pure_python_gives_the_compiled_output(emit: str) -> None:
    """Events (written as lines by compiled code when nothing detects) and alerts (through
    documents), over every story capture and the shared corpus: byte for byte."""
    pytest.importorskip("sensor._fast", reason="the compiled extension is not built: nothing to compare")
    compiled = _replay(CAPTURES, emit, pure=False)
    assert compiled.count(b"\n") >= 10  # the story captures alone have dozens of events
    assert _replay(CAPTURES, emit, pure=True) == compiled


def test_two_workers_split_tunnelled_traffic_alike_with_and_without_the_extension(tmp_path: Path) -> None:
    """The compiled selector sends tunnelled packets to the worker of their inner client; the Python
    split, used without the extension, does the same, and both give what one worker gives."""
    pytest.importorskip("sensor._fast", reason="the compiled extension is not built: nothing to compare")
    from test_tunnels import ENCAPSULATIONS, story_frames, write_pcap

    from sensor.decode.packet import LINKTYPE_ETHERNET

    linktype, wrap = ENCAPSULATIONS["vxlan"]
    assert linktype == LINKTYPE_ETHERNET
    records = []
    for index, story in enumerate(sorted((ROOT / "pcaps").glob("*.pcap"))):
        for ts, frame in story_frames(story):  # every other story arrives mirrored
            records.append((ts, wrap(frame) if index % 2 else frame))
    mixed = tmp_path / "mixed.pcap"
    write_pcap(mixed, linktype, sorted(records, key=lambda record: record[0]))

    def two_workers(pure: bool, workers: str = "2") -> bytes:
        args = ["replay", str(mixed), "--emit", "all", "--output", "-", "--quiet", "--workers", workers,
                "--prefilter", "always"]  # fmt: skip
        command = pure_python_command(args) if pure else [sys.executable, "-m", "sensor", *args]
        result = subprocess.run(command, capture_output=True, cwd=ROOT, timeout=600, check=False)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return b"".join(sorted(result.stdout.splitlines(keepends=True)))

    compiled = two_workers(pure=False)
    assert b'"tunnel"' in compiled and b'"kind":"alert"' in compiled
    assert two_workers(pure=True) == compiled
    assert two_workers(pure=False, workers="1") == compiled
