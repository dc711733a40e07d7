"""TCP reassembly: order, retransmissions, overlaps, gaps, caps and their counters."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.flows import SEQ_MOD, FlowTable
from sensor.records import Counters

KEY = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 40000, 443)


class Collector:
    """A consumer that wants everything, or stops after `want` bytes."""

    def __init__(self, want: int | None = None) -> None:
        self.data = b""
        self.want = want
        self.gaps = 0
        self.finished = False

    def feed(self, ts: float, data: bytes) -> bool:
        self.data += data
        return self.want is None or len(self.data) < self.want

    def gap(self) -> bool:
        self.gaps += 1
        return True

    def finish(self, ts: float) -> None:
        self.finished = True


def make_table(first_bytes: bytes = b"", **caps) -> tuple[FlowTable, list[Collector], Counters]:
    counters = Counters()
    made: list[Collector] = []

    def classify(key: tuple, first: bytes):
        if first_bytes and not first.startswith(first_bytes):
            return None
        made.append(Collector())
        return made[-1]

    return FlowTable(counters, classify, **caps), made, counters


def segments(data: bytes, isn: int, size: int) -> list[tuple[int, bytes]]:
    return [((isn + 1 + i) % SEQ_MOD, data[i : i + size]) for i in range(0, len(data), size)]


def test_in_order_with_syn() -> None:
    table, made, _ = make_table()
    table.syn(KEY, 0.0, 1000)
    for seq, chunk in segments(b"hello world" * 50, 1000, 100):
        table.segment(KEY, 1.0, seq, chunk)
    assert made[0].data == b"hello world" * 50


def test_out_of_order_retransmitted_and_overlapping_segments() -> None:
    data = bytes(range(256)) * 8
    table, made, counters = make_table()
    table.syn(KEY, 0.0, 5)
    segs = segments(data, 5, 300)
    table.segment(KEY, 1.0, *segs[2])
    table.segment(KEY, 1.0, *segs[0])
    table.segment(KEY, 1.0, *segs[0])  # retransmission
    seq1, chunk1 = segs[1]
    table.segment(KEY, 1.0, (seq1 - 50) % SEQ_MOD, data[250:650])  # overlaps both neighbours
    for seg in segs[3:]:
        table.segment(KEY, 1.0, *seg)
    assert made[0].data == data
    assert counters.get("tcp.retransmissions") >= 1
    assert counters.get("tcp.out_of_order") >= 1


def test_sequence_number_wraparound() -> None:
    data = b"x" * 1000 + b"y" * 1000
    table, made, _ = make_table()
    isn = SEQ_MOD - 600
    table.syn(KEY, 0.0, isn)
    for seq, chunk in reversed(segments(data, isn, 400)):
        table.segment(KEY, 1.0, seq, chunk)
    assert made[0].data == data


def test_second_segment_first_without_syn() -> None:
    """A split ClientHello whose second half arrives first, capture started after the SYN."""
    table, made, _ = make_table(first_bytes=b"\x16\x03")
    first, second = b"\x16\x03\x01" + b"a" * 1400, b"b" * 400
    table.segment(KEY, 1.0, 1000 + len(first), second)
    assert not made
    table.segment(KEY, 1.1, 1000, first)
    assert made[0].data == first + second


def test_gap_when_out_of_order_buffer_overflows() -> None:
    table, made, counters = make_table(stream_buffer_cap=1000)
    table.syn(KEY, 0.0, 0)
    table.segment(KEY, 1.0, 1, b"a" * 100)
    for i in range(5):  # a hole of 100 bytes, then more than the cap beyond it
        table.segment(KEY, 1.0, 201 + i * 300, b"b" * 300)
    assert counters.get("tcp.gaps") == 1
    assert made[0].gaps == 1
    assert made[0].data.startswith(b"a" * 100 + b"b" * 300)


def test_consumer_done_stops_buffering() -> None:
    counters = Counters()
    consumer = Collector(want=10)
    table = FlowTable(counters, lambda key, first: consumer)
    table.syn(KEY, 0.0, 0)
    table.segment(KEY, 1.0, 1, b"0123456789")
    table.segment(KEY, 1.0, 11, b"more")
    assert consumer.data == b"0123456789"
    assert KEY not in table.streams and KEY in table.finished  # a key remembered, not a stream


def test_stream_cap_evicts_oldest_and_counts() -> None:
    table, made, counters = make_table(max_streams=3)
    for port in range(5):
        key = (b"\x01" * 4, b"\x02" * 4, 1000 + port, 80)
        table.segment(key, float(port), 1, b"data")
    assert len(table.streams) == 3
    assert counters.get("tcp.streams_evicted") == 2


def test_idle_streams_expire_and_are_finished() -> None:
    table, made, counters = make_table(idle_timeout=10.0)
    table.segment(KEY, 0.0, 1, b"data")
    table.sweep(100.0)
    assert KEY not in table.streams
    assert made[0].finished
    assert counters.get("tcp.streams_expired") == 1


def test_unclassified_stream_is_dropped() -> None:
    table, made, counters = make_table(first_bytes=b"GET ")
    table.syn(KEY, 0.0, 0)
    table.segment(KEY, 1.0, 1, b"\x17\x03\x03 encrypted")
    table.segment(KEY, 1.0, 13, b"more")
    assert not made
    assert counters.get("tcp.streams_unclassified") == 1


@settings(max_examples=150)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 700), st.integers(0, SEQ_MOD - 1), st.randoms())
def test_any_delivery_order_with_duplicates_gives_the_stream(data: bytes, size: int, isn: int, rnd: random.Random) -> None:
    segs = segments(data, isn, size)
    shuffled = segs + rnd.sample(segs, k=min(len(segs), 3))  # some retransmissions
    rnd.shuffle(shuffled)
    table, made, _ = make_table()
    table.syn(KEY, 0.0, isn)
    for seq, chunk in shuffled:
        table.segment(KEY, 1.0, seq, chunk)
    table.finish()
    assert made[0].data == data


@settings(max_examples=150)
@given(st.lists(st.tuples(st.integers(0, SEQ_MOD - 1), st.binary(max_size=500)), max_size=40))
def test_random_segments_never_raise_and_stay_bounded(segs) -> None:
    table, made, _ = make_table(stream_buffer_cap=4000)
    for seq, chunk in segs:
        table.segment(KEY, 1.0, seq, chunk)
    stream = table.streams.get(KEY)
    assert stream is None or stream.ooo_bytes <= 4000 + 500
    table.finish()
