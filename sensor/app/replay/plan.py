"""How a replay runs, decided before it starts: whether a file goes through the prefilter, and
whether the decode is split over two processes. The mechanism (tcpdump, the compiled selector)
is in sensor/capture/prefilter.py."""
from __future__ import annotations

import os
from pathlib import Path

from sensor.capture.bpf import UNFILTERABLE_LINKTYPES
from sensor.capture.prefilter import (
    AnyPrefilter,
    CompiledPrefilter,
    Prefilter,
    capture_linktype,
    compiled_reads,
    open_prefilter,
    tcpdump_path,
)

AUTO_MIN_BYTES = 64 << 20  # below this, a prefilter costs more than it saves


def should_prefilter(path: Path, mode: str) -> bool:
    """'never', 'always' (when possible), or 'auto': large classic pcap files.

    Possible for an uncompressed classic pcap file when the compiled selector is built, and for
    any classic pcap file (gzip too) of a link type libpcap filters when tcpdump is installed.
    """
    if mode == "never":
        return False
    linktype = capture_linktype(path)
    if linktype is None:
        return False
    if not compiled_reads(path) and (tcpdump_path() is None or linktype in UNFILTERABLE_LINKTYPES):
        return False
    if mode == "always":
        return True
    try:
        return path.stat().st_size >= AUTO_MIN_BYTES
    except OSError:
        return False


def two_workers(paths: list[Path], prefilter: str, workers: str) -> bool:
    """Whether replay splits the decode over both cores: when every file goes through the
    prefilter (decode is then the bottleneck) and the machine has two cores and fork."""
    if workers == "1" or not hasattr(os, "fork"):
        return False
    if workers == "auto" and (os.cpu_count() or 1) < 2:
        return False
    mode = "always" if workers == "2" and prefilter == "auto" else prefilter
    return all(should_prefilter(path, mode) for path in paths)


def can_split(paths: list[Path]) -> bool:
    """Whether the compiled selector can hand each replay worker its own packets of every file."""
    return all(compiled_reads(path) for path in paths)


def start_early(paths: list[Path], prefilter: str, workers: str) -> AnyPrefilter | None:
    """Start the first file's prefilter before the rest of the sensor is loaded, when replay will
    use it; hand the result to `replay_file`, or `close()` it if the run stops before."""
    if not paths:
        return None
    mode = "always" if two_workers(paths, prefilter, workers) else prefilter
    if not should_prefilter(paths[0], mode):
        return None
    try:
        if two_workers(paths, prefilter, workers) and can_split(paths):
            return CompiledPrefilter(paths[0], split=True)
        early = open_prefilter(paths[0])
    except (OSError, ValueError):
        return None  # replay opens the file itself and reports the problem
    if isinstance(early, Prefilter):
        early.prefetch()
    return early
