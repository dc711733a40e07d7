"""QUIC Initial packets to ClientHello (RFC 9000 section 17.2, RFC 9001 section 5, RFC 9369), sans-IO.

A client's Initial packets are protected with keys anyone can derive from the Destination
Connection ID, so an observer can read the ClientHello they carry. `QuicClientHelloTracker` takes
the UDP payloads of a client-to-server exchange, walks every coalesced long-header packet, opens
the client Initials, reassembles the CRYPTO stream by offset (a post-quantum ClientHello spans
several packets, in any order) and hands back the ClientHello once per connection.
"""
from __future__ import annotations

import re
import struct
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import sha256
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from sensor.decode.tls import ClientHello, parse_client_hello_message
from sensor.records import Counters, frozen_record, positional_constructor

if TYPE_CHECKING:
    import hashlib

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF


@dataclass(frozen=True, slots=True)
class _Version:
    salt: bytes
    key_label: bytes
    iv_label: bytes
    hp_label: bytes
    initial_type: int  # long-header packet type bits of an Initial
    retry_type: int  # a Retry has no Length field, so nothing after it can be found


_VERSIONS: dict[bytes, _Version] = {
    QUIC_V1.to_bytes(4, "big"): _Version(
        bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic key", b"quic iv", b"quic hp", 0, 3
    ),
    QUIC_V2.to_bytes(4, "big"): _Version(
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 key", b"quicv2 iv", b"quicv2 hp", 1, 0
    ),
}

_MAX_CID = 20  # RFC 9000 17.2: v1 and v2 connection IDs are at most 20 bytes
_SAMPLE = 16
_TAG = 16
_KEY_CACHE_SIZE = 256
# Chrome scatters its ClientHello over a dozen or so CRYPTO frames; far more means a hostile sender.
_MAX_PENDING_CHUNKS = 256
_CLIENT_HELLO = 0x01

_FRAME_PADDING = 0x00
_FRAME_PING = 0x01
_FRAME_ACK = 0x02
_FRAME_ACK_ECN = 0x03
_FRAME_CRYPTO = 0x06
_FRAME_CONNECTION_CLOSE = 0x1C
_NOT_PADDING = re.compile(rb"[^\x00]")


class _Truncated(ValueError):
    """A field runs past the end of its packet or frame."""


_ECB = modes.ECB()  # a mode holds no state: one for every header protection key

try:  # compiled (sensor/_fast/quic.c): the CRYPTO frames of an Initial (crypto_chunks_py is the reference),
    from sensor._fast import quic_absorb as _quic_absorb  # absorb_chunks_py is the reference
    from sensor._fast import quic_crypto_chunks as _quic_crypto_chunks
    from sensor._fast import quic_initial_keys as _quic_initial_keys  # initial_keys_py is the reference
    from sensor._fast import quic_long_header as _quic_long_header  # long_header_py is the reference
    from sensor._fast import quic_unprotect as _quic_unprotect  # unprotect_py is the reference
except ImportError:  # built without a C compiler
    _quic_crypto_chunks = _quic_absorb = _quic_initial_keys = _quic_unprotect = _quic_long_header = None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """RFC 9000 16: the value at `pos` and the position after it."""
    if pos >= len(buf):
        raise _Truncated("varint")
    size = 1 << (buf[pos] >> 6)
    if pos + size > len(buf):
        raise _Truncated("varint")
    return int.from_bytes(buf[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1), pos + size


@lru_cache(maxsize=None)
def _label_block(label: bytes, length: int) -> bytes:
    """HkdfLabel (RFC 8446 7.1) with an empty context, then HKDF-Expand's block counter 1."""
    full_label = b"tls13 " + label
    return struct.pack("!HB", length, len(full_label)) + full_label + b"\x00\x01"


# HMAC-SHA256 (RFC 2104) in hashlib's objects: its inner and outer pads are a key XORed byte by
# byte (bytes.translate with these tables), and the pads' hashes, once made, are copied for each
# message under the same key: a one-shot hmac.digest spends twice that in OpenSSL's set-up.
_TO_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_TO_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))
_SHA256_BLOCK = 64  # every HMAC key here (a salt, a 32-byte secret) fits one block, unhashed
_Pads = tuple["hashlib._Hash", "hashlib._Hash"]  # the SHA-256 states after a key's inner and outer pad


def _hmac_pads(key: bytes) -> _Pads:
    """The SHA-256 states after the inner and the outer pad of `key` (at most one block long)."""
    block = key.ljust(_SHA256_BLOCK, b"\x00")
    return sha256(block.translate(_TO_INNER_PAD)), sha256(block.translate(_TO_OUTER_PAD))


def _hmac(pads: _Pads, message: bytes) -> bytes:
    """HMAC-SHA256 of `message` under the key whose `_hmac_pads` these are."""
    inner, outer = pads[0].copy(), pads[1].copy()
    inner.update(message)
    outer.update(inner.digest())
    return outer.digest()


def _expand_label(pads: _Pads, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label (RFC 8446 7.1) with SHA-256 and an empty context, from the secret
    whose `_hmac_pads` these are.

    Every length asked here fits one SHA-256 block, where HKDF-Expand (RFC 5869 2.3) is the single
    HMAC T(1) = HMAC(secret, info | 0x01).
    """
    return _hmac(pads, _label_block(label, length))[:length]


# the salt of each version, its HMAC pads made once (HKDF-Extract's key)
_SALT_PADS: dict[bytes, _Pads] = {version: _hmac_pads(params.salt) for version, params in _VERSIONS.items()}


def client_initial_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) protecting a client's Initial packets for `version` and the original DCID.

    Raises ValueError for a version other than QUIC v1 or v2.
    """
    wire_version = version.to_bytes(4, "big") if 0 <= version < 2**32 else b""
    if wire_version not in _VERSIONS:
        raise ValueError(f"no Initial keys for QUIC version {version:#x}")
    return _initial_keys(wire_version, dcid)


def initial_keys_py(wire_version: bytes, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """client_initial_keys for a version as sent (the 4 bytes of a known one)."""
    params = _VERSIONS[wire_version]
    initial_secret = _hmac(_SALT_PADS[wire_version], dcid)  # HKDF-Extract
    client = _hmac_pads(_expand_label(_hmac_pads(initial_secret), b"client in", 32))
    return (
        _expand_label(client, params.key_label, 16),
        _expand_label(client, params.iv_label, 12),
        _expand_label(client, params.hp_label, 16),
    )


def _initial_keys_fast(wire_version: bytes, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """initial_keys_py by the compiled HKDF: one call where the Python one makes some forty."""
    params = _VERSIONS[wire_version]
    keys = _quic_initial_keys(params.salt, dcid, params.key_label, params.iv_label, params.hp_label)
    return keys if keys is not None else initial_keys_py(wire_version, dcid)


_initial_keys = _initial_keys_fast if _quic_initial_keys is not None else initial_keys_py


def hp_mask_py(hp: bytes, sample: bytes) -> bytes:
    """The header protection mask (RFC 9001 5.4.3): AES-ECB of the 16-byte sample under key `hp`."""
    return Cipher(AES(hp), _ECB).encryptor().update(sample)


@frozen_record
class _Keys:
    aead: AESGCM
    iv: bytes
    hp: bytes  # the header protection key


_new_keys = positional_constructor(_Keys)


_LongHeader = tuple[bytes, bool, bytes, int, int]  # version as sent, whether an Initial, DCID, pn_offset, end


def long_header_py(buf: bytes, start: int) -> _LongHeader | None:
    """(version, initial, dcid, pn_offset, end) of the long-header packet at `start`, `end` the
    first byte after it (where a coalesced one may begin), or None where no further packet can be
    delimited."""
    if len(buf) - start < 7 or buf[start] & 0xC0 != 0xC0:  # short header or trailing padding
        return None
    version = buf[start + 1 : start + 5]
    params = _VERSIONS.get(version)
    packet_type = (buf[start] >> 4) & 0x03
    if params is None or packet_type == params.retry_type:
        return None
    dcid_length = buf[start + 5]
    pos = start + 6 + dcid_length
    if dcid_length > _MAX_CID or pos >= len(buf) or buf[pos] > _MAX_CID:
        return None
    dcid = buf[start + 6 : pos]
    pos += 1 + buf[pos]
    initial = packet_type == params.initial_type
    size = len(buf)
    try:
        if initial:
            if pos < size and buf[pos] < 0x40:  # no token (a client's first Initial) or a short one
                pos += 1 + buf[pos]
            else:
                token_length, pos = _varint(buf, pos)
                pos += token_length
        if pos + 1 < size and buf[pos] >> 6 == 1:  # the Length of a full-size packet: two bytes
            length, pos = ((buf[pos] & 0x3F) << 8) | buf[pos + 1], pos + 2
        else:
            length, pos = _varint(buf, pos)
    except _Truncated:
        return None
    if pos + length > len(buf):
        return None
    return version, initial, dcid, pos, pos + length


_long_header = _quic_long_header if _quic_long_header is not None else long_header_py


def _decode_packet_number(largest: int, truncated: int, bits: int) -> int:
    """RFC 9000 17.1: the full packet number closest to the one after `largest`."""
    expected = largest + 1
    window = 1 << bits
    candidate = (expected & ~(window - 1)) | truncated
    if candidate <= expected - window // 2 and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + window // 2 and candidate >= window:
        return candidate - window
    return candidate


def unprotect_py(
    hp: bytes, iv: bytes, buf: bytes, start: int, pn_offset: int, end: int, largest_pn: int
) -> tuple[int, bytes, bytes, bytes] | None:
    """Remove the header protection of the long-header packet at buf[start:end] (RFC 9001 5.4):
    (packet number, nonce, associated data, ciphertext with its tag), or None where no key can
    fit it (too short for a sample or a tag)."""
    sample_at = pn_offset + 4
    if start < 0 or pn_offset <= start or end > len(buf) or sample_at + _SAMPLE > end:
        return None
    mask = hp_mask_py(hp, buf[sample_at : sample_at + _SAMPLE])
    first = buf[start] ^ (mask[0] & 0x0F)
    pn_length = (first & 0x03) + 1
    payload_at = pn_offset + pn_length
    if payload_at + _TAG > end:
        return None
    pn_mask = int.from_bytes(mask[1 : 1 + pn_length], "big")
    truncated = int.from_bytes(buf[pn_offset:payload_at], "big") ^ pn_mask
    packet_number = _decode_packet_number(largest_pn, truncated, 8 * pn_length)
    aad = bytes((first,)) + buf[start + 1 : pn_offset] + truncated.to_bytes(pn_length, "big")
    nonce = (int.from_bytes(iv, "big") ^ packet_number).to_bytes(12, "big")
    return packet_number, nonce, aad, buf[payload_at:end]


_unprotect = _quic_unprotect if _quic_unprotect is not None else unprotect_py
_LARGEST_COMPILED = 1 << 62  # quic_unprotect takes a largest packet number up to this (64-bit arithmetic)


def crypto_chunks_py(payload: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of the CRYPTO frames in an Initial payload, up to the first frame not allowed there."""
    chunks: list[tuple[int, bytes]] = []
    pos = 0
    end = len(payload)
    content_end = -1  # where the trailing padding starts, once padding is met
    try:
        while pos < end:
            frame_type = payload[pos]
            if frame_type == _FRAME_PADDING:
                if content_end < 0:
                    content_end = len(payload.rstrip(b"\x00"))
                if pos >= content_end:  # padding to the end of the packet
                    break
                pos = _NOT_PADDING.search(payload, pos).start()  # type: ignore[union-attr]
                continue
            pos += 1
            if frame_type == _FRAME_PING:
                continue
            if frame_type == _FRAME_CRYPTO:
                # offsets and lengths are mostly one- or two-byte varints: read inline
                if pos < end and payload[pos] < 0x40:
                    offset, pos = payload[pos], pos + 1
                elif pos + 1 < end and payload[pos] < 0x80:
                    offset, pos = ((payload[pos] & 0x3F) << 8) | payload[pos + 1], pos + 2
                else:
                    offset, pos = _varint(payload, pos)
                if pos < end and payload[pos] < 0x40:
                    length, pos = payload[pos], pos + 1
                elif pos + 1 < end and payload[pos] < 0x80:
                    length, pos = ((payload[pos] & 0x3F) << 8) | payload[pos + 1], pos + 2
                else:
                    length, pos = _varint(payload, pos)
                if pos + length > end:
                    break
                chunks.append((offset, payload[pos : pos + length]))
                pos += length
            elif frame_type in (_FRAME_ACK, _FRAME_ACK_ECN):
                pos = _skip_ack(payload, pos, frame_type == _FRAME_ACK_ECN)
            elif frame_type == _FRAME_CONNECTION_CLOSE:
                _, pos = _varint(payload, pos)  # error code
                _, pos = _varint(payload, pos)  # frame type
                reason_length, pos = _varint(payload, pos)
                pos += reason_length
            else:
                break
    except _Truncated:
        pass  # keep the CRYPTO data read before the damage
    return chunks


_crypto_chunks = _quic_crypto_chunks if _quic_crypto_chunks is not None else crypto_chunks_py


def _skip_ack(payload: bytes, pos: int, ecn: bool) -> int:
    """The position after an ACK frame whose type byte has been read."""
    _, pos = _varint(payload, pos)  # largest acknowledged
    _, pos = _varint(payload, pos)  # ack delay
    range_count, pos = _varint(payload, pos)
    _, pos = _varint(payload, pos)  # first range
    if range_count > (len(payload) - pos) // 2:  # each range needs two varints of a byte or more
        raise _Truncated("ACK ranges")
    for _ in range(2 * range_count + (3 if ecn else 0)):
        _, pos = _varint(payload, pos)
    return pos


def _open(keys: _Keys, buf: bytes, start: int, pn_offset: int, end: int, largest_pn: int) -> tuple[int, bytes] | None:
    """Remove header protection and decrypt the packet at buf[start:end]; (packet number,
    plaintext) or None if the keys do not fit."""
    unprotect = _unprotect if largest_pn <= _LARGEST_COMPILED else unprotect_py
    found = unprotect(keys.hp, keys.iv, buf, start, pn_offset, end, largest_pn)
    if found is None:
        return None
    try:
        return found[0], keys.aead.decrypt(found[1], found[3], found[2])
    except InvalidTag:
        return None


@dataclass(slots=True)
class _Connection:
    key_dcid: bytes  # the DCID the Initial keys of this connection derive from
    largest_pn: int = -1
    crypto: bytearray = field(default_factory=bytearray)  # CRYPTO stream, contiguous from offset 0
    pending: dict[int, bytes] = field(default_factory=dict)  # chunks that arrived ahead of a gap
    pending_bytes: int = 0
    finished: bool = False  # ClientHello returned or given up: nothing more to do
    last_ts: float = 0.0  # capture time of its last client Initial
    keys: _Keys | None = None  # the Initial keys of key_dcid under `keys_version`: no cache look-up per Initial
    keys_version: bytes = b""


class QuicClientHelloTracker:
    """Reassembles the ClientHello of each QUIC connection from its client's Initial packets.

    Counters: "quic.initials" (Initial packets examined), "quic.server_datagrams" (skipped: they
    flow back to a known client), "quic.decrypt_errors" (no client key opened one: server
    Initials land here when their client's were not seen), "quic.hellos", "quic.hello_errors"
    (the CRYPTO stream is no ClientHello, exceeds the byte cap or cannot be decoded),
    "quic.evicted" (over the count cap) and "quic.expired" (no client Initial for `idle_timeout`
    seconds of capture time: a connection, done or not, is remembered while its client may still
    retransmit an Initial, then forgotten).
    """

    def __init__(
        self, max_connections: int = 4096, max_crypto_bytes: int = 65536, counters: Counters | None = None,
        idle_timeout: float = 120.0,
    ) -> None:
        self.max_connections = max_connections
        self.max_crypto_bytes = max_crypto_bytes
        self.counters = counters if counters is not None else Counters()
        self._counts = self.counters.values  # for the counts made per datagram: a call of Counters.add costs more
        self.idle_timeout = idle_timeout
        # the least recently active first: the idle ones are found at the front
        self._connections: OrderedDict[Hashable, _Connection] = OrderedDict()
        self._keys: OrderedDict[tuple[bytes, bytes], _Keys] = OrderedDict()
        self._next_expiry = 0.0

    def feed(
        self, conn_key: Hashable, datagram: bytes, reverse_key: Hashable | None = None, ts: float = 0.0
    ) -> ClientHello | None:
        """Take one UDP payload, seen at capture time `ts`; return the ClientHello the first time
        it is whole.

        `reverse_key` is the key of the opposite direction: when that is a known client, this
        datagram comes from its server, whose Initials no client key opens, so it is skipped.
        """
        if ts >= self._next_expiry:
            self._expire(ts)
        conn = self._connections.get(conn_key)
        if conn is not None:
            self._connections.move_to_end(conn_key)
            conn.last_ts = ts
            if conn.finished:
                return None
        elif reverse_key is not None and reverse_key in self._connections:
            counts = self._counts
            counts["quic.server_datagrams"] = counts.get("quic.server_datagrams", 0) + 1
            return None
        start = 0
        while (header := _long_header(datagram, start)) is not None:
            version, initial, dcid, pn_offset, end = header
            if not initial:
                start = end
                continue
            counts = self._counts
            counts["quic.initials"] = counts.get("quic.initials", 0) + 1
            opened = self._open_client_initial(conn, datagram, start, version, dcid, pn_offset, end)
            start = end
            if opened is None:
                self.counters.add("quic.decrypt_errors")
                continue
            key_dcid, keys, packet_number, payload = opened
            if conn is None:
                conn = self._new_connection(conn_key, key_dcid)
                conn.last_ts = ts
            elif key_dcid != conn.key_dcid:
                # Keys from a new DCID: a Retry (or a new connection on the same addresses)
                # restarted the handshake, and its CRYPTO stream starts again at offset 0.
                conn.key_dcid = key_dcid
                self._reset_crypto(conn)
            conn.keys, conn.keys_version = keys, version
            if packet_number > conn.largest_pn:
                conn.largest_pn = packet_number
            hello = self._absorb(conn, _crypto_chunks(payload))
            if conn.finished:
                return hello
        return None

    def skip_server(self, conn_key: Hashable, reverse_key: Hashable, ts: float) -> bool:
        """What `feed` does with a datagram from the server of a known client when no expiry is due:
        counted and skipped, True. False, having changed nothing, for any other (the compiled
        handshake step does this without a call of feed: TrafficDecoder.handshake_py is its reference)."""
        connections = self._connections
        if ts >= self._next_expiry or conn_key in connections or reverse_key not in connections:
            return False
        counts = self._counts
        counts["quic.server_datagrams"] = counts.get("quic.server_datagrams", 0) + 1
        return True

    def _expire(self, now: float) -> None:
        """Forget the connections idle longer than the timeout; looked for every few seconds of
        capture time, from the front of the table only."""
        self._next_expiry = now + min(10.0, self.idle_timeout / 4)
        connections, limit, expired = self._connections, now - self.idle_timeout, 0
        while connections:
            key = next(iter(connections))
            if connections[key].last_ts >= limit:
                break
            del connections[key]
            expired += 1
        if expired:
            self.counters.add("quic.expired", expired)

    def _open_client_initial(
        self, conn: _Connection | None, buf: bytes, start: int, version: bytes, dcid: bytes, pn_offset: int, end: int
    ) -> tuple[bytes, _Keys, int, bytes] | None:
        """(DCID the keys came from, those keys, packet number, plaintext) of the Initial at
        buf[start:end], or None when no client key fits."""
        # Once the server has answered, client Initials carry the server's chosen DCID but keep
        # the keys of the original one; after a Retry the keys follow the new DCID. Try both.
        if conn is None:
            largest_pn = -1
        else:
            largest_pn = conn.largest_pn
            keys = conn.keys if conn.keys is not None and conn.keys_version == version else None
            if keys is None:
                keys = self._keys_for(version, conn.key_dcid)
            found = _open(keys, buf, start, pn_offset, end, largest_pn)
            if found is not None:
                return conn.key_dcid, keys, found[0], found[1]
            if conn.key_dcid == dcid:
                return None
        keys = self._keys_for(version, dcid)
        found = _open(keys, buf, start, pn_offset, end, largest_pn)
        return None if found is None else (dcid, keys, found[0], found[1])

    def _keys_for(self, version: bytes, dcid: bytes) -> _Keys:
        cache_key = (version, dcid)
        keys = self._keys.get(cache_key)
        if keys is not None:
            self._keys.move_to_end(cache_key)
            return keys
        key, iv, hp = _initial_keys(version, dcid)
        keys = _new_keys(AESGCM(key), iv, hp)
        self._keys[cache_key] = keys
        if len(self._keys) > _KEY_CACHE_SIZE:
            self._keys.popitem(last=False)
        return keys

    def _new_connection(self, conn_key: Hashable, key_dcid: bytes) -> _Connection:
        conn = _Connection(key_dcid)
        self._connections[conn_key] = conn
        if len(self._connections) > self.max_connections:
            self._connections.popitem(last=False)
            self.counters.add("quic.evicted")
        return conn

    @staticmethod
    def _reset_crypto(conn: _Connection) -> None:
        conn.crypto = bytearray()
        conn.pending = {}
        conn.pending_bytes = 0

    def _absorb(self, conn: _Connection, chunks: list[tuple[int, bytes]]) -> ClientHello | None:
        """Add CRYPTO data; return the ClientHello when it just became whole."""
        cap = self.max_crypto_bytes
        absorbed = None
        if _quic_absorb is not None:
            absorbed = _quic_absorb(conn.crypto, conn.pending, conn.pending_bytes, chunks, cap, _MAX_PENDING_CHUNKS)
        if absorbed is None:
            absorbed = absorb_chunks_py(conn.crypto, conn.pending, conn.pending_bytes, chunks, cap, _MAX_PENDING_CHUNKS)
        if absorbed < 0:
            self._give_up(conn)
            return None
        conn.pending_bytes = absorbed
        crypto = conn.crypto
        if len(crypto) < 4:
            return None
        need = 4 + int.from_bytes(crypto[1:4], "big")
        if crypto[0] != _CLIENT_HELLO or need > cap:
            self._give_up(conn)
            return None
        if len(crypto) < need:
            return None
        hello = parse_client_hello_message(bytes(crypto[:need]))
        if hello is None:
            self._give_up(conn)
            return None
        counts = self._counts
        counts["quic.hellos"] = counts.get("quic.hellos", 0) + 1
        self._finish(conn)
        return hello

    def _give_up(self, conn: _Connection) -> None:
        self.counters.add("quic.hello_errors")
        self._finish(conn)

    def _finish(self, conn: _Connection) -> None:
        conn.finished = True
        self._reset_crypto(conn)


def absorb_chunks_py(crypto: bytearray, pending: dict[int, bytes], pending_bytes: int, chunks: list[tuple[int, bytes]],
                     cap: int, max_pending: int) -> int:
    """CRYPTO chunks (offset, data) added to a connection's stream `crypto` (contiguous from offset
    0, at most `cap` bytes) and to the chunks held ahead of a gap (`pending`, `pending_bytes` in
    all, at most `max_pending` of them), both changed in place: the new pending_bytes, or -1 where
    a bound is passed (the connection gives up; what was changed is dropped with it)."""
    for offset, data in chunks:
        if offset >= cap:
            continue  # beyond anything a ClientHello within the cap can reach
        data = data[: cap - offset]
        have = len(crypto)
        if offset <= have:
            crypto += data[have - offset :]
        elif len(data) > len(pending.get(offset, b"")):
            if pending_bytes + len(data) > cap or len(pending) >= max_pending:
                return -1
            pending_bytes += len(data) - len(pending.get(offset, b""))
            pending[offset] = data
    if pending:
        for offset in sorted(pending):
            if offset > len(crypto):
                break
            data = pending.pop(offset)
            pending_bytes -= len(data)
            crypto += data[len(crypto) - offset :]
    return pending_bytes


def is_quic_initial(datagram: bytes) -> bool:
    """Cheap check: the datagram starts with a QUIC v1 or v2 Initial long header."""
    if len(datagram) < 7 or datagram[0] & 0xC0 != 0xC0:
        return False
    params = _VERSIONS.get(datagram[1:5])
    return params is not None and (datagram[0] >> 4) & 0x03 == params.initial_type and datagram[5] <= _MAX_CID
