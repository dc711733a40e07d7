"""L2-L4 decoding across link types, VLAN stacks, IPv6 extension headers and IP fragments."""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether

from sensor.decode import packet
from sensor.decode.packet import PacketDecoder
from sensor.records import Counters

PAYLOAD = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"
IP4 = IP(src="10.20.0.5", dst="192.0.2.1") / TCP(sport=40000, dport=80, flags="PA", seq=77) / PAYLOAD


def decode(linktype: int, frame: bytes):
    return PacketDecoder(Counters()).decode(0.0, linktype, bytes(frame))


def check_tcp(result, src="10.20.0.5", dst="192.0.2.1") -> None:
    assert result is not None
    proto, s, d, sport, dport, flags, seq, payload = result
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    assert (proto, sport, dport, seq, payload) == (6, 40000, 80, 77, PAYLOAD)
    assert s == socket.inet_pton(family, src) and d == socket.inet_pton(family, dst)
    assert flags & 0x18 == 0x18


@pytest.mark.parametrize(
    "linktype, frame",
    [
        (1, Ether() / IP4),
        (1, Ether() / Dot1Q(vlan=10) / IP4),
        (1, Ether() / Dot1AD(vlan=5) / Dot1Q(vlan=10) / IP4),  # QinQ
        (101, IP4),
        (228, IP4),
        (0, struct.pack("<I", 2) + bytes(IP4)),  # BSD loopback, host byte order
        (108, struct.pack(">I", 2) + bytes(IP4)),  # OpenBSD loop, network order
        (113, CookedLinux(proto=0x0800) / IP4),
        (276, struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\0" * 8) + bytes(IP4)),  # SLL2
    ],
    ids=["ether", "vlan", "qinq", "raw", "ipv4", "null", "loop", "sll", "sll2"],
)
def test_link_types(linktype: int, frame) -> None:
    check_tcp(decode(linktype, bytes(frame)))


def test_ethernet_padding_is_trimmed() -> None:
    small = IP(src="10.20.0.5", dst="192.0.2.1") / UDP(sport=5000, dport=53) / b"x"
    result = decode(1, bytes(Ether() / small) + b"\0" * 20)
    assert result is not None and result[7] == b"x"


def test_ipv6_with_extension_headers() -> None:
    pkt = (
        IPv6(src="fd00::5", dst="2001:db8::1") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
        / TCP(sport=40000, dport=80, flags="PA", seq=77) / PAYLOAD
    )
    check_tcp(decode(1, bytes(Ether() / pkt)), "fd00::5", "2001:db8::1")


def test_ipv4_fragments_reassemble_in_any_order() -> None:
    pkt = IP(src="10.20.0.5", dst="192.0.2.1", id=99) / UDP(sport=5000, dport=53) / (b"q" * 3000)
    frags = [bytes(Ether() / f) for f in fragment(pkt, fragsize=1000)]
    decoder = PacketDecoder(Counters())
    results = [decoder.decode(0.0, 1, f) for f in reversed(frags)]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert results[-1] is not None and results[-1][7] == b"q" * 3000
    assert decoder.counters.get("ip.reassembled") == 1


def test_ipv6_fragments_reassemble() -> None:
    body = UDP(sport=5000, dport=53) / (b"z" * 2000)
    raw = bytes(body)
    decoder = PacketDecoder(Counters())
    first = IPv6(src="fd00::5", dst="2001:db8::1") / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=7) / raw[:1000]
    second = IPv6(src="fd00::5", dst="2001:db8::1") / IPv6ExtHdrFragment(nh=17, offset=125, m=0, id=7) / raw[1000:]
    assert decoder.decode(0.0, 1, bytes(Ether() / first)) is None
    result = decoder.decode(0.0, 1, bytes(Ether() / second))
    assert result is not None and result[0] == 17 and result[7] == b"z" * 2000


def test_fragment_table_is_capped() -> None:
    decoder = PacketDecoder(Counters(), max_fragment_sets=4)
    for ident in range(10):
        pkt = IP(src="10.0.0.1", dst="10.0.0.2", id=ident, flags="MF") / (b"a" * 16)
        decoder.decode(0.0, 101, bytes(pkt))
    assert len(decoder._fragments) == 4
    assert decoder.counters.get("ip.fragment_sets_evicted") == 6


def test_unsupported_link_type_is_counted() -> None:
    decoder = PacketDecoder(Counters())
    assert decoder.decode(0.0, 147, bytes(IP4)) is None
    assert decoder.unsupported_linktypes == {147}


@settings(max_examples=300)
@given(st.sampled_from([0, 1, 101, 113, 276, 228, 229]), st.binary(max_size=200))
def test_random_frames_never_raise(linktype: int, frame: bytes) -> None:
    decoder = PacketDecoder(Counters())
    result = decoder.decode(0.0, linktype, frame)
    assert result is None or isinstance(result[7], bytes)


@settings(max_examples=200)
@given(st.integers(0, len(bytes(Ether() / IP4)) - 1), st.integers(0, 255))
def test_mutated_frames_never_raise(position: int, value: int) -> None:
    frame = bytearray(bytes(Ether() / Dot1Q() / IP4))
    frame[position % len(frame)] = value
    PacketDecoder(Counters()).decode(0.0, 1, bytes(frame))


# Compiled fast path: whatever frame it decodes, it decodes exactly as the Python reference does.

fast = pytest.mark.skipif(packet._decode_fast is None, reason="the compiled fast path is not built")
IP6 = IPv6(src="fd00::5", dst="2001:db8::1") / UDP(sport=5353, dport=53) / b"\x12\x34"


def _fast_agrees(linktype: int, frame: bytes) -> bool:
    """True when the fast decoder took the frame; its tuple must then equal the reference's."""
    taken = packet._decode_fast(linktype, frame)
    reference = PacketDecoder(Counters()).decode_py(0.0, linktype, frame)
    if taken is None:
        return False
    assert taken == reference, (linktype, frame.hex())
    return True


@fast
@pytest.mark.parametrize("linktype, frame", [
    (1, Ether() / IP4), (1, Ether() / Dot1Q(vlan=10) / IP4), (1, Ether() / Dot1AD(vlan=5) / Dot1Q(vlan=10) / IP4),
    (101, IP4), (228, IP4), (229, IP6), (1, Ether() / IP6), (0, struct.pack("<I", 2) + bytes(IP4)),
    (113, CookedLinux(proto=0x0800) / IP4), (276, struct.pack(">HHIHBB8s", 0x86DD, 0, 2, 1, 0, 6, b"\0" * 8) + bytes(IP6)),
    (1, bytes(Ether() / IP(src="10.20.0.5", dst="192.0.2.1") / UDP(sport=5000, dport=53) / b"x") + b"\0" * 20),
])
def test_fast_path_takes_the_common_frames(linktype: int, frame) -> None:
    assert _fast_agrees(linktype, bytes(frame))


@fast
def test_fast_path_declines_fragments_and_extension_headers() -> None:
    pieces = fragment(IP(src="10.20.0.5", dst="192.0.2.1", id=9) / UDP(sport=1, dport=53) / (b"a" * 200), fragsize=64)
    ext = IPv6(src="fd00::5", dst="2001:db8::1") / IPv6ExtHdrHopByHop() / TCP(sport=40000, dport=80) / PAYLOAD
    for frame in [bytes(Ether() / piece) for piece in pieces] + [bytes(Ether() / ext)]:
        assert packet._decode_fast(1, frame) is None
    assert packet._decode_fast(147, bytes(IP4)) is None


@fast
@settings(max_examples=400)
@given(st.sampled_from([0, 1, 12, 101, 108, 113, 147, 276, 228, 229]), st.binary(max_size=200))
def test_fast_path_agrees_on_random_frames(linktype: int, frame: bytes) -> None:
    _fast_agrees(linktype, frame)


@fast
@settings(max_examples=400)
@given(st.sampled_from([bytes(Ether() / Dot1Q() / IP4), bytes(Ether() / IP6), bytes(IP4)]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4), st.integers(0, 200))
def test_fast_path_agrees_on_mutated_frames(frame: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(frame)
    for position, value in flips:
        data[position % len(data)] = value
    linktype = 1 if frame[12:14] in (b"\x81\x00", b"\x86\xdd") else 228
    _fast_agrees(linktype, bytes(data[:cut]) if cut < len(data) else bytes(data))
