#!/usr/bin/env python3
"""Write the small story captures in pcaps/ and their manifest, stories.json.

Each capture tells one story (a diabetes app posting to Mixpanel in plaintext, a patient portal
firing the Meta Pixel, GA4 over QUIC, ...). The manifest says what a correct sensor must see in
it: PHI hosts, vendor domains, DNS names, SNIs, HTTP requests, which traffic is plaintext and
which alerts the example configuration should raise. Output is deterministic: fixed seeds and
timestamps, so running this twice gives identical bytes.

    python pcaps/make_pcaps.py [--out DIR]
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth import (  # noqa: E402  (the folder is not a package)
    DnsRecord,
    Link,
    Packet,
    PcapWriter,
    TcpConversation,
    UdpFlow,
    client_finished,
    client_hello,
    client_hello_record,
    dns_query,
    ech_config_list,
    dns_response,
    encrypted_records,
    hello_session_id,
    http_request,
    http_response,
    https_rdata,
    initial_keys,
    quic_handshake_packet,
    quic_initial_packets,
    quic_short_packet,
    quic_transport_parameters,
    server_flight,
    server_hello,
)

HERE = Path(__file__).resolve().parent
START_NS = 1_705_329_000 * 1_000_000_000  # 2024-01-15 14:30:00 UTC
RESOLVER = "10.0.0.53"
RESOLVER_V6 = "fd00::53"
ECH_COVER_NAME = "cloudflare-ech.com"

CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
APP_UA = "MediTrack/4.2.1 (iPhone; iOS 17.2; Scale/3.00)"

# The resolver's view of the names the stories use; every server address is in a documentation range.
ZONE: dict[str, list[DnsRecord]] = {
    "api.mixpanel.com": [DnsRecord("api.mixpanel.com", "A", "203.0.113.41", 60)],
    "portal.example-hospital.org": [DnsRecord("portal.example-hospital.org", "A", "198.51.100.20", 3600)],
    "www.example-hospital.org": [DnsRecord("www.example-hospital.org", "A", "198.51.100.21", 3600)],
    "www.facebook.com": [
        DnsRecord("www.facebook.com", "CNAME", "star-mini.c10r.facebook.com", 3600),
        DnsRecord("star-mini.c10r.facebook.com", "A", "203.0.113.35", 60),
    ],
    "connect.facebook.net": [
        DnsRecord("connect.facebook.net", "CNAME", "scontent.xx.fbcdn.net", 3600),
        DnsRecord("scontent.xx.fbcdn.net", "A", "203.0.113.36", 60),
    ],
    "region1.google-analytics.com": [DnsRecord("region1.google-analytics.com", "A", "192.0.2.47", 300)],
    "www.googletagmanager.com": [DnsRecord("www.googletagmanager.com", "A", "192.0.2.48", 300)],
    "www.google-analytics.com": [DnsRecord("www.google-analytics.com", "A", "192.0.2.46", 300)],
    "api.segment.io": [DnsRecord("api.segment.io", "A", "203.0.113.60", 60)],
    "ctldl.windowsupdate.com": [
        DnsRecord("ctldl.windowsupdate.com", "CNAME", "ctldl.windowsupdate.com.delivery.microsoft.com", 3600),
        DnsRecord("ctldl.windowsupdate.com.delivery.microsoft.com", "A", "198.51.100.80", 120),
    ],
    "ocsp.digicert.com": [DnsRecord("ocsp.digicert.com", "A", "198.51.100.90", 300)],
    "crypto.cloudflare.com": [DnsRecord("crypto.cloudflare.com", "A", "203.0.113.99", 300)],
    "assist.example.net": [DnsRecord("assist.example.net", "A", "203.0.113.77", 300)],
}
ZONE_V6 = {"www.google-analytics.com": [DnsRecord("www.google-analytics.com", "AAAA", "2001:db8::10", 300)]}
HTTPS_RECORDS = {
    "region1.google-analytics.com": https_rdata(alpn=("h3", "h2"), ipv4hint=("192.0.2.47",)),
    # the ech parameter tells the browser to encrypt its ClientHello and show only the public (cover) name
    "crypto.cloudflare.com": https_rdata(
        alpn=("h3", "h2"),
        ipv4hint=("203.0.113.99",),
        ech_config=ech_config_list(ECH_COVER_NAME, random.Random(ECH_COVER_NAME)),
    ),
}


def address_of(name: str, qtype: str = "A") -> str:
    records = (ZONE_V6 if qtype == "AAAA" else ZONE)[name]
    return str(records[-1].data)


def link_for(host: str, vlans: tuple[int, ...] = ()) -> Link:
    """An Ethernet link whose client MAC is derived from the host address (one NIC per host)."""
    return Link(vlans=vlans, client_mac=b"\x02\x00" + hashlib.sha256(host.encode()).digest()[:4])


@dataclass
class Capture:
    """One story capture: timestamped frames plus what a correct sensor must report about them."""

    file: str
    story: str
    rng: random.Random = field(init=False)
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    clock_ns: int = START_NS
    phi_hosts: list[str] = field(default_factory=list)
    non_phi_hosts: list[str] = field(default_factory=list)
    vendors: dict[str, dict[str, object]] = field(default_factory=dict)
    dns_queries: list[str] = field(default_factory=list)
    sni: list[str] = field(default_factory=list)
    quic_sni: list[str] = field(default_factory=list)
    ech_cover_names: list[str] = field(default_factory=list)
    http: list[dict[str, str]] = field(default_factory=list)
    plaintext: list[dict[str, object]] = field(default_factory=list)
    expected_alerts: list[dict[str, Any]] = field(default_factory=list)
    _last_from_client: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.file)

    # -- time and bookkeeping

    def emit(self, packets: Iterable[Packet], *, rtt_ms: float = 24.0) -> None:
        """Timestamp packets as a sensor next to the clients sees them: replies come one round trip later."""
        for packet in packets:
            if packet.from_client == self._last_from_client:
                gap_us = 60
            elif packet.from_client:
                gap_us = 300  # the client answers quickly
            else:
                gap_us = int(rtt_ms * 1000)
            self.clock_ns += gap_us * 1000 + self.rng.randrange(40_000)
            self.frames.append((self.clock_ns, packet.frame))
            self._last_from_client = packet.from_client

    def idle(self, ms: float) -> None:
        self.clock_ns += int(ms * 1_000_000)

    def host(self, address: str, *, phi: bool) -> None:
        hosts = self.phi_hosts if phi else self.non_phi_hosts
        if address not in hosts:
            hosts.append(address)

    def vendor(self, domain: str, vendor: str | None, *, baa: bool) -> None:
        """A third-party domain contacted: its catalogued vendor (None: not catalogued) and whether
        the example configuration's BAA registry covers it."""
        self.vendors.setdefault(domain, {"domain": domain, "vendor": vendor, "baa_on_file": baa})

    def alert(self, rule: str, source_ip: str, domain: str) -> None:
        """An alert the example configuration should raise; alerts are one per (rule, host, vendor),
        so the domains of one vendor share an entry and the alert may name any of them."""
        vendor = self.vendors[domain]["vendor"]
        for entry in self.expected_alerts:
            if (entry["rule"], entry["source_ip"], entry["vendor"]) == (rule, source_ip, vendor):
                if domain not in entry["domains"]:
                    entry["domains"].append(domain)
                return
        self.expected_alerts.append({"rule": rule, "source_ip": source_ip, "vendor": vendor, "domains": [domain]})

    def _ephemeral_port(self) -> int:
        return self.rng.randrange(49152, 65535)

    def _conversation(self, client: str, server: str, port: int, link: Link) -> TcpConversation:
        isns = self.rng.getrandbits(32), self.rng.getrandbits(32)
        return TcpConversation(
            client, self._ephemeral_port(), server, port, link=link, client_isn=isns[0], server_isn=isns[1]
        )

    # -- protocol scenes

    def lookup(
        self, client: str, name: str, qtype: str = "A", *, resolver: str = RESOLVER, link: Link | None = None
    ) -> None:
        """A DNS query over UDP and the resolver's answer from the zone."""
        if qtype == "HTTPS":
            answers = [DnsRecord(name, "HTTPS", HTTPS_RECORDS[name], 300)]
        else:
            answers = (ZONE_V6 if qtype == "AAAA" else ZONE)[name]
        flow = UdpFlow(client, self._ephemeral_port(), resolver, 53, link=link or link_for(client))
        qid = self.rng.getrandbits(16)
        query, response = dns_query(qid, name, qtype), dns_response(qid, name, qtype, answers)
        self.emit([flow.packet(query), flow.packet(response, from_client=False)], rtt_ms=3)
        if name not in self.dns_queries:
            self.dns_queries.append(name)

    def tls(
        self,
        client: str,
        server_name: str,
        *,
        server: str | None = None,
        link: Link | None = None,
        chrome: bool = True,
        ech: bool = False,
        exchanges: Sequence[tuple[int, int]] = ((420, 5200),),
        reorder: Callable[[list[Packet]], list[Packet]] | None = None,
    ) -> None:
        """A TLS 1.3 connection: handshake, ClientHello (Chrome's is post-quantum and splits), encrypted exchanges, FIN.

        `reorder` rearranges the ClientHello segments (out of order, retransmitted) before they are sent.
        """
        conv = self._conversation(client, server or address_of(server_name), 443, link or link_for(client))
        self.emit(conv.handshake())
        alpn = ("h2", "http/1.1") if chrome else ("http/1.1",)
        record = client_hello_record(server_name, rng=self.rng, ech=ech, post_quantum=chrome, alpn=alpn)
        hello_segments = conv.send(record, ack=False)
        self.emit(reorder(hello_segments) if reorder else hello_segments)
        self.emit([conv.ack(from_client=False)])
        flight = server_flight(self.rng, session_id=hello_session_id(record[5:]))
        self.emit(conv.send(flight, from_client=False, ack=False))
        self.emit(conv.send(client_finished(self.rng), ack=False))
        for request_size, response_size in exchanges:
            self.emit(conv.send(encrypted_records(self.rng, request_size), ack=False))
            self.emit(conv.send(encrypted_records(self.rng, response_size), from_client=False))
        self.emit(conv.close())
        self.sni.append(server_name)

    def http_exchange(
        self,
        client: str,
        host: str,
        requests: Sequence[tuple[str, str, Sequence[tuple[str, str]], bytes]],
        *,
        phi: bool,
        response: bytes = b"",
        link: Link | None = None,
    ) -> None:
        """Plaintext HTTP/1.1 requests (method, target, headers, body) on one keep-alive connection to port 80."""
        conv = self._conversation(client, address_of(host), 80, link or link_for(client))
        self.emit(conv.handshake())
        for method, target, headers, body in requests:
            self.emit(conv.send(http_request(method, host, target, headers=headers, body=body), ack=False))
            self.emit(conv.send(response or http_response(body=b"1"), from_client=False))
            request = {"method": method, "host": host, "uri": target}
            self.http.append(request)
            self.plaintext.append({"src": client, "dst": conv.server, "dst_port": 80, **request, "phi": phi})
        self.emit(conv.close())

    def quic(self, client: str, server_name: str, *, request_size: int = 380, response_packets: int = 4) -> None:
        """A QUIC v1 connection: Chrome's ClientHello over two Initials, the server's Initial+Handshake, 1-RTT data."""
        server = address_of(server_name)
        flow = UdpFlow(client, self._ephemeral_port(), server, 443, link=link_for(client))
        dcid, server_cid = self.rng.randbytes(8), self.rng.randbytes(8)
        params = quic_transport_parameters(b"", self.rng)
        hello = client_hello(server_name, rng=self.rng, alpn=("h3",), quic_transport_params=params)
        initials = quic_initial_packets(hello, dcid=dcid, keys=initial_keys(dcid), scramble=self.rng)
        self.emit(flow.packet(p) for p in initials)
        server_initial = quic_initial_packets(
            server_hello(self.rng),
            dcid=b"",
            scid=server_cid,
            keys=initial_keys(dcid, server=True),
            datagram_size=None,
            ack_largest=len(initials) - 1,
        )[0]
        # the server coalesces its Initial with the first Handshake packet in one datagram
        coalesced = server_initial + quic_handshake_packet(b"", server_cid, 1200 - len(server_initial), self.rng)
        self.emit([flow.packet(coalesced, from_client=False)])
        self.emit([flow.packet(quic_handshake_packet(b"", server_cid, 1150, self.rng), from_client=False)])
        self.emit([flow.packet(quic_handshake_packet(server_cid, b"", 90, self.rng))])
        self.emit([flow.packet(quic_short_packet(server_cid, request_size, self.rng))])
        for _ in range(response_packets):
            self.emit([flow.packet(quic_short_packet(b"", 1250, self.rng), from_client=False)])
        self.emit([flow.packet(quic_short_packet(server_cid, 40, self.rng))])
        self.quic_sni.append(server_name)

    # -- output

    def write(self, out_dir: Path) -> dict[str, object]:
        with (out_dir / self.file).open("wb") as stream, PcapWriter(stream) as writer:
            for ts_ns, frame in self.frames:
                writer.write(ts_ns, frame)
        return {
            "file": self.file,
            "story": self.story,
            "packets": len(self.frames),
            "phi_hosts": self.phi_hosts,
            "non_phi_hosts": self.non_phi_hosts,
            "vendors": list(self.vendors.values()),
            "dns_queries": self.dns_queries,
            "sni": self.sni + self.quic_sni,
            "quic_sni": self.quic_sni,
            "ech_cover_names": self.ech_cover_names,
            "http": self.http,
            "plaintext": self.plaintext,
            "expected_alerts": self.expected_alerts,
        }


# ---------------------------------------------------------------- scenes


def mixpanel_payload(data: dict[str, object]) -> bytes:
    """A form body as Mixpanel's mobile SDKs send it: data=<base64 of the JSON>."""
    encoded = base64.b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()
    return f"data={quote(encoded, safe='')}&ip=1".encode()


def scene_mixpanel_plaintext(cap: Capture) -> None:
    app = "10.20.5.23"
    cap.host(app, phi=True)
    cap.vendor("api.mixpanel.com", "Mixpanel", baa=False)
    cap.lookup(app, "api.mixpanel.com")
    token, distinct_id = "3f1c9d0e8a7b6c5d4e3f2a1b0c9d8e7f", "u-58213"
    track = {
        "event": "glucose_logged",
        "properties": {
            "token": token,
            "distinct_id": distinct_id,
            "time": 1705329004,
            "$insert_id": "c1d2e3f4a5b6c7d8",
            "$current_url": "meditrack://log/glucose",
            "$os": "iOS",
            "$app_version_string": "4.2.1",
            "glucose": "182 mg/dL",
            "meal": "after dinner",
            "medications": ["insulin glargine 20 units", "metformin 500 mg"],
        },
    }
    engage = {
        "$token": token,
        "$distinct_id": distinct_id,
        "$set": {"$email": "maria.gonzalez@example.com", "$name": "Maria Gonzalez", "diabetes_type": "type 2"},
    }
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("User-Agent", APP_UA),
        ("Accept", "*/*"),
        ("Accept-Language", "en-US,en;q=0.9"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Connection", "keep-alive"),
    ]
    cap.http_exchange(
        app,
        "api.mixpanel.com",
        [("POST", "/track", headers, mixpanel_payload(track)), ("POST", "/engage", headers, mixpanel_payload(engage))],
        phi=True,
    )
    for rule in ("tracker-egress-no-baa", "plaintext-phi", "phi-in-tracker-payload"):
        cap.alert(rule, app, "api.mixpanel.com")


def scene_mixpanel_tls(cap: Capture) -> None:
    app = "10.20.5.23"
    cap.tls(app, "api.mixpanel.com", chrome=False, exchanges=((610, 120),))


def meta_pixel_target(page: str, referrer: str, extra: str = "") -> str:
    return (
        "http://www.facebook.com/tr/?id=1234567890&ev=PageView"
        f"&dl={quote(page, safe='')}&rl={quote(referrer, safe='')}&if=false&ts=1705329012312{extra}"
        "&sw=1920&sh=1080&v=2.9.141&r=stable&ec=0&o=4126&it=1705329011985&coo=false&rqm=GET"
    )


def scene_meta_pixel(cap: Capture, *, with_tls: bool = True) -> None:
    workstation = "10.20.8.14"
    cap.host(workstation, phi=True)
    cap.vendor("connect.facebook.net", "Meta", baa=False)
    cap.vendor("www.facebook.com", "Meta", baa=False)
    for name in ("portal.example-hospital.org", "connect.facebook.net", "www.facebook.com"):
        cap.lookup(workstation, name)
    if with_tls:
        cap.tls(workstation, "portal.example-hospital.org", exchanges=((520, 9800), (480, 3100)))
        cap.tls(workstation, "connect.facebook.net", exchanges=((450, 7400),))
        cap.alert("tracker-egress-no-baa", workstation, "connect.facebook.net")
    page = "https://portal.example-hospital.org/conditions/hiv-prep?appointment=new"
    email_hash = hashlib.sha256(b"jane.doe@example.com").hexdigest()
    target = meta_pixel_target(
        page,
        "https://portal.example-hospital.org/search?q=hiv%20prep",
        f"&cd[search_string]=HIV%20PrEP&ud[em]={email_hash}",
    )
    headers = [
        ("User-Agent", CHROME_UA),
        ("Accept", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"),
        ("Referer", page),
        ("Accept-Encoding", "gzip, deflate"),
        ("Accept-Language", "en-US,en;q=0.9"),
        ("Connection", "keep-alive"),
    ]
    pixel_gif = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
    gif = http_response(body=pixel_gif, content_type="image/gif")
    cap.http_exchange(workstation, "www.facebook.com", [("GET", target, headers, b"")], phi=True, response=gif)
    for rule in ("tracker-egress-no-baa", "plaintext-phi", "phi-in-tracker-payload"):
        cap.alert(rule, workstation, "www.facebook.com")


def scene_ga4_quic(cap: Capture) -> None:
    host = "10.20.3.7"
    cap.host(host, phi=True)
    cap.vendor("region1.google-analytics.com", "Google Analytics", baa=False)
    cap.vendor("www.googletagmanager.com", "Google Tag Manager", baa=False)
    cap.lookup(host, "www.googletagmanager.com")
    cap.tls(host, "www.googletagmanager.com", exchanges=((460, 11200),))
    cap.lookup(host, "region1.google-analytics.com")
    cap.lookup(host, "region1.google-analytics.com", "HTTPS")
    cap.quic(host, "region1.google-analytics.com")
    cap.alert("tracker-egress-no-baa", host, "www.googletagmanager.com")
    cap.alert("tracker-egress-no-baa", host, "region1.google-analytics.com")


def _second_first_then_retransmit(segments: list[Packet]) -> list[Packet]:
    """The second segment arrives before the first, and is then sent again (a spurious retransmission)."""
    first, second = segments
    return [second, first, second]


def scene_chrome_split_hello(cap: Capture) -> None:
    host, host_v6 = "10.20.1.50", "fd00:20::50"
    name = "www.google-analytics.com"
    cap.host(host, phi=True)
    cap.host(host_v6, phi=True)
    cap.vendor(name, "Google Analytics", baa=False)
    cap.lookup(host, name)
    cap.tls(host, name, reorder=_second_first_then_retransmit)
    cap.lookup(host_v6, name, "AAAA", resolver=RESOLVER_V6)
    cap.tls(host_v6, name, server=address_of(name, "AAAA"))
    vlan_link = link_for(host, vlans=(120,))
    cap.lookup(host, name, link=vlan_link)
    cap.tls(host, name, link=vlan_link)
    cap.alert("tracker-egress-no-baa", host, name)
    cap.alert("tracker-egress-no-baa", host_v6, name)


def scene_segment_with_baa(cap: Capture) -> None:
    host = "10.20.6.31"
    cap.host(host, phi=True)
    cap.vendor("api.segment.io", "Segment", baa=True)
    cap.lookup(host, "api.segment.io")
    cap.tls(host, "api.segment.io", exchanges=((1350, 90),))


def ocsp_get_path(rng: random.Random) -> str:
    """The path of an OCSP GET (RFC 6960 A.1): a SHA-1 CertID request, DER, base64, percent-encoded."""
    issuer_name_hash, issuer_key_hash = rng.randbytes(20), rng.randbytes(20)
    serial = bytes([rng.randrange(1, 0x80)]) + rng.randbytes(15)
    sha1 = bytes.fromhex("300906052b0e03021a0500")
    cert_id = sha1 + b"\x04\x14" + issuer_name_hash + b"\x04\x14" + issuer_key_hash + b"\x02\x10" + serial

    def seq(body: bytes) -> bytes:
        return b"\x30" + bytes([len(body)]) + body

    request = seq(seq(seq(seq(seq(cert_id)))))  # OCSPRequest / TBSRequest / requestList / Request / CertID
    return "/" + quote(base64.b64encode(request).decode(), safe="")


def scene_clean_ordinary(cap: Capture) -> None:
    host = "10.20.6.31"
    cap.host(host, phi=True)
    cap.lookup(host, "www.example-hospital.org")
    cap.tls(host, "www.example-hospital.org", exchanges=((480, 14200),))
    cap.http_exchange(
        host,
        "www.example-hospital.org",
        [
            (
                "GET",
                "/app.js?v=20240115&_=1700000000000",
                [("User-Agent", CHROME_UA), ("Accept", "*/*"), ("Referer", "http://www.example-hospital.org/")],
                b"",
            )
        ],
        phi=False,
        response=http_response(body=b"window.app={version:'20240115'};", content_type="application/javascript"),
    )
    cap.lookup(host, "ctldl.windowsupdate.com")
    cap.http_exchange(
        host,
        "ctldl.windowsupdate.com",
        [
            (
                "GET",
                "/msdownload/update/v3/static/trustedr/en/authrootstl.cab?bfa4e9d1e4b1e8c2",
                [
                    ("Accept", "*/*"),
                    ("User-Agent", "Microsoft-CryptoAPI/10.0"),
                    ("If-Modified-Since", "Tue, 09 Jan 2024 21:08:51 GMT"),
                ],
                b"",
            )
        ],
        phi=False,
        response=http_response(304, "Not Modified"),
    )
    cap.lookup(host, "ocsp.digicert.com")
    cap.http_exchange(
        host,
        "ocsp.digicert.com",
        [("GET", ocsp_get_path(cap.rng), [("Accept", "*/*"), ("User-Agent", "Microsoft-CryptoAPI/10.0")], b"")],
        phi=False,
        # an OCSPResponse with status "unauthorized": what a responder says about a certificate it does not serve
        response=http_response(body=bytes.fromhex("30030a0106"), content_type="application/ocsp-response"),
    )
    cap.lookup(host, "crypto.cloudflare.com")
    cap.lookup(host, "crypto.cloudflare.com", "HTTPS")
    cap.tls(host, ECH_COVER_NAME, server=address_of("crypto.cloudflare.com"), ech=True)
    cap.ech_cover_names.append(ECH_COVER_NAME)


def scene_guest_facebook(cap: Capture) -> None:
    guest = "10.99.4.4"
    cap.host(guest, phi=False)
    cap.vendor("www.facebook.com", "Meta", baa=False)
    cap.lookup(guest, "www.facebook.com")
    cap.tls(guest, "www.facebook.com", exchanges=((510, 8800),))
    target = meta_pixel_target("https://www.example-hospital.org/visitors/parking", "https://www.example-hospital.org/")
    headers = [("User-Agent", CHROME_UA), ("Accept", "image/*")]
    cap.http_exchange(guest, "www.facebook.com", [("GET", target, headers, b"")], phi=False)


def scene_unreviewed_third_party(cap: Capture) -> None:
    """The portal page embeds a symptom-checker chat widget from a third party nobody has reviewed."""
    workstation = "10.20.8.14"
    cap.host(workstation, phi=True)
    cap.vendor("assist.example.net", None, baa=False)
    cap.lookup(workstation, "assist.example.net")
    cap.tls(workstation, "assist.example.net", exchanges=((430, 2900),))
    cap.alert("unreviewed-vendor", workstation, "assist.example.net")


STORIES: list[tuple[str, str, list[Callable[[Capture], None]]]] = [
    (
        "mixpanel-plaintext.pcap",
        "A diabetes app on a PHI host posts a glucose reading and medications to Mixpanel over plaintext HTTP "
        "(/track with base64 JSON in data=), sets the user's e-mail with /engage, and also talks TLS to the same host.",
        [scene_mixpanel_plaintext, scene_mixpanel_tls],
    ),
    (
        "meta-pixel-portal.pcap",
        "A patient portal workstation loads an HIV PrEP page; the page's Meta Pixel sends the URL, the search term "
        "and a hashed e-mail to www.facebook.com/tr in plaintext (absolute-form target, as a proxy log shows it).",
        [scene_meta_pixel],
    ),
    (
        "ga4-quic.pcap",
        "A PHI host sends GA4 over QUIC v1 (Chrome's post-quantum ClientHello split over two Initial packets, CRYPTO "
        "frames scrambled) and loads Google Tag Manager over TCP with a ClientHello split over two segments.",
        [scene_ga4_quic],
    ),
    (
        "chrome-split-hello.pcap",
        "Chrome ClientHellos for www.google-analytics.com split over two TCP segments: the second segment arrives "
        "first and is retransmitted; the same over IPv6 and on VLAN 120.",
        [scene_chrome_split_hello],
    ),
    (
        "clean-network.pcap",
        "Ordinary traffic that must raise nothing: Segment (BAA on file), the hospital's own site, a Windows update "
        "check, an OCSP GET, an ECH ClientHello whose outer SNI is a cover name, and a guest host using Facebook.",
        [scene_segment_with_baa, scene_clean_ordinary, scene_guest_facebook],
    ),
    (
        "demo.pcap",
        "The README demo: Mixpanel in plaintext, the Meta Pixel on a portal page, a chat widget from a third "
        "party nobody reviewed, Segment with a BAA and a guest host on Facebook; every rule fires once "
        "(unreviewed-vendor only where it is enabled: the example configuration turns it off).",
        [
            scene_mixpanel_plaintext,
            functools.partial(scene_meta_pixel, with_tls=False),
            scene_unreviewed_third_party,
            scene_segment_with_baa,
            scene_guest_facebook,
        ],
    ),
]


def build(out_dir: Path) -> list[dict[str, object]]:
    """Write every story capture and stories.json into `out_dir`; return the manifest entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for file, story, scenes in STORIES:
        capture = Capture(file, story)
        for scene in scenes:
            scene(capture)
            capture.idle(850)
        manifest.append(capture.write(out_dir))
    (out_dir / "stories.json").write_text(json.dumps({"captures": manifest}, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: pcaps/)")
    args = parser.parse_args(argv)
    for entry in build(args.out):
        size = (args.out / str(entry["file"])).stat().st_size
        print(f"{entry['file']}: {entry['packets']} packets, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
