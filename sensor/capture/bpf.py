"""The BPF filter that keeps only packets that can matter, for replay prefiltering and live capture.

Most traffic on a span port is bulk encrypted data that no parser here needs. What must pass:
- DNS on port 53 (UDP and TCP, both directions: answers feed attribution), and mDNS, LLMNR and
  the NetBIOS name service over UDP (5353, 5355, 137);
- QUIC v1 and v2 Initial packets (they carry the ClientHello; Handshake and 1-RTT data do not);
- TCP SYNs from the client (a stream's first sequence number; ends are found by idle time);
- TCP segments with payload flowing from the higher port to the lower one: that is the client
  side of almost every connection, so ClientHellos and HTTP requests pass *with their
  continuation segments* (the second segment of a split ClientHello does not start with a TLS
  record header, so a content match alone would lose it), while server-to-client downloads drop.
  Client segments that open a TLS application-data, alert or change-cipher-spec record are
  encrypted traffic after the handshake and drop too (a continuation segment of random-looking
  bytes starts like that by chance about once in 20,000 segments). So do client segments of
  1000 bytes or more that open nothing, except to plaintext HTTP ports: they are mid-record
  upload data. A ClientHello continuation is that large only for hellos over ~2.4 KB (Chrome's
  post-quantum hello is ~1.8 KB), and an HTTP body on an unusual port then loses its middle;
  `--prefilter never` keeps everything;
- TCP payloads that open a ClientHello or an HTTP request whatever the ports;
- IP fragments and IPv6 packets with extension headers, whose transport offsets BPF can't see;
- tunnels, whole: UDP on the decoder's tunnel ports (VXLAN, Geneve, GTP-U, Teredo), IP-in-IP,
  IPv6-in-IP and GRE (ERSPAN and PPTP included), and on Ethernet PPPoE sessions, MPLS and 802.3
  LLC frames. BPF cannot look inside them; what they carry is selected by the decoder.

For uncompressed classic pcap files replay applies the same selection in-process, compiled
(`keep_frame` in sensor/_fast/select.c, through `prefilter.CompiledPrefilter`); tests/test_prefilter.py
checks that both keep the same packets. Change one, change the other. One difference: the
compiled selection looks inside VXLAN, Geneve, GRE (bridged Ethernet, ERSPAN, IP) and IP-in-IP
and applies the same rules to the packet inside, where BPF passes those tunnels whole
(tests/test_tunnels.py checks that nothing is lost).

Classic traps handled: `tcp[...]` offsets do not exist for IPv6 in libpcap (ip6[] with the
fixed 40-byte header is used instead), VLAN tags shift every offset (the `vlan` keyword, nested
for QinQ, only on Ethernet), and POST is not GET (every method is listed).
"""
from __future__ import annotations

from sensor.decode import packet
from sensor.decode.dns import LOCAL_NAME_PORTS
from sensor.decode.packet import LINKTYPE_ETHERNET, LINKTYPE_NFLOG

_HTTP_METHOD_WORDS = {
    "GET ": 0x47455420,
    "POST": 0x504F5354,
    "PUT ": 0x50555420,
    "HEAD": 0x48454144,
    "DELE": 0x44454C45,
    "OPTI": 0x4F505449,
    "PATC": 0x50415443,
    "CONN": 0x434F4E4E,
    "TRAC": 0x54524143,
}


def _opens_request(at: str) -> str:
    """The payload at `at` opens a ClientHello record (0x16 0x03 .. .. .. 0x01) or an HTTP request."""
    words = " or ".join(f"{at}:4] = 0x{value:08x}" for value in _HTTP_METHOD_WORDS.values())
    return f"({at}:2] = 0x1603 and {at} + 5] = 1) or {words}"


def _opens_other_tls_record(at: str) -> str:
    """The payload at `at` opens a TLS change_cipher_spec, alert or application_data record."""
    return f"(({at}] = 0x17 or {at}] = 0x14 or {at}] = 0x15) and {at} + 1] = 0x03)"


def _http_port(field: str) -> str:
    return "(" + " or ".join(f"{field} = {port}" for port in HTTP_PORTS) + ")"


def _quic_initial(at: str) -> str:
    """The UDP payload at `at` is a QUIC v1 Initial (type bits 00) or v2 Initial (type bits 01)."""
    return (
        f"(({at}] & 0xf0 = 0xc0 and {at} + 1:4] = 0x00000001)"
        f" or ({at}] & 0xf0 = 0xd0 and {at} + 1:4] = 0x6b3343cf))"
    )


# The local-link name protocols in DNS's format (mDNS, LLMNR, NetBIOS name service): both directions.
_LOCAL_NAMES = "(udp and (" + " or ".join(f"port {port}" for port in sorted(LOCAL_NAME_PORTS)) + "))"
# Plaintext HTTP ports whose client segments always pass, so large request bodies arrive whole.
HTTP_PORTS = (80, 8000, 8008, 8080, 8888, 3128)
BULK_SEGMENT = 1000  # client segments this large that open nothing are mid-record upload data


def _ip_expression() -> str:
    v4_at = "tcp[((tcp[12] & 0xf0) >> 2)"
    v4_payload = "ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)"
    v4 = (
        "(ip and (ip[6:2] & 0x3fff != 0"
        f" or (udp and {_quic_initial('udp[8')})"
        " or (tcp and (tcp[13] & 0x12 = 0x02"
        f" or (({v4_payload}) > 0 and ((tcp[0:2] > tcp[2:2] and not {_opens_other_tls_record(v4_at)}"
        f" and (({v4_payload}) < {BULK_SEGMENT} or {_http_port('tcp[2:2]')}))"
        f" or {_opens_request(v4_at)}))))))"
    )
    v6_hdr = "((ip6[52] & 0xf0) >> 2)"
    v6_at = f"ip6[40 + {v6_hdr}"
    v6 = (
        "(ip6 and (ip6[6] = 0 or ip6[6] = 43 or ip6[6] = 44 or ip6[6] = 60 or ip6[6] = 51"
        f" or (ip6[6] = 17 and {_quic_initial('ip6[48')})"
        " or (ip6[6] = 6 and (ip6[53] & 0x12 = 0x02"
        f" or (ip6[4:2] > {v6_hdr} and ((ip6[40:2] > ip6[42:2] and not {_opens_other_tls_record(v6_at)}"
        f" and (ip6[4:2] - {v6_hdr} < {BULK_SEGMENT} or {_http_port('ip6[42:2]')}))"
        f" or {_opens_request(v6_at)}))))))"
    )
    # BPF rejects a packet outright at a load past its end: UDP tunnel ports are tested before the
    # QUIC payload test reads past a bare UDP header, the tunnel protocols after ip6[6] = 44 has
    # kept IPv6 fragments (`ip6 proto` reads a fragment header's next header).
    return f"port 53 or {_LOCAL_NAMES} or {_udp_tunnels()} or {v4} or {v6} or {_ip_tunnels()}"


def _udp_tunnels() -> str:
    """UDP on the decoder's tunnel ports (sensor.decode.packet.udp_tunnel_ports), whole."""
    return "(" + (" or ".join(f"udp port {port}" for port in sorted(packet.udp_tunnel_ports)) or "0 = 1") + ")"


def _ip_tunnels() -> str:
    """IP-in-IP, IPv6-in-IP and GRE (sensor.decode.packet.IP_TUNNELS), whole."""
    return "(" + " or ".join(f"ip proto {p} or ip6 proto {p}" for p in sorted(packet.IP_TUNNELS)) + ")"


# Ethernet payloads passed whole: PPPoE sessions, MPLS, and 802.3 frames (LLC/SNAP)
_ETHERNET_TUNNELS = "ether proto 0x8864 or ether proto 0x8847 or ether proto 0x8848 or llc"


# Link types libpcap compiles no filter for ("NFLOG link-layer type filtering not implemented"):
# tcpdump cannot prefilter such a capture, so it is read whole.
UNFILTERABLE_LINKTYPES = frozenset({LINKTYPE_NFLOG})


def default_filter(linktype: int) -> str:
    """The filter expression for a capture of this link type."""
    base = _ip_expression()
    if linktype != LINKTYPE_ETHERNET:
        return base
    base = f"{base} or {_ETHERNET_TUNNELS}"
    # `vlan` shifts the offsets of everything after it, so each nesting repeats the base.
    return f"({base}) or (vlan and (({base}) or (vlan and ({base}))))"
