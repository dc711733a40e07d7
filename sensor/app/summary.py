"""The end of a replay on the terminal: --stats, the summary table, and --fail-on's exit code."""
from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Sequence
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


# Alerts whose count a later document may still change: the engine re-sends only the windows it
# keeps open, at most its MAX_THROTTLE_KEYS, the newest opened (a test holds the two together)
MAX_UPDATABLE_ALERTS = 100_000

Row = tuple[str, ...]  # (severity, rule, PHI host, vendor or destination, BAA status, health data)


def table_order(row: Row) -> tuple:
    """Where a row stands in the summary table: the most severe first, then by rule, host,
    destination, BAA and health data (a total order, so the table is the same however the alerts
    were split between replay workers)."""
    return -SEVERITY_RANK.get(row[0], 0), row[1:], row[0]


class AlertTally:
    """What the end-of-run summary and --fail-on need of the alert documents shipped, without
    keeping them (a day of traffic raises hundreds of thousands): per `event.id` the latest
    document's summary row and count (updates of a throttle window reuse its id), for the newest
    `updatable` ids; for the ids let go, which no document can update any more, the summed
    counts of the `shown` rows first in the table (the others can never be shown: rows before
    them are only ever added); the number of alerts and the highest severity. A replay sends one
    document per window: none is updated."""

    def __init__(self, updatable: int = MAX_UPDATABLE_ALERTS, shown: int = SUMMARY_ROWS) -> None:
        self.updatable = updatable
        self.shown = shown
        self.rows: OrderedDict[str, tuple[Row, int]] = OrderedDict()  # the newest ids, in the order first seen
        # (summed count, alerts) of the rows first in the table among the ids let go, at most `shown`
        self.settled: dict[Row, tuple[int, int]] = {}
        self._last: tuple[tuple, Row] | None = None  # (order, row) of the last settled row, once `shown` are kept
        self.settled_alerts = 0
        self.highest: int | None = None  # rank of the highest severity, None before any alert

    def add(self, alert: dict) -> None:
        pe = alert.get("phi_egress", {})
        event_id = alert.get("event", {}).get("id")
        if not pe or event_id is None:  # not an alert the summary can show
            self._see(pe.get("severity"))
            return
        self.add_values(
            event_id, pe["severity"], alert["rule"]["id"], alert["source"]["ip"], pe.get("phi_host", {}).get("name"),
            pe.get("vendor", {}).get("name") or pe.get("destination"), pe["baa"]["status"],
            pe.get("phi", {}).get("types", ()), pe.get("count", 1),
        )

    def add_values(self, event_id: str, severity: str, rule: str, source: str, phi_host: str | None,
                   subject: str | None, baa_status: str, types: Sequence[str], count: int) -> None:
        """add() of an alert document given by what the summary reads of it: its PHI host's name,
        its vendor's name or else its destination (None where the document has neither), the
        health data types it names."""
        rank = SEVERITY_RANK.get(severity, 0)
        if self.highest is None or rank > self.highest:
            self.highest = rank
        # live keeps a row per updatable id: the rows of a source host, and those of the same
        # health data, share one string of it (the other cells are shared)
        row = (
            severity,
            rule,
            sys.intern(f"{source} ({phi_host})" if phi_host else source),
            subject or "-",
            baa_status,
            sys.intern(", ".join(types) or "-"),
        )
        if self.updatable:
            self._put(event_id, row, count)
        else:  # (a replay's: _put's first case, without the calls)
            self.settled_alerts += 1
            self._keep(row, count, 1)

    def _see(self, severity: str | None) -> None:
        rank = SEVERITY_RANK.get(severity, 0)  # type: ignore[arg-type]
        if self.highest is None or rank > self.highest:
            self.highest = rank

    def _put(self, event_id: str, row: Row, count: int) -> None:
        """The latest row and count of an id (where its id first came); the oldest id let go
        into the settled counts beyond `updatable`."""
        if not self.updatable:  # straight into the settled counts
            self._settle(row, count, 1)
            return
        rows = self.rows
        rows[event_id] = (row, count)
        if len(rows) > self.updatable:
            _, (old, old_count) = rows.popitem(last=False)
            self._settle(old, old_count, 1)

    def _settle(self, row: Row, count: int, alerts: int) -> None:
        """Add `alerts` alerts of `row` that no document can update any more."""
        self.settled_alerts += alerts
        self._keep(row, count, alerts)

    def _keep(self, row: Row, count: int, alerts: int) -> None:
        """Add to the row's settled count, if it is among the `shown` first."""
        settled = self.settled
        kept = settled.get(row)
        if kept is not None:
            settled[row] = (kept[0] + count, kept[1] + alerts)
            return
        if len(settled) < self.shown:
            settled[row] = (count, alerts)
            return
        last = self._last
        if last is None:
            last = self._last = max((table_order(kept_row), kept_row) for kept_row in settled)
        # (most rows are less severe than the last kept: told by the severity alone)
        # before the last row kept: it takes its place
        if -SEVERITY_RANK.get(row[0], 0) <= last[0][0] and table_order(row) < last[0]:
            del settled[last[1]]
            settled[row] = (count, alerts)
            self._last = None

    def table(self) -> list[tuple[Row, int, int]]:
        """The summary table's rows, in order: (row, summed count, alerts), at most `shown`."""
        merged = dict(self.settled)
        for row, count in self.rows.values():
            kept_count, alerts = merged.get(row, (0, 0))
            merged[row] = (kept_count + count, alerts + 1)
        order = sorted(merged, key=table_order)[: self.shown]
        return [(row, *merged[row]) for row in order]

    def counts(self) -> dict[Row, int]:
        """The summed count of each row of the table, in its order."""
        return {row: count for row, count, _ in self.table()}

    def __len__(self) -> int:
        return self.settled_alerts + len(self.rows)

    def to_json(self) -> dict:
        """What another process's tally adds (`absorb`), as JSON."""
        return {"rows": [[event_id, list(row), count] for event_id, (row, count) in self.rows.items()],
                "settled": [[list(row), count, alerts] for row, (count, alerts) in self.settled.items()],
                "settled_alerts": self.settled_alerts, "highest": self.highest}

    def absorb(self, other: dict) -> None:
        """Add the tally another process wrote with `to_json` (the second replay worker's): its
        settled rows hold every row of its own that can be among the `shown` first of both."""
        for row, count, alerts in other.get("settled", ()):
            self._keep(tuple(map(sys.intern, row)), count, alerts)
        self.settled_alerts += other.get("settled_alerts", 0)
        for event_id, row, count in other["rows"]:
            self._put(event_id, tuple(row), count)
        highest = other["highest"]
        if highest is not None and (self.highest is None or highest > self.highest):
            self.highest = highest


SUMMARY_COLUMNS = ("severity", "rule", "PHI host", "vendor / destination", "BAA", "health data", "seen")


def print_summary(alerts: AlertTally, stream: TextIO | None = None) -> None:
    """The end-of-run table: alerts grouped by severity, rule, host, destination, BAA and health data.

    On a terminal a drawn table; elsewhere (a CI log, a file) plain aligned columns, one row per
    line, which grep and diff take as they are."""
    stream = sys.stderr if stream is None else stream
    if not len(alerts):
        print("phi-sensor: no alerts", file=stream)
        return
    table = alerts.table()
    rows = [(*row, str(count)) for row, count, _ in table]
    title = f"phi-sensor: {len(alerts)} alert(s)"
    hidden = len(alerts) - sum(shown for _, _, shown in table)
    more = (f"... {hidden} alert(s) in less severe rows not shown; every alert is in the output"
            if hidden else None)
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
