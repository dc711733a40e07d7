"""TLS, HTTP and host names where they hide: a ClientHello after a plaintext start (STARTTLS,
PostgreSQL, MySQL, RDP, a proxy's CONNECT, a WebSocket tunnel), HTTP with any method token and
HTTP/0.9 lines, and the local-link name protocols (mDNS, LLMNR, NetBIOS name service).

The captures in tests/data/ were made by tests/hidden_captures.py with real clients; the slow test
makes them again. tshark, where installed, must find the same hellos and names.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import hidden_captures
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.capture.pcap import CaptureFile
from sensor.decode import dns, http, tls
from sensor.decode.dispatch import TrafficDecoder
from sensor.records import DnsQuery, HttpRequest, LocalNameQuery, TlsHello, UpgradedHello

DATA = Path(__file__).resolve().parent / "data"
TSHARK = shutil.which("tshark")


def decode(path: Path) -> TrafficDecoder:
    decoder = TrafficDecoder()
    for ts, linktype, frame in CaptureFile(path).packets():
        decoder.feed(ts, linktype, frame)
    decoder.finish()
    return decoder


def hellos(decoder: TrafficDecoder) -> dict[str, str]:
    return {r.server_name: r.preamble for r in decoder.records if isinstance(r, UpgradedHello)}


def replay(path: Path, *args: str) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "sensor", "replay", str(path), "--quiet", *args],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def client_hello(name: str | None) -> bytes:
    """A real ClientHello (OpenSSL's) naming `name` (None: no server_name)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    engine = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        engine.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def feed_stream(decoder: TrafficDecoder, chunks: list[bytes], sport: int = 50000, dport: int = 2525,
                syn: bool = True) -> None:
    """The client side of one TCP connection, straight into the decoder (no capture file)."""
    src, dst, seq = bytes([10, 1, 1, 5]), bytes([10, 9, 9, 9]), 1000
    if syn:
        decoder.feed_decoded(0.0, (6, src, dst, sport, dport, 0x02, seq, b""))
    seq += 1
    for chunk in chunks:
        decoder.feed_decoded(1.0, (6, src, dst, sport, dport, 0x18, seq, chunk))
        seq += len(chunk)
    decoder.finish()


# --- the real clients' captures ---------------------------------------------------------------------


@pytest.mark.parametrize("capture", sorted(hidden_captures.EXPECTED))
def test_hello_after_a_plaintext_start(capture: str) -> None:
    decoder = decode(DATA / capture)
    assert hellos(decoder) == hidden_captures.EXPECTED[capture]
    assert decoder.counters.get("tls.upgraded") == len(hidden_captures.EXPECTED[capture])
    for record in decoder.records:
        if isinstance(record, TlsHello):
            assert record.protocol == "tls" and record.version == "1.3" and record.flow.transport == "tcp"


@pytest.mark.parametrize("capture", sorted(hidden_captures.EXPECTED_HTTP))
def test_http_as_really_sent(capture: str) -> None:
    requests = {(r.method, r.target) for r in decode(DATA / capture).records if isinstance(r, HttpRequest)}
    assert requests == hidden_captures.EXPECTED_HTTP[capture]


def test_connect_tunnel_events_name_the_proxy_and_the_destination() -> None:
    docs = replay(DATA / "proxy-tunnels.pcap", "--emit", "events")
    [connect] = [d for d in docs if d.get("http", {}).get("request", {}).get("method") == "CONNECT"
                 and d["url"]["original"].endswith(":443")]
    [hello] = [
        d for d in docs if d["event"]["dataset"] == "phi_sensor.tls" and d["phi_egress"]["tls"]["preamble"] == "http-connect"
    ]
    assert connect["url"]["domain"] == "portal.upgrade.test"
    assert hello["destination"]["domain"] == "portal.upgrade.test"  # the SNI inside the tunnel
    assert hello["destination"]["port"] == connect["destination"]["port"]  # the proxy's own address
    assert hello["destination"]["ip"] == connect["destination"]["ip"]
    assert hello["phi_egress"]["tls"]["tunnel_target"] == "portal.upgrade.test:443"
    [websocket] = [
        d for d in docs if d["event"]["dataset"] == "phi_sensor.tls" and d["phi_egress"]["tls"]["preamble"] == "websocket"
    ]
    assert websocket["tls"]["client"]["server_name"] == "ws.upgrade.test"


def test_http_09_and_custom_methods_as_events() -> None:
    docs = {d["http"]["request"]["method"]: d for d in replay(DATA / "http-methods.pcap", "--emit", "events")}
    assert docs["GET"]["http"]["version"] == "0.9" and docs["GET"]["url"]["original"] == "/legacy-0.9"
    assert docs["BREW"]["url"]["domain"] == "api.upgrade.test" and docs["BREW"]["http"]["version"] == "1.1"


def test_local_names_are_dns_events_marked_with_their_protocol() -> None:
    decoder = decode(DATA / "local-names.pcap")
    records = [r for r in decoder.records if isinstance(r, DnsQuery)]
    assert all(isinstance(r, LocalNameQuery) for r in records)
    assert {(r.protocol, r.name, r.qtype) for r in records} == hidden_captures.EXPECTED_LOCAL_NAMES
    llmnr = next(r for r in records if r.protocol == "llmnr")
    assert llmnr.response_seen and llmnr.flow.src_ip == "192.168.40.20" and llmnr.answers[0].data == "192.168.40.40"
    netbios = next(r for r in records if r.name == "FILESERVER")
    assert netbios.response_seen and [(a.type, a.data) for a in netbios.answers] == [("NB", "192.168.40.50")]
    docs = replay(DATA / "local-names.pcap", "--emit", "events")
    assert {(d["network"]["protocol"], d["dns"]["question"]["name"]) for d in docs} == {
        (protocol, name) for protocol, name, _ in hidden_captures.EXPECTED_LOCAL_NAMES}


def test_local_names_never_alert_nor_attribute(tmp_path: Path) -> None:
    """Without a configuration every private address is a PHI host. An mDNS query for a tracker's
    name, and an mDNS answer claiming a tracker's name for an address that a nameless hello then
    goes to, raise nothing; the same hello through a proxy's CONNECT with the tracker's SNI does."""
    from scapy.layers.dns import DNS, DNSRR
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap, wrpcap

    def segment(dport: int, seq: int, flags: str, payload: bytes = b"") -> Ether:
        return Ether() / IP(src="10.1.1.5", dst="10.9.9.9") / TCP(sport=51000 + dport % 1000, dport=dport, seq=seq,
                                                                flags=flags) / payload

    nameless = client_hello(None)
    connect = b"CONNECT www.google-analytics.com:443 HTTP/1.1\r\nHost: www.google-analytics.com:443\r\n\r\n"
    tracker_hello = client_hello("www.google-analytics.com")
    packets = [
        Ether() / IP(src="10.1.1.7", dst="224.0.0.251") / UDP(sport=5353, dport=5353) / DNS(
            id=0, qr=1, aa=1, qd=[], an=DNSRR(rrname="www.google-analytics.com", type="A", ttl=120, rdata="10.9.9.9")),
        segment(443, 100, "S"), segment(443, 101, "PA", nameless),
    ]
    wrpcap(str(tmp_path / "local.pcap"), [*packets, *rdpcap(str(DATA / "local-names.pcap"))])
    assert [d for d in replay(tmp_path / "local.pcap") if d["event"]["kind"] == "alert"] == []
    wrpcap(str(tmp_path / "proxied.pcap"), [segment(3128, 500, "S"), segment(3128, 501, "PA", connect),
                                            segment(3128, 501 + len(connect), "PA", tracker_hello)])
    alerts = [d for d in replay(tmp_path / "proxied.pcap") if d["event"]["kind"] == "alert"]
    assert {d["phi_egress"]["vendor"]["id"] for d in alerts} == {"google-analytics"}


def test_the_prefilter_keeps_the_local_names() -> None:
    """The replay prefilter (compiled selector, or tcpdump with the BPF filter) passes mDNS, LLMNR
    and NetBIOS name service packets both ways."""
    def names(prefilter: str) -> set[tuple[str, str]]:
        docs = replay(DATA / "local-names.pcap", "--emit", "events", "--prefilter", prefilter)
        return {(d["network"]["protocol"], d["dns"]["question"]["name"]) for d in docs}

    # Two workers may share a prefiltered replay: a NetBIOS query (137 -> 137, broadcast) and its
    # answer then go to different ones and come out unpaired, as two events of the same name.
    assert names("always") == names("never") == {(p, n) for p, n, _ in hidden_captures.EXPECTED_LOCAL_NAMES}


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("capture", sorted(hidden_captures.EXPECTED))
def test_tshark_finds_the_same_hellos(capture: str) -> None:
    """tshark's TLS heuristic finds the hellos after a plaintext start (not inside WebSocket frames)."""
    out = subprocess.run([TSHARK, "-n", "-2", "-r", str(DATA / capture), "--enable-heuristic", "tls_tcp",
                          "-o", "tcp.try_heuristic_first:TRUE", "-Y", "tls.handshake.type == 1",
                          "-T", "fields", "-e", "tls.handshake.extensions_server_name"],
                         capture_output=True, text=True, check=True).stdout.split()
    ours = set(hellos(decode(DATA / capture)))
    assert set(out) == ours - {"ws.upgrade.test"}


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_reads_the_same_local_names() -> None:
    out = subprocess.run([TSHARK, "-n", "-r", str(DATA / "local-names.pcap"), "-T", "fields", "-E", "separator=|",
                          "-e", "dns.qry.name", "-e", "dns.resp.name", "-e", "nbns.name"],
                         capture_output=True, text=True, check=True).stdout
    theirs = {name for line in out.splitlines() for field in line.split("|") for name in field.split(",") if name}
    theirs = {re.sub(r"<[0-9a-f]{2}>$", "", name.split(" (")[0]) for name in theirs}  # NetBIOS suffixes
    ours = {r.name for r in decode(DATA / "local-names.pcap").records}
    assert ours == theirs


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not all(map(shutil.which, ("tcpdump", "openssl", "curl"))),
                    reason="needs root, tcpdump, openssl and curl")
def test_real_clients_make_the_same_captures(tmp_path: Path) -> None:
    """On a busy machine a loopback capture now and then lacks a packet that tcpdump does not
    count as dropped: the captures are made a second time before anything counts as a failure."""

    def differences(outdir: Path) -> list[str]:
        found = []
        for path in hidden_captures.make_all(outdir):
            decoder = decode(path)
            requests = {(r.method, r.target) for r in decoder.records if isinstance(r, HttpRequest)}
            if hellos(decoder) != hidden_captures.EXPECTED.get(path.name, {}):
                found.append(f"{path.name}: hellos {hellos(decoder)}")
            if path.name in hidden_captures.EXPECTED_HTTP and requests != hidden_captures.EXPECTED_HTTP[path.name]:
                found.append(f"{path.name}: requests {requests}")
        return found

    assert not differences(tmp_path / "first") or not differences(tmp_path / "second")


# --- the watcher on hand-made streams -------------------------------------------------------------------


def test_hello_split_after_a_preamble_and_a_false_start() -> None:
    decoder = TrafficDecoder()
    hello = client_hello("mail.example.org")
    # "\x16\x03\x01" in the plaintext is no hello; the real one follows, split in three.
    feed_stream(decoder, [b"EHLO a\r\nX-JUNK \x16\x03\x01\x00\x10\x01 x\r\n", b"STARTTLS\r\n", hello[:3],
                          hello[3:200], hello[200:]])
    [record] = decoder.records
    assert isinstance(record, UpgradedHello)
    assert (record.server_name, record.preamble) == ("mail.example.org", "smtp")


@pytest.mark.parametrize("preamble", [hidden_captures.POSTGRES_SSL_REQUEST, hidden_captures.RDP_REQUEST,
                                      hidden_captures.LDAP_STARTTLS, hidden_captures.MYSQL_SSL_REQUEST])
def test_binary_openings_without_a_line_end(preamble: bytes) -> None:
    decoder = TrafficDecoder()
    hello = client_hello("db.example")
    feed_stream(decoder, [preamble, hello[:20], hello[20:]])
    assert [r.server_name for r in decoder.records] == ["db.example"]


def test_a_long_plaintext_start_is_trimmed_but_still_named() -> None:
    decoder = TrafficDecoder()
    lines = [b"EHLO client.example\r\n"] + [b"NOOP %d padding padding padding\r\n" % i for i in range(300)]
    feed_stream(decoder, [*lines, b"STARTTLS\r\n", client_hello("mx.example")])
    [record] = decoder.records
    assert (record.server_name, record.preamble) == ("mx.example", "smtp")


def test_streams_are_watched_only_from_a_known_start_and_up_to_a_cap() -> None:
    decoder = TrafficDecoder()
    feed_stream(decoder, [b"STLS\r\n", client_hello("a.example")], syn=False)  # picked up midway: the hello starts it
    assert [r.server_name for r in decoder.records] == ["a.example"]
    decoder = TrafficDecoder()
    feed_stream(decoder, [b"x" * 1000] * 17 + [client_hello("late.example")])
    assert decoder.records == [] and decoder.counters.get("tcp.streams_watched") == 1
    for opening in (b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 200 OK\r\n", b"\x17\x03\x03\x00\x20"):
        decoder = TrafficDecoder()
        feed_stream(decoder, [opening, client_hello("b.example")])
        assert decoder.records == [] and decoder.counters.get("tcp.streams_watched") == 0


def test_unknown_method_on_any_port_needs_a_whole_request_line() -> None:
    decoder = TrafficDecoder()
    feed_stream(decoder, [b"MKREDIRECTREF /a HT", b"TP/1.1\r\nHost: h.example\r\n\r\n"], dport=9999)
    assert [(r.method, r.host) for r in decoder.records] == [("MKREDIRECTREF", "h.example")]
    decoder = TrafficDecoder()
    feed_stream(decoder, [b"\r\n", b"\r\nGET /after-blank-lines HTTP/1.1\r\n\r\n"], dport=9999)
    assert [r.target for r in decoder.records] == ["/after-blank-lines"]
    for text in (b"A001 LOGIN user pass\r\n", b"220 mail ESMTP\r\n", b"HELLO /x y\r\n", b"FOO /x\r\n"):
        decoder = TrafficDecoder()
        feed_stream(decoder, [text, b"GET / HTTP/1.1\r\n\r\n"])
        assert decoder.records == [], text


def test_opens_request() -> None:
    assert http.opens_request(b"QUERY /q HTTP/1.1\r\n")
    assert http.opens_request(b"GET /\n")
    assert not http.opens_request(b"FOO /x\r\n")  # HTTP/0.9 knows GET only; an unknown word is not HTTP
    assert not http.opens_request(b"get /x\r\n")
    assert not http.opens_request(b"GET x\r\n")
    assert not http.opens_request(b"QUERY /q HTTP/2\r\n")


def test_http09_inside_a_stream() -> None:
    stream = http.HttpRequestStream()
    [simple] = stream.feed(b"GET /a/b?c\r\n")
    assert (simple.method, simple.target, simple.version, simple.headers) == ("GET", "/a/b?c", "0.9", ())


def test_any_method_token_and_the_tunnel_start() -> None:
    stream = http.HttpRequestStream()
    requests = stream.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nBREW /pot HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [r.method for r in requests] == ["GET", "BREW"]
    assert stream.feed(b"X" * 33 + b" / HTTP/1.1\r\n\r\n") == [] and stream.failed  # no method is that long
    hello = client_hello("inside.example")
    stream = http.HttpRequestStream()
    [connect] = stream.feed(b"CONNECT inside.example:443 HTTP/1.1\r\nHost: inside.example:443\r\n\r\n" + hello[:50])
    assert connect.method == "CONNECT" and stream.failed
    assert stream.tunnel == ("connect", "inside.example:443") and stream.tunnel_start == hello[:50]
    stream = http.HttpRequestStream()
    stream.feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x82\x85abcd")
    assert stream.tunnel == ("websocket", "/ws") and stream.tunnel_start == b"\x82\x85abcd"


def test_netbios_names() -> None:
    encoded = "".join(chr(65 + (b >> 4)) + chr(65 + (b & 15)) for b in b"FILESERVER     \x20")
    assert dns.netbios_name(encoded) == "FILESERVER"
    assert dns.netbios_name(encoded.lower() + ".corp.example") == "FILESERVER.corp.example"
    wildcard = "".join(chr(65 + (b >> 4)) + chr(65 + (b & 15)) for b in b"*" + b"\x00" * 15)
    assert dns.netbios_name(wildcard) == "*"
    browse = "".join(chr(65 + (b >> 4)) + chr(65 + (b & 15)) for b in b"WORKGROUP      \x1d")
    assert dns.netbios_name(browse) == "WORKGROUP"  # the suffix goes, as Zeek logs it
    assert dns.netbios_name("printer.local") == "printer.local"


def test_compiled_and_python_dns_parsers_agree_on_local_messages() -> None:
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    for packet in rdpcap(str(DATA / "local-names.pcap")):
        payload = bytes(packet[UDP].payload)
        assert dns.parse_message(payload) == dns.parse_message_py(payload)


def test_pure_python_gives_the_compiled_output() -> None:
    from test_pure_python import _replay

    pytest.importorskip("sensor._fast", reason="the compiled extension is not built: nothing to compare")
    captures = sorted(DATA.glob("*.pcap"))
    compiled = _replay(captures, "all", pure=False)
    assert compiled.count(b"\n") >= 25
    assert _replay(captures, "all", pure=True) == compiled


def test_event_lines_keep_the_protocol_and_the_preamble() -> None:
    """The compiled line writers know plain DNS and TLS records only: these lines are orjson's."""
    import orjson

    from sensor.output.ecs import EventBuilder
    from sensor.records import DnsAnswer, Flow

    builder = EventBuilder("sensor-1", lambda host: host)
    local = LocalNameQuery(1.0, Flow("10.0.0.2", 5355, "224.0.0.252", 5355, "udp"), 7, "printer", "A", True,
                           "NOERROR", (DnsAnswer("printer", "A", "10.0.0.9", 30),), "llmnr")
    upgraded = UpgradedHello(2.0, Flow("10.0.0.2", 50000, "10.0.0.3", 3128, "tcp"), "tls", "x.example", ("h2",),
                             False, "1.3", "http-connect", "x.example:443")
    for record in (local, upgraded):
        line = builder.json_line(record)
        assert line == orjson.dumps(builder(record), option=orjson.OPT_APPEND_NEWLINE)
    assert orjson.loads(builder.json_line(local))["network"]["protocol"] == "llmnr"
    assert orjson.loads(builder.json_line(upgraded))["phi_egress"]["tls"] == {
        "alpn": ["h2"], "ech": False, "preamble": "http-connect", "tunnel_target": "x.example:443"}


# --- property tests ------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=600), st.integers(0, 700))
def test_find_client_hello_never_raises(data: bytes, start: int) -> None:
    status, hello, offset = tls.find_client_hello(data, start)
    assert 0 <= offset <= max(start, len(data))
    assert (hello is not None) == (status is tls.TlsStatus.DONE)


_HELLO = client_hello("found.example")


@settings(max_examples=150)
@given(st.binary(max_size=300), st.integers(1, 400))
def test_find_client_hello_after_any_preamble(preamble: bytes, cut: int) -> None:
    stream = preamble + _HELLO
    status, hello, offset = tls.find_client_hello(stream[:len(preamble) + cut])
    if cut < len(_HELLO):
        assert hello is None
    status, hello, offset = tls.find_client_hello(stream, 0)
    assert status is tls.TlsStatus.DONE and hello is not None
    assert hello.server_name == "found.example" or offset < len(preamble)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from(sorted(dns.LOCAL_NAME_PORTS.values())))
def test_local_message_parser_raises_only_dns_errors(data: bytes, protocol: str) -> None:
    try:
        dns.parse_local_message(data, protocol)
    except dns.DnsError:
        pass


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_netbios_name_never_raises(name: str) -> None:
    assert isinstance(dns.netbios_name(name), str)


@settings(max_examples=200)
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=10))
def test_websocket_frames_never_raise(data: bytes, cuts: list[int]) -> None:
    frames = http.WebSocketFrames(max_frame=1000)
    position = 0
    for size in [*cuts, len(data)]:
        assert isinstance(frames.feed(data[position:position + size]), bytes)
        position += size


@settings(max_examples=150)
@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8), st.integers(1, 65535))
def test_decoder_never_raises_on_any_client_stream(chunks: list[bytes], port: int) -> None:
    decoder = TrafficDecoder()
    feed_stream(decoder, chunks, dport=port)
    for record in decoder.records:
        assert isinstance(record, (TlsHello, HttpRequest))
