"""Builders for synthetic traffic: plain functions and small classes that return bytes.

Used by `make_pcaps.py` (the story captures), `bench/make_capture.py` (the benchmark capture)
and the tests. Everything is deterministic for a given `random.Random`, so captures built twice
are identical. struct-based on purpose: building a million frames must stay fast.
"""

from __future__ import annotations

import gzip
import ipaddress
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8  # outer tag of a QinQ pair

IPPROTO_TCP = 6
IPPROTO_UDP = 17

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# TLS GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa.
GREASE_VALUES = tuple(0x0A0A + 0x1010 * i for i in range(16))

GROUP_X25519MLKEM768 = 0x11EC
GROUP_X25519 = 0x001D
MLKEM768_X25519_SHARE = 1216  # ML-KEM-768 encapsulation key (1184) + X25519 public key (32)
MLKEM768_X25519_REPLY = 1120  # ML-KEM-768 ciphertext (1088) + X25519 public key (32)

EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_KEY_SHARE = 0x0033
EXT_QUIC_TRANSPORT_PARAMETERS = 0x0039
EXT_ENCRYPTED_CLIENT_HELLO = 0xFE0D

TLS_HANDSHAKE, TLS_CHANGE_CIPHER_SPEC, TLS_APPLICATION_DATA = 22, 20, 23
TLS_RECORD_MAX = 16384
TLS13_FULL_RECORD = 5 + TLS_RECORD_MAX + 1 + 16  # header + plaintext + inner content type + AEAD tag

QUIC_V1 = 0x00000001
QUIC_V1_INITIAL_SALT = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
QUIC_MIN_INITIAL_DATAGRAM = 1200

DNS_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SVCB": 64, "HTTPS": 65}
DNS_CLASS_IN = 1


# ---------------------------------------------------------------- checksums and addresses


def _ones_complement_sum(value: int) -> int:
    """The folded 16-bit one's complement sum of the words of `value` (an even number of bytes).

    2**16 == 1 (mod 0xffff), so summing the words equals reducing the whole number modulo 0xffff:
    one big-integer operation instead of a Python loop over words.
    """
    if value == 0:
        return 0
    return value % 0xFFFF or 0xFFFF


def _as_even(data: bytes) -> bytes:
    return data + b"\0" if len(data) % 2 else data


def internet_checksum(data: bytes) -> int:
    """The RFC 1071 checksum of `data`."""
    return 0xFFFF - _ones_complement_sum(int.from_bytes(_as_even(data), "big"))


@lru_cache(maxsize=1 << 16)
def pack_ip(address: str) -> bytes:
    """4 or 16 bytes of an IPv4 or IPv6 address in text form (cached: the same hosts recur)."""
    return ipaddress.ip_address(address).packed


def _pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    if len(src) == 4:
        return int.from_bytes(src + dst + struct.pack("!BBH", 0, proto, length), "big")
    return int.from_bytes(src + dst + struct.pack("!IxxxB", length, proto), "big")


# ---------------------------------------------------------------- layers 3 and 4


def ip_packet(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 0) -> bytes:
    """An IPv4 or IPv6 packet (chosen by the address family) carrying `payload`."""
    src_b, dst_b = pack_ip(src), pack_ip(dst)
    if len(src_b) != len(dst_b):
        raise ValueError(f"address families differ: {src} -> {dst}")
    if len(src_b) == 4:
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, ttl, proto, 0, src_b, dst_b
        )
        checksum = internet_checksum(header)
        return header[:10] + struct.pack("!H", checksum) + header[12:] + payload
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, ttl, src_b, dst_b) + payload


def tcp_packet(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    window: int = 64240,
    options: bytes = b"",
    ttl: int = 64,
    ident: int = 0,
) -> bytes:
    """An IP packet carrying one TCP segment with a correct checksum."""
    if len(options) % 4:
        raise ValueError("TCP options must be padded to a multiple of 4 bytes")
    ack_value = ack & 0xFFFFFFFF if flags & ACK else 0
    header = (
        struct.pack(
            "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack_value, (5 + len(options) // 4) << 4, flags, window, 0, 0
        )
        + options
    )
    length = len(header) + len(payload)
    total = (
        _pseudo_header_sum(pack_ip(src), pack_ip(dst), IPPROTO_TCP, length)
        + int.from_bytes(header, "big")
        + int.from_bytes(_as_even(payload), "big")
    )
    checksum = 0xFFFF - _ones_complement_sum(total)
    segment = header[:16] + struct.pack("!H", checksum) + header[18:] + payload
    return ip_packet(src, dst, IPPROTO_TCP, segment, ttl=ttl, ident=ident)


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = 64, ident: int = 0) -> bytes:
    """An IP packet carrying one UDP datagram with a correct checksum."""
    length = 8 + len(payload)
    total = (
        _pseudo_header_sum(pack_ip(src), pack_ip(dst), IPPROTO_UDP, length)
        + int.from_bytes(struct.pack("!HHHH", sport, dport, length, 0), "big")
        + int.from_bytes(_as_even(payload), "big")
    )
    checksum = 0xFFFF - _ones_complement_sum(total) or 0xFFFF  # 0 means "no checksum" in UDP
    datagram = struct.pack("!HHHH", sport, dport, length, checksum) + payload
    return ip_packet(src, dst, IPPROTO_UDP, datagram, ttl=ttl, ident=ident)


# ---------------------------------------------------------------- layer 2


def ethernet(payload: bytes, ethertype: int, *, src_mac: bytes, dst_mac: bytes, vlans: Sequence[int] = ()) -> bytes:
    """An Ethernet II frame; `vlans` are VLAN ids outermost first (one: 802.1Q, two: QinQ with an 802.1ad outer tag)."""
    if len(vlans) > 2:
        raise ValueError("at most two VLAN tags (QinQ)")
    tags = b""
    for position, vlan in enumerate(vlans):
        if not 0 <= vlan < 4096:
            raise ValueError(f"VLAN id out of range: {vlan}")
        tpid = TPID_8021AD if position == 0 and len(vlans) == 2 else TPID_8021Q
        tags += struct.pack("!HH", tpid, vlan)
    return dst_mac + src_mac + tags + struct.pack("!H", ethertype) + payload


@dataclass(frozen=True, slots=True)
class Link:
    """How IP packets are framed on the capture's link, seen from the monitored client's side."""

    linktype: int = LINKTYPE_ETHERNET
    vlans: tuple[int, ...] = ()
    client_mac: bytes = bytes.fromhex("02005e100001")
    gateway_mac: bytes = bytes.fromhex("02005e0000fe")

    def __post_init__(self) -> None:
        if self.linktype not in (LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL):
            raise ValueError(f"unsupported link type {self.linktype}")
        if self.vlans and self.linktype != LINKTYPE_ETHERNET:
            raise ValueError("VLAN tags need an Ethernet link")

    def frame(self, packet: bytes, from_client: bool) -> bytes:
        ethertype = ETHERTYPE_IPV6 if packet[0] >> 4 == 6 else ETHERTYPE_IPV4
        if self.linktype == LINKTYPE_RAW:
            return packet
        src, dst = (self.client_mac, self.gateway_mac) if from_client else (self.gateway_mac, self.client_mac)
        if self.linktype == LINKTYPE_LINUX_SLL:
            # packet type 4 = sent by this host, 0 = addressed to it; ARPHRD_ETHER = 1
            return struct.pack("!HHH8sH", 4 if from_client else 0, 1, 6, src, ethertype) + packet
        return ethernet(packet, ethertype, src_mac=src, dst_mac=dst, vlans=self.vlans)


class Packet(NamedTuple):
    frame: bytes
    from_client: bool


# ---------------------------------------------------------------- conversations


class UdpFlow:
    """Datagrams between a client and a server port, framed for one link."""

    def __init__(self, client: str, client_port: int, server: str, server_port: int, *, link: Link = Link()) -> None:
        self.client, self.client_port, self.server, self.server_port = client, client_port, server, server_port
        self.link = link
        self._ident = {True: 0x1000, False: 0x5000}

    def packet(self, payload: bytes, *, from_client: bool = True) -> Packet:
        ident = self._ident[from_client] = (self._ident[from_client] + 1) & 0xFFFF
        if from_client:
            ip = udp_packet(self.client, self.server, self.client_port, self.server_port, payload, ident=ident)
        else:
            ip = udp_packet(self.server, self.client, self.server_port, self.client_port, payload, ttl=57, ident=ident)
        return Packet(self.link.frame(ip, from_client), from_client)


class TcpConversation:
    """One TCP connection whose packets are built in the order they are asked for.

    Sequence and acknowledgement numbers stay consistent whatever is sent; frames can then be
    reordered or repeated by the caller to model loss, reordering and retransmission.
    """

    def __init__(
        self,
        client: str,
        client_port: int,
        server: str,
        server_port: int,
        *,
        link: Link = Link(),
        mss: int = 1460,
        client_isn: int = 0x3A7F1000,
        server_isn: int = 0x91C25000,
    ) -> None:
        if mss < 1:
            raise ValueError("mss must be positive")
        self.client, self.client_port, self.server, self.server_port = client, client_port, server, server_port
        self.link, self.mss = link, mss
        self.next_seq = {True: client_isn & 0xFFFFFFFF, False: server_isn & 0xFFFFFFFF}
        self._ident = {True: client_isn & 0xFFFF, False: server_isn & 0xFFFF}

    def segment(
        self, payload: bytes = b"", *, from_client: bool, flags: int = ACK | PSH, options: bytes = b""
    ) -> Packet:
        """One segment at the sender's next sequence number, acknowledging all the peer has sent."""
        seq = self.next_seq[from_client]
        ident = self._ident[from_client] = (self._ident[from_client] + 1) & 0xFFFF
        if from_client:
            addresses = (self.client, self.server, self.client_port, self.server_port)
        else:
            addresses = (self.server, self.client, self.server_port, self.client_port)
        ip = tcp_packet(
            *addresses,
            seq=seq,
            ack=self.next_seq[not from_client],
            flags=flags,
            payload=payload,
            window=64240 if flags & SYN else 502,  # after the SYN the window is scaled (x128)
            options=options,
            ttl=64 if from_client else 57,
            ident=ident,
        )
        self.next_seq[from_client] = (seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        return Packet(self.link.frame(ip, from_client), from_client)

    def handshake(self) -> list[Packet]:
        """SYN, SYN-ACK, ACK, with the options a Linux or Windows stack offers (MSS, SACK, window scale)."""
        options = struct.pack("!BBHBBBBBB", 2, 4, self.mss, 1, 3, 3, 7, 4, 2) + b"\x00\x00"
        return [
            self.segment(from_client=True, flags=SYN, options=options),
            self.segment(from_client=False, flags=SYN | ACK, options=options),
            self.segment(from_client=True, flags=ACK),
        ]

    def send(self, data: bytes, *, from_client: bool = True, ack: bool = True) -> list[Packet]:
        """`data` in MSS-sized segments (PSH on the last), then the peer's ACK when `ack`."""
        packets = []
        for start in range(0, len(data), self.mss):
            last = start + self.mss >= len(data)
            chunk = data[start : start + self.mss]
            packets.append(self.segment(chunk, from_client=from_client, flags=ACK | PSH if last else ACK))
        if ack:
            packets.append(self.ack(from_client=not from_client))
        return packets

    def ack(self, *, from_client: bool) -> Packet:
        return self.segment(from_client=from_client, flags=ACK)

    def close(self) -> list[Packet]:
        """The client closes first: FIN, the server's FIN with its ACK, the last ACK."""
        return [
            self.segment(from_client=True, flags=FIN | ACK),
            self.segment(from_client=False, flags=FIN | ACK),
            self.segment(from_client=True, flags=ACK),
        ]


def tcp_exchange(conversation: TcpConversation, exchanges: Sequence[tuple[bytes, bytes]]) -> Iterator[Packet]:
    """A whole connection: handshake, each (client data, server data) pair with ACKs, then FIN."""
    yield from conversation.handshake()
    for request, response in exchanges:
        if request:
            yield from conversation.send(request, from_client=True)
        if response:
            yield from conversation.send(response, from_client=False)
    yield from conversation.close()


# ---------------------------------------------------------------- DNS


def encode_dns_name(name: str) -> bytes:
    """Wire form of a domain name; ValueError for an empty label or one over 63 bytes."""
    stripped = name.rstrip(".")
    if not stripped:
        return b"\0"
    out = bytearray()
    for label in stripped.split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    if len(out) + 1 > 255:
        raise ValueError(f"DNS name too long: {name!r}")
    return bytes(out) + b"\0"


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One answer: `data` is an address (A/AAAA), a name (CNAME/NS/PTR) or raw RDATA bytes (anything else)."""

    name: str
    type: str
    data: str | bytes
    ttl: int = 300

    def rdata(self) -> bytes:
        if isinstance(self.data, bytes):
            return self.data
        if self.type in ("A", "AAAA"):
            return pack_ip(self.data)
        return encode_dns_name(self.data)


def https_rdata(
    *,
    priority: int = 1,
    target: str = ".",
    alpn: Sequence[str] = (),
    ipv4hint: Sequence[str] = (),
    ipv6hint: Sequence[str] = (),
    ech_config: bytes = b"",
) -> bytes:
    """RDATA of an HTTPS/SVCB record (RFC 9460); SvcParams in ascending key order."""
    params = b""
    if alpn:
        value = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
        params += struct.pack("!HH", 1, len(value)) + value
    if ipv4hint:
        value = b"".join(pack_ip(a) for a in ipv4hint)
        params += struct.pack("!HH", 4, len(value)) + value
    if ech_config:
        params += struct.pack("!HH", 5, len(ech_config)) + ech_config
    if ipv6hint:
        value = b"".join(pack_ip(a) for a in ipv6hint)
        params += struct.pack("!HH", 6, len(value)) + value
    return struct.pack("!H", priority) + encode_dns_name(target) + params


def ech_config_list(public_name: str, rng: random.Random, *, config_id: int = 1) -> bytes:
    """An ECHConfigList (RFC 9849) with one X25519/HKDF-SHA256/AES-128-GCM config for `public_name`."""
    suites = _u16_prefixed(struct.pack("!HH", 0x0001, 0x0001))
    key_config = struct.pack("!BH", config_id, 0x0020) + _u16_prefixed(rng.randbytes(32)) + suites
    contents = key_config + bytes([0]) + _u8_prefixed(public_name.encode()) + _u16_prefixed(b"")
    return _u16_prefixed(struct.pack("!H", EXT_ENCRYPTED_CLIENT_HELLO) + _u16_prefixed(contents))


def _dns_qtype(qtype: str) -> int:
    try:
        return DNS_TYPES[qtype]
    except KeyError:
        raise ValueError(f"unknown DNS type {qtype!r}") from None


def dns_query(qid: int, name: str, qtype: str = "A", *, recursion_desired: bool = True) -> bytes:
    flags = 0x0100 if recursion_desired else 0
    question = encode_dns_name(name) + struct.pack("!HH", _dns_qtype(qtype), DNS_CLASS_IN)
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + question


def dns_response(qid: int, name: str, qtype: str, answers: Sequence[DnsRecord] = (), *, rcode: int = 0) -> bytes:
    """A recursive resolver's answer; answers owned by the question name point back at it (0xc00c)."""
    flags = 0x8180 | (rcode & 0xF)
    out = struct.pack("!HHHHHH", qid, flags, 1, len(answers), 0, 0)
    out += encode_dns_name(name) + struct.pack("!HH", _dns_qtype(qtype), DNS_CLASS_IN)
    for record in answers:
        same_name = record.name.rstrip(".").lower() == name.rstrip(".").lower()
        owner = b"\xc0\x0c" if same_name else encode_dns_name(record.name)
        rdata = record.rdata()
        out += owner + struct.pack("!HHIH", _dns_qtype(record.type), DNS_CLASS_IN, record.ttl, len(rdata)) + rdata
    return out


def dns_over_tcp(message: bytes) -> bytes:
    """A DNS message with the two-byte length prefix DNS over TCP uses."""
    return struct.pack("!H", len(message)) + message


# ---------------------------------------------------------------- TLS


def _u8_prefixed(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _u16_prefixed(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _extension(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(body)) + body


def _handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def _varint(value: int) -> bytes:
    """QUIC variable-length integer, shortest form (RFC 9000 section 16)."""
    if value < 1 << 6:
        return bytes([value])
    if value < 1 << 14:
        return struct.pack("!H", 0x4000 | value)
    if value < 1 << 30:
        return struct.pack("!I", 0x80000000 | value)
    return struct.pack("!Q", 0xC000000000000000 | value)


def quic_transport_parameters(source_cid: bytes, rng: random.Random) -> bytes:
    """Transport parameters in the shape Chrome sends (limits, its source CID, a GREASE parameter)."""
    params = [
        (0x01, _varint(30000)),  # max_idle_timeout, ms
        (0x03, _varint(1472)),  # max_udp_payload_size
        (0x04, _varint(15728640)),  # initial_max_data
        (0x05, _varint(6291456)),  # initial_max_stream_data_bidi_local
        (0x06, _varint(6291456)),  # initial_max_stream_data_bidi_remote
        (0x07, _varint(6291456)),  # initial_max_stream_data_uni
        (0x08, _varint(100)),  # initial_max_streams_bidi
        (0x09, _varint(103)),  # initial_max_streams_uni
        (0x0F, source_cid),  # initial_source_connection_id
        (0x20, _varint(65536)),  # max_datagram_frame_size
        (0x2AB2, b""),  # grease_quic_bit
        # version_information: chosen v1, then the versions offered, a reserved one among them
        (0x11, struct.pack("!III", QUIC_V1, 0x0A0A0A0A | rng.getrandbits(32) & 0xF0F0F0F0, QUIC_V1)),
        (31 * rng.randrange(1, 1 << 20) + 27, rng.randbytes(rng.randrange(1, 16))),  # reserved id, RFC 9000 18.1
    ]
    return b"".join(_varint(pid) + _varint(len(value)) + value for pid, value in params)


def _ech_extension(rng: random.Random) -> bytes:
    """An outer ECH extension (RFC 9849 shape): HPKE suite, config id, 32-byte enc, sealed inner hello."""
    payload_size = rng.choice((144, 176, 208, 240)) + 16
    return _extension(
        EXT_ENCRYPTED_CLIENT_HELLO,
        struct.pack("!BHHB", 0, 0x0001, 0x0001, rng.getrandbits(8))
        + _u16_prefixed(rng.randbytes(32))
        + _u16_prefixed(rng.randbytes(payload_size)),
    )


def client_hello(
    server_name: str | None,
    *,
    rng: random.Random,
    alpn: Sequence[str] = ("h2", "http/1.1"),
    ech: bool = False,
    post_quantum: bool = True,
    quic_transport_params: bytes | None = None,
) -> bytes:
    """A Chrome-like TLS 1.3 ClientHello handshake message (no record header).

    GREASE values, an X25519MLKEM768 key share (~1.2 KB) next to X25519 and Chrome's shuffled
    extension order. With `ech`, an encrypted_client_hello extension is added and `server_name`
    is the public cover name. With `quic_transport_params`, the QUIC variant: TLS 1.3 suites only,
    no legacy session id, the transport parameters extension.
    """
    quic = quic_transport_params is not None
    grease = rng.sample(GREASE_VALUES, 5)
    suites = [0x1301, 0x1302, 0x1303]
    if not quic:
        legacy = [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
        suites = [grease[0], *suites, *legacy]
    groups = [grease[1], *([GROUP_X25519MLKEM768] if post_quantum else []), GROUP_X25519, 0x0017, 0x0018]
    shares = struct.pack("!HH", grease[1], 1) + b"\0"
    if post_quantum:
        shares += struct.pack("!HH", GROUP_X25519MLKEM768, MLKEM768_X25519_SHARE) + rng.randbytes(MLKEM768_X25519_SHARE)
    shares += struct.pack("!HH", GROUP_X25519, 32) + rng.randbytes(32)
    signature_algorithms = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
    alpn_list = b"".join(_u8_prefixed(p.encode()) for p in alpn)
    versions = struct.pack("!HH", grease[2], 0x0304) + (b"" if quic else struct.pack("!H", 0x0303))

    shuffled = [
        _extension(EXT_ALPN, _u16_prefixed(alpn_list)),
        _extension(0x000A, _u16_prefixed(b"".join(struct.pack("!H", g) for g in groups))),  # supported_groups
        _extension(0x0005, b"\x01\x00\x00\x00\x00"),  # status_request (OCSP)
        _extension(0x000D, _u16_prefixed(b"".join(struct.pack("!H", a) for a in signature_algorithms))),
        _extension(EXT_KEY_SHARE, _u16_prefixed(shares)),
        _extension(0x002D, b"\x01\x01"),  # psk_key_exchange_modes: psk_dhe_ke
        _extension(EXT_SUPPORTED_VERSIONS, _u8_prefixed(versions)),
        _extension(0x001B, b"\x02\x00\x02"),  # compress_certificate: brotli
        _extension(0x44CD, _u16_prefixed(_u8_prefixed(alpn[0].encode()) if alpn else b"")),  # application_settings
    ]
    if server_name is not None:
        host = server_name.encode("idna") if not server_name.isascii() else server_name.encode()
        shuffled.append(_extension(EXT_SERVER_NAME, _u16_prefixed(b"\x00" + _u16_prefixed(host))))
    if quic:
        shuffled.append(_extension(EXT_QUIC_TRANSPORT_PARAMETERS, quic_transport_params))
    else:
        shuffled += [
            _extension(0x0017, b""),  # extended_master_secret
            _extension(0xFF01, b"\x00"),  # renegotiation_info
            _extension(0x000B, b"\x01\x00"),  # ec_point_formats: uncompressed
            _extension(0x0023, b""),  # session_ticket
            _extension(0x0012, b""),  # signed_certificate_timestamp
        ]
    if ech:
        shuffled.append(_ech_extension(rng))
    rng.shuffle(shuffled)
    extensions = _extension(grease[3], b"") + b"".join(shuffled) + _extension(grease[4], b"\x00")

    body = struct.pack("!H", 0x0303) + rng.randbytes(32)
    body += _u8_prefixed(b"" if quic else rng.randbytes(32))
    body += _u16_prefixed(b"".join(struct.pack("!H", s) for s in suites))
    body += b"\x01\x00" + _u16_prefixed(extensions)
    return _handshake(1, body)


def server_hello(rng: random.Random, *, session_id: bytes = b"", post_quantum: bool = False) -> bytes:
    """A TLS 1.3 ServerHello handshake message choosing TLS_AES_128_GCM_SHA256."""
    if post_quantum:
        share = struct.pack("!HH", GROUP_X25519MLKEM768, MLKEM768_X25519_REPLY) + rng.randbytes(MLKEM768_X25519_REPLY)
    else:
        share = struct.pack("!HH", GROUP_X25519, 32) + rng.randbytes(32)
    extensions = _extension(EXT_SUPPORTED_VERSIONS, b"\x03\x04") + _extension(EXT_KEY_SHARE, share)
    body = struct.pack("!H", 0x0303) + rng.randbytes(32) + _u8_prefixed(session_id)
    body += b"\x13\x01\x00" + _u16_prefixed(extensions)  # TLS_AES_128_GCM_SHA256, no compression
    return _handshake(2, body)


def tls_records(
    content_type: int, payload: bytes, *, max_fragment: int = TLS_RECORD_MAX, version: int = 0x0303
) -> bytes:
    """`payload` in records of at most `max_fragment` bytes (a ClientHello is sent with version 0x0301)."""
    if max_fragment < 1:
        raise ValueError("max_fragment must be positive")
    return b"".join(
        struct.pack("!BHH", content_type, version, len(payload[i : i + max_fragment])) + payload[i : i + max_fragment]
        for i in range(0, max(len(payload), 1), max_fragment)
    )


def client_hello_record(
    server_name: str | None,
    *,
    rng: random.Random,
    alpn: Sequence[str] = ("h2", "http/1.1"),
    ech: bool = False,
    post_quantum: bool = True,
) -> bytes:
    """A ClientHello as a browser sends it over TCP: one handshake record, legacy version 0x0301."""
    hello = client_hello(server_name, rng=rng, alpn=alpn, ech=ech, post_quantum=post_quantum)
    return tls_records(TLS_HANDSHAKE, hello, version=0x0301)


def encrypted_records(rng: random.Random, payload_size: int) -> bytes:
    """TLS 1.3 application_data records carrying `payload_size` bytes of random (encrypted-looking) content."""
    out = bytearray()
    while payload_size > 0:
        length = min(payload_size, TLS_RECORD_MAX + 17)
        out += struct.pack("!BHH", TLS_APPLICATION_DATA, 0x0303, length) + rng.randbytes(length)
        payload_size -= length
    return bytes(out)


def server_flight(rng: random.Random, *, session_id: bytes, encrypted_size: int = 2800) -> bytes:
    """A server's first flight over TCP: ServerHello, ChangeCipherSpec, then the encrypted rest."""
    return (
        tls_records(TLS_HANDSHAKE, server_hello(rng, session_id=session_id))
        + tls_records(TLS_CHANGE_CIPHER_SPEC, b"\x01")
        + encrypted_records(rng, encrypted_size)
    )


def client_finished(rng: random.Random) -> bytes:
    """The client's ChangeCipherSpec and encrypted Finished."""
    return tls_records(TLS_CHANGE_CIPHER_SPEC, b"\x01") + encrypted_records(rng, 53)


def hello_session_id(hello: bytes) -> bytes:
    """The legacy session id of a ClientHello handshake message (for the ServerHello to echo)."""
    return hello[39 : 39 + hello[38]]


# ---------------------------------------------------------------- QUIC (RFC 9000 / 9001)


def _hkdf_extract(salt: bytes, key_material: bytes) -> bytes:
    mac = HMAC(salt, hashes.SHA256())
    mac.update(key_material)
    return mac.finalize()


def _hkdf_expand_label(secret: bytes, label: str, length: int) -> bytes:
    full_label = b"tls13 " + label.encode()
    info = struct.pack("!H", length) + _u8_prefixed(full_label) + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


@dataclass(frozen=True, slots=True)
class InitialKeys:
    key: bytes
    iv: bytes
    hp: bytes


def initial_keys(original_dcid: bytes, *, server: bool = False) -> InitialKeys:
    """QUIC v1 Initial packet protection keys, derived from the client's first destination CID."""
    initial_secret = _hkdf_extract(QUIC_V1_INITIAL_SALT, original_dcid)
    secret = _hkdf_expand_label(initial_secret, "server in" if server else "client in", 32)
    return InitialKeys(
        key=_hkdf_expand_label(secret, "quic key", 16),
        iv=_hkdf_expand_label(secret, "quic iv", 12),
        hp=_hkdf_expand_label(secret, "quic hp", 16),
    )


def header_protection_mask(hp_key: bytes, sample: bytes) -> bytes:
    """AES-ECB of the 16-byte ciphertext sample under the header protection key (RFC 9001 5.4.3)."""
    encryptor = Cipher(algorithms.AES(hp_key), modes.ECB()).encryptor()
    return encryptor.update(sample) + encryptor.finalize()


def protect_long_header_packet(
    keys: InitialKeys, header: bytes, packet_number: int, pn_length: int, plaintext: bytes
) -> bytes:
    """Encrypt a long-header packet whose `header` ends with its packet number; then mask the header."""
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = AESGCM(keys.key).encrypt(nonce, plaintext, header)
    pn_offset = len(header) - pn_length
    sample = ciphertext[4 - pn_length : 20 - pn_length]
    mask = header_protection_mask(keys.hp, sample)
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    for i in range(pn_length):
        protected[pn_offset + i] ^= mask[1 + i]
    return bytes(protected) + ciphertext


def _crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + _varint(offset) + _varint(len(data)) + data


def quic_initial_packets(
    crypto_data: bytes,
    *,
    dcid: bytes,
    scid: bytes = b"",
    keys: InitialKeys,
    first_packet_number: int = 0,
    datagram_size: int | None = QUIC_MIN_INITIAL_DATAGRAM,
    ack_largest: int | None = None,
    scramble: random.Random | None = None,
) -> list[bytes]:
    """QUIC v1 Initial packets carrying `crypto_data` in CRYPTO frames, one packet per datagram.

    With `datagram_size` each packet is padded to exactly that size (clients must send at least
    1200 bytes) and the data spills into as many packets as needed; None means no padding and one
    packet. `ack_largest` puts an ACK frame in the first packet (a server acknowledging the
    client). `scramble` splits each packet's data into several CRYPTO frames in random order, as
    Chrome does to keep middleboxes from depending on one frame.
    """
    pn_length = 2
    packets = []
    offset = 0
    packet_number = first_packet_number
    while offset < len(crypto_data) or not packets:
        header_size = 1 + 4 + 1 + len(dcid) + 1 + len(scid) + 1 + 2 + pn_length
        ack = b"\x02" + _varint(ack_largest) + b"\x00\x00\x00" if ack_largest is not None and not packets else b""
        pieces = 3 if scramble else 1
        if datagram_size is None:
            chunk = crypto_data[offset:]
        else:
            room = datagram_size - header_size - 16 - len(ack) - pieces * 5
            if room <= 0:
                raise ValueError("datagram_size too small for an Initial packet")
            chunk = crypto_data[offset : offset + room]
        cuts = [0, len(chunk)]
        if scramble:
            cuts = sorted({*cuts, *(scramble.randrange(len(chunk) + 1) for _ in range(pieces - 1))})
        frames = [_crypto_frame(offset + a, chunk[a:b]) for a, b in zip(cuts, cuts[1:])]
        if scramble:
            scramble.shuffle(frames)
        payload = ack + b"".join(frames)
        payload_size = datagram_size - header_size - 16 if datagram_size is not None else max(len(payload), 4)
        payload += b"\x00" * (payload_size - len(payload))  # PADDING frames
        if pn_length + len(payload) + 16 >= 1 << 14:
            raise ValueError("Initial packet too large for a two-byte length field")
        header = (
            bytes([0xC0 | (pn_length - 1)])
            + struct.pack("!I", QUIC_V1)
            + _u8_prefixed(dcid)
            + _u8_prefixed(scid)
            + b"\x00"  # token length
            + struct.pack("!H", 0x4000 | (pn_length + len(payload) + 16))
            + packet_number.to_bytes(pn_length, "big")
        )
        packets.append(protect_long_header_packet(keys, header, packet_number, pn_length, payload))
        offset += len(chunk)
        packet_number += 1
    return packets


def quic_handshake_packet(dcid: bytes, scid: bytes, size: int, rng: random.Random) -> bytes:
    """A long-header Handshake packet of `size` bytes; its content is opaque without the handshake keys."""
    body_length = size - (1 + 4 + 1 + len(dcid) + 1 + len(scid) + 2)
    if body_length < 20:
        raise ValueError("Handshake packet too small")
    header = bytes([0xE0 | rng.getrandbits(4)]) + struct.pack("!I", QUIC_V1) + _u8_prefixed(dcid) + _u8_prefixed(scid)
    return header + struct.pack("!H", 0x4000 | body_length) + rng.randbytes(body_length)


def quic_short_packet(dcid: bytes, size: int, rng: random.Random) -> bytes:
    """A 1-RTT (short header) packet of `size` bytes with opaque protected content."""
    if size < 1 + len(dcid) + 20:
        raise ValueError("1-RTT packet too small")
    return bytes([0x40 | rng.getrandbits(6)]) + dcid + rng.randbytes(size - 1 - len(dcid))


# ---------------------------------------------------------------- HTTP/1.1


def http_request(
    method: str,
    host: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    chunked: bool = False,
    gzip_body: bool = False,
    chunk_size: int = 512,
) -> bytes:
    """An HTTP/1.1 request; the body is sent with Content-Length, or chunked, optionally gzipped."""
    if gzip_body:
        body = gzip.compress(body, mtime=0)  # fixed mtime keeps the bytes reproducible
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    if gzip_body:
        lines.append("Content-Encoding: gzip")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
        wire_body = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for chunk in chunks) + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        wire_body = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + wire_body


def http_response(
    status: int = 200,
    reason: str = "OK",
    *,
    body: bytes = b"",
    content_type: str = "text/plain",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------- pcap files


class PcapWriter:
    """Streams a classic pcap file (microsecond or nanosecond timestamps) to a binary stream.

    Records are gathered in a buffer and written in large blocks; call `flush()` (or leave the
    `with` block) before the stream is closed.
    """

    def __init__(
        self, stream: BinaryIO, linktype: int = LINKTYPE_ETHERNET, *, nanosecond: bool = False, snaplen: int = 262144
    ) -> None:
        self.stream = stream
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.packets = 0
        self.bytes = 0
        self._buffer = bytearray()
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        stream.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts_ns: int, frame: bytes) -> None:
        """Append one frame captured at `ts_ns` nanoseconds since the epoch (cut to the snap length)."""
        seconds, fraction = divmod(ts_ns, 1_000_000_000)
        if not self.nanosecond:
            fraction //= 1000
        captured = frame[: self.snaplen]
        self._buffer += struct.pack("<IIII", seconds, fraction, len(captured), len(frame))
        self._buffer += captured
        self.packets += 1
        self.bytes += len(frame)
        if len(self._buffer) >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        self.stream.write(self._buffer)
        self._buffer.clear()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()
