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


def print_summary(alerts: list[dict]) -> None:
    """The end-of-run table: alerts grouped by severity, rule, host, destination, BAA and health data."""
    # Updates of a throttle window reuse its event.id: the latest document per id counts.
    latest = {alert["event"]["id"]: alert for alert in alerts}
    if not latest:
        print("phi-sensor: no alerts", file=sys.stderr)
        return
    from rich.console import Console
    from rich.table import Table

    tally: Tally = Tally()
    for alert in latest.values():
        pe = alert["phi_egress"]
        key = (
            pe["severity"],
            alert["rule"]["id"],
            f"{alert['source']['ip']} ({pe['phi_host']['name']})" if pe.get("phi_host", {}).get("name")
            else alert["source"]["ip"],
            pe.get("vendor", {}).get("name") or pe.get("destination") or "-",
            pe["baa"]["status"],
            ", ".join(pe.get("phi", {}).get("types", [])) or "-",
        )
        tally[key] += pe.get("count", 1)
    table = Table(title=f"phi-sensor: {len(latest)} alert(s)", title_justify="left")
    for column in ("severity", "rule", "PHI host", "vendor / destination", "BAA", "health data", "seen"):
        table.add_column(column, overflow="fold")
    order = sorted(tally.items(), key=lambda kv: (-SEVERITY_RANK.get(kv[0][0], 0), kv[0][1], kv[0][2]))
    for key, count in order[:SUMMARY_ROWS]:
        table.add_row(*key, str(count))
    console = Console(stderr=True, width=max(120, Console(stderr=True).width))
    console.print(table)
    if len(order) > SUMMARY_ROWS:
        console.print(f"... {len(order) - SUMMARY_ROWS} less severe rows not shown; every alert is in the output")


def fail_on_code(alerts: list[dict], threshold: str | None) -> int:
    """--fail-on: EXIT_FAIL_ON when an alert at or above `threshold` was raised."""
    if threshold is None:
        return EXIT_OK
    for alert in alerts:
        if SEVERITY_RANK.get(alert["phi_egress"]["severity"], 0) >= SEVERITY_RANK[threshold]:
            return EXIT_FAIL_ON
    return EXIT_OK
