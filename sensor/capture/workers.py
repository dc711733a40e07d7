"""Which of the two replay workers decodes a packet: the reference of the compiled selector's
`worker_of` (sensor/_fast/select.c, exported as `select_worker`), which the replay's split uses
whichever way its packets are read.

A host's flows, DNS and alert windows must stay in one process, so a packet goes by its client's
address (the parity of its last byte). Which side is the client is decided from the packet alone,
the same way for both directions: the side not on a service port when exactly one side is on one
(a client port below the server's, a DNS query from a low port), else the side with the higher
port; equal ports take the parity of both addresses. Tunnels the selector walks into (VXLAN,
Geneve, GRE with ERSPAN, IP-in-IP) are decided by the packet they carry, as the decoder sees it.
Fragments (reassembled in worker 0), the other tunnels, and what has no TCP or UDP ports in reach
go to worker 0.

A DNS response that answers an address (UDP to or from port 53, also inside those tunnels) and
a DNS server's side of a TCP connection (from port 53) are handed to the other worker as well:
its attribution cache learns every answer, as one worker's would, while only the owner (its
client's worker) makes records, counters and alerts of it.
"""
from __future__ import annotations

from sensor.capture.bpf import HTTP_PORTS
from sensor.decode import packet as _packet
from sensor.decode.dns import LOCAL_NAME_PORTS

# Ports a server answers on: of the two sides of a packet, the one on such a port is not the client.
SERVICE_PORTS = frozenset({53, 443, 853, *HTTP_PORTS, *LOCAL_NAME_PORTS})

TUNNEL_DEPTH = 4  # tunnels walked into (the selector's KEEP_DEPTH); a deeper packet goes to worker 0
_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_IP_TYPES = (0x0800, 0x86DD)
_IPV6_SKIPPED = frozenset((0, 43, 60, 135, 139, 140, 51))  # extension headers walked over
_RAW_IP = (12, 14, 101, 228, 229)
_ETHERNET = 0x6558  # the kind of an Ethernet frame inside a tunnel
SHARED_ANSWER = 2  # in a route: a DNS answer both workers learn from


def _network_offset(linktype: int, f: bytes) -> int:
    """The offset of the IP header the compiled decoder finds (fast.h network_offset), or -1."""
    n = len(f)
    if linktype == 1:
        off = 12
        ethertype = (f[12] << 8) | f[13] if n >= 14 else 0
        while ethertype in _VLAN_TYPES and n >= off + 6:
            off += 4
            ethertype = (f[off] << 8) | f[off + 1]
        return off + 2 if ethertype in _IP_TYPES else -1
    if linktype in _RAW_IP:
        return 0
    if linktype in (0, 108):
        return 4
    if linktype == 113:
        return 16 if n >= 16 and ((f[14] << 8) | f[15]) in _IP_TYPES else -1
    if linktype == 276:
        return 20 if n >= 20 and ((f[0] << 8) | f[1]) in _IP_TYPES else -1
    return -1


def _mirror_kind(port: int) -> str | None:
    kind = _packet.udp_tunnel_ports.get(port)
    return kind if kind in ("vxlan", "geneve") else None


# _udp_tunnel_inner's offset for a datagram on a VXLAN or Geneve port without that header: the
# decoder takes it as plain UDP (a client's ephemeral port may be 4789, 8472 or 6081)
NOT_MIRRORED = -2


def _udp_tunnel_inner(f: bytes, n: int, l4: int) -> tuple[int, int]:
    """(kind, offset) of what a VXLAN or Geneve datagram carries; offset -1 when not walked into
    (GTP-U, Teredo, L2TP), NOT_MIRRORED when its port's header is not there."""
    at = l4 + 8
    tunnel = _mirror_kind((f[l4 + 2] << 8) | f[l4 + 3]) or _mirror_kind((f[l4] << 8) | f[l4 + 1])
    if tunnel is None:
        return 0, -1
    if at + 8 > n:
        return 0, NOT_MIRRORED
    if tunnel == "vxlan" and f[at] & 0x08:
        return _ETHERNET, at + 8
    if tunnel == "geneve" and not f[at] >> 6:
        return (f[at + 2] << 8) | f[at + 3], at + 8 + (f[at] & 0x3F) * 4
    return 0, NOT_MIRRORED


def _gre_inner(f: bytes, n: int, at: int) -> tuple[int, int]:
    """(kind, offset) of what a GRE packet carries (ERSPAN I to III: the mirrored frame)."""
    if at + 4 > n:
        return 0, -1
    flags, protocol = f[at], (f[at + 2] << 8) | f[at + 3]
    if flags & 0x40 or f[at + 1] & 0x07:
        return 0, -1
    pos = at + 4 + 4 * (bool(flags & 0x80) + bool(flags & 0x20) + bool(flags & 0x10))
    if protocol == 0x88BE:
        return _ETHERNET, pos + (8 if flags & 0x10 else 0)
    if protocol == 0x22EB:
        if pos + 12 > n or (f[pos + 10] >> 2) & 0x1F:
            return 0, -1
        return _ETHERNET, pos + (20 if f[pos + 11] & 1 else 12)
    return protocol, pos


def _inner(kind: int, f: bytes, n: int, at: int, depth: int) -> int:
    if at < 0 or depth >= TUNNEL_DEPTH or at >= n:
        return 0
    if kind == _ETHERNET:
        return _frame(1, f[at:n], depth + 1)
    if kind in _IP_TYPES:
        return _ip(f, n, at, depth + 1)
    return 0


def _frame(linktype: int, f: bytes, depth: int) -> int:
    off = _network_offset(linktype, f)
    return 0 if off < 0 else _ip(f, len(f), off, depth)


def client_worker(src: bytes, dst: bytes, sport: int, dport: int) -> int:
    """The worker of a TCP or UDP packet between these addresses (raw bytes) and ports."""
    source_serves, destination_serves = sport in SERVICE_PORTS, dport in SERVICE_PORTS
    if source_serves != destination_serves:
        return (dst if source_serves else src)[-1] & 1
    if sport != dport:
        return (src if sport > dport else dst)[-1] & 1
    return (src[-1] ^ dst[-1]) & 1


def _ip(f: bytes, n: int, off: int, depth: int) -> int:
    if n < off + 20:
        return 0
    version = f[off] >> 4
    if version == 4:
        ihl, total = (f[off] & 0x0F) << 2, (f[off + 2] << 8) | f[off + 3]
        if ihl < 20 or total < ihl or ((f[off + 6] << 8) | f[off + 7]) & 0x3FFF:
            return 0
        proto, src, dst, pos, end = f[off + 9], f[off + 12 : off + 16], f[off + 16 : off + 20], off + ihl, min(off + total, n)
    elif version == 6:
        if n < off + 40:
            return 0
        plen = (f[off + 4] << 8) | f[off + 5]
        end = off + 40 + plen
        if end > n or plen == 0:
            end = n
        proto, src, dst, pos = f[off + 6], f[off + 8 : off + 24], f[off + 24 : off + 40], off + 40
        while proto in _IPV6_SKIPPED or proto == 44:
            if pos + 8 > end:
                return 0
            if proto == 44:
                if ((f[pos + 2] << 8) | f[pos + 3]) & 0xFFF9:
                    return 0  # not an atomic fragment
                proto, pos = f[pos], pos + 8
                continue
            length = (f[pos + 1] + 2) * 4 if proto == 51 else (f[pos + 1] + 1) * 8
            proto, pos = f[pos], pos + length
    else:
        return 0
    if proto == 4 or proto == 41:
        return _inner(0x0800, f, end, pos, depth)
    if proto == 47:
        kind, at = _gre_inner(f, end, pos)
        return _inner(kind, f, end, at, depth)
    if (proto != 6 and proto != 17) or pos + 4 > end:
        return 0
    sport, dport = (f[pos] << 8) | f[pos + 1], (f[pos + 2] << 8) | f[pos + 3]
    if proto == 17 and _packet.is_tunnel_datagram(sport, dport):
        kind, at = _udp_tunnel_inner(f, end, pos)
        if at != NOT_MIRRORED:
            return _inner(kind, f, end, at, depth)
    worker = client_worker(src, dst, sport, dport)
    if proto == 6:
        shared = sport == 53  # a DNS server's side of a connection: the other worker reassembles it
    else:
        shared = (sport == 53 or dport == 53) and _answers_address(f, pos + 8, end)
    return worker | SHARED_ANSWER if shared else worker


def _skip_name(f: bytes, pos: int, end: int) -> int:
    """The end of the DNS name at `pos` (a compression pointer ends it), or -1 past `end`."""
    while pos < end:
        length = f[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2 if pos + 2 <= end else -1
        if length & 0xC0:
            return -1
        pos += 1 + length
    return -1


def _answers_address(f: bytes, at: int, end: int) -> bool:
    """Whether the DNS message at f[at:end] is a response with a question whose answer section
    holds an address (A or AAAA) before anything cut short: what an attribution cache learns from."""
    if at + 12 > end or not f[at + 2] & 0x80:
        return False
    questions, answers = (f[at + 4] << 8) | f[at + 5], (f[at + 6] << 8) | f[at + 7]
    if not questions or not answers:
        return False
    pos = at + 12
    for index in range(questions + answers):
        pos = _skip_name(f, pos, end)
        if pos < 0:
            return False
        if index < questions:
            pos += 4
            continue
        if pos + 10 > end:
            return False
        if ((f[pos] << 8) | f[pos + 1]) in (1, 28):
            return True
        pos += 10 + ((f[pos + 8] << 8) | f[pos + 9])
    return False


def route_of_py(linktype: int, frame: bytes) -> int:
    """The replay worker (0 or 1) that decodes `frame`, plus SHARED_ANSWER when the other worker
    learns from it too (the compiled selector's route_of)."""
    return _frame(linktype, frame, 0)


def worker_of_py(linktype: int, frame: bytes) -> int:
    """The replay worker (0 or 1) that decodes `frame`."""
    return _frame(linktype, frame, 0) & 1
