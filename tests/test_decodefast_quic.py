"""QUIC Initials through the compiled key derivation (quic_initial_keys) and header protection
removal (quic_unprotect), held equal to their Python references, alone and inside the tracker."""
from __future__ import annotations

import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode import quic
from sensor.records import Counters

fast = pytest.mark.skipif(quic._quic_unprotect is None, reason="the compiled fast path is not built")
_WIRE = [quic.QUIC_V1.to_bytes(4, "big"), quic.QUIC_V2.to_bytes(4, "big")]


@fast
def test_initial_keys_match_rfc9001_a1() -> None:
    key, iv, hp = quic._quic_initial_keys(
        bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), bytes.fromhex("8394c8f03e515708"),
        b"quic key", b"quic iv", b"quic hp",
    )
    assert key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert hp.hex() == "9f50449e04a0e810283a1e9933adedd2"


@fast
@settings(max_examples=300)
@given(st.sampled_from(_WIRE), st.binary(max_size=100))
def test_initial_keys_equal_the_reference(version: bytes, dcid: bytes) -> None:
    assert quic._initial_keys(version, dcid) == quic.initial_keys_py(version, dcid)


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    info = struct.pack("!HB", length, 6 + len(label)) + b"tls13 " + label + b"\x00\x01"
    return hmac.digest(secret, info, "sha256")[:length]


@fast
@settings(max_examples=300)
@given(
    st.one_of(st.sampled_from([b"salt one", b"salt two", b"salt three"]), st.binary(max_size=64)),
    st.binary(max_size=100), st.lists(st.binary(max_size=100), min_size=3, max_size=3),
)
def test_initial_keys_of_any_salt_and_labels_are_hkdf(salt: bytes, dcid: bytes, labels: list[bytes]) -> None:
    """Salts taking turns (the compiled code keeps the pads of the last two) and labels of any length."""
    client = _expand_label(hmac.digest(salt, dcid, "sha256"), b"client in", 32)
    expected = tuple(_expand_label(client, label, length) for label, length in zip(labels, (16, 12, 16)))
    assert quic._quic_initial_keys(salt, dcid, *labels) == expected


@fast
def test_initial_keys_decline_what_they_cannot_take() -> None:
    assert quic._quic_initial_keys(bytes(65), b"", b"k", b"i", b"h") is None  # a salt over a block
    assert quic._quic_initial_keys(b"salt", bytes(101), b"k", b"i", b"h") is None
    assert quic._quic_initial_keys(b"salt", b"dcid", b"k", b"i") is None
    assert quic._quic_initial_keys(b"salt", "dcid", b"k", b"i", b"h") is None
    version = _WIRE[0]
    assert quic._initial_keys_fast(version, bytes(101)) == quic.initial_keys_py(version, bytes(101))


_positions = st.integers(min_value=-2, max_value=140)


@fast
@settings(max_examples=1500)
@given(
    st.binary(min_size=16, max_size=16), st.binary(min_size=12, max_size=12), st.binary(max_size=120),
    _positions, _positions, _positions,
    st.one_of(st.integers(min_value=-1, max_value=70000),
              st.integers(min_value=(1 << 62) - (1 << 33), max_value=1 << 62)),
)
def test_unprotect_equals_the_reference(
    hp: bytes, iv: bytes, buf: bytes, start: int, pn_offset: int, end: int, largest_pn: int
) -> None:
    assert quic._quic_unprotect(hp, iv, buf, start, pn_offset, end, largest_pn) == quic.unprotect_py(
        hp, iv, buf, start, pn_offset, end, largest_pn
    )


def _varint(value: int) -> bytes:
    for size, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | prefix << (8 * size - 8)).to_bytes(size, "big")
    raise ValueError(value)


def _initial(payload: bytes, dcid: bytes, packet_number: int, pn_length: int, version: int) -> bytes:
    """A client Initial protected as RFC 9001 5 says, its packet number sent in `pn_length` bytes."""
    key, iv, hp = quic.client_initial_keys(version, dcid)
    first = 0xC0 | (0 if version == quic.QUIC_V1 else 1) << 4 | (pn_length - 1)
    pn_bytes = (packet_number & ((1 << 8 * pn_length) - 1)).to_bytes(pn_length, "big")
    prefix = bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + b"\x04abcd" + b"\x00"
    payload = payload.ljust(20, b"\x00")
    header = prefix + (0x4000 | (pn_length + len(payload) + 16)).to_bytes(2, "big") + pn_bytes
    nonce = (int.from_bytes(iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = AESGCM(key).encrypt(nonce, payload, header)
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update((pn_bytes + ciphertext)[4:20])
    protected = bytearray(header + ciphertext)
    protected[0] ^= mask[0] & 0x0F
    for i in range(pn_length):
        protected[len(header) - pn_length + i] ^= mask[1 + i]
    return bytes(protected)


def _hello(name: str, pad: int) -> bytes:
    sni = name.encode()
    extensions = struct.pack("!HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
    extensions += struct.pack("!HHB", 43, 3, 2) + b"\x03\x04" + struct.pack("!HH", 21, pad) + bytes(pad)
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


@st.composite
def _exchanges(draw: st.DrawFn) -> list[tuple[tuple[int, int], bytes]]:
    """Client Initials of a few connections: hellos split in CRYPTO frames over packets sent in any
    order, retransmitted, with packet numbers near the last one or far from it, some damaged."""
    datagrams = []
    for conn in range(draw(st.integers(1, 3))):
        version = draw(st.sampled_from([quic.QUIC_V1, quic.QUIC_V2]))
        dcid = draw(st.binary(min_size=0, max_size=20))
        hello = _hello(f"c{conn}.example", draw(st.integers(0, 600)))
        cuts = sorted(draw(st.lists(st.integers(1, len(hello) - 1), max_size=3, unique=True)))
        pieces = list(zip([0, *cuts], [*cuts, len(hello)]))
        order = draw(st.permutations(range(len(pieces))))
        base = draw(st.sampled_from([0, 200, 70000, (1 << 62) - 5]))
        for number, at in enumerate(order):
            low, high = pieces[at]
            packet = _initial(b"\x06" + _varint(low) + _varint(high - low) + hello[low:high], dcid, base + number,
                              draw(st.integers(1, 4)), version)
            if draw(st.integers(0, 9)) == 0:  # damaged: no key opens it
                flip = draw(st.integers(0, len(packet) - 1))
                packet = packet[:flip] + bytes((packet[flip] ^ 0x20,)) + packet[flip + 1 :]
            datagrams.append(((conn, 443), packet))
            if draw(st.integers(0, 5)) == 0:
                datagrams.append(((conn, 443), packet))  # a retransmission
    return draw(st.permutations(datagrams)) if draw(st.booleans()) else datagrams


@fast
@settings(max_examples=150, deadline=None)
@given(_exchanges())
def test_tracker_opens_as_the_reference_does(datagrams: list[tuple[tuple[int, int], bytes]]) -> None:
    compiled = quic.QuicClientHelloTracker(counters=Counters())
    hellos_compiled = [compiled.feed(key, datagram, None, float(at)) for at, (key, datagram) in enumerate(datagrams)]
    saved = quic._unprotect, quic._initial_keys, quic._quic_absorb
    quic._unprotect, quic._initial_keys, quic._quic_absorb = quic.unprotect_py, quic.initial_keys_py, None
    try:
        python = quic.QuicClientHelloTracker(counters=Counters())
        hellos_python = [python.feed(key, datagram, None, float(at)) for at, (key, datagram) in enumerate(datagrams)]
    finally:
        quic._unprotect, quic._initial_keys, quic._quic_absorb = saved
    assert hellos_compiled == hellos_python
    assert dict(compiled.counters.values) == dict(python.counters.values)
    assert {key: (conn.largest_pn, conn.finished, conn.crypto, conn.pending, conn.pending_bytes)
            for key, conn in compiled._connections.items()} == {
        key: (conn.largest_pn, conn.finished, conn.crypto, conn.pending, conn.pending_bytes)
        for key, conn in python._connections.items()
    }


@fast
def test_unprotect_declines_a_largest_packet_number_it_cannot_hold() -> None:
    assert quic._quic_unprotect(bytes(16), bytes(12), bytes(64), 0, 8, 64, (1 << 62) + 1) is None
    assert quic._quic_unprotect(bytes(16), bytes(12), bytes(64), 0, 8, 64, -2) is None


@fast
def test_tracker_past_the_compiled_packet_numbers() -> None:
    """A connection whose packet numbers climbed past 2^62 is opened by unprotect_py."""
    hello = _hello("far.example", 0)
    dcid = b"\x09" * 8
    first = _initial(b"\x06\x00\x05" + hello[:5], dcid, 0, 1, quic.QUIC_V1)
    far = (1 << 62) + (1 << 31) + 5
    rest = _initial(b"\x06\x05" + _varint(len(hello) - 5) + hello[5:], dcid, far, 4, quic.QUIC_V1)
    tracker = quic.QuicClientHelloTracker()
    assert tracker.feed(("c", 1), first) is None
    conn = tracker._connections[("c", 1)]
    conn.largest_pn = (1 << 62) + (1 << 31)  # as a hostile sender's packets can push it
    assert tracker.feed(("c", 1), rest).server_name == "far.example"
    assert conn.largest_pn == far


@fast
def test_unprotect_opens_a_protected_initial() -> None:
    hello = _hello("opened.example", 40)
    packet = _initial(b"\x06\x00" + _varint(len(hello)) + hello, b"\x01\x02\x03\x04", 0x1234, 2, quic.QUIC_V1)
    header = quic._long_header(packet, 0)
    assert header is not None and header[1]  # an Initial
    _, _, _, pn_offset, end = header
    key, iv, hp = quic.client_initial_keys(quic.QUIC_V1, b"\x01\x02\x03\x04")
    packet_number, nonce, aad, ciphertext = quic._quic_unprotect(hp, iv, packet, 0, pn_offset, end, 0x1200)
    assert packet_number == 0x1234
    plaintext = AESGCM(key).decrypt(nonce, ciphertext, aad)
    assert quic.crypto_chunks_py(plaintext) == [(0, hello)]
    tracker = quic.QuicClientHelloTracker()
    assert tracker.feed(("c", 1), packet).server_name == "opened.example"


_held = st.dictionaries(st.integers(1, 100), st.binary(min_size=1, max_size=20), max_size=4)
_chunks = st.lists(st.tuples(st.one_of(st.integers(0, 120), st.just(1 << 62)), st.binary(max_size=30)), max_size=8)


@fast
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=20), _held, _chunks, st.sampled_from([10, 50, 200, 65536]), st.sampled_from([1, 2, 3, 256]))
def test_absorb_equals_the_reference(crypto: bytes, held: dict[int, bytes], chunks: list[tuple[int, bytes]], cap: int,
                                     max_pending: int) -> None:
    """The stream, the held chunks (in their order) and the held bytes, or the giving up, as absorb_chunks_py."""
    held = {offset + len(crypto): data for offset, data in held.items()}  # held chunks lie past the stream
    compiled_crypto, compiled_held = bytearray(crypto), dict(held)
    python_crypto, python_held = bytearray(crypto), dict(held)
    pending_bytes = sum(map(len, held.values()))
    got = quic._quic_absorb(compiled_crypto, compiled_held, pending_bytes, chunks, cap, max_pending)
    wanted = quic.absorb_chunks_py(python_crypto, python_held, pending_bytes, chunks, cap, max_pending)
    assert got == wanted
    if wanted >= 0:
        assert compiled_crypto == python_crypto
        assert list(compiled_held.items()) == list(python_held.items())


@fast
def test_absorb_declines_what_it_cannot_take() -> None:
    crypto, held = bytearray(b"ab"), {5: b"x"}
    assert quic._quic_absorb(bytes(crypto), held, 1, [(0, b"abc")], 100, 8) is None  # not a bytearray
    assert quic._quic_absorb(crypto, held, 1, [(0, "abc")], 100, 8) is None
    assert quic._quic_absorb(crypto, held, 1, [(-1, b"abc")], 100, 8) is None
    assert quic._quic_absorb(crypto, {5: "x"}, 1, [(0, b"abc")], 100, 8) is None
    assert (crypto, held) == (bytearray(b"ab"), {5: b"x"})  # nothing changed
    assert quic._quic_absorb(crypto, held, 1, [(0, b"abcde")], 100, 8) == 0
    assert (crypto, held) == (bytearray(b"abcdex"), {})
