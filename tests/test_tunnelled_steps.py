"""Tunnelled packets (VXLAN, ERSPAN, GRE) through the compiled decode's steps (the compiled
mirrored_found or TrafficDecoder.declined_py wrapped by the handshake and DNS steps) leave the decoder as
feed_decoded and the pure-Python decode leave it: the same records, counters, flow tables,
pending DNS queries, tunnel table and DNS answers learned, packet by packet and at the end."""
from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode import dispatch
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.flows import FlowTable
from tests.test_handshakes import _PAYLOADS, _SYN, _frame

pytestmark = pytest.mark.skipif(dispatch._handshake_decoder is None or dispatch._dns_step_decoder is None,
                                reason="compiled extension not built")


def _dns(client: int, sport: int, ident: int, name: bytes, answer: bool, damaged: bool) -> bytes:
    """An Ethernet frame of a DNS query for `name` (an A record), or its answer."""
    qname = b"".join(bytes([len(part)]) + part for part in name.split(b".")) + b"\x00"
    flags, counts = (0x8180, (1, 1, 0, 0)) if answer else (0x0100, (1, 0, 0, 0))
    message = struct.pack("!HH4H", ident, flags, *counts) + qname + b"\x00\x01\x00\x01"
    if answer:
        message += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xc0\x00\x02\x07"
    if damaged:
        message = message[:15]
    ports = (53, sport) if answer else (sport, 53)
    udp = struct.pack("!HHHH", *ports, 8 + len(message), 0) + message
    a, b = bytes([10, 0, 0, client]), bytes([192, 0, 2, 53])
    src, dst = (b, a) if answer else (a, b)
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0) + src + dst
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def _outer_ip(proto: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0) + bytes([198, 51, 100, 1])
    return b"\x06" * 6 + b"\x08" * 6 + b"\x08\x00" + ip + bytes([198, 51, 100, 2]) + payload


def _wrapped(kind: str, inner: bytes) -> bytes:
    """`inner` (an Ethernet frame) in a mirror tunnel (VXLAN 4242 or 7, ERSPAN) or GRE; "plain": as it is."""
    if kind in ("vxlan", "vxlan7"):
        vxlan = b"\x08\x00\x00\x00" + ((4242 if kind == "vxlan" else 7) << 8).to_bytes(4, "big")
        return _outer_ip(17, struct.pack("!HHHH", 50000, 4789, 16 + len(inner), 0) + vxlan + inner)
    if kind == "erspan":  # ERSPAN type II: GRE with a sequence number, then its 8-byte header
        return _outer_ip(47, b"\x10\x00\x88\xbe" + b"\x00\x00\x00\x01" + b"\x10\x01\x00\x07\x00\x00\x00\x00" + inner)
    if kind == "gre":  # GRE carrying the IP packet itself
        return _outer_ip(47, b"\x00\x00\x08\x00" + inner[14:])
    return inner


_tcp = st.tuples(
    st.just("tcp"),
    st.integers(1, 3),  # client
    st.sampled_from([40000, 40001]),  # client port
    st.sampled_from([443, 80, 53]),  # server port
    st.sampled_from([_SYN, _SYN | 0x10, 0x18, 0x11, 0x04]),
    st.sampled_from([1000, 1001, 1002]),  # seq: the segment after a SYN at 1000 starts at 1001
    st.sampled_from(sorted(_PAYLOADS)),
    st.booleans(),  # the server's side
)
_udp = st.tuples(
    st.just("dns"),
    st.integers(1, 3),  # client
    st.sampled_from([40000, 40001]),
    st.sampled_from([7, 8]),  # id
    st.sampled_from([b"tracker.example", b"Portal.Example.org"]),
    st.booleans(),  # the answer
    st.integers(0, 9).map(lambda roll: roll == 0),  # damaged
)
_packet = st.tuples(st.sampled_from(["vxlan", "vxlan", "vxlan7", "erspan", "gre", "plain"]), st.one_of(_tcp, _udp),
                    st.floats(0, 200))


def _inner(spec: tuple[Any, ...]) -> bytes:
    if spec[0] == "dns":
        return _dns(*spec[1:])
    _, client, sport, dport, flags, seq, payload, reply = spec
    return _frame(client, sport, dport, flags, seq, _PAYLOADS[payload], False, reply)


def _decoder(kind: str, bounds: int, learned: list[Any]) -> TrafficDecoder:
    """"compiled": tunnelled packets through mirrored_found and the compiled steps; "stepped": through
    declined_py and the compiled steps; "python": through feed_decoded; "pure": no compiled decode
    at all. Flow tables with small bounds."""
    decoder = TrafficDecoder()
    decoder.learn_dns = lambda ts, message, counted: learned.append((ts, message, counted))
    decoder.flows = FlowTable(decoder.counters, decoder._classify, max_streams=bounds, idle_timeout=60.0,
                              watch=decoder._watch, max_half_open=bounds, max_finished=bounds)
    decoder._decode = decoder._with_steps(dispatch._share_decoder(-1, None, 0.0, 0.0))
    decoder._tunnelled = (decoder._with_steps(decoder._declined_decode()) if kind == "compiled"
                          else decoder._with_steps(decoder.declined_py) if kind == "stepped" else None)
    if kind == "pure":
        decoder._decode = None
    return decoder


def _state(decoder: TrafficDecoder, learned: list[Any]) -> tuple[Any, ...]:
    flows = decoder.flows
    streams = [(key, s.next_seq, s.pos, s.last_ts, s.done, type(s.consumer).__name__) for key, s in flows.streams.items()]
    return (list(map(repr, decoder.records)), dict(decoder.counters.values), list(flows.half_open.items()),
            list(flows.finished.items()), streams, list(decoder.dns._pending.items()),
            list(decoder.packets.tunnels.items()), [(ts, repr(message), counted) for ts, message, counted in learned])


@settings(max_examples=300, deadline=None)
@given(st.lists(_packet, max_size=40), st.integers(1, 4))
def test_tunnelled_packets_through_the_steps_leave_what_the_python_code_leaves(packets: list, bounds: int) -> None:
    learned: list[list[Any]] = [[], [], [], []]
    decoders = [_decoder(kind, bounds, into) for kind, into in zip(("compiled", "stepped", "python", "pure"), learned)]
    clock = 1_700_000_000.0
    for tunnel, spec, gap in packets:
        clock += gap
        frame = _wrapped(tunnel, _inner(spec))
        states = []
        for decoder, into in zip(decoders, learned):
            decoder.feed(clock, 1, frame)
            states.append(_state(decoder, into))
        assert states[0] == states[1] == states[2] == states[3]
    for decoder in decoders:
        decoder.finish()
    states = [_state(decoder, into) for decoder, into in zip(decoders, learned)]
    assert states[0] == states[1] == states[2] == states[3]


def test_a_tunnelled_query_and_answer_never_reach_feed_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DNS step pairs them and a tunnelled SYN and whole hello go to the handshake step."""
    decoder = TrafficDecoder()
    monkeypatch.setattr(decoder, "feed_decoded", None)
    for at, inner in enumerate([_dns(1, 40000, 7, b"tracker.example", False, False),
                                _dns(1, 40000, 7, b"tracker.example", True, False),
                                _frame(1, 40000, 443, _SYN, 1000, b"", False, False),
                                _frame(1, 40000, 443, 0x18, 1001, _PAYLOADS["hello"], False, False)]):
        decoder.feed(1_700_000_000.0 + at, 1, _wrapped("vxlan", inner))
    assert [type(record).__name__ for record in decoder.records] == ["DnsQuery", "TlsHello"]
    assert decoder.records[1].flow.dst_port == 443
    assert decoder.counters.values["decap.vxlan"] == 4
    assert len(decoder.packets.tunnels) == 3  # each direction of a flow is its own key


@pytest.mark.skipif(dispatch._mirrored_found is None, reason="compiled extension not built")
def test_new_flows_of_a_known_tunnel_are_taken_in_the_compiled_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a tunnel's first flow is remembered, its next flows, lookups and hellos never reach
    the Python decoder, and are remembered with the same tunnel."""
    decoder = TrafficDecoder()
    decoder.feed(1_700_000_000.0, 1, _wrapped("vxlan", _dns(1, 40000, 7, b"tracker.example", False, False)))
    decoder.feed(1_700_000_000.0, 1, _wrapped("erspan", _dns(1, 40002, 9, b"tracker.example", False, False)))
    monkeypatch.setattr(decoder.packets, "decode_declined", None)
    for at, (tunnel, inner) in enumerate([("vxlan", _dns(1, 40000, 7, b"tracker.example", True, False)),
                                          ("erspan", _dns(2, 40001, 8, b"portal.example.org", False, False)),
                                          ("vxlan", _frame(3, 40000, 443, _SYN, 1000, b"", False, False)),
                                          ("vxlan", _frame(3, 40000, 443, 0x18, 1001, _PAYLOADS["hello"], False,
                                                           False))]):
        decoder.feed(1_700_000_001.0 + at, 1, _wrapped(tunnel, inner))
    assert [type(record).__name__ for record in decoder.records] == ["DnsQuery", "TlsHello"]
    assert decoder.counters.values["decap.vxlan"] == 4
    assert decoder.counters.values["decap.gre"] == decoder.counters.values["decap.erspan"] == 2
    vxlan = {"type": "vxlan", "source_ip": "198.51.100.1", "destination_ip": "198.51.100.2", "id": 4242}
    gre = {"type": "gre", "source_ip": "198.51.100.1", "destination_ip": "198.51.100.2"}
    # the two queries' flows, the answer's, the second query's (ERSPAN again), the connection's
    assert [value[0] for value, _ in decoder.packets.tunnels.values()] == [vxlan, gre, vxlan, gre, vxlan]
