#!/usr/bin/env python3
"""How fast can traffic arrive before the live sensor loses packets?

    python bench/live_rate.py [--packets 1000000] [--loops 1] [--rates 200000,300000,...,0]
                              [--workers 1,2] [--buffer-mb 4,64] [--json RESULTS]

Needs root, iproute2, tcpdump and tcpreplay. Makes a veth pair with one end in a network
namespace, starts `phi-sensor live` there (example configuration, alerts to a file), and sends
the benchmark capture (make_capture.py, cached in bench/out/) `--loops` times through the other
end with tcpreplay at each rate in turn (0 = as fast as tcpreplay can). After each run it waits
until the sensor has processed everything the kernel passed, stops it, and reads its final stats:
kernel drops (PACKET_STATISTICS), packets processed, and how long processing took.

Before the runs it replays the capture once with the same configuration (`phi-sensor replay`)
and keeps the alert keys (rule, PHI host, vendor or destination: `phi_egress.alert_key`); a live
run counts as keeping up only when it had no kernel drop and raised every one of those keys (live
sends a window at first sight and again on escalation, replay once at its end, so documents differ
but keys do not; keys of alerts that rest on DNS attribution are left out, see `alert_keys`).

Reports, per worker count and ring size, the highest rate with zero kernel drops and every alert
raised, the rate tcpreplay actually reached, the share of the traffic the kernel filter passes, and the processing
rate (packets offered per second, from the first packet sent until the last was processed).
Stops raising the rate after the first run with drops.

Two ring sizes by default: the 64 MiB default holds the filtered part of a whole 1M-packet burst,
so a run shows what a burst costs; a 4 MiB ring cannot hide a processing rate below the sending
rate, so a run shows what the sensor sustains. Prefer one pass over a large capture to many
loops over a small one: a repeated flow meets its own finished state in the flow table and costs
less than new traffic.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
EXAMPLE_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"
SENSOR_CMD = f"{shlex.quote(sys.executable)} -m sensor live"
CATCH_UP_TIMEOUT = 600.0
SETTLE_SECONDS = 2.0  # workers report every second, the stats file is rewritten every 0.5 s


@dataclass
class Run:
    workers: int
    buffer_mb: int
    requested_pps: int  # 0: as fast as tcpreplay can
    sent: int
    sent_pps: float
    kernel_passed: int
    kernel_drops: int
    processed: int
    processing_s: float
    exit_code: int
    alert_keys: int  # distinct alert keys the run raised
    missing_keys: int  # the replay's alert keys it did not raise

    @property
    def kept_up(self) -> bool:
        return not self.kernel_drops and not self.missing_keys and self.exit_code == 0

    @property
    def passed_share(self) -> float:
        return self.kernel_passed / self.sent if self.sent else 0.0

    @property
    def processing_pps(self) -> float:
        """Packets offered per second, from the first sent until the last was processed: the sending
        rate while the sensor keeps up, its own rate once it falls behind."""
        return self.sent / self.processing_s if self.processing_s else 0.0


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=600, **kwargs)


class Veth:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.namespace, self.sender, self.capture = f"phi-sensor-bench-{tag}", f"phb{tag}h", f"phb{tag}c"

    def __enter__(self) -> Veth:
        try:
            run(["ip", "netns", "add", self.namespace])
            run(["ip", "link", "add", self.sender, "mtu", "9000", "type", "veth", "peer", "name", self.capture,
                 "mtu", "9000"])
            run(["ip", "link", "set", self.capture, "netns", self.namespace])
            run(["sysctl", "-qw", f"net.ipv6.conf.{self.sender}.disable_ipv6=1"])
            run(["ip", "netns", "exec", self.namespace, "sysctl", "-qw", f"net.ipv6.conf.{self.capture}.disable_ipv6=1"])
            run(["ip", "link", "set", self.sender, "up"])
            run(["ip", "-n", self.namespace, "link", "set", self.capture, "up"])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        subprocess.run(["ip", "link", "del", self.sender], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)


def read_stats(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())["phi_egress"]["stats"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def filter_share(capture: Path) -> tuple[int, int]:
    """(packets in the capture, packets the built-in filter passes), counted by tcpdump."""
    sys.path.insert(0, str(REPO))
    from sensor.capture.bpf import default_filter

    def count(*expression: str) -> int:
        out = run(["tcpdump", "-n", "-r", str(capture), "--count", *expression]).stdout
        return int(out.split()[0])

    return count(), count(default_filter(1))


def alert_keys(path: Path, timeless: bool = False) -> set[str]:
    """The distinct `phi_egress.alert_key` values of a JSON-lines alert file; with `timeless`, only
    those of alerts that do not rest on DNS attribution. Attribution holds an address for its
    answer's TTL on the capture's clock, and tcpreplay compresses or stretches that clock (a
    million packets in seconds instead of minutes), so which name an address still stands for at
    a later connection can differ between a replay and a live run of the same capture."""
    keys = set()
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return keys
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event", {}).get("kind") != "alert":
            continue
        if not (timeless and doc["phi_egress"].get("source_record") == "dns-attribution"):
            keys.add(doc["phi_egress"]["alert_key"])
    return keys


def replay_alert_keys(capture: Path, sensor_cmd: str) -> set[str]:
    """The alert keys `phi-sensor replay` raises on the capture with the example configuration."""
    replay_cmd = shlex.split(sensor_cmd)
    if replay_cmd[-1] != "live":
        raise SystemExit("--sensor-cmd must end with `live` (its `replay` gives the expected alerts)")
    replay_cmd[-1] = "replay"
    with tempfile.TemporaryDirectory(prefix="phi-sensor-bench-") as scratch:
        out = Path(scratch) / "alerts.jsonl"
        subprocess.run([*replay_cmd, str(capture), "--config", str(EXAMPLE_CONFIG), "--emit", "alerts",
                        "--output", str(out), "--quiet", "--spool-dir", str(Path(scratch) / "spool")],
                       check=False, capture_output=True, cwd=REPO, timeout=600)
        return alert_keys(out, timeless=True)


def one_run(
    veth: Veth, capture: Path, args: argparse.Namespace, workers: int, buffer_mb: int, pps: int, expected: set[str]
) -> Run:
    with tempfile.TemporaryDirectory(prefix="phi-sensor-bench-") as scratch:
        work = Path(scratch)
        stats_path = work / "stats.json"
        command = ["ip", "netns", "exec", veth.namespace, *shlex.split(args.sensor_cmd),
                   "-i", veth.capture, "--workers", str(workers), "--buffer-mb", str(buffer_mb),
                   "--config", str(EXAMPLE_CONFIG), "--output", str(work / "alerts.jsonl"),
                   "--stats-file", str(stats_path), "--stats-interval", "0.5", "--spool-dir", str(work / "spool"),
                   "--quiet", *(["--no-ring"] if not args.ring else [])]
        with open(work / "stderr.txt", "wb") as stderr:
            sensor = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)
        try:
            deadline = time.monotonic() + 30
            while not stats_path.exists():
                if sensor.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the sensor did not start:\n{(work / 'stderr.txt').read_text()}")
                time.sleep(0.05)
            speed = ["--topspeed"] if pps == 0 else [f"--pps={pps}"]
            replay = run(["tcpreplay", "-i", veth.sender, *speed, f"--loop={args.loops}", "--preload-pcap",
                          str(capture)])
            sent_match = re.search(r"Actual: (\d+) packets \(\d+ bytes\) sent in ([\d.]+) seconds", replay.stdout)
            rate_match = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", replay.stdout)
            replayed = time.monotonic()
            if not sent_match or not rate_match:
                raise SystemExit(f"cannot read tcpreplay's report:\n{replay.stdout}")
            # Done when everything the kernel passed (and did not drop) has been processed and the
            # count has stood still for a while; processing ended when it last moved.
            stats: dict[str, Any] | None = None
            processed, last_change = -1, replayed
            while time.monotonic() - replayed < CATCH_UP_TIMEOUT:
                stats = read_stats(stats_path)
                now = time.monotonic()
                if stats is not None:
                    if stats["packets"] != processed:
                        processed, last_change = stats["packets"], now
                    kernel = stats["kernel"]
                    if processed >= kernel["packets"] - kernel["drops"] and now - last_change >= SETTLE_SECONDS:
                        break
                time.sleep(0.25)
            # --preload-pcap reads the file before sending: the first packet left this long before the end.
            first_packet = replayed - float(sent_match.group(2))
            processing = last_change - first_packet
            sensor.send_signal(signal.SIGTERM)
            code = sensor.wait(timeout=120)
        finally:
            if sensor.poll() is None:
                sensor.kill()
        final = read_stats(stats_path) or stats or {}
        kernel = final.get("kernel", {})
        raised = alert_keys(work / "alerts.jsonl")
        if args.keep_alerts:
            args.keep_alerts.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / "alerts.jsonl", args.keep_alerts / f"live-w{workers}-{buffer_mb}mb-{pps or 'top'}.jsonl")
        return Run(
            workers=workers,
            buffer_mb=buffer_mb,
            requested_pps=pps,
            sent=int(sent_match.group(1)),
            sent_pps=float(rate_match.group(1)),
            kernel_passed=kernel.get("packets", 0),
            kernel_drops=kernel.get("drops", 0),
            processed=final.get("packets", 0),
            processing_s=round(processing, 2),
            exit_code=code,
            alert_keys=len(raised),
            missing_keys=len(expected - raised),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000, help="size of the capture made when it is missing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--capture", type=Path, help="capture to send (default: bench/out/mixed-N-seedS.pcap)")
    parser.add_argument("--loops", type=int, default=1, help="times the capture is sent per run")
    parser.add_argument("--rates", default="200000,300000,400000,500000,600000,800000,0",
                        help="packets/s to try in order, comma-separated; 0 = as fast as tcpreplay can")
    parser.add_argument("--workers", default="1,2", help="worker counts to try, comma-separated")
    parser.add_argument("--buffer-mb", default="4,64", help="the sensor's --buffer-mb values to try, comma-separated")
    parser.add_argument("--ring", action=argparse.BooleanOptionalAction, default=True, help="the sensor's --ring")
    parser.add_argument("--sensor-cmd", default=SENSOR_CMD, help="command that runs `phi-sensor live`")
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--keep-alerts", type=Path, help="keep each run's alerts in this directory")
    args = parser.parse_args()

    if os.geteuid() != 0:
        raise SystemExit("live_rate.py needs root (network namespaces, packet sockets)")
    for tool in ("ip", "tcpdump", "tcpreplay"):
        if shutil.which(tool) is None:
            raise SystemExit(f"live_rate.py needs {tool} (apt-get install iproute2 tcpdump tcpreplay)")
    capture = args.capture or BENCH / "out" / f"mixed-{args.packets}-seed{args.seed}.pcap"
    if not capture.exists():
        capture.parent.mkdir(parents=True, exist_ok=True)
        run([sys.executable, str(BENCH / "make_capture.py"), str(capture), "--packets", str(args.packets),
             "--seed", str(args.seed)])
    total, passed = filter_share(capture)
    mode = "ring" if args.ring else "socket buffer"
    print(f"{capture.name}: {total:,} packets, the built-in filter passes {passed:,} ({100 * passed / total:.1f}%); "
          f"sent {args.loops} time(s) per run")
    expected = replay_alert_keys(capture, args.sensor_cmd)
    print(f"the replay of the capture raises {len(expected):,} distinct alert keys not resting on DNS attribution")
    rates = [int(rate) for rate in args.rates.split(",")]
    sizes = [int(size) for size in args.buffer_mb.split(",")]
    runs: list[Run] = []
    with Veth() as veth:
        for workers in (int(w) for w in args.workers.split(",")):
            for size in sizes:
                for pps in rates:
                    result = one_run(veth, capture, args, workers, size, pps, expected)
                    runs.append(result)
                    print(f"  workers {workers}  {size:>3} MiB {mode}  asked {pps or 'top':>7} pps  "
                          f"sent {result.sent_pps:>9,.0f} pps  passed {result.kernel_passed:>8,} "
                          f"({100 * result.passed_share:.1f}%)  drops {result.kernel_drops:>7,}  "
                          f"processed {result.processed:>8,} by {result.processing_s:5.1f} s "
                          f"({result.processing_pps:>9,.0f} pps)  alert keys {result.alert_keys:,} "
                          f"(missing {result.missing_keys:,})  exit {result.exit_code}", flush=True)
                    if not result.kept_up:
                        break
    print("highest rate with zero kernel drops and every alert raised:")
    for workers, size in sorted({(r.workers, r.buffer_mb) for r in runs}):
        mine = [r for r in runs if r.workers == workers and r.buffer_mb == size]
        best = max((r for r in mine if r.kept_up), key=lambda r: r.sent_pps, default=None)
        if best is None:
            print(f"  {workers} worker(s), {size} MiB {mode}: none of the rates tried")
            continue
        ceiling = "" if best is mine[-1] else f"; drops or missed alerts at {mine[-1].sent_pps:,.0f}"
        print(f"  {workers} worker(s), {size} MiB {mode}: {best.sent_pps:,.0f} packets/s offered "
              f"({best.sent_pps * best.passed_share:,.0f}/s past the filter){ceiling}")
    if args.json:
        args.json.write_text(json.dumps({"capture": str(capture), "packets": total, "filter_passes": passed,
                                         "loops": args.loops, "ring": args.ring, "replay_alert_keys": len(expected),
                                         "runs": [asdict(r) for r in runs]}, indent=1))
    return 0 if all(r.exit_code == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
