"""Another replay worker's DNS answers learned straight from the wire format (the compiled
dns_learn_wire, which share_decoder's decode uses): what it stores is what the message path
stores (the message parsed, then DnsCache._learn_py), and it changes nothing where it declines."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.capture import prefilter
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.dns import TYPE_NAMES
from sensor.enrich.dnscache import MAX_TTL, MIN_TTL, DnsCache

if prefilter._select_pcap is None:
    pytest.skip("compiled extension not built", allow_module_level=True)
from test_shared_decode import CLIENT_EVEN, CLIENT_ODD, RESOLVER, _erspan2, _frame, _vxlan  # noqa: E402

from sensor._fast import dns_learn_wire, parse_dns  # noqa: E402

# Names by what they spell (lowered), each in the ways it goes on the wire (mixed case); then
# names the compiled parser leaves to the Python one (a dot inside a label, not ASCII) or that
# do not read (cut short, a pointer to itself).
SPELLINGS = [[b"\x07example\x03com\x00", b"\x07EXAMPLE\x03Com\x00"],
             [b"\x03cdn\x07example\x03net\x00", b"\x03CDN\x07Example\x03net\x00"],
             [b"\x04edge\x03cdn\x07example\x03net\x00"], [b"\x01a\x01b\x00"], [b"\x00"]]
ODD_NAMES = [b"\x03a.b\x03com\x00", b"\x03x\xc3\xa9\x03org\x00", b"\x05short", b"loop"]
ADDRESSES = {1: [bytes(4), b"\xcb\x00\x71\x05", b"\xcb\x00\x71\x06", b"\xc0\x00\x02"],  # the last: cut short
             28: [bytes(16), b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", bytes(10) + b"\xff\xff\xc0\x00\x02\x01"]}
TTLS = [0, 59, 60, 300, 86_400, 86_401, 2**31 + 5, 2**32 - 1]
OTHER_DATA = {16: b"\x02hi", 15: b"\x00\x0a\xc0\x0c", 65: b"\x00\x01\x00", 257: b"\x00\x05issue", 12: b"\x00"}
OTHER_TYPES = [16, 16, 65, 257, 12, 15]  # MX (15): left to the Python parser, as are SRV and SOA


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A DNS message: mostly a response with one question and answers of every kind (address
    records, CNAME chains in any order, other types), names often compressed (a pointer to where
    the same name was written, or labels then a pointer), now and then an odd name, several
    questions, authority and additional records, a cut."""
    body = bytearray()
    written: dict[int, list[int]] = {}  # name -> offsets where it was written, for pointers back

    def put_name(name: int) -> None:
        offset = 12 + len(body)
        if draw(st.integers(0, 49)) == 0:
            odd = draw(st.sampled_from(ODD_NAMES))
            body.extend(struct.pack("!H", 0xC000 | offset) if odd == b"loop" else odd)
            return
        if written.get(name) and draw(st.booleans()):
            body.extend(struct.pack("!H", 0xC000 | draw(st.sampled_from(written[name]))))
            return
        if name == 2 and written.get(1) and draw(st.booleans()):  # labels, then a pointer
            body.extend(b"\x04edge" + struct.pack("!H", 0xC000 | written[1][0]))
        else:
            body.extend(draw(st.sampled_from(SPELLINGS[name])))
        written.setdefault(name, []).append(offset)

    def put_record(owner: int, rtype: int, target: int = 0) -> None:
        put_name(owner)
        body.extend(struct.pack("!HHIH", rtype, 1, draw(st.sampled_from(TTLS)), 0))
        at = len(body)
        if rtype in (2, 5):
            put_name(target)
            if draw(st.integers(0, 19)) == 0:  # more data than the name
                body.append(0)
        elif rtype in ADDRESSES:
            body.extend(draw(st.sampled_from(ADDRESSES[rtype][:-1] if draw(st.integers(0, 14)) else ADDRESSES[rtype])))
        else:
            body.extend(OTHER_DATA.get(rtype, b""))
        struct.pack_into("!H", body, at - 2, len(body) - at)

    names = st.integers(0, len(SPELLINGS) - 1)
    asked = [draw(st.sampled_from([0, 0, 0, 1, 4])) for _ in range(draw(st.sampled_from([1] * 8 + [0, 2])))]
    for name in asked:
        put_name(name)
        body.extend(struct.pack("!HH", draw(st.sampled_from([1, 28])), 1))
    # the answers: a chain of CNAMEs from the first question's name, address records at its
    # names (mostly its end) and elsewhere, other types; in any order
    chain = [asked[0] if asked else 0] + draw(st.lists(names, max_size=3))
    records = [(chain[i], 5, chain[i + 1]) for i in range(len(chain) - 1)]
    records += [(draw(st.sampled_from(chain[-1:] * 3 + chain)), draw(st.sampled_from([1, 1, 28])), 0)
                for _ in range(draw(st.integers(0, 4)))]
    records += [(draw(names), draw(st.sampled_from([1, 5, *OTHER_TYPES])), draw(names))
                for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2])))]
    records = draw(st.permutations(records))
    for record in records:
        put_record(*record)
    others = [draw(st.sampled_from([0, 0, 0, 1, 2])), draw(st.sampled_from([0, 0, 1, 2]))]
    for count in others:
        for _ in range(count):
            put_record(draw(names), draw(st.sampled_from([1, 2, 41, 6])), draw(names))
    flags = draw(st.sampled_from([0x8180, 0x8180, 0x8180, 0x8583, 0x0100]))
    message = struct.pack("!HHHHHH", 0x1234, flags, len(asked), len(records), *others) + bytes(body)
    if draw(st.integers(0, 9)) == 0:
        message = message[: draw(st.integers(0, len(message)))]
    return message


def _walk_takes(data: bytes) -> bool:
    """Whether the walk must take the message: one the compiled parser reads, a response with
    one question and answers whose address records hold addresses."""
    message = parse_dns(data)
    if message is None or not message.is_response or not message.answers or len(message.questions) != 1:
        return False
    for answer in message.answers:
        if answer.type in ("A", "AAAA"):
            try:
                ipaddress.ip_address(answer.data)
            except ValueError:
                return False
    return True


def test_the_walk_knows_the_type_codes_by_the_parsers_names() -> None:
    """The walk tells address records and CNAMEs by their codes, the message path by these names."""
    assert (TYPE_NAMES[1], TYPE_NAMES[28], TYPE_NAMES[5]) == ("A", "AAAA", "CNAME")
    assert [code for code, name in TYPE_NAMES.items() if name in ("A", "AAAA", "CNAME")] == [1, 5, 28]


@settings(max_examples=800, deadline=None)
@given(st.lists(st.tuples(messages(), st.floats(0, 1000)), min_size=1, max_size=6))
def test_the_wire_walk_stores_what_the_message_path_stores(seen: list[tuple[bytes, float]]) -> None:
    """After every message: the same entries, in the same order, and the same number stored; a
    message the walk declines leaves the cache as it was (the message path then learns it)."""
    walked, reference = DnsCache(), DnsCache()
    for data, ts in seen:
        before = list(walked._entries.items())
        stored = dns_learn_wire(walked._entries, walked._move_to_end, ts, data, MIN_TTL, MAX_TTL)
        assert (stored is not None) == _walk_takes(data)
        if stored is None:
            assert list(walked._entries.items()) == before
            stored = walked.learn_wire_py(ts, data)  # the message path, for both to go on alike
        assert reference.learn_wire_py(ts, data) == stored
        assert list(walked._entries.items()) == list(reference._entries.items())


def test_a_chain_of_compressed_names_is_stored_with_its_path() -> None:
    """A question in capitals, a CNAME to a target compressed against it, the address records'
    owners pointers to that target, TTLs under and over the bounds: each address with the chain."""
    question = b"\x07METRICS\x08hospital\x03org\x00"
    message = struct.pack("!HHHHHH", 1, 0x8180, 1, 3, 0, 0) + question + struct.pack("!HH", 1, 1)
    message += b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, 7) + b"\x04edge\xc0\x14"  # edge.hospital.org
    target = 12 + len(question) + 4 + 12
    for ttl, address in ((5, b"\xcb\x00\x71\x07"), (10**6, b"\xcb\x00\x71\x08")):
        message += struct.pack("!HHHIH", 0xC000 | target, 1, 1, ttl, 4) + address
    cache = DnsCache()
    assert dns_learn_wire(cache._entries, cache._move_to_end, 100.0, message, MIN_TTL, MAX_TTL) == 2
    chain = ("metrics.hospital.org", "edge.hospital.org")
    assert list(cache._entries.items()) == [("203.0.113.7", (100.0 + MIN_TTL, chain)),
                                            ("203.0.113.8", (100.0 + MAX_TTL, chain))]


_CLIENTS = st.sampled_from([CLIENT_ODD, CLIENT_EVEN])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A DNS datagram of `messages`, mostly from the resolver to a client of either worker, some
    inside a mirror tunnel."""
    message, client = draw(messages()), draw(_CLIENTS)
    if draw(st.integers(0, 5)) == 0:
        frame = _frame(client, RESOLVER, 40000, 53, message)
    else:
        frame = _frame(RESOLVER, client, 53, 40000, message)
    wrap = draw(st.sampled_from([None, None, None, _vxlan, _erspan2]))
    return frame if wrap is None else wrap(frame)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(frames(), st.floats(0, 90)), min_size=1, max_size=8), st.sampled_from([0, 1]),
       st.integers(2, 20))
def test_a_worker_learns_alike_from_the_wire_and_from_the_message(
        fed: list[tuple[bytes, float]], worker: int, max_entries: int) -> None:
    """Frames through TrafficDecoder.feed, as a replay worker whose cache is handed to the compiled
    decode (another worker's answers walked from the wire) and as one whose cache learns every
    answer through learn_dns (the message): after every frame the same cache entries and counters,
    decoder counters and shared-frame counts. The capture's clock moves on (sweeps fall due)."""
    decoders, caches = [], []
    for hand_cache in (True, False):
        decoder, cache = TrafficDecoder(), DnsCache(max_entries=max_entries)
        decoder.learn_dns = cache.learn
        decoder.share(worker, prefilter.route_of, cache if hand_cache else None)
        decoders.append(decoder)
        caches.append(cache)
    ts = 0.0
    for frame, gap in fed:
        ts += gap
        states = []
        for decoder, cache in zip(decoders, caches):
            decoder.feed(ts, 1, frame)
            states.append((list(cache._entries.items()), dict(cache.counters.values), dict(decoder.counters.values),
                           decoder.shared_frames, decoder.shared_bytes, len(decoder.records)))
        assert states[0] == states[1]
