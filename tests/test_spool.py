"""The disk spool: order, persistence across restarts and crashes, bounds and the overflow policy."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import make_alert, make_event

from sensor.output.documents import severity_rank
from sensor.output.spool import Backoff, Spool, SpoolError


def ids(spool: Spool, limit: int = 10_000) -> list[str]:
    return [item.doc["event"]["id"] for item in spool.peek(limit)]


def test_fifo_survives_reopen_and_ack_removes_only_what_was_confirmed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for n in range(10):
        spool.put(make_alert(n))
    first = spool.peek(4)
    assert [item.doc["event"]["id"] for item in first] == [make_alert(n)["event"]["id"] for n in range(4)]
    spool.ack([first[0].seq, first[2].seq])
    spool.close()

    reopened = Spool(tmp_path / "s.db")
    expected = [make_alert(n)["event"]["id"] for n in (1, 3, 4, 5, 6, 7, 8, 9)]
    assert ids(reopened) == expected
    assert reopened.depth() == 8
    assert reopened.stats()["spool_bytes"] == sum(
        len(json.dumps(item.doc, separators=(",", ":"), ensure_ascii=False).encode())
        for item in reopened.peek(100)
    )
    # New items go after the survivors, even though lower sequence numbers were freed.
    reopened.put(make_alert(99))
    assert ids(reopened)[-1] == make_alert(99)["event"]["id"]


def test_a_killed_writer_loses_nothing_it_had_spooled(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from servers import make_alert\n"
        "from sensor.output.spool import Spool\n"
        "spool = Spool(Path(sys.argv[1]))\n"
        "for n in range(300):\n"
        "    spool.put(make_alert(n))\n"
        "print('spooled', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "k.db"), str(Path(__file__).parent)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "spooled"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    spool = Spool(tmp_path / "k.db")
    assert ids(spool) == [make_alert(n)["event"]["id"] for n in range(300)]


def test_overflow_drops_oldest_of_the_lowest_severity_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "o.db", max_items=6)
    plan = [(0, "low"), (1, "critical"), (2, "medium"), (3, "low"), (4, "high"), (5, "medium")]
    for n, severity in plan:
        spool.put(make_alert(n, severity))
    spool.put(make_alert(6, "high"))  # evicts alert 0 (oldest low)
    spool.put(make_alert(7, "high"))  # evicts alert 3 (the other low)
    spool.put(make_alert(8, "critical"))  # evicts alert 2 (oldest medium)
    assert ids(spool) == [make_alert(n)["event"]["id"] for n in (1, 4, 5, 6, 7, 8)]
    stats = spool.stats()
    assert (stats["dropped"], stats["dropped_low"], stats["dropped_medium"], stats["dropped_high"]) == (3, 2, 1, 0)
    assert stats["spool_depth"] == 6


def test_a_newcomer_less_important_than_everything_spooled_is_the_one_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "n.db", max_items=2)
    spool.put(make_alert(0, "critical"))
    spool.put(make_alert(1, "high"))
    assert spool.put(make_alert(2, "low")) is False
    assert spool.put(make_event(3)) is False
    assert ids(spool) == [make_alert(0)["event"]["id"], make_alert(1)["event"]["id"]]
    assert spool.stats()["dropped_low"] == 1 and spool.stats()["dropped_event"] == 1


def test_events_go_before_any_alert(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "e.db", max_items=3)
    spool.put(make_alert(0, "low"))
    spool.put(make_event(1))
    spool.put(make_event(2))
    spool.put(make_alert(3, "low"))
    spool.put(make_alert(4, "low"))
    assert [item.doc["event"]["id"] for item in spool.peek(10)] == [
        make_alert(0)["event"]["id"], make_alert(3)["event"]["id"], make_alert(4)["event"]["id"]
    ]
    assert spool.stats()["dropped_event"] == 2


def test_byte_bound_and_oversized_documents(tmp_path: Path) -> None:
    one = len(json.dumps(make_alert(0, "low"), separators=(",", ":")).encode())
    spool = Spool(tmp_path / "b.db", max_bytes=one * 3 + 10)
    for n in range(5):
        spool.put(make_alert(n, "low"))
    assert spool.depth() == 3
    assert spool.stats()["spool_bytes"] <= one * 3 + 10
    assert ids(spool) == [make_alert(n)["event"]["id"] for n in (2, 3, 4)]
    huge = make_alert(9, "critical")
    huge["phi_egress"]["summary"] = "x" * (one * 4)
    assert spool.put(huge) is False
    assert spool.depth() == 3 and spool.stats()["dropped_critical"] == 1


def test_unreadable_file_is_moved_aside_and_a_fresh_spool_starts(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.write_bytes(b"this is not an sqlite database at all" * 100)
    spool = Spool(path)
    assert spool.depth() == 0
    assert (tmp_path / "c.db.corrupt").read_bytes().startswith(b"this is not")
    spool.put(make_alert(1))
    assert ids(spool) == [make_alert(1)["event"]["id"]]


def test_rows_that_do_not_decode_are_discarded_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "r.db")
    spool.put(make_alert(0))
    spool.close()
    with sqlite3.connect(tmp_path / "r.db") as raw:
        raw.execute("INSERT INTO items (rank, body) VALUES (1, ?)", (b"\xff{not json",))
        raw.execute("INSERT INTO items (rank, body) VALUES (1, ?)", (b"[1, 2]",))
    spool = Spool(tmp_path / "r.db")
    spool.put(make_alert(1))
    assert ids(spool) == [make_alert(0)["event"]["id"], make_alert(1)["event"]["id"]]
    assert spool.stats()["spool_corrupt"] == 2
    assert spool.depth() == 2


def test_spool_directory_that_cannot_exist(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError):
        Spool(blocker / "sub" / "s.db")


def test_severity_rank() -> None:
    assert severity_rank(make_event(0)) == 0
    assert [severity_rank(make_alert(0, s)) for s in ("low", "medium", "high", "critical")] == [1, 2, 3, 4]
    odd = make_alert(0)
    odd["phi_egress"]["severity"] = "apocalyptic"
    assert severity_rank(odd) == 1
    assert severity_rank({"event": "nonsense"}) == 0


def test_backoff_grows_with_jitter_and_stays_capped() -> None:
    backoff = Backoff(base=0.5, maximum=8.0)
    for failures, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (50, 8.0), (10_000, 8.0)):
        delays = [backoff.delay(failures) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


# The spool against a plain list model of the same policy: whatever the operations,
# the same documents survive, in the same order, within the bounds.
def small_doc(number: int, rank: int, pad: int) -> dict[str, object]:
    if rank == 0:
        return {"event": {"kind": "event", "id": f"d{number}"}, "pad": "p" * pad}
    severity = ("low", "medium", "high", "critical")[rank - 1]
    return {"event": {"kind": "alert", "id": f"d{number}"}, "phi_egress": {"severity": severity}, "pad": "p" * pad}


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 4), st.integers(0, 300)),
        st.tuples(st.just("put"), st.integers(0, 4), st.integers(0, 300)),
        st.tuples(st.just("ack"), st.integers(0, 5), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, max_items=st.integers(1, 8), max_bytes=st.integers(100, 1500))
def test_spool_matches_a_model_of_its_policy(
    tmp_path: Path, ops: list[tuple[str, int, int]], max_items: int, max_bytes: int
) -> None:
    path = tmp_path / f"m{time.monotonic_ns()}.db"
    spool = Spool(path, max_items=max_items, max_bytes=max_bytes)
    model: list[tuple[int, int, int]] = []  # (number, rank, size)
    for number, (op, a, b) in enumerate(ops):
        if op == "put":
            doc = small_doc(number, a, b)
            size = len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
            accepted = size <= max_bytes
            while accepted and (len(model) + 1 > max_items or sum(m[2] for m in model) + size > max_bytes):
                victim = min(model, key=lambda m: (m[1], m[0]), default=None)
                if victim is None or victim[1] > a:
                    accepted = False
                    break
                model.remove(victim)
            if accepted:
                model.append((number, a, size))
            assert spool.put(doc) is accepted
        elif op == "ack":
            items = spool.peek(a)
            spool.ack(item.seq for item in items)
            del model[: len(items)]
        else:
            spool.close()
            spool = Spool(path, max_items=max_items, max_bytes=max_bytes)
        assert spool.depth() == len(model) <= max_items
        assert spool.stats()["spool_bytes"] == sum(m[2] for m in model) <= max_bytes
        assert [item.doc["event"]["id"] for item in spool.peek(100)] == [f"d{n}" for n, _, _ in model]
    spool.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda cut, junk: (b"SQLite format 3\x00" + junk)[:cut], st.integers(0, 4096), st.binary(max_size=4096)),
))
def test_any_file_content_opens_or_raises_spool_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / f"f{time.monotonic_ns()}.db"
    path.write_bytes(content)
    try:
        spool = Spool(path)
    except SpoolError:
        return
    spool.put(make_alert(0))
    assert ids(spool)[-1] == make_alert(0)["event"]["id"]
    spool.close()
