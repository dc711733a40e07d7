"""A DNS datagram taken in the compiled decode call (dns_step_decoder): counted, paired into the
records, learned by the attribution cache and the waiting queries' expiry looked at as
TrafficDecoder.datagram_py (feed's branch for a datagram) does it, for any sequence of queries,
answers, retransmissions, evictions and sweeps; another worker's answers left to the Python code."""
from __future__ import annotations

import struct
from socket import inet_aton

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.capture import prefilter
from sensor.decode import dispatch
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.dns import DnsTransactions
from sensor.enrich.dnscache import DnsCache

if dispatch._dns_step_decoder is None or dispatch._share_decoder is None:
    pytest.skip("compiled extension not built", allow_module_level=True)

CLIENTS, RESOLVER = ["10.20.0.7", "10.20.0.8"], "10.0.0.53"
# plain, capitals, a CNAME target, a name the compiled parser leaves to Python
NAMES = [b"\x07example\x03com\x00", b"\x03CDN\x07Example\x03net\x00", b"\x03cdn\x07example\x03net\x00",
         b"\x03x\xc3\xa9\x03org\x00"]


def _dns(ident: int, flags: int, questions: list[int], answers: list[tuple[int, int, int, bytes]]) -> bytes:
    """A message with `questions` (indexes into NAMES) and `answers` as (owner, type, ttl, rdata);
    owner -1 points at the first question's name."""
    body = b"".join(NAMES[index] + struct.pack("!HH", 1, 1) for index in questions)
    for owner, kind, ttl, rdata in answers:
        body += (NAMES[owner] if owner >= 0 else b"\xc0\x0c") + struct.pack("!HHIH", kind, 1, ttl, len(rdata)) + rdata
    return struct.pack("!HHHHHH", ident, flags, len(questions), len(answers), 0, 0) + body


def _frame(src: str, dst: str, sport: int, dport: int, message: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(message), 0) + message
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, inet_aton(src), inet_aton(dst))
    return bytes(12) + b"\x08\x00" + ip + udp


_answer = st.one_of(
    st.tuples(st.sampled_from([-1, -1, 0, 2]), st.just(1), st.sampled_from([0, 59, 300]),
              st.sampled_from([b"\xcb\x00\x71\x05", b"\xcb\x00\x71\x06"])),
    st.tuples(st.sampled_from([-1, 2]), st.just(28), st.integers(0, 200_000), st.just(b"\x20\x01" + bytes(14))),
    st.tuples(st.sampled_from([-1, 1]), st.just(5), st.integers(0, 100), st.sampled_from(NAMES[1:3])),
)


@st.composite
def exchanges(draw: st.DrawFn) -> list[tuple[float, bytes]]:
    """Queries and responses between two clients and a resolver over a few seconds: ids from a
    small set (matches, retransmissions, unmatched answers), one or two questions, some cut short."""
    packets, ts = [], 0.0
    for _ in range(draw(st.integers(1, 14))):
        ts += draw(st.sampled_from([0.0, 0.01, 0.4, 1.5, 7.0, 70.0]))
        client, ident = draw(st.sampled_from(CLIENTS)), draw(st.sampled_from([1, 1, 2, 3]))
        questions = draw(st.sampled_from([[0], [0], [1], [2], [3], [0, 1]]))
        if draw(st.booleans()):
            message = _dns(ident, 0x0100, questions, [])
            frame = _frame(client, RESOLVER, 40000, 53, message)
        else:
            message = _dns(ident, draw(st.sampled_from([0x8180, 0x8180, 0x8183])), questions,
                           draw(st.lists(_answer, max_size=4)))
            frame = _frame(RESOLVER, client, 53, 40000, message)
        if draw(st.sampled_from([False] * 9 + [True])):
            frame = frame[: draw(st.integers(14, len(frame)))]
        packets.append((ts, frame))
    return packets


def _decoder(compiled: bool, max_pending: int, max_entries: int, share: bool,
             plain_learn: bool) -> tuple[TrafficDecoder, DnsCache, list]:
    decoder, cache, learned = TrafficDecoder(), DnsCache(max_entries=max_entries), []
    decoder.dns = DnsTransactions(timeout=2.0, max_pending=max_pending, counters=decoder.counters)
    decoder._pair_dns = decoder.dns.pairing()
    if plain_learn:  # a learn_dns that is no DnsCache's: called as it is
        decoder.learn_dns = lambda ts, message, counted: learned.append((ts, message, counted))
    else:
        decoder.learn_dns = cache.learn
    if share:  # worker 0 of two, its cache not handed over: the other's answers reach the Python code
        decoder.share(0, prefilter.route_of)
    decode = dispatch._share_decoder(-1, None, 0.0, 0.0)
    decoder._decode = decoder._with_steps(decode) if compiled else decoder._with_handshakes(decode)
    return decoder, cache, learned


def _state(decoder: TrafficDecoder, cache: DnsCache, learned: list) -> tuple:
    return (list(map(repr, decoder.records)), dict(decoder.counters.values), list(decoder.dns._pending.items()),
            list(cache._entries.items()), dict(cache.counters.values), cache._sweep_at, decoder._next_dns_expiry,
            decoder.shared_frames, decoder.shared_bytes, [(ts, repr(message), counted) for ts, message, counted in learned],
            None if decoder._side is None else dict(decoder._side.counters.values))


@settings(max_examples=300, deadline=None)
@given(exchanges(), st.integers(1, 3), st.integers(1, 4), st.booleans(), st.booleans())
def test_the_compiled_step_takes_datagrams_as_feed_does(packets, max_pending, max_entries, share, plain_learn) -> None:
    decoders = [_decoder(compiled, max_pending, max_entries, share, plain_learn) for compiled in (True, False)]
    for ts, frame in packets:
        for decoder, _cache, _learned in decoders:
            decoder.feed(ts, 1, frame)
        assert _state(*decoders[0]) == _state(*decoders[1])
    for decoder, _cache, _learned in decoders:
        decoder.finish()
    assert _state(*decoders[0]) == _state(*decoders[1])


def test_a_query_and_its_answer_never_reach_the_python_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common datagrams are answered () by the decode and learned in C: datagram_py is not called."""
    called = []
    monkeypatch.setattr(TrafficDecoder, "datagram_py", lambda *args: called.append(args))
    decoder, cache = TrafficDecoder(), DnsCache()
    decoder.learn_dns = cache.learn
    query = _frame(CLIENTS[0], RESOLVER, 40000, 53, _dns(7, 0x0100, [0], []))
    answer = _frame(RESOLVER, CLIENTS[0], 53, 40000, _dns(7, 0x8180, [0], [(-1, 1, 300, b"\xcb\x00\x71\x05")]))
    cache.observe(0.5, "warm.example", ())  # the first sweep done
    assert decoder._decode(1, query, 1.0) == ()
    decoder.feed(1.2, 1, answer)
    assert called == []
    assert [type(record).__name__ for record in decoder.records] == ["DnsQuery"]
    assert decoder.records[0].answers[0].data == "203.0.113.5"
    assert cache.names_for("203.0.113.5", 2.0) == ("example.com",)
    assert decoder.counters.values["dns.messages"] == 2 and decoder.counters.values["records.dns"] == 1
    assert cache.counters.values["dnscache.stored"] == 1


def test_another_workers_answer_is_left_to_the_python_code() -> None:
    """Worker 0 handed worker 1's client's answer (its cache not handed over): declined by the step,
    learned uncounted by feed's branch."""
    decoder, cache = TrafficDecoder(), DnsCache()
    decoder.learn_dns = cache.learn
    decoder.share(0, prefilter.route_of)
    frames = [_frame(RESOLVER, client, 53, 40000, _dns(9, 0x8180, [0], [(-1, 1, 300, b"\xcb\x00\x71\x05")]))
              for client in CLIENTS]
    routes = [prefilter.route_of(1, frame) for frame in frames]
    other = frames[routes.index(decoder._shared_route)]
    found = decoder._decode(1, other, 3.0)
    assert found is not None and len(found) == 5 and found[4] is not None
    decoder.feed(3.0, 1, other)
    assert decoder.shared_frames == 1 and "dns.messages" not in decoder.counters.values
    assert "dnscache.stored" not in cache.counters.values and len(cache) == 1
