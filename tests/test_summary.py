"""The end-of-run summary: a drawn table on a terminal, plain aligned lines elsewhere, and the
second replay worker's tally carried over, and the tally bounded to the rows the table can show."""
from __future__ import annotations

import io

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.app.summary import SUMMARY_COLUMNS, SUMMARY_ROWS, AlertTally, fail_on_code, print_summary, table_order
from sensor.errors import EXIT_FAIL_ON, EXIT_OK


def alert(event_id: str, severity: str, rule: str, source: str, vendor: str | None, count: int = 1) -> dict:
    pe: dict = {"severity": severity, "baa": {"status": "none"}, "count": count, "destination": "x.example"}
    if vendor:
        pe["vendor"] = {"name": vendor}
    return {"event": {"id": event_id}, "rule": {"id": rule}, "source": {"ip": source}, "phi_egress": pe}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tally_of(*alerts: dict) -> AlertTally:
    tally = AlertTally()
    for doc in alerts:
        tally.add(doc)
    return tally


def test_plain_lines_off_a_terminal() -> None:
    tally = tally_of(
        alert("a", "medium", "tracker-egress-no-baa", "10.0.0.1", "Meta Pixel", 3),
        alert("b", "critical", "phi-in-tracker-payload", "10.0.0.22", "Google Analytics"),
    )
    out = io.StringIO()
    print_summary(tally, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "phi-sensor: 2 alert(s)"
    assert lines[1].split("  ")[0] == "severity" and "vendor / destination" in lines[1]
    assert lines[2].split() [:3] == ["critical", "phi-in-tracker-payload", "10.0.0.22"]  # most severe first
    assert lines[3].split()[-1] == "3"
    # aligned: every column starts where its heading does
    for column in ("rule", "PHI host", "BAA", "seen"):
        start = lines[1].index(column)
        assert all(line[start - 2:start] == "  " and line[start] != " " for line in lines[2:])
    assert not any(char in out.getvalue() for char in "┏━│└")  # nothing drawn


def test_a_drawn_table_on_a_terminal() -> None:
    out = Terminal()
    print_summary(tally_of(alert("a", "high", "plaintext-phi", "10.0.0.1", None)), out)
    text = out.getvalue()
    assert "phi-sensor: 1 alert(s)" in text and "┏" in text and "plaintext-phi" in text


def test_rows_beyond_the_limit_are_counted_not_shown() -> None:
    docs = [alert(str(i), "low", "tracker-egress-no-baa", f"10.0.{i // 250}.{i % 250}", "V") for i in range(SUMMARY_ROWS + 7)]
    out = io.StringIO()
    print_summary(tally_of(*docs), out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 + SUMMARY_ROWS + 1
    assert lines[-1].startswith("... 7 alert(s) in less severe rows not shown")


def test_no_alerts() -> None:
    out = io.StringIO()
    print_summary(AlertTally(), out)
    assert out.getvalue() == "phi-sensor: no alerts\n"
    assert len(SUMMARY_COLUMNS) == 7


def test_a_tally_carried_to_another_process_is_the_same_tally() -> None:
    first = tally_of(alert("a", "medium", "tracker-egress-no-baa", "10.0.0.2", "Meta Pixel"))
    second = tally_of(
        alert("b", "critical", "phi-in-tracker-payload", "10.0.0.3", "Hotjar", 2),
        alert("b", "critical", "phi-in-tracker-payload", "10.0.0.3", "Hotjar", 5),  # an update of b
        alert("c", "low", "tracker-egress-no-baa", "10.0.0.3", None),
    )
    whole = tally_of(
        alert("a", "medium", "tracker-egress-no-baa", "10.0.0.2", "Meta Pixel"),
        alert("b", "critical", "phi-in-tracker-payload", "10.0.0.3", "Hotjar", 5),
        alert("c", "low", "tracker-egress-no-baa", "10.0.0.3", None),
    )
    first.absorb(orjson.loads(orjson.dumps(second.to_json())))
    assert first.rows == whole.rows and list(first.rows) == list(whole.rows)
    assert first.highest == whole.highest
    assert fail_on_code(first, "critical") == EXIT_FAIL_ON
    empty = AlertTally()
    empty.absorb(AlertTally().to_json())
    assert empty.highest is None and fail_on_code(empty, "low") == EXIT_OK


def test_a_tally_lets_go_of_ids_no_document_can_update_and_keeps_their_counts() -> None:
    from sensor.app.summary import MAX_UPDATABLE_ALERTS
    from sensor.detect.engine import MAX_THROTTLE_KEYS

    # the engine re-sends only the windows it keeps, the newest MAX_THROTTLE_KEYS opened
    assert MAX_UPDATABLE_ALERTS >= MAX_THROTTLE_KEYS
    # each id sent three times in a row (first sight, an escalation, the final count), as live does
    docs = [alert(str(i // 3), ("low", "high")[i % 7 == 0], "tracker-egress-no-baa", f"10.0.{i % 5}.1",
                  ("Meta Pixel", "Hotjar", None)[i % 3], i % 11 + 1) for i in range(1000)]
    whole, bounded, replay = AlertTally(), AlertTally(updatable=30), AlertTally(updatable=0)
    for doc in docs:
        whole.add(doc)
        bounded.add(doc)
    for index, doc in enumerate(docs):  # the last document of each id only, as a replay writes them
        if index == len(docs) - 1 or docs[index + 1]["event"]["id"] != doc["event"]["id"]:
            replay.add(doc)
    assert len(bounded.rows) <= 30 and len(replay.rows) == 0 and len(whole) == 334
    assert (len(bounded), bounded.counts()) == (len(whole), whole.counts()) == (len(replay), replay.counts())
    assert list(bounded.counts()) == list(whole.counts())  # the table's ties keep their order
    texts = []
    for tally in (whole, bounded, replay):
        out = io.StringIO()
        print_summary(tally, out)
        texts.append(out.getvalue())
    assert texts[0] == texts[1] == texts[2]
    carried = AlertTally()
    carried.absorb(orjson.loads(orjson.dumps(replay.to_json())))
    assert (len(carried), carried.counts(), carried.highest) == (len(whole), whole.counts(), whole.highest)


def _row_of(doc: dict) -> tuple[str, ...]:
    pe = doc["phi_egress"]
    return (pe["severity"], doc["rule"]["id"], doc["source"]["ip"],
            pe.get("vendor", {}).get("name") or pe["destination"], pe["baa"]["status"], "-")


def _table_of_every_row(docs: list[dict], shown: int) -> list[tuple[tuple[str, ...], int, int]]:
    """The table from every document's row, kept whole: what the bounded tally must give."""
    rows: dict[tuple[str, ...], tuple[int, int]] = {}
    for doc in docs:
        count, alerts = rows.get(_row_of(doc), (0, 0))
        rows[_row_of(doc)] = (count + doc["phi_egress"]["count"], alerts + 1)
    return [(row, *rows[row]) for row in sorted(rows, key=table_order)[:shown]]


_docs = st.lists(
    st.tuples(st.sampled_from(["low", "medium", "high", "critical"]),
              st.sampled_from(["tracker-egress-no-baa", "plaintext-phi", "phi-in-tracker-payload"]),
              st.integers(0, 30), st.sampled_from(["Meta Pixel", "Hotjar", None]), st.integers(1, 9)),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(_docs, st.integers(0, 300), st.integers(1, 12), st.booleans())
def test_a_bounded_tally_gives_the_table_of_every_row(drawn, split_at, shown, child_first) -> None:
    # a replay's tallies (one document per id), split between two workers at any point and
    # carried over in either order, against the table of every row kept whole
    docs = [alert(str(i), severity, rule, f"10.0.0.{host}", vendor, count)
            for i, (severity, rule, host, vendor, count) in enumerate(drawn)]
    first, second = AlertTally(updatable=0, shown=shown), AlertTally(updatable=0, shown=shown)
    for doc in docs[:split_at]:
        first.add(doc)
    for doc in docs[split_at:]:
        second.add(doc)
    if child_first:
        first, second = second, first
    assert len(first.settled) <= shown and len(second.settled) <= shown
    first.absorb(orjson.loads(orjson.dumps(second.to_json())))
    assert len(first) == len(docs)
    assert first.table() == _table_of_every_row(docs, shown)
    out = io.StringIO()
    print_summary(first, out)
    hidden = len(docs) - sum(alerts for _, _, alerts in _table_of_every_row(docs, shown))
    assert (f"... {hidden} alert(s) in less severe rows" in out.getvalue()) == (hidden > 0)


def test_a_day_of_distinct_alerts_keeps_only_the_rows_the_table_shows() -> None:
    # a replay raises one document per window, most of them a row of their own: the tally keeps
    # the rows the table can show, not one per alert
    tally = AlertTally(updatable=0)
    for i in range(50_000):
        tally.add(alert(str(i), ("low", "medium", "high")[i % 3], "tracker-egress-no-baa",
                        f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"vendor-{i % 97}"))
    assert len(tally) == 50_000 and len(tally.settled) == SUMMARY_ROWS
    table = tally.table()
    assert [row[0] for row, _, _ in table] == ["high"] * SUMMARY_ROWS
    assert [row for row, _, _ in table] == sorted((row for row, _, _ in table), key=table_order)
