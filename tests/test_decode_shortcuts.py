"""The decoder's shortcuts for the common records give what the general path gives: the same
records, in the same order, and the same counters."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.capture.pcap import CaptureFile
from sensor.decode import dispatch, http, quic, tls
from sensor.decode.dispatch import TrafficDecoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["standard", "dense"])
def bench_packets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list:
    sys.path[:0] = [str(REPO / "pcaps"), str(REPO / "bench")]
    import make_capture

    capture = tmp_path_factory.mktemp("shortcuts") / f"{request.param}.pcap"
    make_capture.generate(capture, 12_000, seed=7, mix=request.param)
    return [packet for batch in CaptureFile(capture).batches() for packet in batch]


def _decode(packets: list) -> tuple[list[str], dict[str, int]]:
    decoder = TrafficDecoder()
    records: list[str] = []
    for ts, linktype, frame in packets:
        decoder.feed(ts, linktype, frame)
        records += map(repr, decoder.records)
        decoder.records = []
    decoder.finish()
    records += map(repr, decoder.records)
    return records, dict(decoder.counters.values)


def test_shortcuts_give_the_general_paths_records(bench_packets: list, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = {"hellos": 0, "compiled": 0}
    whole_hello = TrafficDecoder._whole_hello
    with_handshakes = TrafficDecoder._with_handshakes

    def counting(self: TrafficDecoder, *args: object) -> object:
        took = whole_hello(self, *args)  # type: ignore[arg-type]
        taken["hellos"] += took is not None
        return took

    def counting_compiled(self: TrafficDecoder, decode: Callable) -> Callable:
        handshakes = with_handshakes(self, decode)

        def counted(*args: object) -> object:
            found = handshakes(*args)
            taken["compiled"] += found is not None and len(found) < 5
            return found
        return counted

    monkeypatch.setattr(TrafficDecoder, "_whole_hello", counting)
    monkeypatch.setattr(TrafficDecoder, "_with_handshakes", counting_compiled)
    compiled = _decode(bench_packets)
    if dispatch._handshake_decoder is not None:
        assert taken["compiled"] > 200
    with monkeypatch.context() as python:
        python.setattr(dispatch, "_handshake_decoder", None)  # the SYNs and hellos through feed_decoded
        fast = _decode(bench_packets)
    assert taken["hellos"] > 100
    with monkeypatch.context() as general:
        general.setattr(TrafficDecoder, "_whole_hello", lambda *args: None)
        general.setattr(dispatch, "_share_decoder", None)  # DNS through the flow-taking path
        general.setattr(http, "_http_head", None)
        general.setattr(quic, "_initial_keys", quic.initial_keys_py)
        general.setattr(quic, "_unprotect", quic.unprotect_py)
        general.setattr(quic, "_crypto_chunks", quic.crypto_chunks_py)
        slow = _decode(bench_packets)
    assert compiled[1] == fast[1] == slow[1]
    assert compiled[0] == fast[0] == slow[0]
    kinds = " ".join(fast[0])
    assert "TlsHello(" in kinds and "DnsQuery(" in kinds and "HttpRequest(" in kinds and "'quic'" in kinds


def _records(message: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos = 0
    for size in [*sizes, len(message)]:
        fragment = message[pos : pos + size]
        if fragment:
            yield b"\x16\x03\x01" + len(fragment).to_bytes(2, "big") + fragment
        pos += len(fragment)


def _extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _client_hello(name: bytes) -> bytes:
    server_name = b"\x00" + len(name).to_bytes(2, "big") + name
    extensions = (_extension(0, len(server_name).to_bytes(2, "big") + server_name)
                  + _extension(16, b"\x00\x03\x02h2") + _extension(43, b"\x02\x03\x04"))
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)
    return b"\x01" + len(body).to_bytes(3, "big") + body


_HELLO = _client_hello(b"example.co")


@settings(max_examples=300)
@given(st.lists(st.integers(1, 90), max_size=3), st.integers(0, 40), st.lists(st.tuples(st.integers(0, 200),
                                                                                       st.integers(0, 255)), max_size=2))
def test_whole_client_hello_is_parse_streams_done(sizes: list[int], cut: int, flips: list[tuple[int, int]]) -> None:
    segment = bytearray(b"".join(_records(_HELLO, sizes)))
    for position, value in flips:
        segment[position % len(segment)] = value
    segment = segment[: len(segment) - cut] if cut < len(segment) else segment
    hello = tls.whole_client_hello(bytes(segment))
    status, parsed = tls.parse_stream(bytes(segment))
    assert hello == (parsed if status is tls.TlsStatus.DONE else None)
    if hello is not None:  # the stream classifier would have picked the TLS consumer
        assert tls.looks_like_client_hello(bytes(segment))


def test_whole_client_hello_reads_a_hello() -> None:
    hello = tls.whole_client_hello(b"".join(_records(_HELLO, [])))
    assert hello is not None and hello.server_name == "example.co" and hello.alpn == ("h2",)
    assert tls.whole_client_hello(b"".join(_records(_HELLO, []))[:-1]) is None  # not whole yet


# -- DNS pairing: the compiled dns_pair (with its fallback) against DnsTransactions.on_datagram_py --

from sensor.decode.dns import DnsMessage, DnsTransactions  # noqa: E402
from sensor.records import Counters, DnsAnswer  # noqa: E402

_names = st.sampled_from(["example.com", "Example.COM", "a.b", "\u00e9.example", "x" * 60])
_message = st.builds(
    lambda response, ident, questions, rcode: DnsMessage(
        ident, response, 0, rcode, tuple(questions),
        (DnsAnswer(questions[0][0], "A", "192.0.2.1", 60),) if response and questions else ()),
    st.booleans(), st.integers(0, 3), st.lists(st.tuples(_names, st.sampled_from(["A", "AAAA"])), max_size=2),
    st.sampled_from(["NOERROR", "NXDOMAIN"]))
_datagram = st.tuples(st.floats(0, 100), st.sampled_from(["10.0.0.1", "fd00::1"]), st.sampled_from([5000, 5001]),
                      st.sampled_from(["10.0.0.53"]), st.just(53), _message)


def _pair_all(datagrams: list, compiled: bool) -> tuple[list[str], dict[str, int], list]:
    transactions = DnsTransactions(max_pending=3, counters=Counters())
    pair = transactions.pairing() if compiled else None
    records: list = []
    for ts, client, port, server, dns_port, message in datagrams:
        src, sport, dst, dport = (server, dns_port, client, port) if message.is_response else (client, port, server,
                                                                                                  dns_port)
        added = pair(ts, src, sport, dst, dport, message, records) if pair is not None else None
        before = len(records)
        if added is None:
            added = transactions.on_datagram_py(ts, src, sport, dst, dport, message, records)
        else:
            before -= added
        assert added == len(records) - before
    waiting = [(key, repr(query)) for key, query in transactions._pending.items()]
    records += transactions.flush()
    return [repr(r) for r in records], dict(transactions.counters.values), waiting


@pytest.mark.skipif(DnsTransactions(counters=Counters()).pairing() is None, reason="the compiled fast path is not built")
@settings(max_examples=400)
@given(st.lists(_datagram, max_size=12))
def test_compiled_pairing_equals_the_python_pairing(datagrams: list) -> None:
    assert _pair_all(datagrams, True) == _pair_all(datagrams, False)


@pytest.mark.skipif(DnsTransactions(counters=Counters()).pairing() is None, reason="the compiled fast path is not built")
def test_compiled_pairing_takes_the_common_messages() -> None:
    transactions = DnsTransactions(counters=Counters())
    pair = transactions.pairing()
    records: list = []
    query = DnsMessage(7, False, 0, "NOERROR", (("Example.com", "A"),), ())
    answer = DnsMessage(7, True, 0, "NOERROR", (("example.COM", "A"),), (DnsAnswer("example.com", "A", "192.0.2.1", 9),))
    assert pair(1.0, "10.0.0.1", 5000, "10.0.0.53", 53, query, records) == 0
    assert pair(1.5, "10.0.0.1", 5000, "10.0.0.53", 53, query, records) is None  # a retransmission: Python counts it
    assert pair(2.0, "10.0.0.53", 53, "10.0.0.1", 5000, answer, records) == 1
    assert pair(2.0, "10.0.0.53", 53, "10.0.0.1", 5000, answer, records) is None  # no query waits: Python counts it
    (record,) = records
    assert (record.ts, record.name, record.response_seen, record.answers) == (1.0, "Example.com", True, answer.answers)
    assert record.flow.src_ip == "10.0.0.1" and record.flow.transport == "udp" and not len(transactions)
