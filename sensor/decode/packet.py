"""L2-L4 decoding: link layers, tunnels, IPv4/IPv6 (with fragment reassembly), TCP and UDP.

`PacketDecoder.decode` returns a plain tuple rather than an object: it runs once per packet and
tuple construction is the cheapest record Python has. Addresses stay raw bytes (4 or 16) until a
record is built for a packet that matters.

Encapsulations are tables, not branches: a link type names the header its frame opens with;
each header kind (an EtherType, or a pseudo type for headers without one) has a step that returns
the next kind and its offset, until an IP header. Inside IP, tunnel protocols (IP-in-IP, 6in4,
GRE) and tunnel UDP ports (VXLAN, Geneve, GTP-U, Teredo) start the walk again on the inner
packet, up to MAX_DEPTH headers. What is decoded is the innermost packet: flows, reassembly,
Community ID and alerts all see the inner 5-tuple. Each encapsulation met is counted
(`decap.<kind>` in --stats).
"""
from __future__ import annotations

import dataclasses
import socket
from collections import OrderedDict
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

from sensor.records import Counters, Flow, Record, TunnelledFlow, TunnelValue

try:  # the compiled fast path (see sensor/_fast/packet.c) for the common frames; the Python code below is the reference
    from sensor._fast import decode_frame as _decode_fast
    from sensor._fast import decode_mirrored as _decode_mirrored
    from sensor._fast import set_tunnel_ports as _set_tunnel_ports
except ImportError:  # built without a C compiler: pure Python throughout
    _decode_fast = _decode_mirrored = _set_tunnel_ports = None

# link types (pcap LINKTYPE_ values)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW_ALIASES = (12, 14, 101)
LINKTYPE_PPP_HDLC = 50
LINKTYPE_C_HDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_PPP_WITH_DIR = 204
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276

TCP = 6
UDP = 17
MAX_DEPTH = 12  # headers walked per packet (tags, labels, tunnels): deeper is malformed or hostile

# Header kinds: EtherTypes, plus pseudo types (above 0xFFFF) for headers that have none.
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_FRAME = 0x6558  # transparent Ethernet bridging: an Ethernet frame follows (GRE, Geneve)
ETH_PPP = 0x880B  # a PPP frame (PPTP's GRE), address and control bytes optional
ETH_MPLS = 0x8847
ETH_ERSPAN_2 = 0x88BE
ETH_ERSPAN_3 = 0x22EB
K_IP = 0x10000  # an IP header of either version (by its first nibble)
K_PPP_DIR = 0x10001  # DLT_PPP_WITH_DIR: a direction byte, then PPP
K_HDLC = 0x10002  # PPP in HDLC-like framing, or Cisco HDLC
K_NFLOG = 0x10003  # Linux NFLOG: nfgenmsg header and attributes
K_NULL = 0x10004  # BSD loopback: a 4-byte address family
K_SLL = 0x10005
K_SLL2 = 0x10006
K_LLC = 0x10007  # 802.3 length field: an 802.2 LLC header follows
K_MPLS_PAYLOAD = 0x10008  # below the MPLS label stack

# link type -> (name, the kind its frames open with)
LINKTYPES: dict[int, tuple[str, int]] = {
    LINKTYPE_NULL: ("null", K_NULL),
    LINKTYPE_ETHERNET: ("ethernet", ETH_FRAME),
    LINKTYPE_PPP: ("ppp", ETH_PPP),
    12: ("raw", K_IP),
    14: ("raw", K_IP),
    LINKTYPE_PPP_HDLC: ("ppp-hdlc", K_HDLC),
    101: ("raw", K_IP),
    LINKTYPE_C_HDLC: ("cisco-hdlc", K_HDLC),
    LINKTYPE_LOOP: ("loop", K_NULL),
    LINKTYPE_LINUX_SLL: ("linux-sll", K_SLL),
    LINKTYPE_PPP_WITH_DIR: ("ppp-with-dir", K_PPP_DIR),
    LINKTYPE_IPV4: ("ipv4", K_IP),
    LINKTYPE_IPV6: ("ipv6", K_IP),
    LINKTYPE_NFLOG: ("nflog", K_NFLOG),
    LINKTYPE_LINUX_SLL2: ("linux-sll2", K_SLL2),
}
LINKTYPE_NAMES = {linktype: name for linktype, (name, _kind) in LINKTYPES.items()}
SUPPORTED_LINKTYPES = frozenset(LINKTYPES)

_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_IPV6_EXT_HEADERS = frozenset((0, 43, 60, 135, 139, 140))  # hop-by-hop, routing, dest opts, mobility, HIP, shim6
_FRAG_TIMEOUT = 30.0

# (transport, src addr, dst addr, src port, dst port, tcp flags, tcp seq, payload)
Decoded = tuple[int, bytes, bytes, int, int, int, int, bytes]
# one tunnel a packet came through: (name, outer source, outer destination, tunnel id or None)
TunnelLayer = tuple[str, bytes, bytes, int | None]
# a header step: (frame, offset of the header) -> (next kind, its offset), or None when malformed
Step = Callable[[bytes, int], "tuple[int, int] | None"]


def _ethernet(f: bytes, off: int) -> tuple[int, int] | None:
    if len(f) < off + 14:
        return None
    ethertype = (f[off + 12] << 8) | f[off + 13]
    return (K_LLC if ethertype <= 1500 else ethertype), off + 14


def _vlan(f: bytes, off: int) -> tuple[int, int] | None:
    # the step starts at the tag's TCI (the tag's own TPID was the EtherType that led here)
    return ((f[off + 2] << 8) | f[off + 3], off + 4) if len(f) >= off + 4 else None


def _ip_by_version(f: bytes, off: int) -> tuple[int, int] | None:
    if len(f) <= off:
        return None
    version = f[off] >> 4
    return (ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else -1), off


# PPP protocol numbers -> kinds
_PPP_PROTOCOLS = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6, 0x0281: ETH_MPLS, 0x0283: ETH_MPLS}


def _ppp(f: bytes, off: int) -> tuple[int, int] | None:
    if len(f) >= off + 2 and f[off] == 0xFF and f[off + 1] == 0x03:
        off += 2  # HDLC-like framing's address and control bytes
    if len(f) < off + 1:
        return None
    if f[off] & 1:  # protocol-field compression: a one-byte protocol
        return _PPP_PROTOCOLS.get(f[off], -1), off + 1
    if len(f) < off + 2:
        return None
    return _PPP_PROTOCOLS.get((f[off] << 8) | f[off + 1], -1), off + 2


def _ppp_with_direction(f: bytes, off: int) -> tuple[int, int] | None:
    return ETH_PPP, off + 1


def _hdlc(f: bytes, off: int) -> tuple[int, int] | None:
    if len(f) < off + 4:
        return None
    if f[off] == 0xFF:  # PPP in HDLC-like framing
        return _ppp(f, off)
    if f[off] in (0x0F, 0x8F):  # Cisco HDLC: address, control, EtherType
        return (f[off + 2] << 8) | f[off + 3], off + 4
    return None


def _pppoe_session(f: bytes, off: int) -> tuple[int, int] | None:
    return (ETH_PPP, off + 6) if len(f) >= off + 8 else None  # version/type, code, session id, length


def _mpls(f: bytes, off: int) -> tuple[int, int] | None:
    while len(f) >= off + 4:
        bottom = f[off + 2] & 1
        off += 4
        if bottom:
            return K_MPLS_PAYLOAD, off
    return None


def _mpls_payload(f: bytes, off: int) -> tuple[int, int] | None:
    """IP by its version nibble, else a pseudowire Ethernet frame (after its control word, nibble 0)."""
    if len(f) <= off:
        return None
    nibble = f[off] >> 4
    if nibble == 4 or nibble == 6:
        return _ip_by_version(f, off)
    return ETH_FRAME, off + 4 if nibble == 0 else off


def _llc(f: bytes, off: int) -> tuple[int, int] | None:
    if len(f) >= off + 8 and f[off] == 0xAA and f[off + 1] == 0xAA and f[off + 2] == 0x03:  # SNAP
        return (f[off + 6] << 8) | f[off + 7], off + 8
    if len(f) >= off + 3 and f[off] == 0x06 and f[off + 1] == 0x06:  # LLC SAP 6: IP itself
        return ETH_IPV4, off + 3
    return None


def _null(f: bytes, off: int) -> tuple[int, int] | None:
    return _ip_by_version(f, off + 4)


def _sll(f: bytes, off: int) -> tuple[int, int] | None:
    return ((f[off + 14] << 8) | f[off + 15], off + 16) if len(f) >= off + 16 else None


def _sll2(f: bytes, off: int) -> tuple[int, int] | None:
    return ((f[off] << 8) | f[off + 1], off + 20) if len(f) >= off + 20 else None


_NFULA_PAYLOAD = 9


def _nflog(f: bytes, off: int) -> tuple[int, int] | None:
    """nfgenmsg (family, version, resource id), then attributes whose length and type are in the
    byte order of the host that captured (so of the file's writer): little-endian is tried first,
    and the order whose lengths chain through the frame wins."""
    for little in (True, False):
        pos = off + 4
        while len(f) >= pos + 4:
            length = f[pos] | (f[pos + 1] << 8) if little else (f[pos] << 8) | f[pos + 1]
            kind = (f[pos + 2] | (f[pos + 3] << 8) if little else (f[pos + 2] << 8) | f[pos + 3]) & 0x7FFF
            if length < 4 or pos + length > len(f):
                break
            if kind == _NFULA_PAYLOAD:
                return K_IP, pos + 4
            pos += (length + 3) & ~3
    return None


def _erspan_2(f: bytes, off: int) -> tuple[int, int] | None:
    return ETH_FRAME, off + 8  # version, VLAN, session id, index: 8 bytes, then the mirrored frame


def _erspan_3(f: bytes, off: int) -> tuple[int, int] | None:
    if len(f) < off + 12:
        return None
    end = off + 20 if f[off + 11] & 1 else off + 12  # O bit: an 8-byte platform sub-header follows
    frame_type = (f[off + 10] >> 2) & 0x1F
    return (ETH_FRAME if frame_type == 0 else K_IP), end


# kind -> (counter name or None, step). The counter is per encapsulation met; VLAN tags are not
# counted (the compiled path walks them without counting).
HEADER_STEPS: dict[int, tuple[str | None, Step]] = {
    ETH_FRAME: (None, _ethernet),
    0x8100: (None, _vlan),
    0x88A8: (None, _vlan),
    0x9100: (None, _vlan),
    K_IP: (None, _ip_by_version),
    K_NULL: (None, _null),
    K_SLL: (None, _sll),
    K_SLL2: (None, _sll2),
    ETH_PPP: ("ppp", _ppp),
    K_PPP_DIR: (None, _ppp_with_direction),
    K_HDLC: ("hdlc", _hdlc),
    0x8864: ("pppoe", _pppoe_session),
    ETH_MPLS: ("mpls", _mpls),
    0x8848: ("mpls", _mpls),
    K_MPLS_PAYLOAD: (None, _mpls_payload),
    K_LLC: ("llc", _llc),
    K_NFLOG: ("nflog", _nflog),
    ETH_ERSPAN_2: ("erspan", _erspan_2),
    ETH_ERSPAN_3: ("erspan", _erspan_3),
}


# -- tunnels inside IP: each returns (kind of the inner header, its offset) in the transport payload
def _gre(f: bytes, off: int) -> tuple[int, int] | None:
    if len(f) < off + 4:
        return None
    flags, version = f[off], f[off + 1] & 0x07
    protocol = (f[off + 2] << 8) | f[off + 3]
    if flags & 0x40 or version > 1:  # source routing (RFC 1701, long deprecated), or not GRE
        return None
    pos = off + 4
    pos += 4 * (bool(flags & 0x80) + bool(flags & 0x20) + bool(flags & 0x10))  # checksum, key, sequence
    if version == 1 and f[off + 1] & 0x80:  # PPTP's enhanced GRE: an acknowledgment number
        pos += 4
    if protocol == ETH_ERSPAN_2 and not flags & 0x10:
        return ETH_FRAME, pos  # ERSPAN type I: no sequence number and no ERSPAN header
    return (K_LLC if protocol <= 1500 else protocol), pos


def _vxlan(f: bytes, off: int) -> tuple[int, int] | None:
    return (ETH_FRAME, off + 8) if len(f) >= off + 8 and f[off] & 0x08 else None  # I flag: the VNI is valid


def _geneve(f: bytes, off: int) -> tuple[int, int] | None:
    if len(f) < off + 8 or f[off] >> 6:  # version 0 only
        return None
    return (f[off + 2] << 8) | f[off + 3], off + 8 + (f[off] & 0x3F) * 4  # options: 4-byte words


def _gtp_u(f: bytes, off: int) -> tuple[int, int] | None:
    """GTPv1-U G-PDU: 8 bytes, 4 more when any of E/S/PN is set, then extension headers."""
    if len(f) < off + 8 or f[off] >> 5 != 1 or not f[off] & 0x10 or f[off + 1] != 0xFF:
        return None
    pos = off + 8
    if f[off] & 0x07:
        if len(f) < pos + 4:
            return None
        following = f[pos + 3]
        pos += 4
        while following:
            if len(f) <= pos or not f[pos]:
                return None
            size = f[pos] * 4  # in 4-byte units, the length and next-type bytes included
            if len(f) < pos + size:
                return None
            following = f[pos + size - 1]
            pos += size
    return K_IP, pos


def _teredo(f: bytes, off: int) -> tuple[int, int] | None:
    """An IPv6 packet, after an optional authentication and/or origin indication."""
    if len(f) >= off + 4 and f[off] == 0 and f[off + 1] == 1:  # authentication: ids, nonce, confirmation
        off += 4 + f[off + 2] + f[off + 3] + 9
    if len(f) >= off + 8 and f[off] == 0 and f[off + 1] == 0:  # origin indication: port and address
        off += 8
    return (ETH_IPV6, off) if len(f) >= off + 40 and f[off] >> 4 == 6 else None


def _l2tp(f: bytes, off: int) -> tuple[int, int] | None:
    """L2TPv2 data message (RFC 2661): flags and version, optional length, tunnel and session
    ids, optional Ns/Nr and offset padding, then a PPP frame. Control messages carry none."""
    if len(f) < off + 6 or f[off] & 0x80 or f[off + 1] & 0x0F != 2:
        return None
    flags = f[off]
    pos = off + 2 + (2 if flags & 0x40 else 0) + 4 + (4 if flags & 0x08 else 0)
    if flags & 0x02:  # offset size, then that much padding
        if len(f) < pos + 2:
            return None
        pos += 2 + ((f[pos] << 8) | f[pos + 1])
    return ETH_PPP, pos


def _gre_key(f: bytes) -> int | None:
    if len(f) < 4 or not f[0] & 0x20:
        return None
    at = 8 if f[0] & 0x80 else 4  # the key follows the checksum word when there is one
    return int.from_bytes(f[at : at + 4], "big") if len(f) >= at + 4 else None


# tunnel kind -> its identifier in the tunnel header (VNI, GRE key, TEID), for events
TUNNEL_IDS: dict[str, Callable[[bytes], int | None]] = {
    "vxlan": lambda f: int.from_bytes(f[4:7], "big"),
    "geneve": lambda f: int.from_bytes(f[4:7], "big"),
    "gtp-u": lambda f: int.from_bytes(f[4:8], "big"),
    "gre": _gre_key,
    "l2tp": lambda f: int.from_bytes(f[6:8] if f[0] & 0x40 else f[4:6], "big"),  # the session id
}
MAX_TUNNEL_FLOWS = 65536  # tunnelled 5-tuples remembered for their events (oldest forgotten first)
# record class -> the values of all its fields, in order (a record rebuilt around a TunnelledFlow)
_FIELDS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


IP_TUNNELS: dict[int, tuple[str, Step]] = {
    4: ("ipip", _ip_by_version),
    41: ("ipv6-in-ip", _ip_by_version),
    47: ("gre", _gre),
}
UDP_TUNNEL_KINDS: dict[str, Step] = {
    "vxlan": _vxlan, "geneve": _geneve, "gtp-u": _gtp_u, "teredo": _teredo, "l2tp": _l2tp,
}
DEFAULT_UDP_TUNNEL_PORTS: dict[int, str] = {
    4789: "vxlan", 8472: "vxlan", 6081: "geneve", 2152: "gtp-u", 3544: "teredo", 1701: "l2tp",
}
# The UDP services the sensor reads: a datagram between one of these and a higher tunnel port is theirs.
SERVICES_BEFORE_TUNNELS = frozenset({53, 443})
# port -> kind, for either port of a datagram (the sensor's decode.tunnel_ports configures it)
udp_tunnel_ports: dict[int, str] = dict(DEFAULT_UDP_TUNNEL_PORTS)


def is_tunnel_datagram(sport: int, dport: int) -> bool:
    """Whether a UDP datagram is a tunnel's: one of its ports is a tunnel port, unless the lower port
    is DNS's or QUIC's and not a tunnel port; then it is that service's, as tshark decides by the
    lower port first (a client's ephemeral port may be 4789 or 2152)."""
    if sport not in udp_tunnel_ports and dport not in udp_tunnel_ports:
        return False
    low = min(sport, dport)
    return low not in SERVICES_BEFORE_TUNNELS or low in udp_tunnel_ports


def configure_udp_tunnels(ports: Mapping[int, str]) -> None:
    """Set which UDP ports carry which tunnel, for the Python and compiled decoders alike."""
    unknown = set(ports.values()) - set(UDP_TUNNEL_KINDS)
    if unknown:
        raise ValueError(f"unknown tunnel kind(s) {sorted(unknown)}: expected {sorted(UDP_TUNNEL_KINDS)}")
    udp_tunnel_ports.clear()
    udp_tunnel_ports.update(ports)
    _tell_compiled()


def _tell_compiled() -> None:
    """The compiled decoder declines the tunnel ports; its selector looks inside VXLAN and Geneve."""
    if _set_tunnel_ports is not None:
        kinds = udp_tunnel_ports.items()
        _set_tunnel_ports(sorted(udp_tunnel_ports), sorted(p for p, k in kinds if k == "vxlan"),
                          sorted(p for p, k in kinds if k == "geneve"))


_tell_compiled()


class PacketDecoder:
    """Stateful only for IP fragment reassembly (capped in datagrams and bytes) and for the
    tunnels of recent tunnelled flows (capped in flows, and by idle time on the capture's clock)."""

    def __init__(self, counters: Counters, max_fragment_sets: int = 1024, max_datagram: int = 65535,
                 idle_timeout: float = 120.0) -> None:
        self.counters = counters
        self.max_fragment_sets = max_fragment_sets
        self.max_datagram = max_datagram
        # key -> [first_ts, {offset: bytes}, total_length or -1, transport]
        self._fragments: OrderedDict[tuple[bytes, bytes, int, int], list[Any]] = OrderedDict()
        self._unsupported_linktypes: set[int] = set()
        # (src text, sport, dst text, dport) of a tunnelled packet -> ((tunnel fields, outer VLAN,
        # inner VLAN), when last seen): the records of its flow carry the first (with_tunnels). The
        # time is refreshed at most once a sweep period, so the table stays in time order.
        self.tunnels: OrderedDict[tuple[str, int, str, int], tuple[TunnelValue, float]] = OrderedDict()
        self._period = min(10.0, idle_timeout / 4)
        # a TCP stream idle for a timeout expires (and gives its last records) at the sweep after
        # the next, up to two timeouts and a period after its last segment: its tunnel outlives that
        self._tunnel_idle = 2 * idle_timeout + 3 * self._period
        self._next_sweep = 0.0
        self._tunnel_infos: dict[tuple[TunnelLayer, ...], dict[str, Any]] = {}
        # one (info, outer VLAN, inner VLAN) per tunnel and VLANs, shared by its flows: a flow's
        # entry then costs its key
        self._tunnel_values: dict[tuple[tuple[TunnelLayer, ...], int | None, int | None], TunnelValue] = {}
        self._layers: list[TunnelLayer] | None = None  # the tunnels of the packet being decoded, outermost first
        self._vlan: int | None = None  # the last VLAN id walked over
        self._outer_vlan: int | None = None
        # (layers, outer VLAN, inner VLAN, value) of the last new tunnelled flow: the next is most
        # often in the same tunnel
        self._last_tunnel: tuple[list[TunnelLayer] | None, int | None, int | None, TunnelValue] | None = None

    def network_offset(self, linktype: int, frame: bytes) -> int:
        """Offset of the IP header in `frame`, or -1 when the frame carries no IP we handle."""
        entry = LINKTYPES.get(linktype)
        if entry is None:
            self._unsupported_linktypes.add(linktype)
            self.counters.add("packets.unsupported_linktype")
            return -1
        return self._walk(entry[1], frame, 0, 0)

    def _walk(self, kind: int, frame: bytes, off: int, depth: int) -> int:
        """Follow header steps from `kind` at `off` to an IP header; its offset, or -1."""
        while kind != ETH_IPV4 and kind != ETH_IPV6:
            step = HEADER_STEPS.get(kind)
            if step is None:
                return -1
            depth += 1
            if depth > MAX_DEPTH:
                self.counters.add("decap.too_deep")
                return -1
            name, advance = step
            if name is not None:
                self.counters.add("decap." + name)
            elif kind in _VLAN_TYPES and len(frame) >= off + 2:
                self._vlan = ((frame[off] << 8) | frame[off + 1]) & 0x0FFF
            found = advance(frame, off)
            if found is None:
                self.counters.add("decap.malformed")
                return -1
            kind, off = found
        return off

    @property
    def unsupported_linktypes(self) -> set[int]:
        return self._unsupported_linktypes

    def decode(self, ts: float, linktype: int, frame: bytes) -> Decoded | None:
        if _decode_fast is not None:
            decoded: Decoded | None = _decode_fast(linktype, frame)
            if decoded is not None:
                return decoded
        return self.decode_declined(ts, linktype, frame)

    def decode_declined(self, ts: float, linktype: int, frame: bytes) -> Decoded | None:
        """`decode` for a frame the compiled decode_frame declined (tunnels, fragments, the rest).
        A packet the compiled decode_mirrored takes out of a mirror tunnel (VXLAN, ERSPAN) is
        counted and remembered here as decode_py would."""
        if _decode_mirrored is not None:
            found = _decode_mirrored(linktype, frame)
            if found is not None:
                decoded, name, src, dst, ident, outer_vlan, inner_vlan, erspan = found
                counts = self.counters.values  # one tunnelled packet each: Counters.add would cost more than the count
                counter = "decap." + name
                counts[counter] = counts.get(counter, 0) + 1
                if erspan:
                    counts["decap.erspan"] = counts.get("decap.erspan", 0) + 1
                self._layers = [(name, src, dst, ident)]
                self._outer_vlan, self._vlan = outer_vlan, inner_vlan
                self._remember(ts, decoded)
                taken: Decoded = decoded
                return taken
        return self.decode_py(ts, linktype, frame)

    def decode_py(self, ts: float, linktype: int, frame: bytes) -> Decoded | None:
        """decode in pure Python: the reference, and the path for every frame the fast one declines."""
        self._layers = self._vlan = None
        decoded = self._ip(ts, frame, self.network_offset(linktype, frame), 0)
        if self._layers is not None and decoded is not None:
            self._remember(ts, decoded)
        return decoded

    def _remember(self, ts: float, decoded: Decoded) -> None:
        """Keep what the records of a tunnelled flow say of its tunnel (the outermost one)."""
        if ts >= self._next_sweep:
            self._expire_tunnels(ts)
        texts = _ADDR_CACHE
        src, dst = decoded[1], decoded[2]
        key = (texts.get(src) or addr_text(src), decoded[3], texts.get(dst) or addr_text(dst), decoded[4])
        tunnels = self.tunnels
        seen = tunnels.get(key)
        if seen is not None:
            if seen[1] < ts - self._period:
                tunnels[key] = (seen[0], ts)
                tunnels.move_to_end(key)
            return
        last = self._last_tunnel
        if last is not None and last[0] == self._layers and last[1] == self._outer_vlan and last[2] == self._vlan:
            value = last[3]  # the common case: the same tunnel as the last new flow's
        else:
            value = self._tunnel_value()
            self._last_tunnel = (self._layers, self._outer_vlan, self._vlan, value)
        if len(tunnels) >= MAX_TUNNEL_FLOWS:
            tunnels.popitem(last=False)
        tunnels[key] = (value, ts)

    def _tunnel_value(self) -> TunnelValue:
        """What the flows of the packet just decoded keep of its tunnel: one value per tunnel and VLANs."""
        layers = tuple(self._layers)  # type: ignore[arg-type]
        info = self._tunnel_infos.get(layers)
        if info is None:  # one dict per tunnel, shared by its flows
            name, src, dst, ident = layers[0]
            info = {"type": name, "source_ip": addr_text(src), "destination_ip": addr_text(dst)}
            if ident is not None:
                info["id"] = ident
            if len(layers) > 1:
                info["layers"] = [layer[0] for layer in layers]
            if len(self._tunnel_infos) >= MAX_TUNNEL_FLOWS:
                self._tunnel_infos.clear()
                self._tunnel_values.clear()
            self._tunnel_infos[layers] = info
        shared = (layers, self._outer_vlan, self._vlan)
        value = self._tunnel_values.get(shared)
        if value is None:
            value = self._tunnel_values[shared] = (info, self._outer_vlan, self._vlan)
        return value

    def _expire_tunnels(self, now: float) -> None:
        """Forget the tunnelled flows idle for longer than their records can come (from the front:
        the table is in time order). Looked at every sweep period of tunnelled packets."""
        self._next_sweep = now + self._period
        tunnels, limit, expired = self.tunnels, now - self._tunnel_idle, 0
        while tunnels:
            key = next(iter(tunnels))
            if tunnels[key][1] >= limit:
                break
            del tunnels[key]
            expired += 1
        if expired:
            self.counters.add("decap.tunnelled_flows_expired", expired)

    def with_tunnels(self, records: list[Record]) -> list[Record]:
        """`records`, each through tunnel_of: as they leave decode for events, while the table holds any."""
        tunnels = self.tunnels
        for at, record in enumerate(records):  # most are of no tunnelled flow: one call per record the less
            flow = record.flow
            if type(flow) is Flow and ((flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port) in tunnels
                                       or (flow.dst_ip, flow.dst_port, flow.src_ip, flow.src_port) in tunnels):
                records[at] = self.tunnel_of(record)
        return records

    def tunnel_of(self, record: Record) -> Record:
        """`record`, rebuilt with its flow a TunnelledFlow when its flow (either way) is a tunnelled
        one the table knows, so that its documents name the tunnel however late they are built.
        Called as a record leaves decode, for its event, or as it raises an alert."""
        flow = record.flow
        if type(flow) is not Flow or not self.tunnels:
            return record  # already carries its tunnel, or no flow is tunnelled
        src, sport, dst, dport = flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port
        seen = self.tunnels.get((src, sport, dst, dport)) or self.tunnels.get((dst, dport, src, sport))
        if seen is None:
            return record
        cls = type(record)
        fields_of = _FIELDS.get(cls) or _FIELDS.setdefault(cls, attrgetter(*(item.name for item in dataclasses.fields(cls))))
        values = fields_of(record)  # ts, flow, the rest (every record's own order)
        return cls(values[0], TunnelledFlow(src, sport, dst, dport, flow.transport, seen[0]), *values[2:])


    def _ip(self, ts: float, frame: bytes, off: int, depth: int) -> Decoded | None:
        if off < 0 or len(frame) < off + 20:
            if off >= 0:
                self.counters.add("packets.truncated")
            return None
        version = frame[off] >> 4
        if version == 4:
            return self._ipv4(ts, frame, off, depth)
        if version == 6:
            return self._ipv6(ts, frame, off, depth)
        self.counters.add("packets.not_ip")
        return None

    def _ipv4(self, ts: float, frame: bytes, off: int, depth: int) -> Decoded | None:
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
            return self._transport(ts, proto, src, dst, payload, 0, len(payload), depth)
        return self._transport(ts, proto, src, dst, frame, off + ihl, end, depth)

    def _ipv6(self, ts: float, frame: bytes, off: int, depth: int) -> Decoded | None:
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
                return self._transport(ts, proto, src, dst, payload, 0, len(payload), depth)
            hlen = (frame[pos + 1] + 2) * 4 if nxt == 51 else (frame[pos + 1] + 1) * 8
            nxt = frame[pos]
            pos += hlen
        return self._transport(ts, nxt, src, dst, frame, pos, end, depth)

    def _transport(
        self, ts: float, proto: int, src: bytes, dst: bytes, buf: bytes, pos: int, end: int, depth: int
    ) -> Decoded | None:
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
            sport, dport = (buf[pos] << 8) | buf[pos + 1], (buf[pos + 2] << 8) | buf[pos + 3]
            if udp_tunnel_ports and (dport in udp_tunnel_ports or sport in udp_tunnel_ports) and is_tunnel_datagram(sport, dport):
                name = udp_tunnel_ports.get(dport) or udp_tunnel_ports[sport]
                inner = buf[pos + 8 : end]
                found = UDP_TUNNEL_KINDS[name](inner, 0)
                if found is not None:  # else a datagram that only uses the port: plain UDP
                    return self._inner(ts, name, found, inner, depth, src, dst)
            return (UDP, src, dst, sport, dport, 0, 0, buf[pos + 8 : end])
        tunnel = IP_TUNNELS.get(proto)
        if tunnel is not None:
            inner = buf[pos:end]
            found = tunnel[1](inner, 0)
            if found is not None:
                return self._inner(ts, tunnel[0], found, inner, depth, src, dst)
        self.counters.add("packets.other_transport")
        return None

    def _inner(
        self, ts: float, name: str, found: tuple[int, int], inner: bytes, depth: int, src: bytes, dst: bytes
    ) -> Decoded | None:
        """Decode the packet a tunnel between `src` and `dst` carries (its header already stepped over: `found`)."""
        self.counters.add("decap." + name)
        if self._layers is None:
            self._layers = []
            self._outer_vlan = self._vlan
        ident = TUNNEL_IDS.get(name)
        self._layers.append((name, src, dst, ident(inner) if ident is not None else None))
        self._vlan = None
        depth += 1
        if depth > MAX_DEPTH:
            self.counters.add("decap.too_deep")
            return None
        kind, off = found
        return self._ip(ts, inner, self._walk(kind, inner, off, depth), depth)

    def _reassemble(self, ts: float, key: tuple[bytes, bytes, int, int], offset: int, more: bool, data: bytes) -> bytes | None:
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
        return bytes(out)

    def _expire_fragments(self, now: float) -> None:
        while self._fragments:
            key, entry = next(iter(self._fragments.items()))
            if now - entry[0] <= _FRAG_TIMEOUT:
                break
            del self._fragments[key]
            self.counters.add("ip.fragment_sets_expired")


MAX_ADDRESS_TEXTS = 65536  # addr_text's cache is emptied once it holds more
_ADDR_CACHE: dict[bytes, str] = {}
ADDRESS_TEXTS: Mapping[bytes, str] = _ADDR_CACHE  # addr_text's cache, for callers that look first (no call on a hit)


def addr_text(raw: bytes) -> str:
    """Text form of a 4- or 16-byte address, cached: the same few hosts recur constantly."""
    text = _ADDR_CACHE.get(raw)
    if text is None:
        text = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        if len(_ADDR_CACHE) > MAX_ADDRESS_TEXTS:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[raw] = text
    return text
