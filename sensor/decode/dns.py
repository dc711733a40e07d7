"""DNS messages (RFC 1035 and successors), sans-IO: bytes in, DnsMessage out, and query/response pairing.

The local-link protocols that share DNS's message format are decoded here too: multicast DNS
(RFC 6762, port 5353), LLMNR (RFC 4795, port 5355) and the NetBIOS name service (RFC 1002, port
137, whose names are "first-level encoded" and shown decoded).

Only what the sensor needs is decoded: the header, the questions and the answer section (the
additional section is walked only to find the EDNS extended RCODE). Names are rendered the way dig
prints them, without the trailing dot: a dot inside a label becomes ``\\.``, a backslash ``\\\\``
and any byte outside printable ASCII ``\\DDD``; the root name is ``.``.
"""
from __future__ import annotations

import base64
import ipaddress
import re
import socket
import struct
from collections.abc import Callable
from functools import partial

from sensor.records import (
    Counters,
    DnsAnswer,
    DnsQuery,
    Flow,
    LocalNameQuery,
    Record,
    frozen_record,
    positional_constructor,
)

try:  # the compiled fast path (see sensor/_fast/dns.c); parse_message_py below stays the reference
    from sensor._fast import bind_dns as _bind_dns_fast
    from sensor._fast import parse_dns as _parse_dns_fast
except ImportError:  # built without a C compiler: pure Python throughout
    _bind_dns_fast = _parse_dns_fast = None


class DnsError(ValueError):
    """The bytes are not a well-formed DNS message."""


@frozen_record
class DnsMessage:
    id: int
    is_response: bool
    opcode: int
    rcode: str  # "NOERROR", "NXDOMAIN", "SERVFAIL", ... or "RCODE<n>"
    questions: tuple[tuple[str, str], ...]  # (name, qtype name)
    answers: tuple[DnsAnswer, ...]  # answer section only


TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 17: "RP",
    18: "AFSDB", 28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR", 36: "KX", 37: "CERT", 39: "DNAME",
    41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
    49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 59: "CDS",
    60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS", 99: "SPF",
    108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 255: "ANY",
    256: "URI", 257: "CAA",
}

RCODE_NAMES: dict[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
    16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
    22: "BADTRUNC", 23: "BADCOOKIE",
}

if _bind_dns_fast is not None:  # the fast parser builds the same records, with the same names
    _bind_dns_fast(DnsMessage, DnsAnswer, TYPE_NAMES, RCODE_NAMES)

try:  # the common queries and responses paired in one compiled call; DnsTransactions.on_datagram_py is the reference
    from sensor._fast import bind_dns_pairs as _bind_dns_pairs
    from sensor._fast import dns_pair as _dns_pair
except ImportError:  # built without a C compiler
    _dns_pair = None
else:
    _bind_dns_pairs(DnsQuery, Flow)

_SVC_PARAM_NAMES = {0: "mandatory", 1: "alpn", 2: "no-default-alpn", 3: "port", 4: "ipv4hint",
                    5: "ech", 6: "ipv6hint", 7: "dohpath", 8: "ohttp"}

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_QUESTION_FIXED = struct.Struct("!HH")
_OPT = 41
_MAX_NAME_WIRE = 255
# Pointers must point backwards and are capped in number, so a crafted chain can neither loop nor run long.
_MAX_POINTER_HOPS = 64
_MIN_QUESTION = 5  # root name + qtype + qclass
_MIN_RR = 11  # root name + type + class + ttl + rdlength

# Bytes printable as themselves inside a label: printable ASCII except "." and "\".
_NEEDS_ESCAPE = re.compile(rb"[^\x21-\x2d\x2f-\x5b\x5d-\x7e]")
_LABEL_ESCAPES = tuple(
    "\\." if b == 0x2E else "\\\\" if b == 0x5C else chr(b) if 0x21 <= b <= 0x7E else f"\\{b:03d}"
    for b in range(256)
)
# The same test over a whole name whose labels were joined with ".": dots are checked by count.
_NAME_NEEDS_ESCAPE = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")
# TXT strings keep spaces and dots; only the backslash and non-printable bytes are escaped.
_TEXT_NEEDS_ESCAPE = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")
_TEXT_ESCAPES = tuple(
    "\\\\" if b == 0x5C else chr(b) if 0x20 <= b <= 0x7E else f"\\{b:03d}" for b in range(256)
)


def type_name(code: int) -> str:
    return TYPE_NAMES.get(code) or f"TYPE{code}"


def _render_label(label: bytes) -> str:
    if _NEEDS_ESCAPE.search(label) is None:
        return label.decode("ascii")
    return "".join(map(_LABEL_ESCAPES.__getitem__, label))


def _render_text(text: bytes) -> str:
    if _TEXT_NEEDS_ESCAPE.search(text) is None:
        return text.decode("ascii")
    return "".join(map(_TEXT_ESCAPES.__getitem__, text))


def _read_name(
    data: bytes, offset: int, limit: int | None = None, memo: dict[int, tuple[str, int]] | None = None
) -> tuple[str, int]:
    """Decode the name at offset; returns it and the offset just after its in-place part.

    limit bounds the in-place part (the end of an rdata); pointers may reach anywhere earlier.
    memo maps offsets of names already decoded in this message to (text, wire length): most
    compression pointers point at the question name, which is then not decoded again.
    """
    end = len(data) if limit is None else limit
    labels: list[bytes] = []
    wire_length = 1
    position = offset
    resume: int | None = None
    hops = 0
    tail = ""
    while True:
        if position >= end:
            raise DnsError("name runs past the end of its data")
        length = data[position]
        if length == 0:
            position += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if position + 1 >= end:
                raise DnsError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[position + 1]
            if target >= position:
                raise DnsError("compression pointer does not point backwards")
            if memo is not None and target in memo:
                tail, tail_wire = memo[target]
                wire_length += tail_wire - 1
                if wire_length > _MAX_NAME_WIRE:
                    raise DnsError("name longer than 255 octets")
                if resume is None:
                    resume = position + 2
                break
            hops += 1
            if hops > _MAX_POINTER_HOPS:
                raise DnsError("too many compression pointers")
            if resume is None:
                resume = position + 2
            # Targets lie before the pointer, hence inside the message whatever the rdata limit.
            position, end = target, len(data)
            continue
        if kind:
            raise DnsError(f"unsupported label type 0x{kind:02x}")
        wire_length += length + 1
        if wire_length > _MAX_NAME_WIRE:
            raise DnsError("name longer than 255 octets")
        label_end = position + 1 + length
        if label_end > end:
            raise DnsError("label runs past the end of its data")
        labels.append(data[position + 1:label_end])
        position = label_end
    after = position if resume is None else resume
    if not labels:
        name = tail or "."
    else:
        raw = b".".join(labels)
        if _NAME_NEEDS_ESCAPE.search(raw) is None and raw.count(b".") == len(labels) - 1:
            name = raw.decode("ascii")  # the common case: nothing to escape
        else:
            name = ".".join(map(_render_label, labels))
        if tail and tail != ".":
            name = f"{name}.{tail}"
    if memo is not None:
        memo[offset] = (name, wire_length)
    return name, after


def _render_rdata(data: bytes, rtype: int, start: int, end: int, memo: dict[int, tuple[str, int]] | None = None) -> str:
    """Text form of one record's data; structurally broken data falls back to hex."""
    rdata = data[start:end]
    try:
        if rtype == 1 and len(rdata) == 4:
            return socket.inet_ntop(socket.AF_INET, rdata)
        if rtype == 28 and len(rdata) == 16:
            return socket.inet_ntop(socket.AF_INET6, rdata)
        if rtype in (2, 5, 12, 39):  # NS, CNAME, PTR, DNAME
            return _exact_name(data, start, end, memo)
        if rtype == 15 and len(rdata) >= 3:
            return f"{int.from_bytes(rdata[:2], 'big')} {_exact_name(data, start + 2, end)}"
        if rtype in (16, 99):
            return _render_txt(rdata)
        if rtype == 33 and len(rdata) >= 7:
            priority, weight, port = struct.unpack_from("!HHH", rdata)
            return f"{priority} {weight} {port} {_exact_name(data, start + 6, end)}"
        if rtype == 6:
            return _render_soa(data, start, end)
        if rtype in (64, 65) and len(rdata) >= 3:
            return _render_svcb(data, start, end)
    except DnsError:
        pass
    return rdata.hex()


def _exact_name(data: bytes, start: int, end: int, memo: dict[int, tuple[str, int]] | None = None) -> str:
    name, after = _read_name(data, start, end, memo)
    if after != end:
        raise DnsError("bytes left after the name in rdata")
    return name


def _render_txt(rdata: bytes) -> str:
    parts: list[str] = []
    position = 0
    while position < len(rdata):
        length = rdata[position]
        if position + 1 + length > len(rdata):
            raise DnsError("TXT string runs past its rdata")
        parts.append(_render_text(rdata[position + 1:position + 1 + length]))
        position += 1 + length
    return "".join(parts)


def _render_soa(data: bytes, start: int, end: int) -> str:
    mname, position = _read_name(data, start, end)
    rname, position = _read_name(data, position, end)
    if end - position != 20:
        raise DnsError("SOA counters are not 20 bytes")
    numbers = struct.unpack_from("!IIIII", data, position)
    return " ".join([mname, rname, *map(str, numbers)])


def _render_svcb(data: bytes, start: int, end: int) -> str:
    priority = int.from_bytes(data[start:start + 2], "big")
    target, position = _read_name(data, start + 2, end)
    parts = [str(priority), target]
    while position < end:
        if position + 4 > end:
            raise DnsError("truncated SvcParam")
        key, length = struct.unpack_from("!HH", data, position)
        value = data[position + 4:position + 4 + length]
        if len(value) != length or position + 4 + length > end:
            raise DnsError("SvcParam value runs past its rdata")
        parts.append(_render_svc_param(key, value))
        position += 4 + length
    return " ".join(parts)


def _render_svc_param(key: int, value: bytes) -> str:
    name = _SVC_PARAM_NAMES.get(key) or f"key{key}"
    if key == 1:
        ids: list[str] = []
        position = 0
        while position < len(value):
            length = value[position]
            if length == 0 or position + 1 + length > len(value):
                raise DnsError("bad alpn value")
            ids.append(_render_text(value[position + 1:position + 1 + length]))
            position += 1 + length
        return f"alpn={','.join(ids)}"
    if key == 3 and len(value) == 2:
        return f"port={int.from_bytes(value, 'big')}"
    if key == 4 and value and len(value) % 4 == 0:
        addresses = (str(ipaddress.IPv4Address(value[i:i + 4])) for i in range(0, len(value), 4))
        return f"ipv4hint={','.join(addresses)}"
    if key == 6 and value and len(value) % 16 == 0:
        addresses = (ipaddress.IPv6Address(value[i:i + 16]).compressed for i in range(0, len(value), 16))
        return f"ipv6hint={','.join(addresses)}"
    if key == 0 and len(value) % 2 == 0:
        keys = (_SVC_PARAM_NAMES.get(k) or f"key{k}" for (k,) in struct.iter_unpack("!H", value))
        return f"mandatory={','.join(keys)}"
    if key == 5:
        return f"ech={base64.b64encode(value).decode('ascii')}"
    if key == 7:
        return f"dohpath={_render_text(value)}"
    # Flags (no-default-alpn) and parameters without a useful text form show as their bare name.
    return name


def parse_message(data: bytes) -> DnsMessage:
    """Decode one DNS message (UDP payload, or one TCP message without its length prefix)."""
    fast = _parse_dns_fast(data) if _parse_dns_fast is not None else None
    return parse_message_py(data) if fast is None else fast


def parse_message_py(data: bytes) -> DnsMessage:
    """parse_message in pure Python: the reference, and the path for anything the fast one declines."""
    if len(data) < _HEADER.size:
        raise DnsError("shorter than a DNS header")
    msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    remaining = len(data) - _HEADER.size
    if qdcount * _MIN_QUESTION + (ancount + nscount + arcount) * _MIN_RR > remaining:
        raise DnsError("section counts exceed the message size")
    position = _HEADER.size
    memo: dict[int, tuple[str, int]] = {}
    questions: list[tuple[str, str]] = []
    for _ in range(qdcount):
        name, position = _read_name(data, position, None, memo)
        if position + 4 > len(data):
            raise DnsError("truncated question")
        qtype, _qclass = _QUESTION_FIXED.unpack_from(data, position)
        position += 4
        questions.append((name, type_name(qtype)))
    answers: list[DnsAnswer] = []
    extended_rcode = 0
    for index in range(ancount + nscount + arcount):
        name, position = _read_name(data, position, None, memo)
        if position + _RR_FIXED.size > len(data):
            raise DnsError("truncated resource record")
        rtype, _rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, position)
        position += _RR_FIXED.size
        rdata_end = position + rdlength
        if rdata_end > len(data):
            raise DnsError("rdata runs past the end of the message")
        if index < ancount:
            answers.append(DnsAnswer(name=name, type=type_name(rtype),
                                     data=_render_rdata(data, rtype, position, rdata_end, memo), ttl=ttl))
        elif rtype == _OPT and index >= ancount + nscount:
            extended_rcode = ttl >> 24  # EDNS: the upper 8 bits of a 12-bit RCODE
        position = rdata_end
    rcode = (extended_rcode << 4) | (flags & 0x0F)
    return DnsMessage(
        id=msg_id,
        is_response=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0x0F,
        rcode=RCODE_NAMES.get(rcode) or f"RCODE{rcode}",
        questions=tuple(questions),
        answers=tuple(answers),
    )


def split_tcp_messages(stream: bytes) -> tuple[list[bytes], int]:
    """Cut a DNS-over-TCP byte stream into messages (each after its 2-byte length prefix).

    Returns the complete messages and how many bytes they used; the caller keeps the rest.
    """
    messages: list[bytes] = []
    position = 0
    total = len(stream)
    while position + 2 <= total:
        length = int.from_bytes(stream[position:position + 2], "big")
        if position + 2 + length > total:
            break
        messages.append(bytes(stream[position + 2:position + 2 + length]))
        position += 2 + length
    return messages, position


def looks_like_dns(payload: bytes) -> bool:
    """Cheap plausibility test of a DNS header, for payloads on ports other than 53."""
    if len(payload) < _HEADER.size + _MIN_QUESTION:
        return False
    _msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(payload)
    opcode = (flags >> 11) & 0x0F
    if opcode not in (0, 2, 4, 5) or flags & 0x0040:  # known opcodes, Z bit clear
        return False
    if qdcount > 4 or (qdcount == 0 and not flags & 0x8000):  # a query asks at least one question
        return False
    need: int = qdcount * _MIN_QUESTION + (ancount + nscount + arcount) * _MIN_RR
    return need <= len(payload) - _HEADER.size


_PendingKey = tuple[str, int, str, int, int, str]
# A query waiting for its response: (ts, flow, id, name, qtype). A tuple: one per query, the
# cheapest object to build.
_Pending = tuple[float, Flow, int, str, str]
_new_query = positional_constructor(DnsQuery)
_new_flow = positional_constructor(Flow)


class DnsTransactions:
    """Pairs queries with responses so each question becomes ONE DnsQuery record with its answers.

    Counters: dns.retransmissions (duplicate queries merged), dns.unanswered (expired or flushed
    without a response), dns.unmatched_responses (response whose query was not seen),
    dns.pending_evicted (oldest query pushed out by max_pending).
    """

    def __init__(self, timeout: float = 5.0, max_pending: int = 65536, counters: Counters | None = None) -> None:
        self.timeout = timeout
        self.max_pending = max(1, max_pending)
        self.counters = counters if counters is not None else Counters()
        # Insertion order is arrival order, so the oldest query is always first.
        self._pending: dict[_PendingKey, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def on_message(self, ts: float, flow: Flow, msg: DnsMessage) -> list[DnsQuery]:
        """Feed one message; flow is as seen on the wire (a response has src = server)."""
        records: list[DnsQuery] = []
        self.on_datagram_py(ts, flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port, msg, records, flow)
        return records

    def pairing(self) -> Callable[[float, str, int, str, int, DnsMessage, list[Record]], int | None] | None:
        """The compiled `on_datagram_py` for UDP messages of this table (None where not built): it
        takes the common messages and returns None, having changed nothing, for the rest."""
        return partial(_dns_pair, self._pending, self.max_pending) if _dns_pair is not None else None

    def pairing_table(self) -> tuple[dict[_PendingKey, _Pending], int]:
        """The pending queries and their bound, as `pairing()` hands them to the compiled pairing."""
        return self._pending, self.max_pending

    def on_datagram_py(self, ts: float, src: str, sport: int, dst: str, dport: int, msg: DnsMessage,
                       records: list[DnsQuery] | list[Record], flow: Flow | None = None) -> int:
        """`on_message` for a message given by its addresses and ports as seen on the wire: its
        records are appended to `records`, and their number returned. The flow (transport UDP
        unless given) is built only when a query is kept or a response has no query."""
        pending = self._pending
        if msg.is_response:
            for name, qtype in msg.questions:
                query = pending.pop((dst, dport, src, sport, msg.id, name.lower()), None)
                if query is None:
                    self.counters.add("dns.unmatched_responses")
                    query = (ts, Flow(dst, dport, src, sport, flow.transport if flow is not None else "udp"),
                             msg.id, name, qtype)
                records.append(_new_query(query[0], query[1], query[2], query[3], query[4], True, msg.rcode,
                                          msg.answers))
            return len(msg.questions)
        added = 0
        for name, qtype in msg.questions:
            key = (src, sport, dst, dport, msg.id, name.lower())
            if key in pending:
                self.counters.add("dns.retransmissions")
                continue
            if len(pending) >= self.max_pending:
                records.append(self._unanswered(pending.pop(next(iter(pending)))))
                self.counters.add("dns.pending_evicted")
                added += 1
            if flow is None:
                flow = _new_flow(src, sport, dst, dport, "udp")
            pending[key] = (ts, flow, msg.id, name, qtype)
        return added

    def _unanswered(self, query: _Pending) -> DnsQuery:
        self.counters.add("dns.unanswered")
        return DnsQuery(query[0], query[1], query[2], query[3], query[4])  # rare: the class's defaults

    def expire(self, now: float) -> list[DnsQuery]:
        """Unanswered records for pending queries older than the timeout (checked in arrival order)."""
        records: list[DnsQuery] = []
        deadline = now - self.timeout
        while self._pending:
            key = next(iter(self._pending))
            if self._pending[key][0] > deadline:
                break
            records.append(self._unanswered(self._pending.pop(key)))
        return records

    def flush(self) -> list[DnsQuery]:
        """Unanswered records for everything still pending (end of capture)."""
        records = [self._unanswered(query) for query in self._pending.values()]
        self._pending.clear()
        return records


# Local-link name protocols in DNS's format, by UDP port.
LOCAL_NAME_PORTS: dict[int, str] = {5353: "mdns", 5355: "llmnr", 137: "netbios-ns"}
_NETBIOS_TYPES = {"TYPE32": "NB", "TYPE33": "NBSTAT"}
_NETBIOS_ENCODED = re.compile(r"[A-P]{32}")
_NB_ENTRY = 6  # NB rdata: flags (2), IPv4 address (4), repeated


def netbios_name(encoded: str) -> str:
    """A NetBIOS name from its first-level encoding (32 letters A-P, then the scope's labels).

    The 16th byte (the service suffix: 00 workstation, 20 server, 1D master browser, ...) and the
    padding go, as Zeek logs them; Wireshark shows the suffix as ``NAME<1d>``. A name that is not
    so encoded is returned unchanged.
    """
    first, dot, scope = encoded.partition(".")
    if _NETBIOS_ENCODED.fullmatch(first.upper()) is None:
        return encoded
    letters = first.upper().encode("ascii")
    raw = bytes(((letters[i] - 65) << 4) | (letters[i + 1] - 65) for i in range(0, 30, 2))
    name = _render_label(raw.rstrip(b" \x00")) or "*"
    return f"{name}.{scope}" if dot and scope else name


def _netbios_answer(answer: DnsAnswer) -> list[DnsAnswer]:
    """An answer of the generic parser, whose data for a type it does not know is hex, as NetBIOS's."""
    name = netbios_name(answer.name)
    rtype = _NETBIOS_TYPES.get(answer.type, answer.type)
    if rtype == "NB" and answer.data and len(answer.data) % (2 * _NB_ENTRY) == 0:
        try:
            raw = bytes.fromhex(answer.data)
        except ValueError:
            raw = b""
        if raw:
            return [DnsAnswer(name=name, type=rtype, data=socket.inet_ntop(socket.AF_INET, raw[i + 2:i + _NB_ENTRY]),
                              ttl=answer.ttl) for i in range(0, len(raw), _NB_ENTRY)]
    return [DnsAnswer(name=name, type=rtype, data=answer.data, ttl=answer.ttl)]


def parse_local_message(data: bytes, protocol: str) -> DnsMessage:
    """Decode an mDNS, LLMNR or NetBIOS name service message (DnsError when malformed).

    mDNS's unicast-response bit (the top bit of a question's class) and cache-flush bit (of an
    answer's class) are flags, not classes: like every class they are not reported.
    """
    message = parse_message(data)
    if protocol != "netbios-ns":
        return message
    return DnsMessage(
        id=message.id, is_response=message.is_response, opcode=message.opcode, rcode=message.rcode,
        questions=tuple((netbios_name(name), _NETBIOS_TYPES.get(qtype, qtype)) for name, qtype in message.questions),
        answers=tuple(entry for answer in message.answers for entry in _netbios_answer(answer)),
    )


class LocalNameTransactions:
    """Pairs local-link queries with their answers, one LocalNameQuery record per question.

    Queries go to a multicast or broadcast address and any host may answer, so a response is
    matched on the querier's address and port, the id and the name, whatever its sender. A
    response nobody is known to have asked (mDNS answers go to the group; announcements carry
    no question) becomes a record of its own, on the flow as seen, one per name it answers.
    """

    def __init__(self, timeout: float = 5.0, max_pending: int = 4096) -> None:
        self.timeout = timeout
        self.max_pending = max(1, max_pending)
        self._pending: dict[tuple[str, int, int, str], LocalNameQuery] = {}

    def on_message(self, ts: float, flow: Flow, msg: DnsMessage, protocol: str) -> list[LocalNameQuery]:
        records: list[LocalNameQuery] = []
        if not msg.is_response:
            for name, qtype in msg.questions:
                key = (flow.src_ip, flow.src_port, msg.id, name.lower())
                if key in self._pending:
                    continue
                if len(self._pending) >= self.max_pending:
                    records.append(self._pending.pop(next(iter(self._pending))))
                self._pending[key] = LocalNameQuery(ts, flow, msg.id, name, qtype, protocol=protocol)
            return records
        asked = msg.questions or tuple(dict.fromkeys((a.name, a.type) for a in msg.answers))
        seen: set[str] = set()
        for name, qtype in asked:
            if name.lower() in seen:
                continue
            seen.add(name.lower())
            query = self._pending.pop((flow.dst_ip, flow.dst_port, msg.id, name.lower()), None)
            answers = msg.answers if msg.questions else tuple(a for a in msg.answers if a.name == name)
            records.append(LocalNameQuery(
                query.ts if query else ts, query.flow if query else flow, msg.id, name, qtype, True, msg.rcode,
                answers, protocol,
            ))
        return records

    def expire(self, now: float) -> list[LocalNameQuery]:
        """Unanswered queries older than the timeout."""
        records: list[LocalNameQuery] = []
        deadline = now - self.timeout
        while self._pending:
            key = next(iter(self._pending))
            if self._pending[key].ts > deadline:
                break
            records.append(self._pending.pop(key))
        return records

    def flush(self) -> list[LocalNameQuery]:
        records = list(self._pending.values())
        self._pending.clear()
        return records
