"""The end of a replay on the terminal: --stats, the summary table, and --fail-on's exit code."""
from __future__ import annotations

import sys
from collections import Counter as Tally

from sensor.errors import EXIT_FAIL_ON, EXIT_OK
from sensor.output.sinks import Sink
from sensor.records import Counters
from sensor.severity import SEVERITY_RANK

SUMMARY_ROWS = 40  # the end-of-run table stays readable; every alert is in the output anyway


def print_stats(counters: Counters, sinks: list[Sink]) -> None:
    """--stats: every counter, and each output's, on stderr."""
    values = dict(counters.values)
    for sink in sinks:
        for key, value in sink.stats().items():
            values[f"sink.{sink.name}.{key}"] = value
    width = max((len(k) for k in values), default=0)
    print("phi-sensor: stats", file=sys.stderr)
    for key in sorted(values):
        print(f"  {key:<{width}}  {values[key]}", file=sys.stderr)


class AlertTally:
    """What the end-of-run summary and --fail-on need of the alert documents shipped, without
    keeping them (a day of traffic raises tens of thousands): per `event.id` the latest
    document's summary row and count (updates of a throttle window reuse its id), and the
    highest severity."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[tuple[str, ...], int]] = {}
        self.highest: int | None = None  # rank of the highest severity, None before any alert

    def add(self, alert: dict) -> None:
        pe = alert.get("phi_egress", {})
        rank = SEVERITY_RANK.get(pe.get("severity"), 0)
        if self.highest is None or rank > self.highest:
            self.highest = rank
        event_id = alert.get("event", {}).get("id")
        if not pe or event_id is None:  # not an alert the summary can show
            return
        source = alert["source"]["ip"]
        name = pe.get("phi_host", {}).get("name")
        row = (
            pe["severity"],
            alert["rule"]["id"],
            f"{source} ({name})" if name else source,
            pe.get("vendor", {}).get("name") or pe.get("destination") or "-",
            pe["baa"]["status"],
            ", ".join(pe.get("phi", {}).get("types", [])) or "-",
        )
        self.rows[event_id] = (row, pe.get("count", 1))  # the latest counts, where its id first came

    def __len__(self) -> int:
        return len(self.rows)


def print_summary(alerts: AlertTally) -> None:
    """The end-of-run table: alerts grouped by severity, rule, host, destination, BAA and health data."""
    if not alerts.rows:
        print("phi-sensor: no alerts", file=sys.stderr)
        return
    from rich.console import Console
    from rich.table import Table

    tally: Tally = Tally()
    for key, count in alerts.rows.values():
        tally[key] += count
    table = Table(title=f"phi-sensor: {len(alerts.rows)} alert(s)", title_justify="left")
    for column in ("severity", "rule", "PHI host", "vendor / destination", "BAA", "health data", "seen"):
        table.add_column(column, overflow="fold")
    order = sorted(tally.items(), key=lambda kv: (-SEVERITY_RANK.get(kv[0][0], 0), kv[0][1], kv[0][2]))
    for key, count in order[:SUMMARY_ROWS]:
        table.add_row(*key, str(count))
    console = Console(stderr=True, width=max(120, Console(stderr=True).width))
    console.print(table)
    if len(order) > SUMMARY_ROWS:
        console.print(f"... {len(order) - SUMMARY_ROWS} less severe rows not shown; every alert is in the output")


def fail_on_code(alerts: AlertTally, threshold: str | None) -> int:
    """--fail-on: EXIT_FAIL_ON when an alert at or above `threshold` was raised."""
    if threshold is None or alerts.highest is None:
        return EXIT_OK
    return EXIT_FAIL_ON if alerts.highest >= SEVERITY_RANK[threshold] else EXIT_OK
