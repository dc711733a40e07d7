"""What replay reads: files, `-` (standard input), named pipes, and directories of captures.

A stream that is not a regular file (stdin, a FIFO, a character device) is read exactly once from
the front: it is never seeked, stat-sized, opened twice, prefiltered or split between workers.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from sensor.capture.pcap import sniff_format

STDIN = Path("-")
# Names of captures in a directory; other files are included when their first bytes say capture.
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz", ".gz")


def is_stream(path: Path) -> bool:
    """Whether `path` can be read only once from the front (stdin, a FIFO, a device)."""
    if path == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def is_regular(path: Path) -> bool:
    """A regular file (which may be probed, sized, reopened and split)."""
    try:
        return path != STDIN and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _looks_like_capture(path: Path) -> bool:
    if path.name.lower().endswith(CAPTURE_SUFFIXES):
        return True
    try:
        with open(path, "rb") as probe:
            return sniff_format(probe.read(4)) is not None
    except OSError:
        return False


def expand(paths: list[Path], recursive: bool = False) -> list[Path]:
    """Each directory replaced by the captures in it, sorted by path (its subdirectories too when
    `recursive`); hidden entries skipped. A directory without captures stays as it is, for replay
    to report. Files and streams named on the command line are kept whatever they look like."""
    out: list[Path] = []
    for path in paths:
        if path == STDIN or not path.is_dir():
            out.append(path)
            continue
        pattern = path.rglob("*") if recursive else path.glob("*")
        found = sorted(
            entry for entry in pattern
            if not any(part.startswith(".") for part in entry.relative_to(path).parts)
            and is_regular(entry) and _looks_like_capture(entry)
        )
        out.extend(found or [path])
    return out


def is_har(path: Path) -> bool:
    """A HAR export: named *.har, or JSON text (a capture file never starts with "{")."""
    if path.suffix.lower() == ".har":
        return True
    if not path.is_file():  # stdin or a named pipe is read once, by the capture reader alone
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(64).lstrip()[:1] == b"{"
    except OSError:
        return False


def wants_deep(paths: list[Path], keylog: Path | None) -> bool:
    """Whether replay takes the deep path (sensor.deep.replay): a key log, or a HAR among the inputs."""
    return keylog is not None or any(is_har(path) for path in paths)
