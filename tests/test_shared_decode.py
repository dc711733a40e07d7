"""The compiled decode of a replay worker handed the other worker's DNS answers (share_decoder):
it learns those answers into the attribution cache itself, as the Python path would, and
otherwise answers as decode_packet."""
from __future__ import annotations

import struct
from socket import inet_aton

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.capture import prefilter
from sensor.capture.workers import SHARED_ANSWER
from sensor.decode.dispatch import TrafficDecoder, shared_decode_py
from sensor.enrich.dnscache import DnsCache

if prefilter._select_pcap is None:
    pytest.skip("compiled extension not built", allow_module_level=True)
from sensor._fast import decode_packet  # noqa: E402 - the compiled decode it otherwise answers as

CLIENT_ODD, CLIENT_EVEN, RESOLVER = "10.20.0.7", "10.20.0.8", "10.0.0.53"
NAMES = [b"\x07example\x03com\x00", b"\x03CDN\x07Example\x03net\x00", b"\x03x\xc3\xa9\x03org\x00"]


def _name(index: int) -> bytes:
    return NAMES[index] if index >= 0 else b"\xc0\x0c"  # -1: a pointer to the question's name


def _dns(flags: int, question: int, answers: list[tuple[int, int, int, bytes]]) -> bytes:
    """A message with one question and `answers` as (owner, type, ttl, rdata); owner -1 points
    at the question's name."""
    header = struct.pack("!HHHHHH", 0x1234, flags, 1, len(answers), 0, 0)
    body = _name(question) + struct.pack("!HH", 1, 1)
    for owner, kind, ttl, rdata in answers:
        body += _name(owner) + struct.pack("!HHIH", kind, 1, ttl, len(rdata)) + rdata
    return header + body


def _ip4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, inet_aton(src),
                       inet_aton(dst)) + payload


def _frame(src: str, dst: str, sport: int, dport: int, message: bytes) -> bytes:
    return bytes(12) + b"\x08\x00" + _ip4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(message), 0) + message)


def _vxlan(frame: bytes) -> bytes:
    inner = struct.pack("!BxxxI", 8, 7 << 8) + frame
    return _frame("172.31.5.10", "172.31.9.21", 50000, 4789, inner)


def _erspan2(frame: bytes) -> bytes:
    gre = struct.pack("!HHI", 0x1000, 0x88BE, 0) + struct.pack("!HHI", 0x1000, 7, 0)
    return bytes(12) + b"\x08\x00" + _ip4("172.31.5.10", "172.31.9.20", 47, gre + frame)


_owner = st.sampled_from([-1, -1, -1, -1, -1, 0, 1, 1, 2])  # 2: a name the compiled parser leaves to Python
_answer = st.one_of(
    st.tuples(_owner, st.just(1), st.sampled_from([0, 59, 300, 2**31 + 5]),
              st.sampled_from([bytes(4), b"\xcb\x00\x71\x05", b"\xcb\x00\x71\x06"])),
    st.tuples(_owner, st.just(28), st.integers(0, 200_000), st.sampled_from([bytes(16), b"\x20\x01" + bytes(14)])),
    st.tuples(_owner, st.just(5), st.integers(0, 100), st.sampled_from(NAMES)),
    st.tuples(_owner, st.just(16), st.integers(0, 100), st.just(b"\x02hi")),
)


@st.composite
def shared_frames(draw: st.DrawFn) -> bytes:
    """DNS datagrams, mostly responses from a resolver to a client of either worker, some cut short,
    some inside a mirror tunnel."""
    message = _dns(draw(st.sampled_from([0x8180, 0x8180, 0x0100, 0x8183])), draw(st.sampled_from([0, 0, 0, 1, 1, 1, 2])),
                   draw(st.lists(_answer, max_size=5)))
    if draw(st.sampled_from([False] * 9 + [True])):
        message = message[: draw(st.integers(0, len(message)))]
    client = draw(st.sampled_from([CLIENT_ODD, CLIENT_EVEN]))
    if draw(st.sampled_from([False] * 4 + [True])):
        frame = _frame(client, RESOLVER, 40000, 53, message)
    else:
        frame = _frame(RESOLVER, client, 53, draw(st.sampled_from([40000, 53])), message)
    wrap = draw(st.sampled_from([None, None, None, _vxlan, _erspan2]))  # the mirror tunnels, taken apart in C too
    return frame if wrap is None else wrap(frame)


def _cache(max_entries: int, preloaded: list[tuple[int, float]], sweep_at: float) -> DnsCache:
    cache = DnsCache(max_entries=max_entries)
    for index, ts in preloaded:
        cache.observe(ts, "old.example", (), True)
        cache._entries[f"203.0.113.{index}"] = (ts + 60.0, ("old.example",))
    cache._sweep_at = sweep_at
    return cache


@settings(max_examples=500, deadline=None)
@given(shared_frames(), st.sampled_from([2, 3]), st.integers(1, 6),
       st.lists(st.tuples(st.integers(0, 8), st.floats(0, 200)), max_size=6),
       st.floats(0, 200), st.floats(0, 400))
def test_the_compiled_shared_decode_equals_the_python_one(
        frame, shared_route, max_entries, preloaded, ts, sweep_at) -> None:
    """Learned by the compiled decode: learned alike by the reference, entries, order and counters
    equal. Declined: the compiled decode_packet's answer (held to its own reference), the cache
    untouched (the caller learns it)."""
    compiled, reference = (_cache(max_entries, preloaded, sweep_at) for _ in range(2))
    found = compiled.shared_decoder(shared_route)(1, frame, ts)  # type: ignore[misc]
    if found is not None and len(found) == 5 and found[4] is None:
        assert shared_decode_py(shared_route, reference, 1, frame, ts) == found
        assert list(compiled._entries.items()) == list(reference._entries.items())
        assert compiled.counters.values == reference.counters.values
    else:
        assert found == decode_packet(1, frame)
        assert list(compiled._entries.items()) == list(reference._entries.items())


def test_the_other_workers_plain_answer_is_learned_at_once_uncounted() -> None:
    """A resolver's A answer to worker 1's client, decoded by worker 0: stored with its name,
    nothing counted; the same answer to worker 0's own client, or a query, is left to the decoder."""
    cache = DnsCache()
    decode = cache.shared_decoder(1 | SHARED_ANSWER)
    assert decode is not None
    answer = _dns(0x8180, 0, [(-1, 1, 300, b"\xcb\x00\x71\x05")])
    first = decode(1, _frame(RESOLVER, CLIENT_ODD, 53, 40000, answer), 99.0)
    assert first is not None and first[4] is not None and len(cache) == 0  # a sweep is due: the Python code's
    cache.observe(99.0, "example.com", ())
    found = decode(1, _frame(RESOLVER, CLIENT_ODD, 53, 40000, answer), 100.0)
    assert found == (RESOLVER, 53, CLIENT_ODD, 40000, None)
    assert cache.names_for("203.0.113.5", 150.0) == ("example.com",)
    assert cache.counters.values == {}
    own = decode(1, _frame(RESOLVER, CLIENT_EVEN, 53, 40000, answer), 100.0)
    assert own == decode_packet(1, _frame(RESOLVER, CLIENT_EVEN, 53, 40000, answer)) and own[4] is not None


def test_a_sharing_decoder_learns_and_counts_as_without_the_compiled_learning() -> None:
    """Frames of both workers' clients, bare and tunnelled, through TrafficDecoder.feed as worker 0:
    with the cache handed to share (learned in C) or not (learned through learn_dns), the same
    cache, counters and shared-frame counts."""
    frames = [_frame(RESOLVER, client, 53, 40000, _dns(0x8180, question, answers))
              for client in (CLIENT_ODD, CLIENT_EVEN)
              for question in (0, 1)
              for answers in ([(-1, 1, 300, b"\xcb\x00\x71\x05")], [(-1, 5, 60, NAMES[1]), (1, 28, 30, bytes(16))],
                              [(-1, 1, 10, bytes(4)), (-1, 1, 10, b"\xcb\x00\x71\x06")])]
    frames += [wrap(frame) for wrap in (_vxlan, _erspan2) for frame in frames[:6]]
    results = []
    for hand_cache in (True, False):
        decoder, cache = TrafficDecoder(), DnsCache()
        decoder.learn_dns = cache.learn
        decoder.share(0, prefilter.route_of, cache if hand_cache else None)
        for ts, frame in enumerate(frames):
            decoder.feed(float(ts), 1, frame)
        decoder.finish()
        results.append((list(cache._entries.items()), cache.counters.values, decoder.counters.values,
                        decoder.shared_frames, decoder.shared_bytes, len(decoder.records)))
        assert (decoder._side is None) == hand_cache  # tunnelled ones too: no side decoder needed
    assert results[0] == results[1]
    assert results[0][3] == 18  # worker 1's client's 6 answers, bare, in VXLAN and in ERSPAN
