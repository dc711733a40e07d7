"""A frame the compiled decode declines (a tunnelled packet) taken by the tunnelled steps in the
same compiled call (declined_decoder) leaves the decoder as TrafficDecoder.declined_step_py and
the earlier path through feed_found leave it: the same records, counters, flow tables, pending
DNS queries, tunnel table and DNS answers learned, packet by packet and at the end, with and
without a replay worker's routing of the other worker's DNS answers."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.capture.workers import route_of_py
from sensor.decode import dispatch
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.flows import FlowTable
from tests.test_handshakes import _PAYLOADS, _SYN, _frame
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
