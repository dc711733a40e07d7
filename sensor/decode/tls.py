"""TLS ClientHello decoding (RFC 8446 section 4.1.2, RFC 6066, RFC 7301), sans-IO.

`parse_stream` takes the client-to-server bytes of a TCP stream from its first byte, as far as
they have been reassembled, and says whether they hold a whole ClientHello yet. The handshake
message may be split over several TLS records and the records over several segments.
`parse_client_hello_message` decodes one complete handshake message; QUIC uses it directly since
its CRYPTO frames carry the message without a record layer.

Only what the sensor reports is decoded: server_name, ALPN, supported_versions, the presence of
encrypted_client_hello, and the extension types in order. Nothing here raises on bad input.
"""
from __future__ import annotations

import enum
import re
import struct

from sensor.records import frozen_record, positional_constructor

try:  # the compiled fast paths (see sensor/_fast/tls.c); the *_py functions are the references
    from sensor._fast import hello_message as _hello_message_fast
    from sensor._fast import parse_hello as _parse_hello_fast
except ImportError:  # built without a C compiler
    _parse_hello_fast = _hello_message_fast = None

_CONTENT_HANDSHAKE = 0x16
_HANDSHAKE_CLIENT_HELLO = 0x01
_RECORD_HEADER = 5
_HANDSHAKE_HEADER = 4
# RFC 8446 5.1: a plaintext record carries at most 2^14 bytes; the slack tolerates stacks that
# round up to the ciphertext limit rather than reject a real hello.
_MAX_RECORD = 2**14 + 2048
# A ClientHello larger than this is either hostile or not TLS; post-quantum key shares keep
# real ones well below it.
MAX_HELLO = 65_536
# legacy_version(2) random(32) session_id(1) cipher_suites(2+2) compression_methods(1+1)
_MIN_HELLO_BODY = 41

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ENCRYPTED_CLIENT_HELLO = 0xFE0D
_SNI_HOST_NAME = 0
_TLS13 = 0x0304
_TLS13_DRAFT_HIGH_BYTE = 0x7F  # 0x7fXX: TLS 1.3 drafts, still sent by old clients
LEGACY_VERSIONS = {0x0303: "1.2", 0x0302: "1.1", 0x0301: "1.0"}

_HEAD = _HANDSHAKE_HEADER + 1  # type, length, legacy_version major byte
_RECORD = struct.Struct("!BBBH")
_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")


@frozen_record
class ClientHello:
    server_name: str | None  # SNI host_name, lower-cased, as sent (A-labels); None if absent
    alpn: tuple[str, ...]  # protocol names in the client's order
    ech: bool  # encrypted_client_hello present: server_name is only the outer cover name
    version: str | None  # "1.3" if supported_versions offers it, else from legacy_version
    extensions: tuple[int, ...]  # extension types in order, GREASE included (fingerprinting)


_new_client_hello = positional_constructor(ClientHello)


class TlsStatus(enum.Enum):
    NOT_TLS = "not_tls"
    NEED_MORE = "need_more"
    DONE = "done"


# hello_message's status codes (sensor/_fast/tls.c returns the same)
_NEED_MORE, _NOT_TLS, _DONE = 0, 1, 2
_STATUSES = (TlsStatus.NEED_MORE, TlsStatus.NOT_TLS, TlsStatus.DONE)


class _Malformed(ValueError):
    """An extension body that does not follow its own length fields."""


def looks_like_client_hello(prefix: bytes) -> bool:
    """Cheap content test on the first bytes of a stream; True when the bytes seen so far fit.

    Checks the record header (handshake, version 3.0 to 3.4, sane length) and the handshake type,
    each only as far as `prefix` reaches, so one byte is enough for a first guess.
    """
    size = len(prefix)
    if size == 0 or prefix[0] != _CONTENT_HANDSHAKE:
        return False
    if size >= 2 and prefix[1] != 3:
        return False
    if size >= 3 and prefix[2] > 4:
        return False
    if size >= 5 and not 0 < _U16.unpack_from(prefix, 3)[0] <= _MAX_RECORD:
        return False
    return size < 6 or prefix[5] == _HANDSHAKE_CLIENT_HELLO


def parse_stream(stream: bytes) -> tuple[TlsStatus, ClientHello | None]:
    """Find the ClientHello at the start of a client-to-server TCP stream.

    Returns (NEED_MORE, None) while the handshake message is incomplete, (NOT_TLS, None) when the
    bytes cannot start a ClientHello or the complete one cannot be decoded, (DONE, hello) otherwise.
    """
    status, message = _hello_message(stream)
    if message is None:
        return _STATUSES[status], None
    hello = parse_client_hello_message(message)
    if hello is None:
        return TlsStatus.NOT_TLS, None
    return TlsStatus.DONE, hello


def whole_client_hello(segment: bytes) -> ClientHello | None:
    """The ClientHello when `segment` alone holds a whole one that decodes, as `parse_stream`
    gives it with DONE; None wherever `parse_stream` gives anything else."""
    message = _hello_message(segment)[1]
    return parse_client_hello_message(message) if message is not None else None


def hello_message_py(stream: bytes) -> tuple[int, bytes | None]:
    """The record layer of parse_stream: (_NEED_MORE or _NOT_TLS, None), or (_DONE, the whole
    handshake message gathered from the records that carry it)."""
    fragments: list[bytes] = []
    head = b""  # the first bytes of the handshake message, enough to judge it early
    have = 0  # handshake bytes gathered from the records so far
    need = -1  # whole handshake message size, once its header has been seen
    pos = 0
    end = len(stream)
    while need < 0 or have < need:
        if end - pos < _RECORD_HEADER:  # also when the previous record ran past the end
            return _NEED_MORE, None
        content_type, major, minor, length = _RECORD.unpack_from(stream, pos)
        if content_type != _CONTENT_HANDSHAKE or major != 3 or minor > 4 or not 0 < length <= _MAX_RECORD:
            return _NOT_TLS, None
        pos += _RECORD_HEADER
        fragment = stream[pos : pos + length]
        pos += length
        fragments.append(fragment)
        have += len(fragment)
        if fragment and len(head) < _HEAD:
            head += fragment[: _HEAD - len(head)]
            if _rules_out_client_hello(head):
                return _NOT_TLS, None
            if need < 0 and len(head) >= _HANDSHAKE_HEADER:
                need = _HANDSHAKE_HEADER + int.from_bytes(head[1:4], "big")
    message = fragments[0] if len(fragments) == 1 else b"".join(fragments)
    return _DONE, message[:need]


def find_client_hello(stream: bytes, start: int = 0) -> tuple[TlsStatus, ClientHello | None, int]:
    """Find a ClientHello that starts anywhere at or after `start`: TLS after a plaintext start
    (STARTTLS, a database's or RDP's negotiation, a proxy tunnel).

    Every candidate record header is confirmed by decoding the whole hello, so plaintext that
    happens to hold the header bytes is passed over. Returns (DONE, hello, offset of its record),
    (NEED_MORE, None, offset) while the candidate at offset is incomplete, or (NOT_TLS, None,
    offset) with the offset to resume from once more bytes have arrived.
    """
    pos = start
    while True:
        pos = stream.find(b"\x16\x03", pos)
        if pos < 0:
            return TlsStatus.NOT_TLS, None, max(start, len(stream) - 1)  # a header may start in the last byte
        if looks_like_client_hello(stream[pos : pos + 6]):
            status, hello = parse_stream(stream[pos:])
            if status is not TlsStatus.NOT_TLS:
                return status, hello, pos
        pos += 1


# What a plaintext start that ended in a ClientHello was, from its client bytes: the first match
# names it. The upgrade commands: RFC 3207 (SMTP), 2595 (IMAP, POP3), 4217 (FTP), 6120 (XMPP),
# 4511 (LDAP's StartTLS extended operation); PostgreSQL's SSLRequest; MySQL's SSL request packet
# (32 bytes, sequence 1); RDP's TPKT-framed X.224 connection request (MS-RDPBCGR 2.2.1.1).
PREAMBLES: tuple[tuple[re.Pattern[bytes], str], ...] = (
    (re.compile(rb"(?im)\A(?:EHLO|HELO|LHLO)\b.*^STARTTLS\r?$", re.S), "smtp"),
    (re.compile(rb"(?im)^[!#-'*-Z^-z|~]+ STARTTLS\r?$"), "imap"),
    (re.compile(rb"(?im)^STLS\r?$"), "pop3"),
    (re.compile(rb"(?im)^AUTH (?:TLS|SSL|TLS-C|TLS-P)\r?$"), "ftp"),
    (re.compile(rb"(?im)^STARTTLS\r?$"), "starttls"),  # NNTP, ManageSieve, ...
    (re.compile(rb"<starttls[\s/>]"), "xmpp"),
    (re.compile(rb"1\.3\.6\.1\.4\.1\.1466\.20037"), "ldap"),
    (re.compile(rb"\A\x00\x00\x00\x08\x04\xd2\x16\x2f\Z"), "postgresql"),
    (re.compile(rb"\A\x20\x00\x00\x01.{32}\Z", re.S), "mysql"),
    (re.compile(rb"\A\x03\x00..[\x06-\xfe]\xe0", re.S), "rdp"),
)


def preamble_protocol(preamble: bytes) -> str:
    """The name of the plaintext protocol whose client bytes `preamble` led up to a ClientHello."""
    for pattern, name in PREAMBLES:
        if pattern.search(preamble) is not None:
            return name
    return "unknown"


def _rules_out_client_hello(head: bytes) -> bool:
    """Whether the first (up to 5) handshake bytes already show this is no ClientHello."""
    if head[0] != _HANDSHAKE_CLIENT_HELLO:
        return True
    if len(head) >= _HANDSHAKE_HEADER and not _MIN_HELLO_BODY <= int.from_bytes(head[1:4], "big") <= MAX_HELLO:
        return True
    return len(head) > _HANDSHAKE_HEADER and head[4] != 3  # legacy_version major


def parse_client_hello_message(msg: bytes) -> ClientHello | None:
    """Decode a complete ClientHello handshake message (type byte, 3-byte length, body).

    Returns None when `msg` is not a whole ClientHello. Damage inside the extensions block is
    tolerated when the server_name could still be read: the hello then holds whatever else could
    be read around the damage.
    """
    fast = _parse_hello_fast(msg) if _parse_hello_fast is not None else None
    if fast is None:
        return parse_client_hello_message_py(msg)
    server_name, alpn, ech, legacy_version, offers_tls13, extensions = fast
    version = "1.3" if offers_tls13 else LEGACY_VERSIONS.get(legacy_version)
    return _new_client_hello(server_name, alpn, ech, version, extensions)


def parse_client_hello_message_py(msg: bytes) -> ClientHello | None:
    """parse_client_hello_message in pure Python: the reference, and the path for what the fast one declines."""
    if len(msg) < _HANDSHAKE_HEADER or msg[0] != _HANDSHAKE_CLIENT_HELLO:
        return None
    end = _HANDSHAKE_HEADER + int.from_bytes(msg[1:4], "big")
    if end > len(msg) or end < _HANDSHAKE_HEADER + _MIN_HELLO_BODY:
        return None
    legacy_version = _U16.unpack_from(msg, 4)[0]
    if legacy_version >> 8 != 3:
        return None
    pos = 4 + 2 + 32
    session_id_length = msg[pos]
    if session_id_length > 32:
        return None
    pos += 1 + session_id_length
    if pos + 2 > end:
        return None
    suites_length = _U16.unpack_from(msg, pos)[0]
    if suites_length < 2 or suites_length % 2:
        return None
    pos += 2 + suites_length
    if pos + 1 > end:
        return None
    compression_length = msg[pos]
    pos += 1 + compression_length
    if compression_length < 1 or pos > end:
        return None
    legacy_name = LEGACY_VERSIONS.get(legacy_version)
    if pos == end:  # extensions are optional before TLS 1.3
        return ClientHello(None, (), False, legacy_name, ())
    if pos + 2 > end:
        return None
    block_end = pos + 2 + _U16.unpack_from(msg, pos)[0]
    damaged = block_end > end
    block_end = min(block_end, end)
    pos += 2

    types: list[int] = []
    server_name: str | None = None
    sni_seen = False
    alpn: tuple[str, ...] = ()
    offers_tls13 = False
    ech = False
    while pos + 4 <= block_end:
        ext_type, ext_length = _U16_PAIR.unpack_from(msg, pos)
        pos += 4
        if pos + ext_length > block_end:
            damaged = True
            break
        types.append(ext_type)
        data = msg[pos : pos + ext_length]
        pos += ext_length
        try:
            if ext_type == EXT_SERVER_NAME and not sni_seen:
                server_name, sni_seen = _server_name(data), True
            elif ext_type == EXT_ALPN and not alpn:
                alpn = _alpn(data)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                offers_tls13 = offers_tls13 or _offers_tls13(data)
            elif ext_type == EXT_ENCRYPTED_CLIENT_HELLO:
                ech = True
        except _Malformed:  # the extension framing still holds, so the next ones stay readable
            damaged = True
    if pos != block_end:
        damaged = True
    if damaged and not sni_seen:
        return None
    return ClientHello(server_name, alpn, ech, "1.3" if offers_tls13 else legacy_name, tuple(types))


def _server_name(data: bytes) -> str | None:
    """The first host_name of a server_name extension, None if the list holds none."""
    if len(data) < 2 or 2 + _U16.unpack_from(data, 0)[0] != len(data):
        raise _Malformed("server_name list length")
    pos = 2
    while pos + 3 <= len(data):
        name_type = data[pos]
        name_length = _U16.unpack_from(data, pos + 1)[0]
        pos += 3
        if pos + name_length > len(data):
            raise _Malformed("server_name entry length")
        if name_type == _SNI_HOST_NAME:
            # RFC 6066 wants ASCII A-labels; anything else is kept visible rather than dropped.
            return data[pos : pos + name_length].decode("utf-8", "backslashreplace").lower() or None
        pos += name_length
    if pos != len(data):
        raise _Malformed("server_name trailing bytes")
    return None


def _alpn(data: bytes) -> tuple[str, ...]:
    """Protocol names of an ALPN extension."""
    if len(data) < 2 or 2 + _U16.unpack_from(data, 0)[0] != len(data):
        raise _Malformed("ALPN list length")
    names: list[str] = []
    pos = 2
    while pos < len(data):
        name_length = data[pos]
        pos += 1
        if name_length == 0 or pos + name_length > len(data):
            raise _Malformed("ALPN entry length")
        names.append(data[pos : pos + name_length].decode("ascii", "backslashreplace"))
        pos += name_length
    return tuple(names)


def _offers_tls13(data: bytes) -> bool:
    """Whether a ClientHello supported_versions list offers TLS 1.3 (final or a draft)."""
    if not data or data[0] % 2 or 1 + data[0] != len(data):
        raise _Malformed("supported_versions length")
    versions = struct.unpack_from(f"!{data[0] // 2}H", data, 1)
    return any(version == _TLS13 or version >> 8 == _TLS13_DRAFT_HIGH_BYTE for version in versions)


_hello_message = _hello_message_fast if _hello_message_fast is not None else hello_message_py
