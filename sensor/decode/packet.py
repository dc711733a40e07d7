"""L2-L4 decoding: link layers, IPv4/IPv6 (with fragment reassembly), TCP and UDP.

`PacketDecoder.decode` returns a plain tuple rather than an object: it runs once per packet and
tuple construction is the cheapest record Python has. Addresses stay raw bytes (4 or 16) until a
record is built for a packet that matters.
"""
from __future__ import annotations

import socket
from collections import OrderedDict

from sensor.records import Counters

try:  # the compiled fast path (see _fast.c) for the common frames; the Python code below is the reference
    from sensor._fast import decode_frame as _decode_fast
except ImportError:  # built without a C compiler: pure Python throughout
    _decode_fast = None

# link types (pcap LINKTYPE_ values)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_ALIASES = (12, 14, 101)
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

LINKTYPE_NAMES = {
    0: "null",
    1: "ethernet",
    12: "raw",
    14: "raw",
    101: "raw",
    108: "loop",
    113: "linux-sll",
    228: "ipv4",
    229: "ipv6",
    276: "linux-sll2",
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)

TCP = 6
UDP = 17

_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_IPV6_EXT_HEADERS = frozenset((0, 43, 60, 135, 139, 140))  # hop-by-hop, routing, dest opts, mobility, HIP, shim6
_FRAG_TIMEOUT = 30.0

# (transport, src addr, dst addr, src port, dst port, tcp flags, tcp seq, payload)
Decoded = tuple[int, bytes, bytes, int, int, int, int, bytes]


class PacketDecoder:
    """Stateful only for IP fragment reassembly, which is capped in datagrams and bytes."""

    def __init__(self, counters: Counters, max_fragment_sets: int = 1024, max_datagram: int = 65535) -> None:
        self.counters = counters
        self.max_fragment_sets = max_fragment_sets
        self.max_datagram = max_datagram
        # key -> [first_ts, {offset: bytes}, total_length or -1, transport]
        self._fragments: OrderedDict[tuple, list] = OrderedDict()
        self._unsupported_linktypes: set[int] = set()
        self.reassembled = False  # the last decode completed an IP datagram from fragments

    def network_offset(self, linktype: int, frame: bytes) -> int:
        """Offset of the IP header in `frame`, or -1 when the frame carries no IP we handle."""
        if linktype == LINKTYPE_ETHERNET:
            off = 12
            ethertype = (frame[12] << 8) | frame[13] if len(frame) >= 14 else 0
            while ethertype in _VLAN_TYPES and len(frame) >= off + 6:
                off += 4
                ethertype = (frame[off] << 8) | frame[off + 1]
            off += 2
            if ethertype == 0x0800 or ethertype == 0x86DD:
                return off
            if ethertype == 0x8864 and len(frame) >= off + 8:  # PPPoE session: 6-byte header + PPP protocol
                ppp = (frame[off + 6] << 8) | frame[off + 7]
                return off + 8 if ppp in (0x0021, 0x0057) else -1
            if ethertype == 0x8847:  # MPLS unicast: labels until bottom of stack, then IP by version
                while len(frame) >= off + 4:
                    bottom = frame[off + 2] & 1
                    off += 4
                    if bottom:
                        return off
            return -1
        if linktype in LINKTYPE_RAW_ALIASES or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:
            return 0
        if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
            return 4
        if linktype == LINKTYPE_LINUX_SLL:
            proto = (frame[14] << 8) | frame[15] if len(frame) >= 16 else 0
            return 16 if proto in (0x0800, 0x86DD) else -1
        if linktype == LINKTYPE_LINUX_SLL2:
            proto = (frame[0] << 8) | frame[1] if len(frame) >= 20 else 0
            return 20 if proto in (0x0800, 0x86DD) else -1
        if linktype not in self._unsupported_linktypes:
            self._unsupported_linktypes.add(linktype)
        self.counters.add("packets.unsupported_linktype")
        return -1

    @property
    def unsupported_linktypes(self) -> set[int]:
        return self._unsupported_linktypes

    def decode(self, ts: float, linktype: int, frame: bytes) -> Decoded | None:
        self.reassembled = False
        if _decode_fast is not None:
            decoded = _decode_fast(linktype, frame)
            if decoded is not None:
                return decoded
        return self.decode_py(ts, linktype, frame)

    def decode_py(self, ts: float, linktype: int, frame: bytes) -> Decoded | None:
        """decode in pure Python: the reference, and the path for every frame the fast one declines."""
        off = self.network_offset(linktype, frame)
        if off < 0 or len(frame) < off + 20:
            if off >= 0:
                self.counters.add("packets.truncated")
            return None
        version = frame[off] >> 4
        if version == 4:
            return self._ipv4(ts, frame, off)
        if version == 6:
            return self._ipv6(ts, frame, off)
        self.counters.add("packets.not_ip")
        return None

    def _ipv4(self, ts: float, frame: bytes, off: int) -> Decoded | None:
        ihl = (frame[off] & 0x0F) << 2
        total = (frame[off + 2] << 8) | frame[off + 3]
        if ihl < 20 or total < ihl:
            self.counters.add("packets.bad_ip")
            return None
        end = off + total
        if end > len(frame):
            end = len(frame)  # snaplen-truncated: keep what was captured
        proto = frame[off + 9]
        src = frame[off + 12 : off + 16]
        dst = frame[off + 16 : off + 20]
        frag = ((frame[off + 6] << 8) | frame[off + 7]) & 0x3FFF
        if frag:
            ident = (frame[off + 4] << 8) | frame[off + 5]
            payload = self._reassemble(
                ts, (src, dst, ident, proto), (frag & 0x1FFF) << 3, bool(frag & 0x2000), frame[off + ihl : end]
            )
            if payload is None:
                return None
            return self._transport(proto, src, dst, payload, 0)
        return self._transport(proto, src, dst, frame, off + ihl, end)

    def _ipv6(self, ts: float, frame: bytes, off: int) -> Decoded | None:
        if len(frame) < off + 40:
            self.counters.add("packets.truncated")
            return None
        plen = (frame[off + 4] << 8) | frame[off + 5]
        end = off + 40 + plen
        if end > len(frame) or plen == 0:  # jumbogram or snaplen-truncated
            end = len(frame)
        nxt = frame[off + 6]
        src = frame[off + 8 : off + 24]
        dst = frame[off + 24 : off + 40]
        pos = off + 40
        while nxt in _IPV6_EXT_HEADERS or nxt == 44 or nxt == 51:
            if pos + 8 > end:
                self.counters.add("packets.truncated")
                return None
            if nxt == 44:  # fragment header
                frag = (frame[pos + 2] << 8) | frame[pos + 3]
                ident = int.from_bytes(frame[pos + 4 : pos + 8], "big")
                proto = frame[pos]
                offset, more = frag & 0xFFF8, bool(frag & 1)
                if offset == 0 and not more:  # atomic fragment
                    nxt, pos = proto, pos + 8
                    continue
                payload = self._reassemble(ts, (src, dst, ident, proto), offset, more, frame[pos + 8 : end])
                if payload is None:
                    return None
                return self._transport(proto, src, dst, payload, 0)
            hlen = (frame[pos + 1] + 2) * 4 if nxt == 51 else (frame[pos + 1] + 1) * 8
            nxt = frame[pos]
            pos += hlen
        return self._transport(nxt, src, dst, frame, pos, end)

    def _transport(
        self, proto: int, src: bytes, dst: bytes, buf: bytes, pos: int, end: int | None = None
    ) -> Decoded | None:
        if end is None:
            end = len(buf)
        if proto == TCP:
            if end - pos < 20:
                self.counters.add("packets.truncated")
                return None
            doff = (buf[pos + 12] >> 4) << 2
            if doff < 20:
                self.counters.add("packets.bad_tcp")
                return None
            return (
                TCP,
                src,
                dst,
                (buf[pos] << 8) | buf[pos + 1],
                (buf[pos + 2] << 8) | buf[pos + 3],
                buf[pos + 13],
                int.from_bytes(buf[pos + 4 : pos + 8], "big"),
                buf[pos + doff : end],
            )
        if proto == UDP:
            if end - pos < 8:
                self.counters.add("packets.truncated")
                return None
            ulen = (buf[pos + 4] << 8) | buf[pos + 5]
            if 8 <= ulen < end - pos:
                end = pos + ulen  # trailing link-layer padding
            return (UDP, src, dst, (buf[pos] << 8) | buf[pos + 1], (buf[pos + 2] << 8) | buf[pos + 3], 0, 0,
                    buf[pos + 8 : end])
        self.counters.add("packets.other_transport")
        return None

    def _reassemble(self, ts: float, key: tuple, offset: int, more: bool, data: bytes) -> bytes | None:
        """Collect IP fragments; return the whole transport payload once every piece is in."""
        self.counters.add("ip.fragments")
        entry = self._fragments.get(key)
        if entry is None:
            self._expire_fragments(ts)
            if len(self._fragments) >= self.max_fragment_sets:
                self._fragments.popitem(last=False)
                self.counters.add("ip.fragment_sets_evicted")
            entry = self._fragments[key] = [ts, {}, -1]
        pieces: dict[int, bytes] = entry[1]
        if offset + len(data) > self.max_datagram:
            del self._fragments[key]
            self.counters.add("ip.fragments_oversized")
            return None
        pieces.setdefault(offset, data)  # first copy wins on overlap, as most stacks do
        if not more:
            entry[2] = offset + len(data)
        total = entry[2]
        if total < 0:
            return None
        have = 0
        for frag_offset in sorted(pieces):
            if frag_offset > have:
                return None
            have = max(have, frag_offset + len(pieces[frag_offset]))
        if have < total:
            return None
        del self._fragments[key]
        out = bytearray(total)
        for frag_offset in sorted(pieces, reverse=True):
            piece = pieces[frag_offset][: total - frag_offset]
            out[frag_offset : frag_offset + len(piece)] = piece
        self.counters.add("ip.reassembled")
        self.reassembled = True
        return bytes(out)

    def _expire_fragments(self, now: float) -> None:
        while self._fragments:
            key, entry = next(iter(self._fragments.items()))
            if now - entry[0] <= _FRAG_TIMEOUT:
                break
            del self._fragments[key]
            self.counters.add("ip.fragment_sets_expired")


_ADDR_CACHE: dict[bytes, str] = {}


def addr_text(raw: bytes) -> str:
    """Text form of a 4- or 16-byte address, cached: the same few hosts recur constantly."""
    text = _ADDR_CACHE.get(raw)
    if text is None:
        text = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        if len(_ADDR_CACHE) > 65536:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[raw] = text
    return text
