"""The decoder's per-connection tables are bounded by idle time on the capture's clock.

A finished TCP key, the segments held for a connection seen mid-stream and a QUIC connection are
forgotten once idle for the flow idle timeout (a sensor that runs for days keeps what the last
minutes of traffic need), a busy one stays, and a flow mix in which no flow idles that long
gives the same records as a decoder that forgets nothing.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.flows import FlowTable
from sensor.decode.packet import TCP, UDP
from sensor.decode.quic import QuicClientHelloTracker
from sensor.decode.settings import DecodeSettings
from sensor.records import Counters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pcaps"))
from synth import (  # noqa: E402  (pcaps/ is not a package)
    client_hello,
    client_hello_record,
    initial_keys,
    quic_initial_packets,
    quic_transport_parameters,
)

KEY = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 40000, 443)
IDLE = 40.0  # the table's idle timeout in these tests: it sweeps every 10 s of capture time
SYN, ACK, PSH = 0x02, 0x10, 0x08


class Sink:
    """A consumer that wants every byte."""

    def __init__(self) -> None:
        self.data = b""

    def feed(self, ts: float, data: bytes) -> bool:
        self.data += data
        return True

    def gap(self) -> bool:
        return True

    def finish(self, ts: float) -> None:
        pass


def http_table() -> tuple[FlowTable, Counters, list[Sink]]:
    """A table whose classifier takes streams that open an HTTP request, and nothing else."""
    counters, made = Counters(), []

    def classify(key: tuple, first: bytes) -> Sink | None:
        if not first.startswith(b"GET "):
            return None
        made.append(Sink())
        return made[-1]

    return FlowTable(counters, classify, idle_timeout=IDLE), counters, made


def finished(table: FlowTable, key: tuple, ts: float) -> None:
    """`key` opens with bytes nobody parses: its key joins the finished ones."""
    table.syn(key, ts, 100)
    table.segment(key, ts, 101, b"SSH-2.0-x\r\n")
    assert key in table.finished and key not in table.streams


def test_finished_key_is_forgotten_once_idle() -> None:
    table, counters, _ = http_table()
    finished(table, KEY, 0.0)
    table.sweep(IDLE)  # idle for one timeout: still within the sweep period's slack
    assert KEY in table.finished
    table.sweep(IDLE + 10.5)  # idle for more than a timeout and a sweep period
    assert KEY not in table.finished
    assert counters.get("tcp.finished_expired") == 1


def test_busy_finished_key_stays_and_its_segments_stay_ignored() -> None:
    table, counters, made = http_table()
    finished(table, KEY, 0.0)
    other = (KEY[0], KEY[1], 40001, 443)
    finished(table, other, 0.0)
    seq = 112
    for step in range(1, 40):  # a segment every 15 s for ten minutes: never idle for long
        ts = step * 15.0
        table.segment(KEY, ts, seq, b"GET / HTTP/1.1\r\n\r\n")  # a late segment: ignored, whatever it carries
        seq += 19
        table.sweep(ts)
    assert KEY in table.finished and other not in table.finished
    assert not made and not table.streams and not table.unanchored
    assert counters.get("tcp.finished_expired") == 1


def test_segment_after_the_key_idled_out_is_a_connection_seen_mid_stream() -> None:
    table, counters, made = http_table()
    finished(table, KEY, 0.0)
    table.sweep(100.0)
    assert KEY not in table.finished
    table.segment(KEY, 101.0, 500, b"\x17\x03\x03 encrypted")  # opens nothing: held while its start may come
    assert KEY in table.unanchored and not table.streams
    table.segment(KEY, 102.0, 600, b"GET /next HTTP/1.1\r\n\r\n")  # opens a request: a stream from here
    assert KEY in table.streams and made and made[0].data.startswith(b"GET /next")


def test_unanchored_segments_are_released_once_idle_and_kept_while_busy() -> None:
    table, counters, _ = http_table()
    quiet, busy = KEY, (KEY[0], KEY[1], 40001, 443)
    table.segment(quiet, 0.0, 1000, b"x" * 100)
    table.segment(busy, 0.0, 5000, b"y" * 10)
    for ts in (20.0, 35.0, 50.0):  # the busy one sends now and then (fewer than 8 segments)
        table.segment(busy, ts, 5000 + int(ts), b"y" * 10)
        table.sweep(ts)
    assert quiet not in table.unanchored and busy in table.unanchored
    assert table.held_bytes == 40 and table.held_segments == 4
    assert counters.get("tcp.unanchored_expired") == 1
    table.sweep(50.0 + IDLE + 0.5)
    assert not table.unanchored and table.held_bytes == 0 and table.held_segments == 0


def quic_initials(name: str, seed: int, post_quantum: bool = False) -> list[bytes]:
    """A client's Initials: one datagram, or two for a post-quantum hello."""
    rng = random.Random(seed)
    dcid = rng.randbytes(8)
    hello = client_hello(name, rng=rng, alpn=("h3",), post_quantum=post_quantum,
                         quic_transport_params=quic_transport_parameters(b"", rng))
    return quic_initial_packets(hello, dcid=dcid, keys=initial_keys(dcid))


def test_quic_connection_is_forgotten_once_idle_and_kept_while_busy() -> None:
    counters = Counters()
    tracker = QuicClientHelloTracker(counters=counters, idle_timeout=IDLE)
    (initial,) = quic_initials("example.org", 1)
    busy = quic_initials("example.com", 2, post_quantum=True)
    assert len(busy) == 2
    assert tracker.feed("quiet", initial, ts=0.0) is not None
    hellos = [tracker.feed("busy", datagram, ts=0.0) for datagram in busy]
    assert hellos[-1] is not None
    for ts in range(15, 200, 15):  # the busy client retransmits an Initial every 15 s: one hello only
        assert tracker.feed("busy", busy[0], ts=float(ts)) is None
    assert "busy" in tracker._connections and "quiet" not in tracker._connections
    assert counters.get("quic.expired") == 1
    assert tracker.feed("quiet", initial, ts=200.0) is not None  # forgotten: a new handshake
    assert tracker.feed("quiet", initial, ts=201.0) is None


def test_server_datagrams_are_known_while_their_client_is_remembered() -> None:
    counters = Counters()
    tracker = QuicClientHelloTracker(counters=counters, idle_timeout=IDLE)
    initial = quic_initials("example.org", 3)[0]
    assert tracker.feed("c", initial, "s", ts=0.0) is not None
    assert tracker.feed("s", initial, "c", ts=1.0) is None
    assert counters.get("quic.server_datagrams") == 1


# -- a flow mix where no flow idles past the timeout ----------------------------------------------

CLIENT, SERVER = b"\x0a\x01\x00\x05", b"\xc6\x33\x64\x07"
_HELLOS = [client_hello_record(f"site{i}.example", rng=random.Random(i)) for i in range(4)]
_INITIALS = [quic_initials(f"quic{i}.example", 10 + i, post_quantum=i > 0) for i in range(3)]
KINDS = ("tls", "tls_split", "http", "unparsed", "mid_stream", "quic")

flow_spec = st.tuples(
    st.sampled_from(KINDS),
    st.floats(0.0, 10 * IDLE, allow_nan=False),  # when it starts
    st.lists(st.floats(0.5, IDLE - 1.0, allow_nan=False), min_size=1, max_size=6),  # gaps between its packets
    st.integers(0, 3),  # which hello, name or Initial
)


def _flow_packets(index: int, kind: str, start: float, gaps: list[float], pick: int) -> list[tuple[float, tuple]]:
    """(ts, decoded) of one flow: each packet within a timeout of the one before."""
    sport = 20000 + index
    times = [start]
    for gap in gaps:
        times.append(times[-1] + gap)

    def tcp(ts: float, flags: int, seq: int, payload: bytes = b"") -> tuple[float, tuple]:
        return ts, (TCP, CLIENT, SERVER, sport, 443, flags, seq, payload)

    if kind == "quic":
        datagrams = _INITIALS[pick % len(_INITIALS)]
        sent = [datagrams[i % len(datagrams)] for i in range(len(times))]  # then retransmissions
        return [(ts, (UDP, CLIENT, SERVER, sport, 443, 0, 0, d)) for ts, d in zip(times, sent)]
    if kind == "http":
        request = f"GET /p{pick} HTTP/1.1\r\nHost: h{pick}.example\r\n\r\n".encode()
        packets, seq = [tcp(times[0], SYN, 999)], 1000
        for ts in times[1:]:
            packets.append(tcp(ts, ACK | PSH, seq, request))
            seq += len(request)
        return packets
    if kind == "mid_stream":  # no SYN: segments that open nothing, then maybe more
        return [tcp(ts, ACK | PSH, 5000 + 10 * i, b"\x17\x03\x03\x00\x05abcde") for i, ts in enumerate(times)]
    first = _HELLOS[pick] if kind != "unparsed" else b"SSH-2.0-OpenSSH_9.6\r\n"
    parts = [first[:40], first[40:]] if kind == "tls_split" else [first]
    packets, seq = [tcp(times[0], SYN, 999)], 1000
    for ts, part in zip(times[1:], parts):
        packets.append(tcp(ts, ACK | PSH, seq, part))
        seq += len(part)
    for i, ts in enumerate(times[1 + len(parts):]):  # after what is parsed: data, and the opening again
        if i % 2 == 0:  # a retransmission: were the key forgotten too soon, another record
            packets.append(tcp(ts, ACK | PSH, 1000, first))
        else:
            packets.append(tcp(ts, ACK | PSH, seq, b"\x17\x03\x03\x00\x04data"))
            seq += 9
    return packets


def _replay(timeline: list[tuple[float, tuple]], forget: bool) -> tuple[list, Counters]:
    decoder = TrafficDecoder(settings=DecodeSettings(flow_idle_timeout=IDLE))
    if not forget:  # the tables' idle sweeps off: only the count caps bound them
        decoder.flows._expire_finished = lambda limit: None  # type: ignore[method-assign]
        decoder.flows._expire_unanchored = lambda limit: None  # type: ignore[method-assign]
        decoder.quic._expire = lambda now: None  # type: ignore[method-assign]
    for ts, decoded in timeline:
        decoder.feed_decoded(ts, decoded)
    decoder.finish()
    return decoder.records, decoder.counters


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(flow_spec, min_size=1, max_size=25))
def test_forgetting_idle_entries_never_changes_the_records(flows: list) -> None:
    flows = [
        # that idle out early, so that the tables forget something in every example
        ("tls", 0.0, [1.0, 2.0], 0), ("quic", 0.0, [1.0], 0), ("mid_stream", 0.0, [1.0], 0),
        # busy ones, near the limits: a finished key seen again 9 s after it was made (its time not
        # refreshed), then 39 s later, while other TCP packets sweep; a QUIC client retransmitting
        ("tls", 0.0, [1.0, 9.0, 39.0, 1.0], 2), ("unparsed", 45.0, [1.0], 3), ("quic", 0.0, [30.0, 30.0, 30.0], 1),
        *flows,
    ]
    timeline = sorted(
        (packet for index, flow in enumerate(flows) for packet in _flow_packets(index, *flow)),
        key=lambda packet: packet[0],
    )
    # the clock runs on, for TCP and QUIC (each table is swept as its own traffic comes)
    timeline.append((12 * IDLE, (TCP, CLIENT, SERVER, 1, 2, ACK, 0, b"")))
    timeline.append((12 * IDLE, (UDP, CLIENT, SERVER, 1, 443, 0, 0, _INITIALS[0][0])))
    kept, _ = _replay(timeline, forget=False)
    forgotten, counters = _replay(timeline, forget=True)
    assert forgotten == kept
    assert kept  # the mix makes records
    # and the tables did forget: the first flows idled out long before the end
    assert counters.get("tcp.finished_expired") >= 1 and counters.get("quic.expired") >= 1
    assert counters.get("tcp.unanchored_expired") >= 1
