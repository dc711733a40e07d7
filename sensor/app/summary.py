"""The end of a replay on the terminal: --stats, the summary table, and --fail-on's exit code."""
from __future__ import annotations

import sys
from collections import Counter as Tally
from typing import TextIO

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

    def to_json(self) -> dict:
        """What another process's tally adds (`absorb`), as JSON."""
        return {"rows": [[event_id, list(row), count] for event_id, (row, count) in self.rows.items()],
                "highest": self.highest}

    def absorb(self, other: dict) -> None:
        """Add the tally another process wrote with `to_json` (the second replay worker's)."""
        for event_id, row, count in other["rows"]:
            self.rows[event_id] = (tuple(row), count)
        highest = other["highest"]
        if highest is not None and (self.highest is None or highest > self.highest):
            self.highest = highest


SUMMARY_COLUMNS = ("severity", "rule", "PHI host", "vendor / destination", "BAA", "health data", "seen")


def print_summary(alerts: AlertTally, stream: TextIO | None = None) -> None:
    """The end-of-run table: alerts grouped by severity, rule, host, destination, BAA and health data.

    On a terminal a drawn table; elsewhere (a CI log, a file) plain aligned columns, one row per
    line, which grep and diff take as they are."""
    stream = sys.stderr if stream is None else stream
    if not alerts.rows:
        print("phi-sensor: no alerts", file=stream)
        return
    tally: Tally = Tally()
    for key, count in alerts.rows.values():
        tally[key] += count
    order = sorted(tally.items(), key=lambda kv: (-SEVERITY_RANK.get(kv[0][0], 0), kv[0][1], kv[0][2]))
    rows = [(*key, str(count)) for key, count in order[:SUMMARY_ROWS]]
    title = f"phi-sensor: {len(alerts.rows)} alert(s)"
    more = (f"... {len(order) - SUMMARY_ROWS} less severe rows not shown; every alert is in the output"
            if len(order) > SUMMARY_ROWS else None)
    if _is_terminal(stream):
        _print_drawn(stream, title, rows, more)
    else:
        _print_plain(stream, title, rows, more)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def _print_drawn(stream: TextIO, title: str, rows: list[tuple[str, ...]], more: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console(file=stream, width=max(120, Console(file=stream).width))
    console.print(table)
    if more:
        console.print(more)


def _print_plain(stream: TextIO, title: str, rows: list[tuple[str, ...]], more: str | None) -> None:
    widths = [max(len(column), *(len(row[index]) for row in rows)) for index, column in enumerate(SUMMARY_COLUMNS)]
    lines = [title, "  ".join(column.ljust(width) for column, width in zip(SUMMARY_COLUMNS, widths)).rstrip()]
    lines.extend("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
    if more:
        lines.append(more)
    print("\n".join(lines), file=stream)


def fail_on_code(alerts: AlertTally, threshold: str | None) -> int:
    """--fail-on: EXIT_FAIL_ON when an alert at or above `threshold` was raised."""
    if threshold is None or alerts.highest is None:
        return EXIT_OK
    return EXIT_FAIL_ON if alerts.highest >= SEVERITY_RANK[threshold] else EXIT_OK
