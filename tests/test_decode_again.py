"""The compiled decode's answers that reach Python code less often.

A frame the compiled decode declines (a tunnelled packet) taken by the tunnelled steps in the
same compiled call (declined_decoder) leaves the decoder as TrafficDecoder.declined_step_py and
the earlier path through feed_found leave it: the same records, counters, flow tables, pending
DNS queries, tunnel table and DNS answers learned, packet by packet and at the end, with and
without a replay worker's routing of the other worker's DNS answers. An HTTP connection's next
whole requests taken in the handshake step (handshake_decoder, TrafficDecoder._whole_requests_py)
leave the decoder as the Python stream consumers leave it."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.capture.workers import route_of_py
from sensor.decode import dispatch
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.flows import FlowTable
from sensor.decode.settings import DecodeSettings
from tests.test_handshakes import _PAYLOADS, _SYN, _frame
from tests.test_handshakes import _decoder as _handshake_decoder
from tests.test_tunnelled_steps import _dns, _inner, _packet, _state, _wrapped

pytestmark = pytest.mark.skipif(dispatch._declined_decoder is None or dispatch._share_decoder is None,
                                reason="compiled extension not built")

_KINDS = ("compiled", "reference", "feed_found", "pure")


def _decoder(kind: str, bounds: int, learned: list[Any], worker: int | None) -> TrafficDecoder:
    """"compiled": declined frames through declined_decoder; "reference": through declined_step_py;
    "feed_found": handed back to feed_found; "pure": no compiled decode at all. Flow tables with
    small bounds; `worker`: decoding as that replay worker (the other's DNS answers only learned)."""
    decoder = TrafficDecoder()
    decoder.learn_dns = lambda ts, message, counted: learned.append((ts, message, counted))
    decoder.flows = FlowTable(decoder.counters, decoder._classify, max_streams=bounds, idle_timeout=60.0,
                              watch=decoder._watch, max_half_open=bounds, max_finished=bounds)
    if worker is not None:
        decoder.share(worker, route_of_py)
    stepped = decoder._stepped = decoder._with_steps(dispatch._share_decoder(-1, None, 0.0, 0.0))
    decoder._tunnelled = decoder._with_steps(decoder._declined_decode())
    if kind == "compiled":
        decoder._decode = decoder._with_declined(stepped)
    elif kind == "reference":
        decoder._decode = lambda linktype, frame, ts: decoder.declined_step_py(stepped(linktype, frame, ts),
                                                                               linktype, frame, ts)
    elif kind == "feed_found":
        decoder._decode = stepped
    else:
        decoder._decode = None
    return decoder


def _full_state(decoder: TrafficDecoder, learned: list[Any]) -> tuple[Any, ...]:
    return _state(decoder, learned) + (decoder.shared_frames, decoder.shared_bytes)


@settings(max_examples=300, deadline=None)
@given(st.lists(_packet, max_size=40), st.integers(1, 4), st.sampled_from([None, 0, 1]))
def test_declined_frames_in_the_decode_call_leave_what_feed_found_leaves(packets: list, bounds: int,
                                                                         worker: int | None) -> None:
    kinds = _KINDS if worker is None else _KINDS[:3]  # the pure decode knows no worker's routing
    learned: list[list[Any]] = [[] for _ in kinds]
    decoders = [_decoder(kind, bounds, into, worker) for kind, into in zip(kinds, learned)]
    clock = 1_700_000_000.0
    for tunnel, spec, gap in packets:
        clock += gap
        frame = _wrapped(tunnel, _inner(spec))
        states = []
        for decoder, into in zip(decoders, learned):
            decoder.feed(clock, 1, frame)
            states.append(_full_state(decoder, into))
        assert all(state == states[0] for state in states)
    for decoder in decoders:
        decoder.finish()
    states = [_full_state(decoder, into) for decoder, into in zip(decoders, learned)]
    assert all(state == states[0] for state in states)


def test_a_tunnelled_packet_never_reaches_feed_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """A query, its answer, a SYN, a whole hello and an HTTP request inside VXLAN: only the request
    (for the stream consumers) comes back to feed_found."""
    decoder = TrafficDecoder()
    back: list[Any] = []
    monkeypatch.setattr(decoder, "feed_found", lambda ts, linktype, frame, found: back.append(found))
    for at, inner in enumerate([_dns(1, 40000, 7, b"tracker.example", False, False),
                                _dns(1, 40000, 7, b"tracker.example", True, False),
                                _frame(1, 40000, 443, _SYN, 1000, b"", False, False),
                                _frame(1, 40000, 443, 0x18, 1001, _PAYLOADS["hello"], False, False),
                                _frame(1, 40001, 80, 0x18, 1001, _PAYLOADS["http"], False, False)]):
        decoder.feed(1_700_000_000.0 + at, 1, _wrapped("vxlan", inner))
    assert [type(record).__name__ for record in decoder.records] == ["DnsQuery", "TlsHello"]
    assert [len(found) for found in back] == [8]


def test_another_workers_tunnelled_answer_goes_to_feed_shared() -> None:
    """With a worker's routing, a tunnelled DNS answer routed to the other worker is only learned:
    counted as shared, no record and no tunnel counted here."""
    answer = _wrapped("vxlan", _dns(1, 40000, 7, b"tracker.example", True, False))
    route = route_of_py(1, answer)
    learned: list[Any] = []
    decoder = TrafficDecoder()
    decoder.learn_dns = lambda ts, message, counted: learned.append(counted)
    decoder.share(route & 1 ^ 1, route_of_py)
    decoder.feed(1_700_000_000.0, 1, answer)
    assert (decoder.shared_frames, decoder.records, learned) == (1, [], [False])
    assert not any(name.startswith("decap.") for name in decoder.counters.values)


# -- an HTTP connection's next requests in the compiled decode call -------------------------------

_REQUESTS = [
    b"GET /a?x=1 HTTP/1.1\r\nHost: tracker.example\r\n\r\n",
    b"GET /b HTTP/1.1\r\nHost: Portal.Example.org:8080\r\nAccept: */*\r\n\r\n",
    b"POST /collect HTTP/1.1\r\nHost: t.example\r\nContent-Length: 11\r\n\r\nname=Alice&",
    b"POST /c HTTP/1.1\r\nHost: t.example\r\nContent-Length: 0\r\n\r\n",
    b"POST /chunked HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /e HTTP/1.1\r\nHost: t.example\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"\r\nGET /after-blank HTTP/1.1\r\nHost: t.example\r\n\r\n",
    b"get /lower HTTP/1.1\r\nHost: t.example\r\n\r\n",
    b"CONNECT t.example:443 HTTP/1.1\r\nHost: t.example:443\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
]


@st.composite
def _http_connection(draw: st.DrawFn) -> list[tuple[int, int, bytes, float]]:
    """(flags, seq, payload, gap) of one connection: its SYN, then its requests' bytes cut into
    segments, some sent out of order, again or not at all, a FIN at the end or not."""
    isn = draw(st.sampled_from([1000, 0xFFFFFFF0]))
    data = b"".join(draw(st.lists(st.sampled_from(_REQUESTS), min_size=1, max_size=5)))
    cuts = sorted(draw(st.lists(st.integers(1, len(data) - 1), max_size=4, unique=True)))
    pieces = [(start, data[start:end]) for start, end in zip([0, *cuts], [*cuts, len(data)])]
    segments = [(_SYN, isn, b"", 0.0)]
    for at, piece in pieces:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            continue  # lost
        segment = (0x18, (isn + 1 + at) & 0xFFFFFFFF, piece, draw(st.sampled_from([0.0, 1.0, 100.0])))
        segments.append(segment)
        if roll == 1:
            segments.append(segment)  # sent again
        elif roll == 2 and len(segments) > 2:
            segments[-1], segments[-2] = segments[-2], segments[-1]
    if draw(st.booleans()):
        segments.append((0x11, (isn + 1 + len(data)) & 0xFFFFFFFF, b"", 0.0))
    return segments


def _http_decoder(kind: str, bounds: int, body_cap: int) -> TrafficDecoder:
    return _handshake_decoder(kind, bounds, DecodeSettings(http_body_cap=body_cap))


def _http_state(decoder: TrafficDecoder) -> tuple[Any, ...]:
    streams = []
    for key, stream in decoder.flows.streams.items():
        consumer = stream.consumer
        if isinstance(consumer, dispatch._UpgradeWatcher) and consumer.http is not None:
            consumer = consumer.http  # a request line with a method not known up front
        parser = getattr(consumer, "parser", None)
        streams.append((key, stream.next_seq, stream.pos, stream.last_ts, stream.done, stream.ooo,
                        type(consumer).__name__, repr(consumer.flow) if parser is not None else None,
                        parser and (parser._base, parser._scan_from, parser._state, bytes(parser._buf), parser._pos,
                                    parser.failed, parser._ready)))
    return (list(map(repr, decoder.records)), dict(decoder.counters.values), list(decoder.flows.half_open.items()),
            list(decoder.flows.finished.items()), streams)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2), st.sampled_from([40000, 40001]), _http_connection()), min_size=1,
                max_size=3),
       st.integers(1, 4), st.sampled_from([0, 4, 65_536]), st.booleans(), st.randoms(use_true_random=False))
def test_an_http_connections_next_requests_leave_what_the_python_code_leaves(
        connections: list, bounds: int, body_cap: int, v6: bool, shuffle: Any) -> None:
    """Connections interleaved, on port 80 or 8080: records, counters and every stream's and parser's
    state equal after each packet and at the end, for the compiled step, its reference and no step."""
    packets = [(client, sport, segment) for client, sport, segments in connections for segment in segments]
    if len(connections) > 1:  # interleaved, each connection's own order kept
        order = sorted(range(len(packets)), key=lambda index: (shuffle.random(), index))
        queues = [[p for p in packets if p[:2] == c[:2]] for c in connections]
        packets = [queues[i].pop(0) for i in sorted((i for i, q in enumerate(queues) for _ in q),
                                                    key=lambda i: order[i % len(order)])]
    decoders = [_http_decoder(kind, bounds, body_cap) for kind in ("compiled", "stepped", "reference", "python")]
    clock = 1_700_000_000.0
    for client, sport, (flags, seq, payload, gap) in packets:
        clock += gap
        frame = _frame(client, sport, 8080 if client == 2 else 80, flags, seq, payload, v6, False)
        states = []
        for decoder in decoders:
            decoder.feed(clock, 1, frame)
            states.append(_http_state(decoder))
        assert all(state == states[0] for state in states)
    for decoder in decoders:
        decoder.finish()
    states = [_http_state(decoder) for decoder in decoders]
    assert all(state == states[0] for state in states)


def test_an_http_connections_whole_requests_never_reach_feed_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole requests, in the first segment after the SYN and in later ones, are taken in the
    decode call; a request cut over two segments goes the Python way."""
    decoder = TrafficDecoder()
    back: list[Any] = []
    feed_found = decoder.feed_found
    monkeypatch.setattr(decoder, "feed_found", lambda *args: (back.append(args[3]), feed_found(*args)))
    first, second, third = _REQUESTS[0], _REQUESTS[1] + _REQUESTS[2], _REQUESTS[3]
    seq = 1001
    segments = [(_SYN, 1000, b""), (0x18, seq, first), (0x18, seq + len(first), second),
                (0x18, seq + len(first + second), third[:10]), (0x18, seq + len(first + second) + 10, third[10:]),
                (0x18, seq + len(first + second + third), _REQUESTS[0])]
    for at, (flags, number, payload) in enumerate(segments):
        decoder.feed(1_700_000_000.0 + at, 1, _frame(1, 40000, 80, flags, number, payload, False, False))
    assert [len(found) for found in back] == [8, 8]  # the cut request's two pieces
    assert [record.target for record in decoder.records] == ["/a?x=1", "/b", "/collect", "/c", "/a?x=1"]
    assert decoder.counters.values["records.http"] == 5
