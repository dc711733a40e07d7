#!/usr/bin/env python3
"""Time the sensor against tshark on one large capture, and check the sensor missed nothing.

    python bench/run_bench.py [--packets N] [--runs 5] [--capture PATH] [--json RESULTS]

Makes the capture with make_capture.py when it is missing (cached in bench/out/), then runs the
two tools alternately, A/B then B/A, for --runs rounds:
  sensor  phi-sensor replay CAPTURE --emit events --output OUT   (--sensor-cmd to change it)
  tshark  tshark -2 -n -r CAPTURE -R '<DNS queries, ClientHellos, HTTP requests>' -T fields ...
Each child's wall time (time.perf_counter) and peak RSS (ru_maxrss from os.wait4) are measured.
Linux carries the launching process's own high-water mark into a child's ru_maxrss at exec, so
a child's figure is never below this script's peak; that floor is printed and kept small.
ru_maxrss is the largest single process; a tool that pipes through other processes (the sensor's tcpdump
prefilter) holds their memory at the same time, so the summed RSS of the child's process tree is
also sampled every 20 ms and reported as "tree RSS".
The sensor's events are checked against the capture's truth (OUT.truth.json): recall of DNS
query names, TLS SNIs, QUIC SNIs and HTTP requests must each reach --min-recall (99.9%). An
event whose url.original has health data masked ([REDACTED:type]) counts for the request it
stands for when the rest of the URI matches.
Exit status 0 when every run succeeded and every recall is met, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
SENSOR_CMD = "phi-sensor replay {pcap} --emit events --output {output}"
TSHARK_CMD = shlex.split(
    "tshark -2 -n -r {pcap} -R 'dns.flags.response==0 or tls.handshake.type==1 or http.request' -T fields"
    " -e dns.qry.name -e tls.handshake.extensions_server_name -e http.host -e http.request.method -e http.request.uri"
)
KINDS = ("dns", "tls_sni", "quic_sni", "http")
PLACEHOLDER = re.compile(r"\[REDACTED(?::[^\]]*)?\]")  # how the sensor masks health data in url.original


def norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def host_of(value: str) -> str:
    """A Host value without port or IPv6 brackets."""
    value = value.strip()
    if value.startswith("["):
        return norm(value[1:].split("]", 1)[0])
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return norm(value)


def dotted(doc: dict[str, object], path: str) -> object:
    """A dotted ECS field from nested or flat documents."""
    if path in doc:
        return doc[path]
    current: object = doc
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def expected_sets(truth: dict[str, Any]) -> dict[str, set[Any]]:
    return {
        "dns": {norm(n) for n in truth["dns_queries"]},
        "tls_sni": {norm(n) for n in truth["tls_sni"]},
        "quic_sni": {norm(n) for n in truth["quic_sni"]},
        "http": {(m.upper(), host_of(h), unquote(u)) for m, h, u in truth["http_requests"]},
    }


def sensor_sets(lines: Iterable[str]) -> dict[str, set[Any]]:
    """What the sensor's JSON lines report, per kind; lines that are not JSON objects are skipped."""
    found: dict[str, set[Any]] = {kind: set() for kind in KINDS}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            continue
        if not isinstance(doc, dict):
            continue
        name = dotted(doc, "dns.question.name")
        if isinstance(name, str) and name:
            found["dns"].add(norm(name))
        sni = dotted(doc, "tls.client.server_name")
        if isinstance(sni, str) and sni:
            found["quic_sni" if dotted(doc, "network.transport") == "udp" else "tls_sni"].add(norm(sni))
        method = dotted(doc, "http.request.method")
        if isinstance(method, str) and method:
            host, uri = dotted(doc, "url.domain"), dotted(doc, "url.original")
            found["http"].add((method.upper(), host_of(str(host or "")), unquote(str(uri or ""))))
    return found


def tshark_sets(lines: Iterable[str]) -> dict[str, set[Any]]:
    """The same kinds from tshark's tab-separated fields (QUIC and TLS SNIs are not told apart)."""
    found: dict[str, set[Any]] = {kind: set() for kind in KINDS}
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 5:
            continue
        names, snis, host, method, uri = fields[:5]
        found["dns"].update(norm(n) for n in names.split(",") if n)
        found["tls_sni"].update(norm(s) for s in snis.split(",") if s)
        if method:
            found["http"].add((method.upper(), host_of(host), unquote(uri)))
    found["quic_sni"] = set(found["tls_sni"])
    return found


def redaction_pattern(uri: str) -> re.Pattern[str] | None:
    """A URI whose health data the sensor masked, as a pattern: each placeholder stands for what it hid."""
    pieces = PLACEHOLDER.split(uri)
    if len(pieces) == 1:
        return None
    return re.compile(".+?".join(map(re.escape, pieces)), re.DOTALL)


def redacted_hits(missing: set[Any], found: set[Any]) -> set[Any]:
    """The expected HTTP requests that a redacted event of the same method and host accounts for."""
    patterns: dict[tuple[str, str], list[re.Pattern[str]]] = {}
    for method, host, uri in found:
        pattern = redaction_pattern(uri)
        if pattern is not None:
            patterns.setdefault((method, host), []).append(pattern)
    return {
        (method, host, uri)
        for method, host, uri in missing
        if any(pattern.fullmatch(uri) for pattern in patterns.get((method, host), ()))
    }


def recall(expected: dict[str, set[Any]], found: dict[str, set[Any]]) -> dict[str, dict[str, float | int]]:
    result = {}
    for kind in KINDS:
        want = expected[kind]
        hits = want & found[kind]
        redacted = redacted_hits(want - hits, found[kind]) if kind == "http" else set()
        hit = len(hits) + len(redacted)
        result[kind] = {
            "expected": len(want),
            "found": hit,
            "found_redacted": len(redacted),
            "recall": hit / len(want) if want else 1.0,
        }
    return result


@dataclass
class Run:
    wall_s: float
    max_rss_kb: int
    tree_rss_kb: int
    rss_floor_kb: int  # this script's own peak when the child started: ru_maxrss never reads lower
    exit_code: int
    stderr_tail: str


@dataclass
class Tool:
    name: str
    runs: list[Run] = field(default_factory=list)
    recalls: list[dict[str, dict[str, float | int]]] = field(default_factory=list)


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/PID/task/TID/children."""
    tree, index = [pid], 0
    while index < len(tree):
        task_dir = Path(f"/proc/{tree[index]}/task")
        index += 1
        try:
            for task in task_dir.iterdir():
                tree += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # the process ended meanwhile
            continue
    return tree


def tree_rss_kb(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            continue
    return total


class TreeRssSampler(threading.Thread):
    """Samples the summed RSS of a process tree until stopped; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak_kb = pid, interval_s, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.pid))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kb


def run_child(argv: list[str], stdout_path: Path, stderr_path: Path) -> Run:
    """Run one child: wall time from perf_counter, peak RSS from os.wait4 and from sampling its tree."""
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        sampler = TreeRssSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        tree_peak = sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    tail = stderr_path.read_text(errors="replace")[-400:].strip()
    return Run(wall, usage.ru_maxrss, tree_peak, floor, proc.returncode, tail)


def ensure_capture(path: Path, packets: int, seed: int) -> dict[str, Any]:
    truth_path = path.with_name(path.name + ".truth.json")
    if not path.exists() or not truth_path.exists():
        sys.path.insert(0, str(HERE))
        from make_capture import generate  # noqa: PLC0415  (only needed when the cache is cold)

        print(f"making {path} ({packets} packets) ...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        truth_path.write_text(json.dumps(generate(path, packets, seed), indent=1) + "\n")
    return json.loads(truth_path.read_text())


def summary(tool: Tool, packets: int) -> dict[str, Any]:
    walls = [r.wall_s for r in tool.runs]
    median = statistics.median(walls)
    return {
        "wall_s": {"median": median, "min": min(walls), "max": max(walls), "all": walls},
        "packets_per_s": packets / median if median else 0.0,
        "peak_rss_mb": max(r.max_rss_kb for r in tool.runs) / 1024,
        "peak_tree_rss_mb": max(r.tree_rss_kb for r in tool.runs) / 1024,
        "rss_floor_mb": max(r.rss_floor_kb for r in tool.runs) / 1024,
        "failed_runs": sum(r.exit_code != 0 for r in tool.runs),
    }


def print_summary(tools: dict[str, Tool], stats: dict[str, dict[str, Any]], ratios: list[float]) -> None:
    columns = ("median s", "min s", "max s", "packets/s", "RSS MB", "tree MB")
    print(f"\n{'tool':8s}" + "".join(f" {c:>{len(c) + 3}s}" for c in columns))
    for name in tools:
        tool, wall = stats[name], stats[name]["wall_s"]
        print(
            f"{name:8s} {wall['median']:11.2f} {wall['min']:8.2f} {wall['max']:8.2f}"
            f" {tool['packets_per_s']:12,.0f} {tool['peak_rss_mb']:9.1f} {tool['peak_tree_rss_mb']:10.1f}"
        )
    floor_mb = max(stats[name]["rss_floor_mb"] for name in tools)
    print(f"(RSS cannot read below {floor_mb:.1f} MB, this script's own peak when it started the tools)")
    print(f"tshark/sensor wall time, median of rounds: {statistics.median(ratios):.2f}x")


def check_recall(sensor: Tool, min_recall: float) -> bool:
    """Print the sensor's worst recall per kind; True when every kind meets `min_recall`."""
    ok = True
    print("\nsensor completeness (worst round):")
    for kind in KINDS:
        worst = min(sensor.recalls, key=lambda by_kind: by_kind[kind]["recall"])[kind]
        met = worst["recall"] >= min_recall
        ok &= met
        verdict = "ok" if met else f"BELOW {min_recall:.1%}"
        redacted = f"  ({worst['found_redacted']} with health data masked)" if worst["found_redacted"] else ""
        print(f"  {kind:9s} {worst['found']:>7}/{worst['expected']:<7} {worst['recall']:8.4%}  {verdict}{redacted}")
    return ok


def precompile_sensor() -> None:
    """Byte-compile the sensor's modules as `pip install` of a wheel does, so that an editable
    install under PYTHONDONTWRITEBYTECODE does not compile them again in every timed run."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("sensor")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def resolve_program(argv: list[str]) -> list[str]:
    """argv with its program as a path: first from this Python's scripts directory, where pip put
    phi-sensor, then from PATH. A version manager's shim earlier on PATH (pyenv's runs shell
    scripts for ~60 ms before the program starts) is then not timed as part of either tool."""
    if not argv or os.sep in argv[0]:
        return argv
    found = shutil.which(argv[0], path=sysconfig.get_path("scripts")) or shutil.which(argv[0])
    return [found or argv[0], *argv[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000, help="size of the capture made when it is missing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--capture", type=Path, help="capture to use, made when missing (default: in bench/out/)")
    parser.add_argument("--sensor-cmd", default=SENSOR_CMD, help="sensor command; {pcap} and {output} are filled in")
    parser.add_argument("--min-recall", type=float, default=0.999)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of rest before each timed run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.packets < 1:
        parser.error("--runs and --packets must be positive")
    if shutil.which("tshark") is None:
        print("tshark is not installed (apt-get install tshark)", file=sys.stderr)
        return 2

    capture = args.capture or OUT_DIR / f"mixed-{args.packets}-seed{args.seed}.pcap"
    truth = ensure_capture(capture, args.packets, args.seed)
    precompile_sensor()
    packets = int(truth["packets"])
    expected = expected_sets(truth)
    work = OUT_DIR if args.capture is None else capture.parent
    work.mkdir(parents=True, exist_ok=True)
    events_path = work / "run-sensor.jsonl"
    commands = {
        "sensor": resolve_program([
            part.replace("{pcap}", str(capture)).replace("{output}", str(events_path))
            for part in shlex.split(args.sensor_cmd)
        ]),
        "tshark": resolve_program([part.replace("{pcap}", str(capture)) for part in TSHARK_CMD]),
    }
    stdout_of = {"sensor": work / "run-sensor.stdout", "tshark": work / "run-tshark.tsv"}
    # the sensor's events are in its --output file, or on stdout when the command names none
    results_of = {
        "sensor": (events_path if "{output}" in args.sensor_cmd else stdout_of["sensor"], sensor_sets),
        "tshark": (stdout_of["tshark"], tshark_sets),
    }
    tools = {name: Tool(name) for name in commands}
    ratios = []
    print(f"capture {capture}: {packets} packets, {truth['bytes'] / 1e6:.1f} MB; {args.runs} rounds")
    for name, argv in commands.items():
        print(f"  {name}: {shlex.join(argv)}")
    for round_index in range(args.runs):
        order = ("sensor", "tshark") if round_index % 2 == 0 else ("tshark", "sensor")
        for name in order:
            output, reader = results_of[name]
            output.unlink(missing_ok=True)
            time.sleep(args.pause)  # the previous run's memory is given back before this one starts
            run = run_child(commands[name], stdout_of[name], work / f"run-{name}.stderr")
            tools[name].runs.append(run)
            if output.exists():
                with output.open(errors="replace") as lines:  # streamed: keeps this script's own peak low
                    tools[name].recalls.append(recall(expected, reader(lines)))
            else:
                tools[name].recalls.append(recall(expected, reader([])))
            status = "" if run.exit_code == 0 else f"  exit {run.exit_code}: {run.stderr_tail[-200:]}"
            print(
                f"  round {round_index + 1} {name:6s} {run.wall_s:8.2f} s  RSS {run.max_rss_kb / 1024:7.1f} MB"
                f"  tree {run.tree_rss_kb / 1024:7.1f} MB{status}",
                flush=True,
            )
        ratios.append(tools["tshark"].runs[-1].wall_s / tools["sensor"].runs[-1].wall_s)

    stats = {name: summary(tool, packets) for name, tool in tools.items()}
    print_summary(tools, stats, ratios)
    recall_met = check_recall(tools["sensor"], args.min_recall)
    ok = recall_met and all(run.exit_code == 0 for tool in tools.values() for run in tool.runs)
    if args.json:
        results = {
            "capture": str(capture),
            "packets": packets,
            "runs": args.runs,
            "commands": commands,
            **stats,
            "ratio_tshark_over_sensor_median": statistics.median(ratios),
            "sensor_recall": tools["sensor"].recalls,
            "tshark_recall": tools["tshark"].recalls[-1],
            "ok": ok,
        }
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
