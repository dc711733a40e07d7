#!/usr/bin/env python3
"""Run a command and report its wall time and the peak memory of its whole process tree.

    python bench/treemem.py -- phi-sensor replay flood.pcap --output /dev/null

Polls /proc every 20 ms (Linux only). Prints the peak of the summed RSS (pages shared between a
parent and its forked worker counted twice: an upper bound) and of the summed PSS (shared pages
split between the processes sharing them: what the tree really costs).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += _children(current)
    return pids


def _kib(pid: int, path: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def measure(argv: list[str]) -> tuple[int, float, int, int]:
    """(exit code, seconds, peak summed RSS KiB, peak summed PSS KiB)"""
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        peak_rss = max(peak_rss, sum(_kib(p, "status", "VmRSS:") for p in pids))
        peak_pss = max(peak_pss, sum(_kib(p, "smaps_rollup", "Pss:") for p in pids))
        time.sleep(0.02)
    return proc.returncode, time.perf_counter() - start, peak_rss, peak_pss


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    code, seconds, rss, pss = measure(argv)
    print(f"exit {code}, {seconds:.2f} s, peak tree RSS {rss / 1024:.0f} MiB, peak tree PSS {pss / 1024:.0f} MiB",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
