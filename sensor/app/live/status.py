"""`phi-sensor status`: is the live sensor alive and keeping up? Reads the stats file that
`phi-sensor live` rewrites every `--stats-interval` and prints a short summary.

Exit status: 0 when the last stats are fresh, 1 when they are older than three intervals or the
file is missing or unreadable.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from sensor.errors import EXIT_OK, EXIT_STALE

STATS_FILE_NAME = "stats.json"
SYSTEM_RUNTIME_DIR = Path("/run/phi-sensor")
MAX_STATS_BYTES = 1 << 20
STALE_INTERVALS = 3


def default_stats_file() -> Path:
    """Where live writes its stats and status looks for them, unless told otherwise.

    systemd's RuntimeDirectory= first; /run/phi-sensor as root or when it exists (a system
    service); else a per-user runtime directory.
    """
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / STATS_FILE_NAME
    if os.geteuid() == 0 or SYSTEM_RUNTIME_DIR.is_dir():
        return SYSTEM_RUNTIME_DIR / STATS_FILE_NAME
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"phi-sensor-{os.getuid()}" / STATS_FILE_NAME


def write_stats_file(path: Path, doc: dict[str, Any]) -> None:
    """Replace the stats file atomically: a reader sees the old document or the new one, whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_stats(path: Path) -> dict[str, Any] | None:
    """The stats document, or None when the file is missing, too large or not a stats document."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STATS_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_STATS_BYTES:
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(_section(doc), dict):
        return None
    return doc


def _section(doc: dict[str, Any]) -> Any:
    phi = doc.get("phi_egress")
    return phi.get("stats") if isinstance(phi, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _timestamp(doc: dict[str, Any]) -> float | None:
    stamp = doc.get("@timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return None


def _count(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
    return f"{seconds / 86_400:.1f} days"


def summarize(doc: dict[str, Any], now: float) -> tuple[list[str], bool]:
    """Human summary lines of a stats document and whether it is fresh (never raises)."""
    stats = _mapping(_section(doc))
    observer = _mapping(doc.get("observer")).get("name")
    interface = stats.get("interface") if isinstance(stats.get("interface"), str) else "?"
    workers = _number(stats.get("workers"))
    interval = _number(stats.get("interval_s"))
    written = _timestamp(doc)
    lines = []
    head = f"phi-sensor{f' on {observer}' if isinstance(observer, str) else ''}: capturing on {interface}"
    if workers is not None:
        head += f" with {workers:.0f} worker(s)"
    uptime = _number(stats.get("uptime_s"))
    if uptime is not None:
        head += f", up {_duration(uptime)}"
    lines.append(head)
    if written is None or interval is None or interval <= 0:
        lines.append("last stats: no usable time or interval in the stats file: STALE")
        fresh = False
    else:
        age = now - written
        fresh = age <= STALE_INTERVALS * interval
        verdict = "fresh" if fresh else "STALE: the sensor may have stopped or hung"
        lines.append(f"last stats {_duration(age)} ago (written every {_duration(interval)}): {verdict}")
    if stats.get("interface_up") is False:
        lines.append(f"interface  {interface} is DOWN: capture resumes when it is back")
    rate = _number(stats.get("packets_per_s"))
    size = _number(stats.get("bytes"))
    packets = f"packets    {_count(_number(stats.get('packets')))} processed"
    if rate is not None:
        packets += f" ({rate:,.0f}/s over the last period)"
    if size is not None:
        packets += f", {size / 1e6:,.1f} MB"
    lines.append(packets)
    kernel = _mapping(stats.get("kernel"))
    passed, drops = _number(kernel.get("packets")), _number(kernel.get("drops"))
    share = f" ({100 * drops / passed:.2f}%)" if passed and drops is not None else ""
    lines.append(f"kernel     {_count(passed)} passed the filter, {_count(drops)} dropped{share}")
    side_drops = _number(kernel.get("dns_side_drops"))
    if side_drops:
        lines.append(f"           {_count(side_drops)} DNS packets dropped on the side channel")
    flows = _mapping(stats.get("flows"))
    lines.append(f"flows      {_count(_number(flows.get('active')))} active, {_count(_number(flows.get('seen')))} seen")
    alerts = _mapping(stats.get("alerts"))
    by_rule = {rule: n for rule, n in _mapping(alerts.get("by_rule")).items() if _number(n)}
    detail = ", ".join(f"{rule} {_count(_number(n))}" for rule, n in sorted(by_rule.items(), key=lambda kv: -kv[1]))
    lines.append(f"alerts     {_count(_number(alerts.get('total')))}{': ' + detail if detail else ''}")
    listed = stats.get("sinks")
    sinks = listed if isinstance(listed, list) else []
    parts = []
    for sink in sinks:
        sink = _mapping(sink)
        name = sink.get("name") if isinstance(sink.get("name"), str) else "?"
        part = f"{name}: sent {_count(_number(sink.get('sent')))}"
        depth = _number(sink.get("spool_depth"))
        if depth is not None:
            part += f", queued {_count(depth)}"
        parts.append(part)
    lines.append(f"sinks      {'; '.join(parts) or 'none'}")
    return lines, fresh


def status_main(args: argparse.Namespace) -> int:
    path = args.stats_file or default_stats_file()
    doc = read_stats(path)
    if doc is None:
        print(f"phi-sensor: no readable stats at {path}: is `phi-sensor live` running?", file=sys.stderr)
        return EXIT_STALE
    lines, fresh = summarize(doc, datetime.now().timestamp())
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print("\n".join(lines))
    return EXIT_OK if fresh else EXIT_STALE
