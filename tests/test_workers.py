"""The replay's worker split (sensor.capture.workers and the compiled selector's route_of): a host's
packets go to one worker whichever way they arrive, DNS answers to both, and the C and Python
decisions are equal."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.capture import prefilter
from sensor.capture.workers import SERVICE_PORTS, SHARED_ANSWER, client_worker, route_of_py, worker_of_py

if prefilter._select_pcap is None:
    pytest.skip("compiled extension not built", allow_module_level=True)
select_worker = prefilter.select_worker  # bound to the Python constants by the import of prefilter
select_route = prefilter.select_route

CLIENT_ODD, CLIENT_EVEN, SERVER = "10.20.0.7", "10.20.0.8", "192.0.2.10"


def _ip4(src: str, dst: str, proto: int, payload: bytes, frag: int = 0) -> bytes:
    from socket import inet_aton

    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0, inet_aton(src), inet_aton(dst))
    return header + payload


def _tcp(sport: int, dport: int, flags: int = 0x10) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def _udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _ether(packet: bytes, ethertype: int = 0x0800) -> bytes:
    return bytes(12) + struct.pack("!H", ethertype) + packet


def _vxlan(frame: bytes, sport: int = 50000) -> bytes:
    return _ether(_ip4("172.31.5.10", "172.31.9.21", 17, _udp(sport, 4789, struct.pack("!BxxxI", 8, 7 << 8) + frame)))


def _erspan2(frame: bytes) -> bytes:
    gre = struct.pack("!HHI", 0x1000, 0x88BE, 0) + struct.pack("!HHI", 0x1000, 7, 0)
    return _ether(_ip4("172.31.5.10", "172.31.9.20", 47, gre + frame))


def _ipip(packet: bytes) -> bytes:
    return _ether(_ip4("172.31.5.11", "172.31.9.20", 4, packet))


def both(linktype: int, frame: bytes) -> int:
    """The worker both implementations give (they must agree)."""
    worker = worker_of_py(linktype, frame)
    assert select_worker(linktype, frame) == worker
    return worker


def test_a_flow_goes_by_its_client_both_ways() -> None:
    for client, expected in ((CLIENT_ODD, 1), (CLIENT_EVEN, 0)):
        assert both(1, _ether(_ip4(client, SERVER, 6, _tcp(50000, 443)))) == expected
        assert both(1, _ether(_ip4(SERVER, client, 6, _tcp(443, 50000)))) == expected


def test_a_client_port_below_the_servers_still_goes_by_the_client() -> None:
    """A client on port 65 talking to port 80, or asking DNS from port 30: the side on the service port serves."""
    for sport, dport in ((65, 80), (30, 53), (300, 443), (1000, 8080)):
        assert dport in SERVICE_PORTS
        assert both(1, _ether(_ip4(CLIENT_ODD, SERVER, 6, _tcp(sport, dport)))) == 1
        assert both(1, _ether(_ip4(SERVER, CLIENT_ODD, 6, _tcp(dport, sport)))) == 1
        assert both(1, _ether(_ip4(CLIENT_ODD, SERVER, 17, _udp(sport, dport)))) == 1
        assert both(1, _ether(_ip4(SERVER, CLIENT_EVEN, 17, _udp(dport, sport)))) == 0


def test_equal_ports_keep_both_directions_together() -> None:
    there = both(1, _ether(_ip4("10.0.0.53", "10.0.1.54", 17, _udp(53, 53))))
    assert both(1, _ether(_ip4("10.0.1.54", "10.0.0.53", 17, _udp(53, 53)))) == there


@pytest.mark.parametrize("wrap", [_vxlan, _erspan2], ids=["vxlan", "erspan"])
def test_tunnelled_packets_go_by_their_inner_client(wrap) -> None:  # type: ignore[no-untyped-def]
    for client, expected in ((CLIENT_ODD, 1), (CLIENT_EVEN, 0)):
        bare = _ether(_ip4(client, SERVER, 6, _tcp(50000, 443)))
        answer = _ether(_ip4("10.0.0.53", client, 17, _udp(53, 40000)))
        assert both(1, wrap(bare)) == both(1, bare) == expected
        assert both(1, wrap(answer)) == both(1, answer) == expected
        inner = _ip4(client, SERVER, 6, _tcp(50000, 443))
        assert both(1, _ipip(inner)) == expected


def test_fragments_and_other_tunnels_go_to_the_first_worker() -> None:
    fragment = _ether(_ip4(CLIENT_ODD, SERVER, 17, _udp(40000, 53), frag=0x2000))
    gtp = _ether(_ip4("172.31.5.10", "172.31.9.20", 17, _udp(2152, 2152, struct.pack("!BBHI", 0x30, 0xFF, 40, 1)
                                                                  + _ip4(CLIENT_ODD, SERVER, 6, _tcp(50000, 443)))))
    assert both(1, fragment) == 0
    assert both(1, gtp) == 0
    assert both(1, _ether(_ip4(CLIENT_ODD, SERVER, 1, b"\x08\x00" + bytes(6)))) == 0  # ICMP: no ports


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """TCP and UDP packets over IPv4 or IPv6 (extension headers, fragments), in tunnels up to three deep."""
    address = st.sampled_from([CLIENT_ODD, CLIENT_EVEN, SERVER, "10.0.0.53", "203.0.113.1"])
    port = st.sampled_from([53, 80, 443, 4789, 6081, 2152, 5353, 30, 65, 1024, 40000, 50001, 65535])
    proto = draw(st.sampled_from([6, 17, 17, 1, 4, 47]))
    l4 = _tcp(draw(port), draw(port)) if proto == 6 else _udp(draw(port), draw(port)) if proto == 17 else b"\x00" * 8
    frag = draw(st.sampled_from([0, 0, 0, 0x2000, 0x4000, 3]))
    if draw(st.booleans()):
        packet, ethertype = _ip4(draw(address), draw(address), proto, l4, frag), 0x0800
    else:
        nxt = draw(st.sampled_from([proto, 0, 44, 60]))
        ext = b""
        if nxt == 44:
            ext = struct.pack("!BBHI", proto, 0, draw(st.sampled_from([0, 1, 8])), 5)
        elif nxt in (0, 60):
            ext = struct.pack("!BB6x", proto, 0)
        src, dst = bytes(15) + bytes([draw(st.integers(0, 255))]), bytes(15) + bytes([draw(st.integers(0, 255))])
        packet = struct.pack("!IHBB16s16s", 0x60000000, len(ext) + len(l4), nxt, 64, src, dst) + ext + l4
        ethertype = 0x86DD
    frame = _ether(packet, ethertype)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["vxlan", "erspan", "ipip", "geneve"]))
        if kind == "vxlan":
            frame = _vxlan(frame, draw(port))
        elif kind == "erspan":
            frame = _erspan2(frame)
        elif kind == "geneve":
            geneve = struct.pack("!BBHI", 0, 0, 0x6558, 0) + frame
            frame = _ether(_ip4("172.31.5.12", "172.31.9.20", 17, _udp(50000, 6081, geneve)))
        elif ethertype == 0x0800:
            frame = _ipip(frame[14:])
    cut = draw(st.integers(0, len(frame)))
    return frame if draw(st.booleans()) else frame[:cut]


@settings(max_examples=400, deadline=None)
@given(frames())
def test_the_compiled_split_equals_the_python_one(frame: bytes) -> None:
    assert select_worker(1, frame) == worker_of_py(1, frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0, 1, 101, 108, 113, 147, 228, 229, 276]))
def test_the_split_survives_any_bytes_alike(frame: bytes, linktype: int) -> None:
    assert select_worker(linktype, frame) == worker_of_py(linktype, frame) in (0, 1)


# --- DNS answers both workers learn from ------------------------------------------------------------
def _dns(response: bool, questions: int, answer_types: tuple[int, ...]) -> bytes:
    """A DNS message: `questions` questions for example.com, an answer of each type (each name a
    compression pointer to the first question's, or the root name without a question)."""
    header = struct.pack("!HHHHHH", 0x1234, 0x8180 if response else 0x0100, questions, len(answer_types), 0, 0)
    question = b"\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    owner = b"\xc0\x0c" if questions else b"\x00"
    rdata = {1: bytes(4), 28: bytes(16), 5: b"\xc0\x0c"}
    answers = b"".join(owner + struct.pack("!HHIH", kind, 1, 300, len(rdata.get(kind, b"x")))
                       + rdata.get(kind, b"x") for kind in answer_types)
    return header + question * questions + answers


def test_a_dns_answer_goes_to_its_client_and_is_shared() -> None:
    """A response that answers an address (UDP, from or to port 53, also tunnelled) and a DNS
    server's side of a TCP connection are shared; queries, responses without an address, cut
    short, or on other ports, and a client's TCP to port 53 are not."""
    for client, worker in ((CLIENT_ODD, 1), (CLIENT_EVEN, 0)):
        for answer in (_dns(True, 1, (1,)), _dns(True, 1, (5, 28)), _dns(True, 2, (65, 5, 1))):
            frame = _ether(_ip4("10.0.0.53", client, 17, _udp(53, 40000, answer)))
            assert both(1, frame) == worker and route(1, frame) == worker | SHARED_ANSWER
            assert route(1, _vxlan(frame)) == route(1, _erspan2(frame)) == worker | SHARED_ANSWER
            assert route(1, _ether(_ip4(client, "10.0.0.53", 17, _udp(53, 53, answer)))) & SHARED_ANSWER
        for unshared in (_udp(53, 40000, _dns(True, 1, ())), _udp(53, 40000, _dns(True, 0, (1,))),
                         _udp(53, 40000, _dns(False, 1, (1,))), _udp(53, 40000, _dns(True, 1, (5, 65))),
                         _udp(53, 40000, _dns(True, 1, (1,))[:-15]), _udp(5353, 5353, _dns(True, 1, (1,))),
                         _udp(443, 40000, _dns(True, 1, (1,)))):
            assert not route(1, _ether(_ip4("10.0.0.53", client, 17, unshared))) & SHARED_ANSWER
        assert route(1, _ether(_ip4("10.0.0.53", client, 6, _tcp(53, 40000)))) == worker | SHARED_ANSWER
        assert route(1, _ether(_ip4(client, "10.0.0.53", 6, _tcp(40000, 53)))) == worker
    fragment = _ether(_ip4("10.0.0.53", CLIENT_ODD, 17, _udp(53, 40000, _dns(True, 1, (1,))), frag=0x2000))
    assert route(1, fragment) == 0  # reassembled in worker 0, which alone learns from it


def test_a_dns_answer_to_a_client_port_that_is_a_tunnels_is_still_shared() -> None:
    """A client's ephemeral port may be a tunnel's. With DNS's or QUIC's port on the other side (53
    here) the datagram is that service's whatever its first bytes, as tshark takes it; on a VXLAN
    or Geneve port without that header, it is plain UDP too. Either way a DNS answer goes to its
    client's worker and is shared, and the decoder reads it as DNS."""
    from sensor.decode.packet import UDP, PacketDecoder, is_tunnel_datagram
    from sensor.records import Counters

    plain = _dns(True, 1, (1,))
    for first_byte in (0xC2, 0x08):  # VXLAN's I flag clear or set, Geneve's version set or not
        answer = bytes([first_byte]) + plain[1:]
        for client, worker in ((CLIENT_ODD, 1), (CLIENT_EVEN, 0)):
            for port in (4789, 8472, 6081, 2152, 3544, 1701):
                assert not is_tunnel_datagram(53, port) and not is_tunnel_datagram(port, 53)
                frame = _ether(_ip4("10.0.0.53", client, 17, _udp(53, port, answer)))
                assert route(1, frame) == worker | SHARED_ANSWER
                decoded = PacketDecoder(Counters()).decode_py(0.0, 1, frame)
                assert decoded is not None and decoded[0] == UDP and decoded[3:5] == (53, port)
    # a VXLAN port between ephemeral ports, without the header: plain UDP to the decoder and the route
    answer = bytes([0xC2]) + plain[1:]
    assert is_tunnel_datagram(40000, 4789)
    frame = _ether(_ip4(CLIENT_ODD, SERVER, 17, _udp(40000, 4789, answer)))
    assert route(1, frame) == client_worker(bytes([10, 20, 0, 7]), bytes([192, 0, 2, 10]), 40000, 4789)
    # with the header, the packet inside decides
    inside = _ether(_ip4("10.0.0.53", CLIENT_ODD, 17, _udp(53, 40000, plain)))
    assert route(1, _vxlan(inside)) == 1 | SHARED_ANSWER

def route(linktype: int, frame: bytes) -> int:
    """The route both implementations give (they must agree)."""
    found = route_of_py(linktype, frame)
    assert select_route(linktype, frame) == found
    return found


@st.composite
def dns_frames(draw: st.DrawFn) -> bytes:
    """UDP and TCP packets, often on port 53, carrying DNS messages of every kind, some cut short
    or with a name cut open, bare or tunnelled."""
    message = _dns(draw(st.booleans()), draw(st.integers(0, 2)),
                   tuple(draw(st.lists(st.sampled_from([1, 28, 5, 65, 16]), max_size=3))))
    if draw(st.booleans()):
        message = message[: draw(st.integers(0, len(message)))]
    elif draw(st.booleans()):  # a label length that runs off, or an extended label type
        at = draw(st.integers(12, max(12, len(message) - 1)))
        message = message[:at] + bytes([draw(st.sampled_from([0x3F, 0x40, 0x80, 0xC0]))]) + message[at + 1:]
    address = st.sampled_from([CLIENT_ODD, CLIENT_EVEN, SERVER, "10.0.0.53"])
    port = st.sampled_from([53, 53, 5353, 443, 40000, 50001, 4789, 8472, 6081, 2152])
    sport, dport = draw(port), draw(port)
    proto = draw(st.sampled_from([6, 17]))
    l4 = _udp(sport, dport, message) if proto == 17 else _tcp(sport, dport) + message
    frame = _ether(_ip4(draw(address), draw(address), proto, l4))
    wrap = draw(st.sampled_from([None, _vxlan, _erspan2]))
    return frame if wrap is None else wrap(frame)


@settings(max_examples=400, deadline=None)
@given(st.one_of(frames(), dns_frames()))
def test_the_compiled_route_equals_the_python_one(frame: bytes) -> None:
    """Which worker, and whether the other learns from it too: C and Python alike."""
    assert select_route(1, frame) == route_of_py(1, frame)
    assert select_worker(1, frame) == worker_of_py(1, frame) == route_of_py(1, frame) & 1


CLIENT_A, CLIENT_B, RESOLVER = "10.20.0.8", "10.20.0.7", "10.0.0.53"  # B: a PHI host of the other worker
TRACKERS = {"connect.facebook.net": "203.0.113.50", "www.google-analytics.com": "203.0.113.60"}


def _hello_without_sni() -> bytes:
    """A real ClientHello (OpenSSL's) that names no server."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    engine = context.wrap_bio(ssl.MemoryBIO(), outgoing)
    try:
        engine.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _attribution_capture(path) -> None:  # type: ignore[no-untyped-def]
    """Client A resolves two tracker names, one over UDP and one over TCP; client B, whose
    packets the other worker decodes, then connects to each address with a hello without SNI."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    packets, clock = [], [1_700_000_000.0]

    def add(packet) -> None:  # type: ignore[no-untyped-def]
        clock[0] += 0.01
        packet.time = clock[0]
        packets.append(Ether() / packet)

    def tcp(client: str, server: str, cport: int, sport: int, client_data: bytes, server_data: bytes) -> None:
        up, down = IP(src=client, dst=server), IP(src=server, dst=client)
        add(up / TCP(sport=cport, dport=sport, flags="S", seq=100))
        add(down / TCP(sport=sport, dport=cport, flags="SA", seq=500, ack=101))
        add(up / TCP(sport=cport, dport=sport, flags="PA", seq=101, ack=501) / client_data)
        if server_data:
            add(down / TCP(sport=sport, dport=cport, flags="PA", seq=501, ack=101 + len(client_data)) / server_data)
        add(up / TCP(sport=cport, dport=sport, flags="FA", seq=101 + len(client_data), ack=501 + len(server_data)))

    (udp_name, udp_address), (tcp_name, tcp_address) = TRACKERS.items()
    query = DNS(id=7, rd=1, qd=DNSQR(qname=udp_name))
    add(IP(src=CLIENT_A, dst=RESOLVER) / UDP(sport=40000, dport=53) / query)
    add(IP(src=RESOLVER, dst=CLIENT_A) / UDP(sport=53, dport=40000) / DNS(
        id=7, qr=1, rd=1, ra=1, qd=DNSQR(qname=udp_name), an=DNSRR(rrname=udp_name, rdata=udp_address, ttl=300)))
    over_tcp = DNS(id=8, qr=1, rd=1, ra=1, qd=DNSQR(qname=tcp_name), an=DNSRR(rrname=tcp_name, rdata=tcp_address))
    asked = bytes(DNS(id=8, rd=1, qd=DNSQR(qname=tcp_name)))
    tcp(CLIENT_A, RESOLVER, 40001, 53, struct.pack("!H", len(asked)) + asked,
        struct.pack("!H", len(bytes(over_tcp))) + bytes(over_tcp))
    for port, address in enumerate((udp_address, tcp_address), 50000):
        tcp(CLIENT_B, address, port, 443, _hello_without_sni(), b"")
    wrpcap(str(path), packets)


def _replay_two_ways(path, workers: str, pure: bool = False) -> tuple[list[str], dict[str, int]]:  # type: ignore[no-untyped-def]
    """Sorted alert lines and counters of a replay."""
    import subprocess
    import sys

    from sensor.compiled import pure_python_command

    args = ["replay", str(path), "--emit", "alerts", "--output", "-", "--stats", "--workers", workers,
            "--prefilter", "always"]  # fmt: skip
    command = pure_python_command(args) if pure else [sys.executable, "-m", "sensor", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    counters = {}
    for line in result.stderr.splitlines():
        name, _, value = line.rpartition(" ")
        if name.strip() and value.isdigit():
            counters[name.strip()] = int(value)
    return sorted(result.stdout.splitlines()), counters


def test_an_address_another_worker_resolved_is_attributed_alike(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """B's hellos without SNI go to addresses only A's DNS named (over UDP and over TCP): with two
    workers B's worker learned them from the answers it was handed, so the alerts are those of
    one worker, byte for byte, and nothing of A's DNS is counted twice."""
    import shutil

    import orjson

    assert client_worker(bytes([10, 20, 0, 8]), bytes([10, 0, 0, 53]), 40000, 53) == 0
    assert client_worker(bytes([10, 20, 0, 7]), bytes([203, 0, 113, 50]), 50000, 443) == 1
    path = tmp_path / "attribution.pcap"
    _attribution_capture(path)
    one, one_counters = _replay_two_ways(path, "1")
    attributed = {(doc["source"]["ip"], doc["phi_egress"]["vendor"]["id"]) for doc in map(orjson.loads, one)
                  if doc["phi_egress"]["source_record"] == "dns-attribution"}
    assert attributed == {(CLIENT_B, "meta-pixel"), (CLIENT_B, "google-analytics")}
    two, two_counters = _replay_two_ways(path, "2")
    assert two_counters["replay.workers"] == 2
    assert two == one
    for name in ("dns.messages", "records.dns", "records.tls", "dnscache.stored", "packets.passed_prefilter", "bytes"):
        assert two_counters[name] == one_counters[name], name
    if shutil.which("tcpdump"):  # the pure-Python split: tcpdump selects, the parent forwards
        pure, pure_counters = _replay_two_ways(path, "2", pure=True)
        assert pure_counters["replay.workers"] == 2 and pure == one
        assert pure_counters["dns.messages"] == one_counters["dns.messages"]
