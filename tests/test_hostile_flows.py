"""Hostile traffic against reassembly and the flow table: linear time, bounded memory, counted caps.

The captures come from bench/hostile.py (struct-packed frames); the full-size targets are marked slow.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from sensor.decode.flows import FlowTable
from sensor.records import Counters

sys.path.insert(0, str(REPO / "bench"))
import hostile  # noqa: E402
import treemem  # noqa: E402

KEY = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 40000, 80)


class Sink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def feed(self, ts: float, data: bytes) -> bool:
        self.parts.append(data)
        return True

    def gap(self) -> bool:
        return True

    def finish(self, ts: float) -> None:
        pass


def reversed_stream(table: FlowTable, data: bytes, isn: int = 7, key: tuple = KEY) -> None:
    table.syn(key, 0.0, isn)
    for i in range(len(data) - 1, -1, -1):
        table.segment(key, 1.0, (isn + 1 + i) % (1 << 32), data[i : i + 1])


def test_twenty_thousand_reverse_one_byte_segments_in_linear_time() -> None:
    sink = Sink()
    counters = Counters()
    table = FlowTable(counters, lambda key, first: sink)
    data = (bytes(range(256)) * 79)[:20_000]
    started = time.perf_counter()
    reversed_stream(table, data)
    elapsed = time.perf_counter() - started
    assert b"".join(sink.parts) == data
    assert len(sink.parts) == 2  # the first byte, then everything held merged into one delivery
    assert counters.get("tcp.out_of_order") == 19_999
    assert table.held_bytes == table.held_segments == 0
    assert elapsed < 1.0


def test_time_grows_linearly_with_reverse_segments() -> None:
    def run(n: int) -> float:
        table = FlowTable(Counters(), lambda key, first: Sink())
        started = time.perf_counter()
        reversed_stream(table, b"x" * n)
        return time.perf_counter() - started

    run(2_000)  # warm up
    small, large = min(run(4_000) for _ in range(3)), min(run(32_000) for _ in range(3))
    assert large < small * 8 * 3  # 8x the segments: well under the 64x of a quadratic rescan


def test_per_stream_segment_cap_is_counted_and_delivers_across_the_gap() -> None:
    sink = Sink()
    counters = Counters()
    table = FlowTable(counters, lambda key, first: sink, max_stream_segments=100)
    table.syn(KEY, 0.0, 0)
    for i in range(200, 0, -1):  # byte 0 never comes
        table.segment(KEY, 1.0, 1 + i, b"%c" % (i % 256))
    assert counters.get("tcp.stream_segment_cap") >= 1
    assert counters.get("tcp.gaps") >= 1
    assert table.streams[KEY].ooo is None or len(table.streams[KEY].ooo) <= 100
    assert table.held_segments <= 100


def test_global_caps_flush_the_oldest_holder_and_count() -> None:
    counters = Counters()
    sinks: list[Sink] = []

    def classify(key: tuple, first: bytes) -> Sink:
        sinks.append(Sink())
        return sinks[-1]

    table = FlowTable(counters, classify, max_held_segments=50, max_held_bytes=10_000)
    for port in range(20):  # each stream: byte 0 missing, ten bytes held
        key = (KEY[0], KEY[1], 1000 + port, 80)
        table.syn(key, 0.0, 0)
        for i in range(10):
            table.segment(key, 1.0, 2 + i, b"y")
    assert table.held_segments <= 50
    assert counters.get("tcp.held_cap_flushes") >= 15
    first = table.streams[(KEY[0], KEY[1], 1000, 80)]
    assert first.ooo is None or not first.ooo  # the oldest holder was flushed first
    assert b"".join(sinks[0].parts) == b"y" * 10  # delivered across its gap, not lost


def test_unclassified_held_segments_count_against_the_global_cap() -> None:
    counters = Counters()
    table = FlowTable(counters, lambda key, first: None, max_held_bytes=5_000)
    for port in range(100):
        for i in range(3):
            table.segment((KEY[0], KEY[1], 2000 + port, 80), 1.0, 1000 * i, b"z" * 100)
    assert table.held_bytes <= 5_000
    assert counters.get("tcp.held_cap_flushes") > 0


def test_syn_flood_is_held_apart_and_never_evicts_streams_with_data() -> None:
    counters = Counters()
    sink = Sink()
    table = FlowTable(counters, lambda key, first: sink, max_streams=10, max_half_open=1_000)
    table.syn(KEY, 0.0, 99)
    table.segment(KEY, 0.1, 100, b"GET / HTTP/1.1\r\n")
    for n in range(50_000):
        table.syn((n.to_bytes(4, "big"), KEY[1], 1024 + n % 60000, 443), 1.0 + n * 1e-5, n)
    assert len(table.half_open) == 1_000
    assert counters.get("tcp.half_open_evicted") == 49_000
    assert counters.get("tcp.streams_evicted") == 0
    table.segment(KEY, 2.0, 116, b"Host: x\r\n\r\n")
    assert b"".join(sink.parts) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    # a flood connection that does send data still starts where its SYN said
    late = (n.to_bytes(4, "big"), KEY[1], 1024 + n % 60000, 443)
    table.segment(late, 2.0, n + 2, b"second")
    table.segment(late, 2.0, n + 1, b"f")
    assert b"".join(sink.parts[-2:]) == b"fsecond"


def test_eviction_and_sweep_cost_no_scan() -> None:
    """At the stream cap every new stream evicts one: each eviction must be O(1)."""
    def run(n: int) -> float:
        table = FlowTable(Counters(), lambda key, first: None, max_streams=n // 2)
        started = time.perf_counter()
        for i in range(n):
            table.segment((i.to_bytes(4, "big"), b"b", 1, 2), float(i) / 1000, 0, b"q")
        return time.perf_counter() - started

    small, large = min(run(20_000) for _ in range(2)), min(run(160_000) for _ in range(2))
    assert large < small * 8 * 3


def test_idle_sweep_expires_in_order_and_requeues_active_streams() -> None:
    counters = Counters()
    table = FlowTable(counters, lambda key, first: Sink(), idle_timeout=10.0)
    keys = [(KEY[0], KEY[1], 3000 + i, 80) for i in range(5)]
    for i, key in enumerate(keys):
        table.segment(key, float(i), 1, b"a")
    table.segment(keys[0], 9.0, 2, b"b")  # the oldest stays active
    table.syn((b"h", b"o", 1, 2), 0.0, 5)
    table.sweep(13.5)  # idle: last seen before 3.5 -> keys 1..3
    assert set(table.streams) == {keys[0], keys[4]}
    assert counters.get("tcp.streams_expired") == 3
    assert not table.half_open
    table.sweep(25.0)
    assert not table.streams


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor", "replay", *args], capture_output=True, text=True, timeout=300
    )


def alerts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reverse_capture_still_alerts(tmp_path: Path) -> None:
    capture = tmp_path / "reverse.pcap"
    hostile.write(capture, hostile.reverse_frames(3_000, 3))
    out = tmp_path / "alerts.jsonl"
    result = replay(str(capture), "--output", str(out), "--stats")
    assert result.returncode == 0, result.stderr
    found = alerts(out)
    assert {a["source"]["port"] for a in found} == {40000, 40001, 40002}
    assert {a["destination"]["domain"] for a in found} == {"www.facebook.com"}


def test_syn_flood_capture_still_alerts(tmp_path: Path) -> None:
    capture = tmp_path / "flood.pcap"
    hostile.write(capture, hostile.synflood_frames(50_000))
    out = tmp_path / "alerts.jsonl"
    result = replay(str(capture), "--output", str(out), "--stats", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "tcp.half_open_evicted" in result.stdout + result.stderr or len(alerts(out)) >= 1
    assert any(a["destination"].get("domain") == "www.facebook.com" for a in alerts(out))


@pytest.mark.slow
def test_full_size_reverse_stream_under_a_second(tmp_path: Path) -> None:
    capture = tmp_path / "reverse.pcap"
    hostile.write(capture, hostile.reverse_frames(20_000, 1))
    out = tmp_path / "alerts.jsonl"
    started = time.perf_counter()
    result = replay(str(capture), "--output", str(out))
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert alerts(out)
    assert elapsed < 1.5  # < 1 s of work plus interpreter start-up


@pytest.mark.slow
def test_full_size_syn_flood_under_ten_seconds_and_300_mb(tmp_path: Path) -> None:
    capture = tmp_path / "flood.pcap"
    hostile.write(capture, hostile.synflood_frames(1_000_000))
    out = tmp_path / "alerts.jsonl"
    code, seconds, rss_kib, _pss = treemem.measure(
        [sys.executable, "-m", "sensor", "replay", str(capture), "--output", str(out), "--workers", "2"]
    )
    assert code == 0
    assert any(a["destination"].get("domain") == "www.facebook.com" for a in alerts(out))
    assert seconds < 10
    assert rss_kib < 300 * 1024


def test_a_longer_segment_from_a_held_offset_is_kept() -> None:
    """Repacketized retransmission: the first copy held was short; the longer one fills the rest."""
    sink = Sink()
    table = FlowTable(Counters(), lambda key, first: sink)
    table.syn(KEY, 0.0, 0)
    table.segment(KEY, 1.0, 11, b"0123")  # offset 10, four bytes
    table.segment(KEY, 1.0, 11, b"0123456789")  # offset 10 again, ten bytes
    table.segment(KEY, 1.0, 1, b"abcdefghij")
    assert b"".join(sink.parts) == b"abcdefghij0123456789"
    assert table.held_bytes == table.held_segments == 0


def test_connections_seen_mid_stream_cost_a_key_not_a_stream() -> None:
    """A flood of unparseable mid-stream segments fills only the bounded table of such connections."""
    counters = Counters()
    sink = Sink()

    def classify(key: tuple, first: bytes):
        return sink if first.startswith(b"GET ") else None

    table = FlowTable(counters, classify, max_streams=100, max_unanchored=1_000)
    for n in range(20_000):
        table.segment((n.to_bytes(4, "big"), KEY[1], 1024 + n % 60000, 443), 1.0, n, b"\xee" * 64)
    assert not table.streams and len(table.unanchored) == 1_000
    assert counters.get("tcp.unanchored_evicted") == 19_000
    assert table.held_segments == 1_000 and table.held_bytes == 64_000
    table.segment(KEY, 2.0, 500, b"GET / HTTP/1.1\r\n\r\n")  # a real request still opens a stream
    assert sink.parts == [b"GET / HTTP/1.1\r\n\r\n"]


def test_finished_connections_leave_the_stream_table() -> None:
    counters = Counters()
    table = FlowTable(counters, lambda key, first: None, max_finished=10)
    for port in range(50):
        key = (KEY[0], KEY[1], 2000 + port, 80)
        table.syn(key, 0.0, 0)
        table.segment(key, 1.0, 1, b"not a protocol")
    assert not table.streams and len(table.finished) == 10
    assert counters.get("tcp.streams_unclassified") == 50
    key = (KEY[0], KEY[1], 2049, 80)
    table.segment(key, 1.0, 15, b"more")  # ignored: one lookup
    assert not table.streams and not table.unanchored
    table.syn(key, 5.0, 1000)  # a new connection from the same port starts afresh
    assert key not in table.finished and key in table.half_open


@pytest.mark.slow
def test_full_size_mid_stream_flood_stays_bounded(tmp_path: Path) -> None:
    capture = tmp_path / "dataflood.pcap"
    hostile.write(capture, hostile.dataflood_frames(1_000_000))
    out = tmp_path / "alerts.jsonl"
    code, seconds, rss_kib, _pss = treemem.measure(
        [sys.executable, "-m", "sensor", "replay", str(capture), "--output", str(out), "--workers", "2"]
    )
    assert code == 0
    assert any(a["destination"].get("domain") == "www.facebook.com" for a in alerts(out))
    assert seconds < 20
    assert rss_kib < 400 * 1024
