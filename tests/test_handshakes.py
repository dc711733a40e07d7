"""The compiled decode that takes a TCP connection's SYN and its first ClientHello, whole or split
over in-order segments (sensor/_fast/handshake.c), leaves the decoder as the Python code leaves
it: the same records, counters and flow tables (each stream's bytes and sequence numbers too),
packet by packet, for connections that open, retransmit, split their hello, send something else,
close or idle out mid-hello, or fill the tables to their bounds."""
from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode import dispatch
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.flows import FlowTable
from sensor.decode.settings import DecodeSettings
from sensor.records import TlsHello

pytestmark = pytest.mark.skipif(dispatch._handshake_decoder is None, reason="compiled extension not built")

_SYN, _ACK, _FIN, _RST, _PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def _extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _hello_record(name: bytes, tls13: bool) -> bytes:
    server_name = b"\x00" + len(name).to_bytes(2, "big") + name
    extensions = _extension(0, len(server_name).to_bytes(2, "big") + server_name) + _extension(16, b"\x00\x03\x02h2")
    if tls13:
        extensions += _extension(43, b"\x02\x03\x04")
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


_PAYLOADS = {
    "none": b"",
    "hello": _hello_record(b"example.org", tls13=True),
    "hello12": _hello_record(b"tracker.example", tls13=False),
    "split": _hello_record(b"example.net", tls13=True)[:40],  # a hello's first part: its record runs on
    "http": b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "bad": b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a handshake record, not a ClientHello
}


def _frame(client: int, sport: int, dport: int, flags: int, seq: int, payload: bytes, v6: bool, reply: bool) -> bytes:
    """An Ethernet frame of a TCP segment between client `client` and one server."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload
    if reply:
        tcp = struct.pack("!HH", dport, sport) + tcp[4:]
    if v6:
        a, b = bytes(15) + bytes([client]), bytes(15) + b"\xc8"
        src, dst = (b, a) if reply else (a, b)
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst
        return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + tcp
    a, b = bytes([10, 0, 0, client]), bytes([192, 0, 2, 1])
    src, dst = (b, a) if reply else (a, b)
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0) + src + dst
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


_packet = st.tuples(
    st.integers(1, 3),  # client
    st.sampled_from([40000, 40001]),  # client port
    st.sampled_from([443, 8443, 53]),  # server port
    st.sampled_from([_SYN, _SYN | _ACK, _ACK | _PSH, _ACK | _FIN, _RST, _SYN | _FIN]),
    st.sampled_from([1000, 1001, 1002, 0xFFFFFFFF]),  # seq: the segment after a SYN at 1000 starts at 1001
    st.sampled_from(sorted(_PAYLOADS)),
    st.booleans(),  # IPv6
    st.booleans(),  # the server's side
    st.floats(0, 400),  # seconds: enough for the idle sweeps to run
)


def _decoder(kind: str, bounds: int, decode_settings: DecodeSettings | None = None) -> TrafficDecoder:
    """A decoder whose flow table has small bounds: `kind` is "compiled" (handshake_decoder),
    "stepped" (the tunnelled steps too), "reference" (handshake_py around the same decode) or
    "python" (no handshake step: feed_decoded)."""
    decoder = TrafficDecoder(settings=decode_settings)
    decoder.flows = FlowTable(decoder.counters, decoder._classify, max_streams=bounds, idle_timeout=60.0,
                              watch=decoder._watch, max_half_open=bounds, max_finished=bounds)
    decode = dispatch._share_decoder(-1, None, 0.0, 0.0)
    if kind == "compiled":
        decoder._decode = decoder._with_handshakes(decode)
    elif kind == "stepped":  # and the records of its answers appended in the compiled call too
        decoder._decode = decoder._with_steps(decode)
    elif kind == "reference":
        decoder._decode = lambda linktype, frame, ts: decoder.handshake_py(decode(linktype, frame, ts), ts)
    else:
        decoder._decode = decode
    return decoder


def _state(decoder: TrafficDecoder) -> tuple[Any, ...]:
    flows = decoder.flows
    streams = [(key, s.next_seq, s.pos, s.last_ts, s.queued, s.done, s.ooo, s.ooo_bytes, type(s.consumer).__name__,
                getattr(s.consumer, "buf", None)) for key, s in flows.streams.items()]
    return (list(map(repr, decoder.records)), dict(decoder.counters.values), list(flows.half_open.items()),
            list(flows.finished.items()), streams, list(flows.unanchored), list(flows._holding),
            flows.held_bytes, flows.held_segments)


@settings(max_examples=300, deadline=None)

def _feed_alike(decoders: list[TrafficDecoder], ts: float, frame: bytes) -> None:
    """Feed `frame` to every decoder: each is left as the others are."""
    states = []
    for decoder in decoders:
        decoder.feed(ts, 1, frame)
        states.append(_state(decoder))
    assert all(state == states[0] for state in states[1:])


def _finish_alike(decoders: list[TrafficDecoder]) -> None:
    for decoder in decoders:
        decoder.finish()
    states = [_state(decoder) for decoder in decoders]
    assert all(state == states[0] for state in states[1:])


@given(st.lists(_packet, max_size=40), st.integers(1, 4))
def test_compiled_handshakes_leave_what_the_python_code_leaves(packets: list, bounds: int) -> None:
    decoders = [_decoder(kind, bounds) for kind in ("compiled", "stepped", "reference", "python")]
    clock = 1_700_000_000.0
    for client, sport, dport, flags, seq, payload, v6, reply, gap in packets:
        clock += gap
        frame = _frame(client, sport, dport, flags, seq, _PAYLOADS[payload], v6, reply)
        _feed_alike(decoders, clock, frame)
    _finish_alike(decoders)


def _answers(decoder: TrafficDecoder, frames: list[bytes]) -> list[Any]:
    decode = decoder._decode
    return [decode(1, frame, 1_700_000_000.0 + i) for i, frame in enumerate(frames)]


def test_a_syn_and_its_whole_hello_are_taken_in_the_decode_call() -> None:
    """The common connection never reaches the Python flow code: () for the SYN, the record for
    the hello; a retransmitted hello and, for a replay worker, DNS's port are left to it."""
    hello = _PAYLOADS["hello"]
    frames = [
        _frame(1, 40000, 443, _SYN, 1000, b"", False, False),
        _frame(1, 40000, 443, _SYN | _ACK, 5000, b"", False, True),
        _frame(1, 40000, 443, _ACK | _PSH, 1001, hello, False, False),
        _frame(1, 40000, 443, _ACK | _PSH, 1001, hello, False, False),  # retransmitted: the finished key's
        _frame(2, 40000, 443, _SYN, 1000, b"", True, False),
        _frame(2, 40000, 443, _ACK | _PSH, 1001, _PAYLOADS["split"], True, False),
        _frame(3, 40000, 53, _SYN, 1000, b"", False, False),
    ]
    decoder = _decoder("compiled", 100)
    answers = _answers(decoder, frames)
    assert answers[0] == answers[1] == ()
    assert isinstance(answers[2], tuple) and len(answers[2]) == 1
    record = answers[2][0]
    assert isinstance(record, TlsHello)
    assert (record.flow.src_ip, record.flow.src_port, record.flow.dst_ip, record.flow.dst_port) == (
        "10.0.0.1", 40000, "192.0.2.1", 443)
    assert (record.protocol, record.server_name, record.alpn, record.version) == ("tls", "example.org", ("h2",), "1.3")
    assert answers[4] == ()
    assert answers[5] == (None,)  # the start of a split hello: its stream opened as FlowTable.segment opens it
    assert len(answers[3]) == 8
    assert answers[6] == ()  # DNS's port: a SYN taken too, where no other replay worker's packets may come
    assert decoder.counters.values["tcp.streams"] == 4
    decoder._route_of = lambda linktype, frame: 0  # a replay worker's: feed_found asks whose it is
    assert len(_answers(decoder, [_frame(4, 40000, 53, _SYN, 1000, b"", False, False)])[0]) == 8
    assert list(decoder.flows.finished) == [(bytes([10, 0, 0, 1]), bytes([192, 0, 2, 1]), 40000, 443)]


def test_a_table_at_its_bound_is_left_to_the_python_code() -> None:
    decoder = _decoder("compiled", 1)
    answers = _answers(decoder, [_frame(1, 40000, 443, _SYN, 1000, b"", False, False),
                                 _frame(2, 40000, 443, _SYN, 1000, b"", False, False)])
    assert answers[0] == ()
    assert len(answers[1]) == 8  # a new SYN would evict the first: FlowTable.syn does that, and counts it
    assert len(decoder.flows.half_open) == 1


# Split hellos: a ClientHello cut into 2-3 segments (in order, out of order, retransmitted, merged
# into overlaps) on connections interleaved with each other, FIN/RST mid-hello, idle gaps past the
# flow timeout and tables bounded to 1-4 entries; each decoder ends with finish() (held partials).
def _two_records(record: bytes) -> bytes:
    """The handshake message of `record` carried by two records."""
    message = record[5:]
    return b"".join(b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part for part in (message[:30], message[30:]))


_WHOLE = _hello_record(b"split.example.org", tls13=True)
_SPLIT_HELLOS = {
    "hello": _WHOLE,
    "hello12": _hello_record(b"a-much-longer-name.tracker.example", tls13=False),
    "records": _two_records(_WHOLE),  # the message over two records: the first whole in its segment
    "server": b"\x16\x03\x03\x00\x60\x02\x00\x00\x5c" + bytes(0x5C),  # a handshake record, no ClientHello
    "garbled": _WHOLE[:9] + b"\x03\x03" + b"\xff" * (len(_WHOLE) - 11),  # a ClientHello's header, no body
}
_ISNS = (1000, 0xFFFFFFF0)  # the SYN's sequence number: the hello's may wrap


def _pieces(hello: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    """(offset, bytes) of the segments `hello` is cut into."""
    points = [0, *sorted({min(max(cut, 1), len(hello) - 1) for cut in cuts}), len(hello)]
    return [(start, hello[start:end]) for start, end in zip(points, points[1:])]


_split_packet = st.tuples(
    st.integers(1, 2),  # client: 2 over IPv6
    st.sampled_from([40000, 40001]),  # client port
    st.sampled_from([_SYN, _SYN, _ACK | _PSH, _ACK | _PSH, _ACK | _PSH, _ACK | _PSH, _ACK | _FIN, _RST, _SYN | _ACK]),
    st.sampled_from(["piece0", "piece0", "piece1", "piece1", "piece2", "pieces01", "pieces12", "http", "none"]),
    st.sampled_from([False, False, False, True]),  # the server's side
    st.sampled_from([0.0, 0.0, 0.0, 0.5, 2.0, 30.0, 61.0, 150.0]),  # seconds: past the idle timeout (60) too
)


@settings(max_examples=400, deadline=None)
@given(st.data(), st.integers(1, 4), st.sampled_from(sorted(_SPLIT_HELLOS)),
       st.lists(st.integers(1, 400), min_size=1, max_size=2), st.sampled_from(_ISNS))
def test_split_hellos_leave_what_the_python_code_leaves(data: st.DataObject, bounds: int, hello: str, cuts: list[int],
                                                        isn: int) -> None:
    pieces = _pieces(_SPLIT_HELLOS[hello], cuts)
    # connections that open and send their hello in order, interleaved, then disturbed: segments
    # swapped, dropped or sent again, other packets (FIN, RST, the server's side, ...) in between
    connections = data.draw(st.lists(st.tuples(st.integers(1, 2), st.sampled_from([40000, 40001])),
                                     min_size=1, max_size=4))
    packets = [(client, sport, flags, what, False, 0.0) for step in range(4) for client, sport in connections
               for flags, what in [[(_SYN, "none"), (_ACK | _PSH, "piece0"), (_ACK | _PSH, "piece1"),
                                    (_ACK | _PSH, "piece2")][step]]]
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(packets) - 1))
        change = data.draw(st.sampled_from(["swap", "drop", "again"]))
        if change == "swap" and i + 1 < len(packets):
            packets[i], packets[i + 1] = packets[i + 1], packets[i]
        elif change == "drop":
            del packets[i]
        else:
            packets.insert(i, packets[i])
    for packet in data.draw(st.lists(_split_packet, max_size=8)):
        packets.insert(data.draw(st.integers(0, len(packets))), packet)
    decoders = [_decoder(kind, bounds) for kind in ("compiled", "stepped", "reference", "python")]
    clock = 1_700_000_000.0
    for client, sport, flags, what, reply, gap in packets:
        clock += gap
        seq, payload = isn, b""
        if what.startswith("piece"):
            first, last = int(what[-2] if what.startswith("pieces") else what[-1]), int(what[-1])
            if last >= len(pieces):
                continue
            seq = (isn + 1 + pieces[first][0]) % (1 << 32)
            payload = b"".join(piece for _, piece in pieces[first:last + 1])
        elif what == "http":
            seq, payload = (isn + 1) % (1 << 32), _PAYLOADS["http"]
        if flags & _SYN:
            seq, payload = isn, b""
        frame = _frame(client, sport, 443, flags, seq, payload, client == 2, reply)
        _feed_alike(decoders, clock, frame)
    _finish_alike(decoders)


def test_a_split_hello_is_taken_in_the_decode_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ClientHello in two and in three in-order segments never reaches FlowTable.segment: (None,)
    for each segment it runs on over, (TlsHello,) for the one completing it, stamped with its time."""
    hello = _SPLIT_HELLOS["hello12"]
    three = _pieces(hello, [20, 70])
    frames = [
        _frame(1, 40000, 443, _SYN, 1000, b"", False, False),
        _frame(1, 40000, 443, _ACK | _PSH, 1001, hello[:50], False, False),
        _frame(2, 40000, 443, _SYN, 1000, b"", True, False),
        _frame(2, 40000, 443, _ACK | _PSH, 1001 + three[0][0], three[0][1], True, False),
        _frame(1, 40000, 443, _ACK | _PSH, 1051, hello[50:], False, False),
        _frame(2, 40000, 443, _ACK | _PSH, 1001 + three[1][0], three[1][1], True, False),
        _frame(2, 40000, 443, _ACK | _PSH, 1001 + three[2][0], three[2][1], True, False),
    ]
    decoder = _decoder("compiled", 100)
    monkeypatch.setattr(decoder.flows, "segment", None)  # any call would fail
    answers = _answers(decoder, frames)
    assert answers[0] == answers[2] == ()
    assert answers[1] == answers[3] == answers[5] == (None,)
    for answer, ts, src_ip in ((answers[4], 1_700_000_004.0, "10.0.0.1"), (answers[6], 1_700_000_006.0, "::2")):
        assert len(answer) == 1 and isinstance(answer[0], TlsHello)
        record = answer[0]
        assert (record.ts, record.server_name, record.version) == (ts, "a-much-longer-name.tracker.example", "1.2")
        assert (record.flow.src_ip, record.flow.dst_port, record.flow.transport) == (src_ip, 443, "tcp")
    assert not decoder.flows.streams and len(decoder.flows.finished) == 2


def test_split_hellos_over_the_cap_and_out_of_order_are_left_to_the_python_code() -> None:
    """A hello whose bytes outgrow _HELLO_CAP (a message in one-byte records), a segment out of
    order and a retransmitted one: answered as decoded, and the tables end as the Python code leaves them."""
    message = _WHOLE[5:] + bytes(11_000)
    message = b"\x01" + (len(message) - 4).to_bytes(3, "big") + message[4:]
    tiny = b"".join(b"\x16\x03\x01\x00\x01" + message[i:i + 1] for i in range(len(message)))
    assert len(tiny) > dispatch._HELLO_CAP
    hello = _SPLIT_HELLOS["hello"]
    frames = [
        _frame(1, 40000, 443, _SYN, 1000, b"", False, False),
        _frame(1, 40000, 443, _ACK | _PSH, 1001, tiny[:40_000], False, False),
        _frame(1, 40000, 443, _ACK | _PSH, 41_001, tiny[40_000:-10], False, False),  # past the cap, not whole
        _frame(2, 40000, 443, _SYN, 1000, b"", False, False),
        _frame(2, 40000, 443, _ACK | _PSH, 1001, hello[:30], False, False),
        _frame(2, 40000, 443, _ACK | _PSH, 1001, hello[:30], False, False),  # retransmitted
        _frame(2, 40000, 443, _ACK | _PSH, 1061, hello[60:], False, False),  # ahead of a hole
        _frame(2, 40000, 443, _ACK | _PSH, 1031, hello[30:60], False, False),  # fills it: the held one drains
    ]
    decoders = [_decoder(kind, 100) for kind in ("compiled", "reference", "python")]
    answers: list[Any] = []
    decode = decoders[0]._decode
    decoders[0]._decode = lambda linktype, frame, ts: answers.append(decode(linktype, frame, ts)) or answers[-1]
    for i, frame in enumerate(frames):
        for decoder in decoders:
            decoder.feed(1_700_000_000.0 + i, 1, frame)
        assert _state(decoders[0]) == _state(decoders[1]) == _state(decoders[2])
    assert answers[1] == answers[4] == (None,)
    assert all(len(answers[i]) == 8 for i in (2, 5, 6, 7))
    counts = decoders[0].counters.values
    assert counts["tls.hello_too_large"] == 1 and counts["records.tls"] == 1
    assert counts["tcp.retransmissions"] == counts["tcp.out_of_order"] == 1
