#!/usr/bin/env python3
"""Time the sensor's replays against tshark on one large capture, and check they missed nothing.

    python bench/run_bench.py [--mix standard|dense|heavy] [--modes alerts,events,tshark] [--packets N]
                              [--runs 5] [--capture PATH] [--json RESULTS] [--no-reference]

Makes the capture with make_capture.py when it is missing (cached in bench/out/), then times
each mode in turn for --runs rounds, the first of each round rotating:
  alerts  phi-sensor replay CAPTURE --emit alerts --output OUT   (the sensor's main job)
  all     phi-sensor replay CAPTURE --emit all --output OUT
  events  phi-sensor replay CAPTURE --emit events --output OUT   (--sensor-cmd to change it)
  tshark  tshark -2 -n -r CAPTURE -R '<DNS queries, ClientHellos, HTTP requests>' -T fields ...
Each child's wall time (time.perf_counter) and peak RSS (ru_maxrss from os.wait4) are measured,
and per sensor mode the median over rounds of tshark's time over the mode's time in that round.
Linux carries the launching process's own high-water mark into a child's ru_maxrss at exec, so
a child's figure is never below this script's peak; that floor is printed and kept small.
ru_maxrss is the largest single process; a tool that pipes through other processes (the sensor's tcpdump
prefilter) holds their memory at the same time, so the summed RSS of the child's process tree is
also sampled every 20 ms and reported as "tree RSS".
The sensor's events are checked against the capture's truth (OUT.truth.json): recall of DNS
query names, TLS SNIs, QUIC SNIs and HTTP requests must each reach --min-recall (99.9%). An
event whose url.original has health data masked ([REDACTED:type]) counts for the request it
stands for when the rest of the URI matches. The alerts (of the alerts and all modes) are
checked against those of the pure-Python path (the compiled extension hidden, one untimed run
of the same command): every one of its alert lines, byte for byte, and no other.
Exit status 0 when every run succeeded and every check passed, else 1.
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
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
SENSOR_CMDS = {
    emit: f"phi-sensor replay {{pcap}} --emit {emit} --output {{output}}" for emit in ("alerts", "all", "events")
}
MODES = (*SENSOR_CMDS, "tshark")
ALERT_MODES = ("alerts", "all")
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
    cpu_s: float  # user + system time of the child and the processes it waited for
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
    cpu = usage.ru_utime + usage.ru_stime
    return Run(wall, cpu, usage.ru_maxrss, tree_peak, floor, proc.returncode, tail)


def ensure_capture(path: Path, packets: int, seed: int, mix: str = "standard") -> dict[str, Any]:
    truth_path = path.with_name(path.name + ".truth.json")
    if not path.exists() or not truth_path.exists():
        sys.path.insert(0, str(HERE))
        from make_capture import generate  # noqa: PLC0415  (only needed when the cache is cold)

        print(f"making {path} ({packets} packets, {mix} mix) ...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        truth_path.write_text(json.dumps(generate(path, packets, seed, mix), indent=1) + "\n")
    return json.loads(truth_path.read_text())


def summary(tool: Tool, packets: int) -> dict[str, Any]:
    walls = [r.wall_s for r in tool.runs]
    median = statistics.median(walls)
    cpus = [r.cpu_s for r in tool.runs]
    return {
        "wall_s": {"median": median, "min": min(walls), "max": max(walls), "all": walls},
        "cpu_s": {"median": statistics.median(cpus), "all": cpus},
        "packets_per_s": packets / median if median else 0.0,
        "peak_rss_mb": max(r.max_rss_kb for r in tool.runs) / 1024,
        "peak_tree_rss_mb": max(r.tree_rss_kb for r in tool.runs) / 1024,
        "rss_floor_mb": max(r.rss_floor_kb for r in tool.runs) / 1024,
        "failed_runs": sum(r.exit_code != 0 for r in tool.runs),
    }


def print_summary(
    tools: dict[str, Tool], stats: dict[str, dict[str, Any]], ratios: dict[str, list[float]],
    cpu_ratios: dict[str, list[float]],
) -> None:
    columns = ("median s", "min s", "max s", "cpu s", "packets/s", "RSS MB", "tree MB")
    print(f"\n{'mode':8s}" + "".join(f" {c:>{len(c) + 3}s}" for c in columns))
    for name in tools:
        tool, wall = stats[name], stats[name]["wall_s"]
        print(
            f"{name:8s} {wall['median']:11.2f} {wall['min']:8.2f} {wall['max']:8.2f} {tool['cpu_s']['median']:8.2f}"
            f" {tool['packets_per_s']:12,.0f} {tool['peak_rss_mb']:9.1f} {tool['peak_tree_rss_mb']:10.1f}"
        )
    floor_mb = max(stats[name]["rss_floor_mb"] for name in tools)
    print(f"(RSS cannot read below {floor_mb:.1f} MB, this script's own peak when it started the tools)")
    for mode, values in ratios.items():
        if values:
            print(f"tshark/{mode} wall time, median of rounds: {statistics.median(values):.2f}x"
                  f"  (rounds: {', '.join(f'{value:.1f}' for value in values)});"
                  f" CPU time: {statistics.median(cpu_ratios[mode]):.2f}x")


def check_completeness(completeness: dict[str, list[dict[str, int]]]) -> bool:
    """Print, per mode, the worst round's share of the reference alerts; True when all were there."""
    ok = True
    for mode, rounds in completeness.items():
        if not rounds:
            continue
        worst = min(rounds, key=lambda counts: (counts["found"] - counts["extra"]))
        met = worst["found"] == worst["expected"] and not worst["extra"]
        ok &= met
        print(f"\n{mode}: {worst['found']}/{worst['expected']} of the pure-Python path's alerts byte for byte,"
              f" {worst['extra']} others (worst round): {'ok' if met else 'INCOMPLETE'}")
    return ok


def check_recall(sensor: Tool, min_recall: float) -> bool:
    """Print the sensor's worst recall per kind; True when every kind meets `min_recall`."""
    ok = True
    print(f"\n{sensor.name} completeness against the truth (worst round):")
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


def _alerts_aside(lines: Iterable[str], alerts: list[str]) -> Iterator[str]:
    """`lines`, streamed, keeping the alert documents among them in `alerts`."""
    for line in lines:
        if '"kind":"alert"' in line:
            alerts.append(line)
        yield line


def alert_completeness(lines: Iterable[str], reference: list[str]) -> dict[str, int]:
    """How many of the reference's alert lines a run wrote byte for byte (order aside), and how many
    lines it wrote that the reference has not."""
    wanted = Counter(reference)
    got = Counter(line.rstrip("\n") for line in lines if line.strip())
    return {"expected": sum(wanted.values()), "found": sum((wanted & got).values()), "extra": sum((got - wanted).values())}


def reference_alerts(argv: list[str], output: Path, stderr: Path) -> list[str] | None:
    """The alerts of the pure-Python path (the compiled extension hidden), run once, untimed."""
    output.unlink(missing_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's sensor, as live_rate.py does
    from sensor.compiled import pure_python_command

    command = pure_python_command(argv[argv.index("replay"):])
    with stderr.open("wb") as errors:
        status = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=errors, check=False).returncode
    if status != 0 or not output.exists():
        print(f"  the pure-Python reference run failed (exit {status}); see {stderr}")
        return None
    return [line.rstrip("\n") for line in output.open() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000, help="size of the capture made when it is missing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mix", choices=("standard", "dense", "heavy"), default="standard", help="the capture's mix (make_capture.py)")
    parser.add_argument("--modes", default="alerts,events,tshark",
                        help=f"comma-separated, timed in turn every round: {', '.join(MODES)}")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--capture", type=Path, help="capture to use, made when missing (default: in bench/out/)")
    parser.add_argument("--sensor-cmd", help="the events mode's command; {pcap} and {output} are filled in")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip checking the alerts against the pure-Python path's (one untimed run)")
    parser.add_argument("--min-recall", type=float, default=0.999)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of rest before each timed run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if args.runs < 1 or args.packets < 1:
        parser.error("--runs and --packets must be positive")
    if not modes or any(mode not in MODES for mode in modes) or len(set(modes)) != len(modes):
        parser.error(f"--modes: a comma-separated list of distinct modes among {', '.join(MODES)}")
    if "tshark" in modes and shutil.which("tshark") is None:
        print("tshark is not installed (apt-get install tshark)", file=sys.stderr)
        return 2

    stem = "mixed" if args.mix == "standard" else args.mix
    capture = args.capture or OUT_DIR / f"{stem}-{args.packets}-seed{args.seed}.pcap"
    truth = ensure_capture(capture, args.packets, args.seed, args.mix)
    precompile_sensor()
    packets = int(truth["packets"])
    expected = expected_sets(truth)
    work = OUT_DIR if args.capture is None else capture.parent
    work.mkdir(parents=True, exist_ok=True)
    templates = dict(SENSOR_CMDS, **({"events": args.sensor_cmd} if args.sensor_cmd else {}))
    commands, output_of, stdout_of = {}, {}, {}
    for mode in modes:
        stdout_of[mode] = work / (f"run-{mode}.tsv" if mode == "tshark" else f"run-{mode}.stdout")
        if mode == "tshark":
            commands[mode] = resolve_program([part.replace("{pcap}", str(capture)) for part in TSHARK_CMD])
            output_of[mode] = stdout_of[mode]
            continue
        output = work / f"run-{mode}.jsonl"
        commands[mode] = resolve_program([
            part.replace("{pcap}", str(capture)).replace("{output}", str(output)) for part in shlex.split(templates[mode])
        ])
        # the documents are in the --output file, or on stdout when the command names none
        output_of[mode] = output if "{output}" in templates[mode] else stdout_of[mode]
    tools = {mode: Tool(mode) for mode in modes}
    completeness: dict[str, list[dict[str, int]]] = {mode: [] for mode in modes if mode in ALERT_MODES}
    print(f"capture {capture}: {packets} packets, {truth['bytes'] / 1e6:.1f} MB, {args.mix} mix; {args.runs} rounds")
    for mode, command in commands.items():
        print(f"  {mode}: {shlex.join(command)}")
    reference = None
    if completeness and not args.no_reference:
        print("  the pure-Python path's alerts (untimed reference run) ...", flush=True)
        output = work / "run-reference.jsonl"
        reference = reference_alerts(
            [part.replace("{pcap}", str(capture)).replace("{output}", str(output)) for part in shlex.split(SENSOR_CMDS["alerts"])],
            output,
            work / "run-reference.stderr",
        )
    ratios: dict[str, list[float]] = {mode: [] for mode in modes if mode != "tshark"}
    cpu_ratios: dict[str, list[float]] = {mode: [] for mode in ratios}
    for round_index in range(args.runs):
        shift = round_index % len(modes)
        for mode in modes[shift:] + modes[:shift]:  # each tool goes first as often as the others
            output = output_of[mode]
            output.unlink(missing_ok=True)
            time.sleep(args.pause)  # the previous run's memory is given back before this one starts
            run = run_child(commands[mode], stdout_of[mode], work / f"run-{mode}.stderr")
            tools[mode].runs.append(run)
            lines = output.open(errors="replace") if output.exists() else open(os.devnull)
            with lines:  # streamed: keeps this script's own peak low
                if mode == "tshark":
                    tools[mode].recalls.append(recall(expected, tshark_sets(lines)))
                elif mode == "alerts":
                    if reference is not None:
                        completeness[mode].append(alert_completeness(lines, reference))
                else:
                    alerts: list[str] = []
                    tools[mode].recalls.append(recall(expected, sensor_sets(_alerts_aside(lines, alerts))))
                    if mode == "all" and reference is not None:
                        completeness[mode].append(alert_completeness(alerts, reference))
            status = "" if run.exit_code == 0 else f"  exit {run.exit_code}: {run.stderr_tail[-200:]}"
            print(
                f"  round {round_index + 1} {mode:6s} {run.wall_s:8.2f} s  cpu {run.cpu_s:6.2f} s  RSS {run.max_rss_kb / 1024:7.1f} MB"
                f"  tree {run.tree_rss_kb / 1024:7.1f} MB{status}",
                flush=True,
            )
        if "tshark" in modes:
            for mode in ratios:
                ratios[mode].append(tools["tshark"].runs[-1].wall_s / tools[mode].runs[-1].wall_s)
                cpu_ratios[mode].append(tools["tshark"].runs[-1].cpu_s / max(tools[mode].runs[-1].cpu_s, 1e-9))

    stats = {name: summary(tool, packets) for name, tool in tools.items()}
    print_summary(tools, stats, ratios, cpu_ratios)
    ok = all(run.exit_code == 0 for tool in tools.values() for run in tool.runs)
    for mode in ("events", "all"):
        if mode in tools:
            ok &= check_recall(tools[mode], args.min_recall)
    ok &= check_completeness(completeness)
    if args.json:
        results = {
            "capture": str(capture),
            "mix": args.mix,
            "packets": packets,
            "runs": args.runs,
            "commands": commands,
            **stats,
            "ratio_tshark_over_mode_median": {mode: statistics.median(values) for mode, values in ratios.items() if values},
            "cpu_ratio_tshark_over_mode_median": {
                mode: statistics.median(values) for mode, values in cpu_ratios.items() if values
            },
            "recall": {mode: tool.recalls for mode, tool in tools.items() if tool.recalls},
            "alert_completeness": completeness,
            "ok": ok,
        }
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
