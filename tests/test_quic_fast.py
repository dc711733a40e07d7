"""QUIC Initial parsing shortcuts: the compiled CRYPTO frame walk, and the inline varint and
padding reads, against the plain walk they replace. (The header protection and the Initial keys:
tests/test_decodefast_quic.py.)"""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode import quic

fast = pytest.mark.skipif(quic._quic_crypto_chunks is None, reason="the compiled fast path is not built")


def _varint(value: int) -> bytes:
    for size, prefix in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | (prefix << (8 * size - 8))).to_bytes(size, "big")
    raise ValueError(value)


def _padded_varint(value: int, size: int) -> bytes:
    """A varint in `size` bytes even when fewer would do (allowed by RFC 9000 16)."""
    prefix = {1: 0, 2: 0x40, 4: 0x80, 8: 0xC0}[size]
    return (value | (prefix << (8 * size - 8))).to_bytes(size, "big")


_NOT_PADDING = re.compile(rb"[^\x00]")


def _chunks_reference(payload: bytes) -> list[tuple[int, bytes]]:
    """_crypto_chunks read with _varint everywhere and the padding skipped by search alone."""
    chunks: list[tuple[int, bytes]] = []
    pos = 0
    try:
        while pos < len(payload):
            frame_type = payload[pos]
            if frame_type == 0:
                match = _NOT_PADDING.search(payload, pos)
                if match is None:
                    break
                pos = match.start()
                continue
            pos += 1
            if frame_type == 1:
                continue
            if frame_type == 6:
                offset, pos = quic._varint(payload, pos)
                length, pos = quic._varint(payload, pos)
                if pos + length > len(payload):
                    break
                chunks.append((offset, payload[pos : pos + length]))
                pos += length
            elif frame_type in (2, 3):
                pos = quic._skip_ack(payload, pos, frame_type == 3)
            elif frame_type == 0x1C:
                _, pos = quic._varint(payload, pos)
                _, pos = quic._varint(payload, pos)
                reason_length, pos = quic._varint(payload, pos)
                pos += reason_length
            else:
                break
    except quic._Truncated:
        pass
    return chunks


_frame = st.one_of(
    st.builds(lambda n, tail: b"\x02\x01\x00" + _varint(n) + b"\x00" + tail, st.integers(0, 40), st.binary(max_size=20)),
    st.builds(lambda n, tail: b"\x1c\x01\x00" + _varint(n) + tail, st.integers(0, 400), st.binary(max_size=20)),
    st.builds(lambda o, d, so, sl: b"\x06" + _padded_varint(o, so) + _padded_varint(len(d), sl) + d,
              st.integers(0, 16_383), st.binary(max_size=300), st.sampled_from([2, 4, 8]), st.sampled_from([2, 4, 8])),
    st.builds(lambda o, d: b"\x06" + _varint(o) + _varint(len(d)) + d, st.integers(0, 70_000), st.binary(max_size=300)),
    st.just(b"\x01"),
    st.integers(1, 40).map(lambda n: b"\x00" * n),
    st.binary(max_size=12).map(lambda b: b"\x02" + b),
    st.binary(max_size=6),
)


@settings(max_examples=400)
@given(st.lists(_frame, max_size=10).map(b"".join), st.integers(0, 8))
def test_crypto_chunks_equal_the_plain_walk(payload: bytes, cut: int) -> None:
    payload = payload[: len(payload) - cut] if cut < len(payload) else payload
    for walk in (quic.crypto_chunks_py, quic._quic_crypto_chunks or quic.crypto_chunks_py):
        assert walk(payload) == _chunks_reference(payload)
        assert walk(payload + bytes(50)) == _chunks_reference(payload + bytes(50))


@fast
@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_compiled_crypto_chunks_equal_the_reference_on_any_bytes(payload: bytes) -> None:
    assert quic._quic_crypto_chunks(payload) == quic.crypto_chunks_py(payload)
    assert quic._quic_crypto_chunks(b"\x06\x00\x05" + payload) == quic.crypto_chunks_py(b"\x06\x00\x05" + payload)


@given(st.integers(0, 3), st.binary(max_size=20), st.binary(max_size=20), st.integers(0, 70),
       st.sampled_from([1, 2, 4]), st.integers(0, 2000), st.sampled_from([1, 2, 4]), st.integers(0, 1500))
def test_long_header_reads_short_and_long_varints_alike(ptype: int, dcid: bytes, scid: bytes, token: int,
                                                        token_size: int, length: int, length_size: int,
                                                        body: int) -> None:
    token_field = b""
    if ptype == 0:
        if token >= 1 << (8 * token_size - 2):
            token_size = 2
        token_field = _padded_varint(token, token_size) + bytes(token)
    if length >= 1 << (8 * length_size - 2):
        length_size = 2
    head = bytes((0xC0 | ptype << 4,)) + b"\x00\x00\x00\x01" + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    buf = head + token_field + _padded_varint(length, length_size) + bytes(body)
    header = quic.long_header_py(buf, 0)
    assert quic._long_header(buf, 0) == header  # the compiled one where built
    pn_offset = len(head) + len(token_field) + length_size
    if ptype == 3 or pn_offset + length > len(buf):  # a Retry, or a packet longer than the datagram
        assert header is None
        return
    assert header == (b"\x00\x00\x00\x01", ptype == 0, dcid, pn_offset, pn_offset + length)


_SMALL_OR_ANY = st.one_of(st.integers(0, 40), st.integers(0, (1 << 62) - 1))
_CID = st.integers(0, 22).map(lambda size: bytes(range(1, size + 1)))  # up to and past the 20-byte limit
_VERSION = st.sampled_from([quic.QUIC_V1, quic.QUIC_V2, 0, 0xFF00001D]).map(lambda version: version.to_bytes(4, "big"))


@fast
@settings(max_examples=600)
@given(st.binary(max_size=8), st.integers(0, 255), _VERSION, st.binary(max_size=80), st.integers(0, 12))
def test_compiled_long_header_equals_the_reference(before: bytes, first: int, version: bytes, rest: bytes,
                                                   past: int) -> None:
    """Any first byte, version and rest, read from any start (up to past the end), as long_header_py."""
    buf = before + bytes((first,)) + version + rest
    for start in (0, len(before), min(len(buf), len(before) + past)):
        assert quic._quic_long_header(buf, start) == quic.long_header_py(buf, start)


@fast
@settings(max_examples=500)
@given(st.sampled_from([0, 1, 2, 3]), _VERSION, _CID, _CID,
       _SMALL_OR_ANY, st.sampled_from([1, 2, 4, 8]), _SMALL_OR_ANY,
       st.sampled_from([1, 2, 4, 8]), st.binary(max_size=64))
def test_compiled_long_header_equals_the_reference_on_headers(ptype: int, version: bytes, dcid: bytes, scid: bytes,
                                                              token: int, token_size: int, length: int,
                                                              length_size: int, tail: bytes) -> None:
    """Near-valid headers of v1, v2 and others: long and short varints, CIDs over 20 bytes, lengths past the end."""
    token = token % (1 << (8 * token_size - 2))
    length = length % (1 << (8 * length_size - 2))
    buf = (bytes((0xC0 | ptype << 4,)) + version + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
           + _padded_varint(token, token_size) + _padded_varint(length, length_size) + tail)
    assert quic._quic_long_header(buf, 0) == quic.long_header_py(buf, 0)
    assert quic._quic_long_header(bytes(3) + buf, 3) == quic.long_header_py(bytes(3) + buf, 3)
