"""The compiled decode writes addresses as socket.inet_ntop does (its own formatter, not libc's
sprintf per number): a datagram's source and destination, and the data of A and AAAA answers."""
from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sensor.decode import dispatch

try:
    from sensor._fast import dns_datagram as _dns_datagram
except ImportError:  # built without a C compiler
    _dns_datagram = None

pytestmark = pytest.mark.skipif(_dns_datagram is None, reason="compiled extension not built")

# hextets drawn so that zero runs of every length and place, and the IPv4-mapped prefix, are common
_hextet = st.one_of(st.just(0), st.just(0), st.just(0xFFFF), st.integers(0, 0xFFFF), st.integers(1, 15))
_ipv6 = st.lists(_hextet, min_size=8, max_size=8).map(lambda words: struct.pack("!8H", *words))
_ipv4 = st.one_of(st.binary(min_size=4, max_size=4), st.sampled_from([bytes(4), b"\xff" * 4, b"\x0a\x00\x00\x01"]))


def _message(rdata: bytes) -> bytes:
    """A response with one A or AAAA answer holding `rdata`."""
    name = b"\x07example\x03com\x00"
    rtype = 1 if len(rdata) == 4 else 28
    return (struct.pack("!6H", 0x1234, 0x8180, 1, 1, 0, 0) + name + struct.pack("!HH", rtype, 1)
            + b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 300, len(rdata)) + rdata)


def _frame(src: bytes, dst: bytes, message: bytes) -> bytes:
    udp = struct.pack("!HHHH", 53, 40000, 8 + len(message), 0) + message
    if len(src) == 16:
        ip = struct.pack("!IHBB", 0x60000000, len(udp), 17, 64) + src + dst
        return bytes(12) + b"\x86\xdd" + ip + udp
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0) + src + dst
    return bytes(12) + b"\x08\x00" + ip + udp


@settings(max_examples=500)
@given(st.one_of(st.tuples(_ipv6, _ipv6), st.tuples(_ipv4, _ipv4)), st.one_of(_ipv4, _ipv6))
@example((socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.1"), socket.inet_pton(socket.AF_INET6, "::1.2.3.4")),
         socket.inet_pton(socket.AF_INET6, "1:0:0:1:0:0:0:1"))
@example((bytes(16), socket.inet_pton(socket.AF_INET6, "1::")), socket.inet_pton(socket.AF_INET6, "::ffff:0:1"))
def test_addresses_are_written_as_inet_ntop_writes_them(addresses: tuple[bytes, bytes], rdata: bytes) -> None:
    src, dst = addresses
    frame = _frame(src, dst, _message(rdata))
    taken = _dns_datagram(1, frame)
    assert taken == dispatch.dns_datagram_py(1, frame)
    family = socket.AF_INET6 if len(src) == 16 else socket.AF_INET
    assert (taken[0], taken[2]) == (socket.inet_ntop(family, src), socket.inet_ntop(family, dst))
    answer_family = socket.AF_INET6 if len(rdata) == 16 else socket.AF_INET
    assert taken[4].answers[0].data == socket.inet_ntop(answer_family, rdata)
