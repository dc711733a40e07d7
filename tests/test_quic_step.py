"""Datagrams that start with a QUIC Initial, taken in the compiled handshake step where the expiry of
waiting DNS queries is not due (a server's to a client the tracker knows counted, any other fed to the
tracker, its ClientHello emitted): the decoder is left as handshake_py and the Python feed_decoded leave
it, datagram by datagram."""
from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode import dispatch
from sensor.decode.dispatch import TrafficDecoder
from tests.test_handshakes import _decoder
from tests.test_quic import RFC9001_CLIENT_INITIAL

pytestmark = pytest.mark.skipif(dispatch._handshake_decoder is None, reason="compiled extension not built")

_PAYLOADS = {
    "initial": RFC9001_CLIENT_INITIAL,
    "damaged": RFC9001_CLIENT_INITIAL[:60] + bytes(len(RFC9001_CLIENT_INITIAL) - 60),
    "v2-looking": b"\xd0\x6b\x33\x43\xcf\x08" + bytes(40),  # a QUIC v2 Initial's header, nothing that opens
    "short": b"\x40" + bytes(30),  # a short header
    "plain": b"hello",
}


def _udp(client: int, sport: int, dport: int, payload: bytes, reply: bool) -> bytes:
    udp = struct.pack("!HHHH", dport if reply else sport, sport if reply else dport, 8 + len(payload), 0) + payload
    a, b = bytes([10, 0, 0, client]), bytes([192, 0, 2, 1])
    src, dst = (b, a) if reply else (a, b)
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0) + src + dst
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def _state(decoder: TrafficDecoder) -> tuple[Any, ...]:
    connections = [(key, conn.finished, conn.last_ts) for key, conn in decoder.quic._connections.items()]
    return list(map(repr, decoder.records)), dict(decoder.counters.values), connections


_datagram = st.tuples(
    st.integers(1, 2),  # client
    st.sampled_from([50000, 50001]),  # client port
    st.sampled_from([443, 53]),  # server port
    st.sampled_from(sorted(_PAYLOADS)),
    st.booleans(),  # the server's
    st.sampled_from([0.0, 0.0, 0.5, 3.0, 11.0, 200.0]),  # seconds: past the expiries too
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_datagram, max_size=30))
def test_server_datagrams_leave_what_the_python_code_leaves(datagrams: list) -> None:
    decoders = [_decoder(kind, 4) for kind in ("compiled", "stepped", "reference", "python")]
    clock = 1_700_000_000.0
    for client, sport, dport, payload, reply, gap in datagrams:
        clock += gap
        frame = _udp(client, sport, dport, _PAYLOADS[payload], reply)
        states = []
        for decoder in decoders:
            decoder.feed(clock, 1, frame)
            states.append(_state(decoder))
        assert all(state == states[0] for state in states[1:])


def test_initials_are_taken_in_the_decode_call() -> None:
    decoder = _decoder("compiled", 4)
    decoder.feed(1_699_999_999.5, 1, _udp(2, 50000, 443, b"plain", False))  # the DNS expiry looked at
    client = _udp(1, 50000, 443, RFC9001_CLIENT_INITIAL, False)
    assert decoder._decode(1, client, 1_700_000_000.0) == ()  # no feed_found for it
    assert decoder.counters.get("quic.hellos") == decoder.counters.get("records.quic") == 1
    (hello,) = decoder.records
    assert (hello.protocol, hello.server_name, hello.flow.transport) == ("quic", "example.com", "udp")
    server = _udp(1, 50000, 443, RFC9001_CLIENT_INITIAL, True)
    assert decoder._decode(1, server, 1_700_000_000.1) == ()
    assert decoder.counters.get("quic.server_datagrams") == 1
    assert decoder._decode(1, server, 1_700_000_020.0) != ()  # the DNS expiry is due: the Python code's
