"""Live's counters: the periodic stats event, the stats file `phi-sensor status` reads, --stats."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from sensor.app.live.status import write_stats_file
from sensor.app.live.system import notify_systemd
from sensor.output.ecs import ECS_VERSION, MODULE, STATS_DATASET, data_stream, iso_time, prune
from sensor.output.sinks import Sink

log = logging.getLogger("phi_sensor")

# Counters the detector keeps under "alerts." that are not rule ids.
_ALERT_BOOKKEEPING = frozenset({"alerts.escalated", "alerts.suppressed", "alerts.updated"})


def stats_document(
    snapshots: list[dict[str, Any]],
    sink_stats: list[dict[str, Any]],
    *,
    observer: str,
    interface: str,
    interval: float,
    uptime: float,
    period: float,
    previous: tuple[int, int],
    reloads: tuple[int, int],
    now: float,
) -> dict[str, Any]:
    """The ECS metric event: the workers' counters summed, rates over the last period."""
    counters: dict[str, int] = {}
    kernel: dict[str, int] = {}
    active = down_events = 0
    up = True
    for snap in snapshots:
        for name, value in snap["counters"].items():
            counters[name] = counters.get(name, 0) + value
        for name, value in snap["kernel"].items():
            kernel[name] = kernel.get(name, 0) + value
        active += snap["flows_active"]
        down_events = max(down_events, snap["interface_down_events"])  # every worker sees the same event
        up = up and snap["interface_up"]
    packets, size = counters.get("packets", 0), counters.get("bytes", 0)
    by_rule = {
        name.removeprefix("alerts."): value
        for name, value in counters.items()
        if name.startswith("alerts.") and name not in _ALERT_BOOKKEEPING
    }
    span = max(period, 1e-9)
    stats = {
        "interface": interface,
        "interface_up": up,
        "interface_down_events": down_events,
        "workers": len(snapshots),
        "interval_s": interval,
        "uptime_s": round(uptime, 3),
        "period_s": round(period, 3),
        "packets": packets,
        "bytes": size,
        "packets_per_s": round(max(packets - previous[0], 0) / span, 1),
        "bytes_per_s": round(max(size - previous[1], 0) / span, 1),
        "kernel": kernel,
        "flows": {"active": active, "seen": counters.get("tcp.streams", 0)},
        "records": {
            name.removeprefix("records."): value for name, value in counters.items() if name.startswith("records.")
        },
        "alerts": {"total": sum(by_rule.values()), "by_rule": by_rule},
        # A list, not a mapping keyed by name: sink names hold dots and slashes (file paths).
        "sinks": sink_stats,
        "sink_queue_depth": sum(s.get("spool_depth", 0) for s in sink_stats),
        "reloads": {"ok": reloads[0], "failed": reloads[1]},
        # Dots would turn into object paths in Elasticsearch ("packets" vs "packets.truncated").
        "counters": {name.replace(".", "_"): value for name, value in sorted(counters.items())},
    }
    return prune({  # no empty value (an idle sensor has no alerts by rule, no kernel counters)
        "@timestamp": iso_time(now),
        "ecs": {"version": ECS_VERSION},
        "data_stream": data_stream(STATS_DATASET),
        "event": {"kind": "metric", "category": ["network"], "type": ["info"], "dataset": STATS_DATASET, "module": MODULE},
        "observer": {
            "name": observer,
            "type": "sensor",
            "product": "phi-egress-sensor",
            "ingress": {"interface": {"name": interface}},
        },
        "phi_egress": {"stats": stats},
    })


class StatsReporter:
    """Every `interval` seconds: one stats event to the sinks and the stats file rewritten."""

    def __init__(self, sinks: list[Sink], path: Path, *, observer: str, interface: str, interval: float) -> None:
        self.sinks = sinks
        self.path = path
        self.observer = observer
        self.interface = interface
        self.interval = interval
        self.started = time.time()
        self._last_time = self.started
        self._last_totals = (0, 0)
        self._next = 0.0
        self._file_failed = False

    def due(self, now: float) -> bool:
        return now >= self._next

    def emit(self, snapshots: list[dict[str, Any]], reloads: tuple[int, int]) -> dict[str, Any]:
        now = time.time()
        doc = stats_document(
            snapshots,
            [{"name": sink.name, **sink.stats()} for sink in self.sinks],
            observer=self.observer,
            interface=self.interface,
            interval=self.interval,
            uptime=now - self.started,
            period=now - self._last_time,
            previous=self._last_totals,
            reloads=reloads,
            now=now,
        )
        stats = doc["phi_egress"]["stats"]
        self._last_time, self._last_totals = now, (stats["packets"], stats["bytes"])
        self._next = now + self.interval
        for sink in self.sinks:
            sink.send(doc)
        try:
            write_stats_file(self.path, doc)
            self._file_failed = False
        except OSError as exc:
            if not self._file_failed:  # once per outage, not every interval
                log.warning("%s: cannot write the stats file: %s", self.path, exc.strerror or exc)
            self._file_failed = True
        notify_systemd(f"STATUS={stats['packets']:,} packets, {stats['alerts']['total']:,} alert documents, "
                       f"{stats['kernel'].get('drops', 0):,} kernel drops")
        return doc


def print_counters(snapshot_counters: dict[str, int]) -> None:
    width = max((len(name) for name in snapshot_counters), default=0)
    print("phi-sensor: stats", file=sys.stderr)
    for name in sorted(snapshot_counters):
        print(f"  {name:<{width}}  {snapshot_counters[name]}", file=sys.stderr)
