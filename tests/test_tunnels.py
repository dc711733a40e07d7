"""Tunnels and link types: every story capture wrapped (with scapy) in each encapsulation and link
type raises exactly the alerts of the bare capture; tshark reads the same inner names from those
captures; the decapsulation steps survive any bytes; the compiled decoder declines what it
cannot decapsulate and agrees with the Python reference on the rest."""
from __future__ import annotations

import functools
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, LLC, SNAP, CookedLinux, Dot1Q, Dot3, Ether
from scapy.layers.ppp import PPPoE
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from sensor.capture.pcap import CaptureFile
from sensor.cli import main
from sensor.decode import packet
from sensor.decode.packet import PacketDecoder
from sensor.records import Counters

REPO = Path(__file__).resolve().parents[1]
STORIES = sorted((REPO / "pcaps").glob("*.pcap"))
EXAMPLE_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"
OUTER_A, OUTER_B = "198.51.100.7", "198.51.100.9"  # the tunnel endpoints (never a PHI host)
OUTER6_A, OUTER6_B = "2001:db8:ffff::7", "2001:db8:ffff::9"


def eth(**fields) -> Ether:
    """An Ethernet header with its addresses given (scapy would otherwise look the IP's up on the network)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", **fields)


def l3_of(frame: bytes) -> bytes:
    """The IP packet of an Ethernet frame (VLAN tags skipped)."""
    off = 12
    while frame[off : off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    return frame[off + 2 :]


def is_v6(l3: bytes) -> bool:
    return l3[0] >> 4 == 6


def outer_ip(proto: int | None = None) -> IP:
    return IP(src=OUTER_A, dst=OUTER_B) if proto is None else IP(src=OUTER_A, dst=OUTER_B, proto=proto)


def nflog(l3: bytes) -> bytes:
    """A LINKTYPE_NFLOG record as a little-endian host writes it: nfgenmsg, then TLVs (length
    including the 4-byte header, padded to 4 bytes; length and type in host order)."""
    def tlv(kind: int, value: bytes) -> bytes:
        body = struct.pack("<HH", 4 + len(value), kind) + value
        return body + b"\0" * (-len(body) % 4)

    family = 10 if is_v6(l3) else 2
    return (struct.pack("!BBH", family, 0, 5) + tlv(1, struct.pack("!HBB", 0x86DD if family == 10 else 0x0800, 3, 0))
            + tlv(10, b"nflog-test\0") + tlv(9, l3))


def ppp_protocol(l3: bytes) -> bytes:
    return b"\x00\x57" if is_v6(l3) else b"\x00\x21"


# name -> (link type, frame -> wrapped frame)
Wrap = Callable[[bytes], bytes]
ENCAPSULATIONS: dict[str, tuple[int, Wrap]] = {
    "vxlan": (1, lambda f: bytes(eth() / outer_ip() / UDP(sport=51000, dport=4789) / VXLAN(vni=4242) / Ether(f))),
    "vxlan-8472": (1, lambda f: bytes(eth() / outer_ip() / UDP(sport=51000, dport=8472) / VXLAN(vni=7) / Ether(f))),
    "vlan-vxlan-vlan": (1, lambda f: bytes(
        eth() / Dot1Q(vlan=300) / outer_ip() / UDP(sport=51000, dport=4789) / VXLAN(vni=1)
        / Ether(dst=f[:6], src=f[6:12]) / Dot1Q(vlan=12, type=int.from_bytes(f[12:14], "big")) / f[14:])),
    "geneve": (1, lambda f: bytes(
        eth() / outer_ip() / UDP(sport=51000, dport=6081)
        / GENEVE(vni=99, proto=0x6558, options=[GeneveOptions(classid=0x0108, type=1, data=b"\x01\x02\x03\x04")])
        / Ether(f))),
    "gre-teb": (1, lambda f: bytes(
        eth() / outer_ip() / GRE(proto=0x6558, chksum_present=1, key_present=1, key=77, seqnum_present=1,
                                   sequence_number=5) / Ether(f))),
    "gre-ip": (1, lambda f: bytes(
        eth() / outer_ip() / GRE(proto=0x86DD if is_v6(l3_of(f)) else 0x0800, key_present=1, key=1) / l3_of(f))),
    "pptp-gre": (1, lambda f: bytes(eth() / outer_ip(47) / Raw(  # enhanced GRE: key (length, call id), seq, ack
        struct.pack("!BBHHHII", 0x30, 0x81, 0x880B, 0, 9, 1, 0) + b"\xff\x03" + ppp_protocol(l3_of(f)) + l3_of(f)))),
    "erspan-2": (1, lambda f: bytes(
        eth() / outer_ip() / GRE(proto=0x88BE, seqnum_present=1) / ERSPAN_II(session_id=3, vlan=0) / Ether(f))),
    "erspan-3": (1, lambda f: bytes(
        eth() / outer_ip() / GRE(proto=0x22EB, seqnum_present=1) / ERSPAN_III(session_id=4, o=1)
        / ERSPAN_PlatformSpecific() / Ether(f))),
    "ipip-6in4": (1, lambda f: bytes(eth() / outer_ip(41 if is_v6(l3_of(f)) else 4) / l3_of(f))),
    "ip-in-ipv6": (1, lambda f: bytes(eth() / IPv6(src=OUTER6_A, dst=OUTER6_B, nh=41 if is_v6(l3_of(f)) else 4)
                                      / l3_of(f))),
    "gtp-u": (1, lambda f: bytes(
        eth() / outer_ip() / UDP(sport=2152, dport=2152)
        / GTP_U_Header(teid=0x1234, E=1, next_ex=0x85) / GTPPDUSessionContainer(type=1, QFI=9) / l3_of(f))),
    "l2tp": (1, lambda f: bytes(eth() / outer_ip() / UDP(sport=1701, dport=1701) / Raw(  # length bit, ids 7 and 9
        struct.pack("!HHHH", 0x4002, 12 + len(l3_of(f)), 7, 9) + b"\xff\x03" + ppp_protocol(l3_of(f)) + l3_of(f)))),
    "pppoe": (1, lambda f: bytes(eth(type=0x8864) / PPPoE(sessionid=0x11) / Raw(ppp_protocol(l3_of(f)) + l3_of(f)))),
    "mpls": (1, lambda f: bytes(eth() / MPLS(label=100, s=0) / MPLS(label=200, s=1) / l3_of(f))),
    "mpls-pseudowire": (1, lambda f: bytes(eth() / MPLS(label=100, s=1)) + b"\0\0\0\0" + f),
    "llc-snap": (1, lambda f: bytes(Dot3(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", len=min(1500, 8 + len(l3_of(f))))
                                    / LLC(dsap=0xAA, ssap=0xAA, ctrl=3)
                                    / SNAP(OUI=0, code=0x86DD if is_v6(l3_of(f)) else 0x0800) / l3_of(f))),
    "dlt-ppp": (9, lambda f: b"\xff\x03" + ppp_protocol(l3_of(f)) + l3_of(f)),
    "dlt-ppp-hdlc": (50, lambda f: b"\xff\x03" + ppp_protocol(l3_of(f)) + l3_of(f)),
    "dlt-cisco-hdlc": (104, lambda f: b"\x0f\x00" + (b"\x86\xdd" if is_v6(l3_of(f)) else b"\x08\x00") + l3_of(f)),
    "dlt-ppp-with-dir": (204, lambda f: b"\x01" + ppp_protocol(l3_of(f)) + l3_of(f)),
    "dlt-nflog": (239, lambda f: nflog(l3_of(f))),
    "dlt-raw": (101, l3_of),
    "dlt-raw-12": (12, l3_of),
    "dlt-ipv4-ipv6": (0, lambda f: struct.pack("<I", 30 if is_v6(l3_of(f)) else 2) + l3_of(f)),
    "dlt-sll": (113, lambda f: bytes(CookedLinux(proto=0x86DD if is_v6(l3_of(f)) else 0x0800)) + l3_of(f)),
}


def write_pcap(path: Path, linktype: int, records: list[tuple[float, bytes]]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for ts, frame in records:
        out.append(struct.pack("<IIII", int(ts), round((ts % 1) * 1e6) % 1000000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def story_frames(path: Path) -> list[tuple[float, bytes]]:
    return [(ts, frame) for ts, _linktype, frame in CaptureFile(path).packets()]


@functools.cache
def wrapped_dir(name: str, root: Path) -> list[Path]:
    linktype, wrap = ENCAPSULATIONS[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for story in STORIES:
        target = out / story.name
        write_pcap(target, linktype, [(ts, wrap(frame)) for ts, frame in story_frames(story)])
        paths.append(target)
    return paths


def replay(paths: list[Path], *args: str) -> list[dict]:
    """`phi-sensor replay` in this process (a subprocess per run costs seconds on a busy machine)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "replay.jsonl"
        status = main(["replay", *map(str, paths), "--config", str(EXAMPLE_CONFIG), "--quiet", "--workers", "1",
                       "--output", str(out), *args])  # fmt: skip
        assert status == 0  # 3 would be a capture problem, such as an unsupported link type
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def alert_keys(docs: list[dict]) -> Tally:
    latest = {doc["event"]["id"]: doc for doc in docs if doc["event"]["kind"] == "alert"}
    return Tally((d["rule"]["id"], d["source"]["ip"], d["destination"].get("ip"), d["phi_egress"]["destination"])
                 for d in latest.values())


@pytest.fixture(scope="module")
def tunnels_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tunnels")


@pytest.fixture(scope="module")
def bare_alerts() -> Tally:
    keys = alert_keys(replay(STORIES))
    assert sum(keys.values()) >= 5  # the stories raise a good number of alerts
    return keys


@pytest.mark.parametrize("name", sorted(ENCAPSULATIONS))
def test_wrapped_stories_raise_the_bare_alerts(name: str, tunnels_root: Path, bare_alerts: Tally) -> None:
    paths = wrapped_dir(name, tunnels_root)
    assert alert_keys(replay(paths, "--prefilter", "never")) == bare_alerts


@pytest.mark.parametrize("name", ["vxlan", "erspan-3", "pppoe", "mpls", "dlt-nflog", "ipip-6in4", "gtp-u"])
def test_prefiltered_wrapped_stories_raise_the_bare_alerts(name: str, tunnels_root: Path, bare_alerts: Tally) -> None:
    """The compiled selector (and tcpdump's filter for the other link types) keep tunnels whole."""
    paths = wrapped_dir(name, tunnels_root)
    assert alert_keys(replay(paths, "--prefilter", "always")) == bare_alerts


# -- tshark reads the same inner packets -------------------------------------------------------------
TSHARK_FIELDS = ("dns.qry.name", "tls.handshake.extensions_server_name", "http.request.uri")


def tshark_names(path: Path) -> set[tuple[str, str]]:
    command = ["tshark", "-r", str(path), "-2", "-T", "fields", "-E", "separator=|", "-E", "occurrence=f",
               *[arg for field in TSHARK_FIELDS for arg in ("-e", field)]]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    names = set()
    for line in out.splitlines():
        for field, value in zip(TSHARK_FIELDS, line.split("|")):
            if value:
                names.add((field, value.lower().rstrip(".")))
    return names


def sensor_names(docs: list[dict]) -> set[tuple[str, str]]:
    names = set()
    for doc in docs:
        if doc["event"]["kind"] != "event":
            continue
        if "dns" in doc and doc["dns"].get("question", {}).get("name"):
            names.add(("dns.qry.name", doc["dns"]["question"]["name"].lower().rstrip(".")))
        server = doc.get("tls", {}).get("client", {}).get("server_name")
        if server and doc["network"]["protocol"] == "tls":
            names.add(("tls.handshake.extensions_server_name", server.lower()))
        if doc.get("http", {}).get("request", {}).get("method"):
            names.add(("http.request.uri", doc["url"]["original"]))
    return names


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", ["vxlan", "geneve", "gre-teb", "erspan-2", "pppoe", "mpls", "gtp-u", "dlt-nflog", "l2tp",
                                  "dlt-ppp"])
def test_tshark_reads_the_same_inner_names(name: str, tunnels_root: Path) -> None:
    story = REPO / "pcaps" / "mixpanel-plaintext.pcap"
    path = next(p for p in wrapped_dir(name, tunnels_root) if p.name == story.name)
    theirs = tshark_names(path)
    assert theirs, "tshark saw nothing inside"
    ours = sensor_names(replay([path], "--emit", "events", "--prefilter", "never"))
    assert ours == theirs == {n for n in tshark_names(story) if n[0] != "tls.handshake.extensions_server_name"
                              or n in theirs}


# -- unit level ---------------------------------------------------------------------------------------
INNER = IP(src="10.20.0.5", dst="192.0.2.1") / TCP(sport=40000, dport=80, flags="PA", seq=77) / b"GET / HTTP/1.1\r\n\r\n"
INNER6 = IPv6(src="fd00::5", dst="2001:db8::1") / UDP(sport=5000, dport=53) / (b"\x12\x34" + b"\0" * 10)


def decode(linktype: int, frame: bytes, decoder: PacketDecoder | None = None):
    return (decoder or PacketDecoder(Counters())).decode(0.0, linktype, frame)


def test_the_inner_five_tuple_is_decoded_and_each_layer_counted() -> None:
    decoder = PacketDecoder(Counters())
    frame = bytes(eth() / Dot1Q(vlan=5) / outer_ip() / UDP(sport=1, dport=4789) / VXLAN(vni=3) / eth()
                  / outer_ip() / GRE(proto=0x0800) / INNER)
    result = decode(1, frame, decoder)
    assert result is not None and result[1:5] == (bytes([10, 20, 0, 5]), bytes([192, 0, 2, 1]), 40000, 80)
    assert decoder.counters.get("decap.vxlan") == 1 and decoder.counters.get("decap.gre") == 1


def test_teredo_and_6in4_carry_ipv6() -> None:
    teredo = bytes(eth() / outer_ip() / UDP(sport=3544, dport=40001) / (b"\x00\x00" + b"\xab" * 6) / INNER6)
    six_in_four = bytes(eth() / outer_ip(41) / INNER6)
    for frame in (teredo, six_in_four):
        result = decode(1, frame)
        assert result is not None and (result[0], result[3], result[4]) == (17, 5000, 53)


def test_a_datagram_that_only_uses_a_tunnel_port_stays_plain_udp() -> None:
    frame = bytes(eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=4789, dport=53) / (b"\x00" * 12))
    result = decode(1, frame)
    assert result is not None and (result[3], result[4]) == (4789, 53)


def test_nesting_is_capped() -> None:
    layer = INNER
    for _ in range(packet.MAX_DEPTH + 2):
        layer = outer_ip(4) / layer
    decoder = PacketDecoder(Counters())
    assert decode(101, bytes(layer), decoder) is None
    assert decoder.counters.get("decap.too_deep") == 1


def test_tunnel_ports_are_configurable() -> None:
    frame = bytes(eth() / outer_ip() / UDP(sport=1, dport=9999) / VXLAN(vni=3) / eth() / INNER)
    try:
        assert decode(1, frame)[3:5] == (1, 9999)  # type: ignore[index]
        packet.configure_udp_tunnels({9999: "vxlan"})
        assert decode(1, frame)[3:5] == (40000, 80)  # type: ignore[index]
        with pytest.raises(ValueError):
            packet.configure_udp_tunnels({1: "nope"})
    finally:
        packet.configure_udp_tunnels(packet.DEFAULT_UDP_TUNNEL_PORTS)


def test_nflog_big_endian_writer() -> None:
    l3 = bytes(INNER)
    frame = (
        struct.pack("!BBH", 2, 0, 0) + struct.pack(">HH", 8, 1) + b"\x08\x00\x03\x00" + struct.pack(">HH", 4 + len(l3), 9) + l3
    )
    assert decode(239, frame)[3:5] == (40000, 80)  # type: ignore[index]


FRAMES = [wrap(bytes(eth() / INNER)) for _name, (linktype, wrap) in ENCAPSULATIONS.items()]
LINKTYPES = [linktype for linktype, _wrap in ENCAPSULATIONS.values()]


@pytest.mark.parametrize("index", range(len(FRAMES)), ids=sorted(ENCAPSULATIONS, key=list(ENCAPSULATIONS).index))
def test_each_encapsulation_decodes_to_the_inner_packet(index: int) -> None:
    result = decode(LINKTYPES[index], FRAMES[index])
    assert result is not None and result[3:5] == (40000, 80) and result[7] == b"GET / HTTP/1.1\r\n\r\n"


@settings(max_examples=500)
@given(st.sampled_from(sorted(packet.SUPPORTED_LINKTYPES)), st.binary(max_size=300))
def test_random_bytes_never_raise(linktype: int, frame: bytes) -> None:
    result = PacketDecoder(Counters()).decode_py(0.0, linktype, frame)
    assert result is None or isinstance(result[7], bytes)


@settings(max_examples=500)
@given(st.sampled_from(range(len(FRAMES))), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
       st.integers(0, 400))
def test_mutated_tunnel_frames_never_raise_and_fast_agrees(index: int, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(FRAMES[index])
    for position, value in flips:
        data[position % len(data)] = value
    frame = bytes(data[:cut])
    reference = PacketDecoder(Counters()).decode_py(0.0, LINKTYPES[index], frame)
    if packet._decode_fast is not None:
        taken = packet._decode_fast(LINKTYPES[index], frame)
        assert taken is None or taken == reference


def _decoders_agree(linktype: int, frame: bytes) -> PacketDecoder:
    """decode (with the compiled paths, when built) and decode_py give the same packet, remember
    the same tunnel for its flow and count the same; the decoder that used the compiled paths."""
    fast_decoder, reference = PacketDecoder(Counters()), PacketDecoder(Counters())
    assert fast_decoder.decode(0.0, linktype, frame) == reference.decode_py(0.0, linktype, frame), frame.hex()
    assert fast_decoder.tunnels == reference.tunnels
    assert fast_decoder.counters.values == reference.counters.values
    return fast_decoder


MIRRORED = {
    "vxlan-ipv6-outer": bytes(eth() / IPv6(src=OUTER6_A, dst=OUTER6_B) / UDP(sport=5, dport=4789) / VXLAN(vni=9)
                              / eth() / Dot1Q(vlan=44) / INNER6),
    "erspan-1": bytes(eth() / Dot1Q(vlan=8) / outer_ip() / GRE(proto=0x88BE) / eth() / INNER),
    "erspan-2-key": bytes(eth() / outer_ip() / GRE(proto=0x88BE, key_present=1, key=0xFFFFFFF0, chksum_present=1,
                                                 seqnum_present=1) / ERSPAN_II(session_id=3) / eth() / INNER),
}


@pytest.mark.skipif(packet._decode_fast is None, reason="the compiled fast path is not built")
@pytest.mark.parametrize("name", ["vxlan", "vxlan-8472", "vlan-vxlan-vlan", "erspan-2", *MIRRORED])
def test_the_compiled_path_takes_the_mirror_tunnels_as_python_does(name: str) -> None:
    if name in MIRRORED:
        linktype, frame = 1, MIRRORED[name]
    else:
        linktype, frame = ENCAPSULATIONS[name][0], FRAMES[list(ENCAPSULATIONS).index(name)]
    assert packet._decode_mirrored(linktype, frame) is not None
    decoder = _decoders_agree(linktype, frame)
    assert decoder.tunnels


@pytest.mark.parametrize("index", range(len(FRAMES)), ids=sorted(ENCAPSULATIONS, key=list(ENCAPSULATIONS).index))
def test_every_encapsulation_decodes_alike_with_and_without_the_compiled_paths(index: int) -> None:
    _decoders_agree(LINKTYPES[index], FRAMES[index])


@settings(max_examples=600)
@given(st.sampled_from([*range(len(FRAMES)), *(-1 - i for i in range(len(MIRRORED)))]),
       st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4), st.integers(0, 400))
def test_mutated_mirror_frames_decode_alike_with_and_without_the_compiled_paths(
    index: int, flips: list[tuple[int, int]], cut: int
) -> None:
    linktype, original = (LINKTYPES[index], FRAMES[index]) if index >= 0 else (1, list(MIRRORED.values())[-1 - index])
    data = bytearray(original)
    for position, value in flips:
        data[position % len(data)] = value
    _decoders_agree(linktype, bytes(data[:cut]))


@pytest.mark.skipif(packet._decode_fast is None, reason="the compiled fast path is not built")
def test_fast_path_declines_every_tunnel() -> None:
    for linktype, frame in zip(LINKTYPES, FRAMES):
        if linktype in (101, 12, 0, 113):
            continue  # plain link types: the fast path takes them
        assert packet._decode_fast(linktype, frame) is None, frame.hex()


def test_compiled_selection_inside_mirror_tunnels_loses_nothing(tmp_path: Path) -> None:
    """The selector looks inside VXLAN and GRE/ERSPAN (the bench capture's mirrored ~10%): a
    prefiltered replay gives exactly the events of a full one."""
    sys.path[:0] = [str(REPO / "pcaps"), str(REPO / "bench")]
    import make_capture

    capture = tmp_path / "mixed.pcap"
    truth = make_capture.generate(capture, 6000, seed=3)
    assert sum(truth["counts"]["tunnel_packets"].values()) > 150

    def events(prefilter: str) -> Tally:
        docs = replay([capture], "--emit", "events", "--prefilter", prefilter)
        return Tally(json.dumps({k: v for k, v in doc.items() if k not in ("@timestamp", "event")}, sort_keys=True)
                     for doc in docs)

    full = events("never")
    assert sum(full.values()) > 100
    assert events("always") == full


def test_events_of_tunnelled_flows_name_the_tunnel(tunnels_root: Path) -> None:
    """Alerts keep the inner 5-tuple; the outside is on the event: VLANs and phi_egress.tunnel."""
    story = next(p for p in wrapped_dir("vlan-vxlan-vlan", tunnels_root) if p.name == "mixpanel-plaintext.pcap")
    docs = replay([story], "--emit", "all", "--prefilter", "never")
    alerts = [doc for doc in docs if doc["event"]["kind"] == "alert"]
    assert alerts and all(doc["source"]["ip"] == "10.20.5.23" for doc in alerts)
    for doc in docs:
        assert doc["network"]["vlan"] == {"id": "300"} and doc["network"]["inner"] == {"vlan": {"id": "12"}}
        assert doc["phi_egress"]["tunnel"] == {"type": "vxlan", "source_ip": OUTER_A, "destination_ip": OUTER_B, "id": 1}
    bare = replay([REPO / "pcaps" / "mixpanel-plaintext.pcap"], "--emit", "all", "--prefilter", "never")
    assert all("tunnel" not in doc.get("phi_egress", {}) and "vlan" not in doc["network"] for doc in bare)
    assert {d["network"]["community_id"] for d in docs} == {d["network"]["community_id"] for d in bare}


def test_nested_tunnels_list_their_layers() -> None:
    decoder = PacketDecoder(Counters())
    frame = bytes(eth() / outer_ip() / UDP(sport=1, dport=4789) / VXLAN(vni=3) / eth()
                  / IP(src="192.0.2.7", dst="192.0.2.8") / GRE(proto=0x0800, key_present=1, key=99) / INNER)
    assert decode(1, frame, decoder) is not None
    assert decoder.tunnels[("10.20.0.5", 40000, "192.0.2.1", 80)][0] == (
        {"type": "vxlan", "source_ip": OUTER_A, "destination_ip": OUTER_B, "id": 3, "layers": ["vxlan", "gre"]},
        None, None)


def test_tunnel_ports_come_from_the_configuration(tmp_path: Path, bare_alerts: Tally) -> None:
    import yaml

    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["decode"]["tunnel_ports"] = {9999: "vxlan"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    paths = []
    for story in STORIES:
        target = tmp_path / story.name
        write_pcap(target, 1, [(ts, bytes(eth() / outer_ip() / UDP(sport=5, dport=9999) / VXLAN(vni=1) / Ether(f)))
                               for ts, f in story_frames(story)])
        paths.append(target)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "replay.jsonl"
            assert main(["replay", *map(str, paths), "--config", str(path), "--quiet", "--workers", "1",
                         "--prefilter", "never", "--output", str(out)]) == 0  # fmt: skip
            docs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        assert alert_keys(docs) == bare_alerts
        assert packet.udp_tunnel_ports == {9999: "vxlan"}
    finally:
        packet.configure_udp_tunnels(packet.DEFAULT_UDP_TUNNEL_PORTS)


@pytest.mark.parametrize("emit", ["all", "alerts"])
def test_records_keep_their_tunnel_once_the_table_forgets_it(emit: str, tunnels_root: Path, monkeypatch) -> None:
    """Every entry of the tunnelled-flow table is dropped as soon as a record takes its tunnel (as
    it leaves decode for its event, or raises an alert): the events, and the alerts built from
    their packed throttle windows at the end, still name the tunnel."""
    taken = PacketDecoder.tunnel_of

    def then_forget(self: PacketDecoder, record):
        record = taken(self, record)
        self.tunnels.clear()
        return record

    monkeypatch.setattr(PacketDecoder, "tunnel_of", then_forget)
    story = next(p for p in wrapped_dir("vlan-vxlan-vlan", tunnels_root) if p.name == "mixpanel-plaintext.pcap")
    docs = replay([story], "--emit", emit, "--prefilter", "never")
    assert any(doc["event"]["kind"] == "alert" for doc in docs)
    assert (emit == "all") == any(doc["event"]["kind"] != "alert" for doc in docs)
    for doc in docs:
        assert doc["network"]["vlan"] == {"id": "300"} and doc["network"]["inner"] == {"vlan": {"id": "12"}}
        assert doc["phi_egress"]["tunnel"] == {"type": "vxlan", "source_ip": OUTER_A, "destination_ip": OUTER_B, "id": 1}


def test_an_idle_tunnelled_flow_is_forgotten_on_the_capture_clock() -> None:
    decoder = PacketDecoder(Counters(), idle_timeout=20.0)  # kept 2 timeouts and 3 sweep periods (5 s): 55 s
    def wrapped(sport: int, vni: int) -> bytes:
        return bytes(eth() / outer_ip() / UDP(sport=1, dport=4789) / VXLAN(vni=vni) / eth()
                     / IP(src="10.20.0.5", dst="192.0.2.1") / TCP(sport=sport, dport=80, flags="A"))
    quiet, busy = ("10.20.0.5", 40000, "192.0.2.1", 80), ("10.20.0.5", 40001, "192.0.2.1", 80)
    for ts, sport in ((0.0, 40000), (0.0, 40001), (30.0, 40001), (50.0, 40001)):
        decoder.decode(ts, 1, wrapped(sport, 7))
    assert set(decoder.tunnels) == {quiet, busy}
    decoder.decode(56.0, 1, wrapped(40001, 7))  # the quiet flow's last packet 56 s ago, the busy one's 6 s
    assert set(decoder.tunnels) == {busy} and decoder.counters.get("decap.tunnelled_flows_expired") == 1
    assert decoder.tunnels[busy][0][0]["id"] == 7
    decoder.decode(200.0, 1, wrapped(40002, 8))
    assert list(decoder.tunnels) == [("10.20.0.5", 40002, "192.0.2.1", 80)]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_lookups_from_a_client_port_a_tunnel_uses_are_read_as_dns(tmp_path: Path, workers: str) -> None:
    """A client's ephemeral port may be VXLAN's or GTP-U's: a lookup from it, whose message ID happens
    to look like a VXLAN header (its I flag set), and its answer are DNS, as tshark reads them (the
    lower port decides), with one replay worker or two."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.utils import wrpcap

    from sensor.cli import main

    packets = []
    for index, port in enumerate((4789, 8472, 6081, 2152)):
        name = f"portal{index}.tunnel-port.example"
        query = DNS(id=0x0800 + index, rd=1, qd=DNSQR(qname=name))
        answer = DNS(id=0x0800 + index, qr=1, ra=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata="192.0.2.80"))
        client = f"10.20.0.{7 + index}"
        packets.append(Ether() / IP(src=client, dst="10.0.0.53") / UDP(sport=port, dport=53) / query)
        packets.append(Ether() / IP(src="10.0.0.53", dst=client) / UDP(sport=53, dport=port) / answer)
    for index, frame in enumerate(packets):
        frame.time = 1_700_000_000 + index / 10
    capture, out = tmp_path / "ports.pcap", tmp_path / "events.jsonl"
    wrpcap(str(capture), packets)
    assert main(["replay", str(capture), "--emit", "events", "--workers", workers, "--output", str(out), "--quiet"]) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((event["dns"]["question"]["name"], event["dns"]["resolved_ip"]) for event in events) == [
        (f"portal{index}.tunnel-port.example", ["192.0.2.80"]) for index in range(4)]
