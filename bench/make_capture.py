#!/usr/bin/env python3
"""Write a large, realistic mixed capture for the benchmark, with its ground truth.

    python bench/make_capture.py OUT.pcap [--packets 1000000] [--seed 1] [--mix standard|dense|heavy]

The capture interleaves many concurrent sessions as a busy hospital uplink does: HTTPS
downloads and uploads (about half the packets are 1400-byte TLS application data segments,
taken from inside full-size TLS records, with the client's ACKs), TLS handshakes with ~20% of
the ClientHellos split over two segments (Chrome's post-quantum key share), DNS over UDP and
TCP (A, AAAA, CNAME chains, HTTPS), plaintext HTTP GET and POST (some bodies over two
segments, some chunked and gzipped), QUIC v1 Initials (often two per ClientHello) followed by
1-RTT packets; ~15% IPv6, ~10% VLAN-tagged (some QinQ), a few client ports below the server's.
`--mix dense` is the same traffic denser in handshakes (shorter downloads, more HTTPS and DNS
sessions, 12% VLAN): about 24k DNS queries and 20k ClientHellos per million packets.
About 10% of the sessions arrive as a mirror delivers them: ~7% inside VXLAN (a cloud traffic
mirror session, UDP 4789) and ~3% inside GRE/ERSPAN type II (a switch's remote span).

OUT.truth.json holds the exact counts and the sets of DNS query names, TLS SNIs (TCP), QUIC
SNIs and HTTP requests (method, host, uri). An item enters the truth only when the last packet
carrying it was written, so the packet count is exact and the truth never names a cut request.
Memory stays bounded: sessions are generators merged on a heap and frames go straight to disk.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, count
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pcaps"))

from synth import (  # noqa: E402  (pcaps/ is not a package)
    ACK,
    TLS13_FULL_RECORD,
    TLS_APPLICATION_DATA,
    TLS_RECORD_MAX,
    DnsRecord,
    Link,
    PcapWriter,
    ip_packet,
    TcpConversation,
    UdpFlow,
    client_finished,
    client_hello,
    client_hello_record,
    dns_over_tcp,
    dns_query,
    dns_response,
    encrypted_records,
    hello_session_id,
    http_request,
    http_response,
    https_rdata,
    initial_keys,
    quic_handshake_packet,
    quic_initial_packets,
    quic_transport_parameters,
    server_flight,
    server_hello,
)
from synth import ethernet as ethernet_frame  # noqa: E402

START_NS = 1_705_330_800 * 1_000_000_000  # 2024-01-15 15:00:00 UTC
SESSIONS_PER_SECOND = 260  # with ~58 packets per session: ~15k packets/s, a busy uplink
BULK_PAYLOAD = 1346  # a 1400-byte frame over IPv4 without VLAN tags
RESOLVERS_V4 = ("10.0.0.53", "10.0.1.53")
RESOLVER_V6 = "fd00::53"

# Registered domains with the host names seen under them: trackers first, then ordinary sites.
TRACKER_SITES = {
    "google-analytics.com": ["www", "region1", "ssl"],
    "googletagmanager.com": ["www"],
    "doubleclick.net": ["stats.g", "googleads.g", "ad", "securepubads.g", "cm.g"],
    "googlesyndication.com": ["pagead2", "tpc"],
    "facebook.com": ["www", "graph", "pixel", "m"],
    "facebook.net": ["connect"],
    "mixpanel.com": ["api", "api-js", "cdn", "api-eu"],
    "segment.io": ["api", "cdn"],
    "segment.com": ["cdn"],
    "hotjar.com": ["static", "script", "insights", "vc", "in"],
    "fullstory.com": ["edge", "rs"],
    "clarity.ms": ["www", "c", "a", "b", "d", "e"],
    "bing.com": ["bat"],
    "linkedin.com": ["px.ads", "dc.ads", "snap"],
    "licdn.com": ["snap"],
    "tiktok.com": ["analytics", "business-api"],
    "snapchat.com": ["tr", "tr-shadow"],
    "ads-twitter.com": ["static"],
    "twitter.com": ["analytics", "t"],
    "criteo.com": ["dis", "static", "gum", "sslwidget"],
    "adsrvr.org": ["insight", "js", "match"],
    "amplitude.com": ["api2", "cdn", "api-eu"],
    "heapanalytics.com": ["cdn", "c"],
    "nr-data.net": ["bam", "bam-cell"],
    "newrelic.com": ["js-agent"],
    "quantserve.com": ["pixel", "secure", "rules"],
    "scorecardresearch.com": ["sb", "b"],
    "taboola.com": ["cdn", "trc", "nr"],
    "outbrain.com": ["widgets", "tr", "amplify"],
    "pinterest.com": ["ct", "s"],
    "adnxs.com": ["ib", "secure", "acdn"],
    "rubiconproject.com": ["fastlane", "pixel", "eus"],
    "pubmatic.com": ["ads", "image6", "simage2"],
    "openx.net": ["u", "rtb", "us-u"],
    "casalemedia.com": ["htlb", "dsum-sec"],
    "demdex.net": ["dpm", "cm"],
    "omtrdc.net": ["sc"],
    "adobedtm.com": ["assets"],
    "branch.io": ["api2", "cdn", "app"],
    "appsflyer.com": ["events", "wa", "inapps"],
    "adjust.com": ["app", "s2s"],
    "braze.com": ["sdk.iad-01", "sdk.iad-03"],
    "intercom.io": ["api-iam", "widget", "nexus-websocket-a"],
    "optimizely.com": ["cdn", "logx"],
    "crazyegg.com": ["script", "tracking"],
    "mouseflow.com": ["cdn", "o2"],
    "yahoo.com": ["sp.analytics", "s.yimg"],
    "bluekai.com": ["tags", "stags"],
    "krxd.net": ["cdn", "beacon"],
}
ORDINARY_SITES = {
    "example-hospital.org": ["www", "portal", "mychart", "static", "api", "intranet", "mail", "vpn"],
    "wikipedia.org": ["en", "upload", "www", "meta"],
    "microsoft.com": ["www", "login", "go", "learn", "aka", "settings-win.data"],
    "windowsupdate.com": ["ctldl", "fe2", "download", "au", "sls"],
    "live.com": ["login", "outlook", "onedrive"],
    "office.com": ["www", "outlook", "portal"],
    "office365.com": ["outlook", "autodiscover"],
    "apple.com": ["www", "configuration", "gsp-ssl", "mesu", "support"],
    "icloud.com": ["www", "p26-caldav", "gateway"],
    "amazonaws.com": ["s3", "ec2.us-east-1", "sts", "s3.us-west-2"],
    "github.com": ["api", "www", "codeload"],
    "githubusercontent.com": ["raw", "avatars", "objects"],
    "zoom.us": ["www", "us02web", "us04web", "zoomgov"],
    "slack.com": ["app", "edgeapi", "wss-primary", "files"],
    "salesforce.com": ["login", "na123", "c"],
    "epic.com": ["www", "open", "galaxy"],
    "cerner.com": ["www", "fhir-open"],
    "nih.gov": ["www", "www.ncbi.nlm", "pubmed.ncbi.nlm", "clinicaltrials"],
    "cdc.gov": ["www", "tools", "wwwn"],
    "medlineplus.gov": ["www", "connect"],
    "mayoclinic.org": ["www", "connect"],
    "webmd.com": ["www", "img", "doctor"],
    "nytimes.com": ["www", "static01", "a1"],
    "cnn.com": ["www", "edition", "media"],
    "bbc.co.uk": ["www", "static", "ichef"],
    "weather.gov": ["forecast", "www", "api"],
    "gstatic.com": ["www", "fonts", "ssl", "encrypted-tbn0"],
    "googleapis.com": ["fonts", "storage", "www", "ajax", "update"],
    "google.com": ["www", "accounts", "clients4", "mail", "docs", "drive"],
    "youtube.com": ["www", "m", "music"],
    "ytimg.com": ["i", "s"],
    "digicert.com": ["ocsp", "crl3", "crl4", "cacerts"],
    "lencr.org": ["r3.o", "r10.o", "x1.c"],
    "debian.org": ["deb", "security"],
    "ubuntu.com": ["archive", "security", "changelogs", "motd"],
    "mozilla.org": ["www", "addons", "support"],
    "mozilla.net": ["aus5", "firefox.settings.services", "content-signature-2.cdn"],
    "cloudflare.com": ["www", "crypto", "dash"],
    "jsdelivr.net": ["cdn", "fastly"],
    "unpkg.com": ["unpkg.com"],
    "redhat.com": ["cdn", "access", "www"],
    "okta.com": ["example-hospital", "login"],
    "duosecurity.com": ["api-1a2b3c4d"],
    "docusign.net": ["www", "na3", "account"],
    "adobe.com": ["www", "acrobat", "auth"],
    "dropbox.com": ["www", "content", "api"],
    "linkedin.com": ["www", "media"],
    "uptodate.com": ["www", "login"],
    "medscape.com": ["www", "reference"],
}
# Hosts under CDN and SaaS domains come in thousands of shards; they are what makes names numerous.
SHARDED = [
    ("d{hex6}.cloudfront.net", 1500),
    ("e{num}.dscx.akamaiedge.net", 600),
    ("o{num}.ingest.sentry.io", 300),
    ("{word}{num}.sc.omtrdc.net", 250),
    ("{word}{num}.my.salesforce.com", 250),
    ("{word}-{hex6}.s3.amazonaws.com", 600),
    ("{word}{num}.blob.core.windows.net", 300),
    ("scontent-{word}{num}-1.xx.fbcdn.net", 200),
    ("rr{num}---sn-{hex6}.googlevideo.com", 400),
]
SHARD_WORDS = "atl bos chi dfw iad lax mia nyc ord sea sjc prod stage clinic research data".split()
# Sites whose hosts speak HTTP/3, the ones QUIC sessions go to.
H3_DOMAINS = (
    "google.com",
    "googleapis.com",
    "gstatic.com",
    "youtube.com",
    "ytimg.com",
    "google-analytics.com",
    "googletagmanager.com",
    "doubleclick.net",
    "googlesyndication.com",
    "facebook.com",
    "facebook.net",
    "cloudflare.com",
    "fbcdn.net",
    "googlevideo.com",
)
HOSPITAL_PAGES = (
    "/",
    "/conditions/diabetes",
    "/conditions/hiv-prep?appointment=new",
    "/find-a-doctor?specialty=oncology",
    "/appointments/new",
    "/patient-portal/messages",
    "/services/cardiology",
    "/locations/main-campus",
    "/news/flu-season-2024",
    "/search?q=chemotherapy%20side%20effects",
    "/billing/pay",
    "/visitors/parking",
    "/pharmacy/refill?rx=4471023",
    "/behavioral-health/depression",
    "/maternity/tour",
)


@dataclass
class Catalog:
    """Host names with stable addresses and a Zipf-like popularity, drawn from fixed lists."""

    rng: random.Random
    hosts: list[str] = field(default_factory=list)
    trackers: list[str] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)
    tracker_cumulative: list[float] = field(default_factory=list)
    h3_hosts: list[str] = field(default_factory=list)
    h3_cumulative: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        for sites in (TRACKER_SITES, ORDINARY_SITES):
            for domain, prefixes in sites.items():
                for prefix in prefixes:
                    name = domain if prefix == domain else f"{prefix}.{domain}"
                    self.hosts.append(name)
                    if sites is TRACKER_SITES:
                        self.trackers.append(name)
        for pattern, how_many in SHARDED:
            for _ in range(how_many):
                hex6, num, word = self.rng.randbytes(3).hex(), self.rng.randrange(1, 999), self.rng.choice(SHARD_WORDS)
                self.hosts.append(pattern.format(hex6=hex6, num=num, word=word))
        self.hosts = sorted(set(self.hosts))
        self.rng.shuffle(self.hosts)
        self.cumulative = list(accumulate(1 / (rank + 1) ** 0.6 for rank in range(len(self.hosts))))
        self.tracker_cumulative = list(accumulate(1 / (rank + 1) ** 0.7 for rank in range(len(self.trackers))))
        self.h3_hosts = [name for name in self.hosts if name.endswith(H3_DOMAINS)]
        self.h3_cumulative = list(accumulate(1 / (rank + 1) ** 0.8 for rank in range(len(self.h3_hosts))))

    def pick(self) -> str:
        return self.rng.choices(self.hosts, cum_weights=self.cumulative)[0]

    def pick_tracker(self) -> str:
        return self.rng.choices(self.trackers, cum_weights=self.tracker_cumulative)[0]

    def pick_h3(self) -> str:
        return self.rng.choices(self.h3_hosts, cum_weights=self.h3_cumulative)[0]

    @staticmethod
    def address(name: str, ipv6: bool) -> str:
        """A stable server address in the documentation ranges (many names share one, as on CDNs)."""
        digest = hash_name(name)
        if ipv6:
            return f"2001:db8:{digest >> 16 & 0xFFFF:x}::{digest & 0xFFFF:x}"
        prefix = ("192.0.2", "198.51.100", "203.0.113")[digest % 3]
        return f"{prefix}.{1 + (digest >> 8) % 254}"


def hash_name(name: str) -> int:
    """A stable 32-bit hash (Python's str hash changes between runs)."""
    value = 2166136261
    for byte in name.encode():
        value = (value ^ byte) * 16777619 & 0xFFFFFFFF
    return value


class BulkStream:
    """The bytes of a long run of full-size TLS 1.3 application_data records, sliced into segments.

    Segments of a download come from inside these records, so a record header appears every
    16,406 bytes as on the wire; the content is random, as ciphertext is. Built once, shared.
    """

    def __init__(self, rng: random.Random, records: int = 8) -> None:
        one = struct.pack("!BHH", TLS_APPLICATION_DATA, 0x0303, TLS_RECORD_MAX + 17)
        data = b"".join(one + rng.randbytes(TLS_RECORD_MAX + 17) for _ in range(records))
        self.period = len(data)
        self.data = data + data[:BULK_PAYLOAD]

    def start(self, rng: random.Random) -> int:
        return rng.randrange(self.period // TLS13_FULL_RECORD) * TLS13_FULL_RECORD

    def chunk(self, offset: int) -> tuple[bytes, int]:
        return self.data[offset : offset + BULK_PAYLOAD], (offset + BULK_PAYLOAD) % self.period


Emission = tuple[int, bytes, str, tuple[str, object] | None]  # (ts_ns, frame, category, truth item)
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)


MIRROR_SOURCE, MIRROR_TARGET = "172.31.5.10", "172.31.9.20"  # a mirror session's outer endpoints
MIRROR_MACS = bytes.fromhex("0200ac1f0914"), bytes.fromhex("0200ac1f050a")
TUNNEL_SHARES = (("vxlan", 0.07), ("erspan", 0.03))


@dataclass(frozen=True, slots=True)
class MirroredLink(Link):
    """A link whose frames reach the sensor inside a mirror session's tunnel."""

    tunnel: str = "vxlan"
    session: int = 1  # the VXLAN VNI or the ERSPAN session id

    def frame(self, packet: bytes, from_client: bool) -> bytes:
        inner = Link.frame(self, packet, from_client)
        if self.tunnel == "vxlan":  # outer UDP checksum 0, as mirror sources send it
            sport = 49152 + (hash_name(inner[26:38].hex()) & 0x3FFF)  # a per-flow source port
            body = struct.pack("!BxxxI", 0x08, self.session << 8) + inner
            outer = ip_packet(MIRROR_SOURCE, MIRROR_TARGET, 17, struct.pack("!HHHH", sport, 4789, 8 + len(body), 0) + body)
        else:  # GRE with a sequence number, protocol 0x88BE, then the 8-byte ERSPAN II header
            gre = struct.pack("!HHI", 0x1000, 0x88BE, 0)
            erspan = struct.pack("!HHI", 0x1000, self.session & 0x3FF, 0)
            outer = ip_packet(MIRROR_SOURCE, MIRROR_TARGET, 47, gre + erspan + inner)
        return ethernet_frame(outer, 0x0800, src_mac=MIRROR_MACS[0], dst_mac=MIRROR_MACS[1])


@dataclass(frozen=True, slots=True)
class Client:
    ipv4: str
    ipv6: str
    vlan: int
    mac: bytes


class Setup(NamedTuple):
    """Where a session runs: its client, address family, link and round-trip time."""

    client: Client
    ipv6: bool
    link: Link
    rtt_ns: int

    @property
    def address(self) -> str:
        return self.client.ipv6 if self.ipv6 else self.client.ipv4


@dataclass(frozen=True)
class Mix:
    """What sets one mix apart: session kinds by weight, how long downloads run, the VLAN share."""

    https: int
    dns: int
    http: int
    quic: int
    dns_tcp: int
    bulk_scale: float  # segments of each download or upload, relative to the standard mix
    vlan_share: float


MIXES = {
    "standard": Mix(https=45, dns=40, http=10, quic=8, dns_tcp=1, bulk_scale=1.0, vlan_share=0.10),
    # ~24k DNS queries and ~20k ClientHellos (a fifth split) per million packets
    "dense": Mix(https=45, dns=6, http=5, quic=4, dns_tcp=1, bulk_scale=0.28, vlan_share=0.12),
    # the dense mix with shorter downloads still: ~1.5x its handshakes per packet, for headroom
    "heavy": Mix(https=45, dns=6, http=5, quic=4, dns_tcp=1, bulk_scale=0.12, vlan_share=0.12),
}


class TrafficMaker:
    """Builds the sessions; each session is a generator of emissions in time order."""

    def __init__(self, seed: int, mix: Mix = MIXES["standard"]) -> None:
        self.mix = mix
        self.rng = random.Random(seed)
        self.tunnel_rng = random.Random(seed + 2)  # its own stream: the rest of the capture stays as it was
        self.catalog = Catalog(self.rng)
        self.bulk = BulkStream(self.rng)
        self.clients = [self._client(i) for i in range(4000)]
        self.client_weights = list(accumulate(1 / (rank + 1) ** 0.5 for rank in range(len(self.clients))))
        self.quic_blob = self.rng.randbytes(1 << 16)
        self.kinds = {
            self.https_session: mix.https,
            self.dns_session: mix.dns,
            self.http_session: mix.http,
            self.quic_session: mix.quic,
            self.dns_tcp_session: mix.dns_tcp,
        }

    def _client(self, index: int) -> Client:
        subnet = self.rng.choices((20, 30, 99), weights=(5, 3, 2))[0]  # PHI, staff, guest; VLAN id = subnet
        third, fourth = divmod(index, 250)
        return Client(
            ipv4=f"10.{subnet}.{third}.{fourth + 2}",
            ipv6=f"fd00:{subnet}::{index + 2:x}",
            vlan=subnet,
            mac=b"\x02\x00" + struct.pack("!I", 0x0A000000 | index),
        )

    # -- shared pieces

    def _setup(self) -> Setup:
        rng = self.rng
        client = rng.choices(self.clients, cum_weights=self.client_weights)[0]
        ipv6 = rng.random() < 0.15
        vlans: tuple[int, ...] = ()
        if rng.random() < self.mix.vlan_share:
            vlans = (300, client.vlan) if rng.random() < 0.2 else (client.vlan,)
        rtt_ns = int((4 + rng.lognormvariate(3.0, 0.6)) * 1_000_000)
        draw = self.tunnel_rng.random()
        for tunnel, share in TUNNEL_SHARES:
            if draw < share:
                link: Link = MirroredLink(vlans=vlans, client_mac=client.mac, tunnel=tunnel, session=client.vlan)
                break
            draw -= share
        else:
            link = Link(vlans=vlans, client_mac=client.mac)
        return Setup(client, ipv6, link, rtt_ns)

    def _client_port(self, server_port: int) -> tuple[int, bool]:
        """An ephemeral port; rarely one below the server's port (some NATs and old stacks do that)."""
        if self.rng.random() < 0.002:
            return self.rng.randrange(1024 if server_port > 2048 else server_port // 2, server_port), True
        return self.rng.randrange(49152, 65535), False

    def _conversation(self, setup: Setup, server: str, port: int) -> tuple[TcpConversation, bool]:
        client_port, low = self._client_port(port)
        isns = self.rng.getrandbits(32), self.rng.getrandbits(32)
        conv = TcpConversation(
            setup.address,
            client_port,
            server,
            port,
            link=setup.link,
            mss=BULK_PAYLOAD,
            client_isn=isns[0],
            server_isn=isns[1],
        )
        return conv, low

    def _gap(self, mean_us: float) -> int:
        """An exponential inter-packet gap in ns, at least 1 us."""
        return int(self.rng.expovariate(1 / mean_us) * 1000) + 1000

    def _bulk_count(self) -> int:
        bucket = self.rng.random()
        if bucket < 0.45:
            segments = self.rng.randint(0, 4)
        elif bucket < 0.80:
            segments = self.rng.randint(5, 40)
        elif bucket < 0.97:
            segments = self.rng.randint(41, 160)
        else:
            segments = self.rng.randint(161, 700)
        return self._scaled(segments)

    def _scaled(self, segments: int) -> int:
        return segments if self.mix.bulk_scale == 1.0 else round(segments * self.mix.bulk_scale)

    def _handshake(self, t: int, conv: TcpConversation, rtt: int, low_port: bool) -> Generator[Emission, None, int]:
        """SYN, SYN-ACK, ACK; returns the time of the last one."""
        for index, packet in enumerate(conv.handshake()):
            t += 200_000 if packet.from_client else rtt
            yield t, packet.frame, "tcp_syn_low_client_port" if low_port and index == 0 else "tcp_control", None
        return t

    def _close(self, t: int, conv: TcpConversation, rtt: int) -> Iterator[Emission]:
        for packet in conv.close():
            t += 100_000 if packet.from_client else rtt
            yield t, packet.frame, "tcp_control", None

    def _bulk(self, t: int, conv: TcpConversation, segments: int, *, upload: bool) -> Generator[Emission, None, int]:
        """Full segments from inside TLS records, every second one acknowledged; returns the last time."""
        offset = self.bulk.start(self.rng)
        gap_mean_us = self.rng.choice((120, 250, 600, 1500))
        category = "tls_bulk_upload" if upload else "tls_bulk"
        for index in range(segments):
            t += self._gap(gap_mean_us)
            chunk, offset = self.bulk.chunk(offset)
            yield t, conv.segment(chunk, from_client=upload, flags=ACK).frame, category, None
            if index % 2 == 1 or index == segments - 1:
                t += 40_000
                yield t, conv.ack(from_client=not upload).frame, "tcp_ack", None
        return t

    def dns_answers(self, name: str, qtype: str) -> tuple[list[DnsRecord], int]:
        """The records and rcode a resolver returns: CNAME chains for CDN names, NXDOMAIN, NODATA."""
        rng = self.rng
        if rng.random() < 0.02:
            return [], 3  # NXDOMAIN
        if qtype == "HTTPS":
            if rng.random() < 0.5:
                return [], 0  # NODATA: most names have no HTTPS record
            rdata = https_rdata(alpn=("h3", "h2"), ipv4hint=(Catalog.address(name, False),))
            return [DnsRecord(name, "HTTPS", rdata, 300)], 0
        records = []
        owner = name
        if rng.random() < 0.35:
            for depth in range(rng.randint(1, 3)):
                target = f"{name.split('.')[0]}.edge{depth}.cdn-{hash_name(name) % 97}.net"
                records.append(DnsRecord(owner, "CNAME", target, 3600))
                owner = target
        if qtype == "AAAA":
            records.append(DnsRecord(owner, "AAAA", Catalog.address(name, True), 60))
        elif qtype == "A":
            for index in range(rng.choice((1, 1, 2, 4))):
                records.append(DnsRecord(owner, "A", Catalog.address(f"{name}#{index}", False), 60))
        return records, 0

    def dns_udp(self, t: int, setup: Setup, name: str, qtype: str) -> Iterator[Emission]:
        resolver = RESOLVER_V6 if setup.ipv6 else self.rng.choice(RESOLVERS_V4)
        flow = UdpFlow(setup.address, self.rng.randrange(1024, 65535), resolver, 53, link=setup.link)
        qid = self.rng.getrandbits(16)
        yield t, flow.packet(dns_query(qid, name, qtype)).frame, "dns_udp_query", ("dns", name)
        answers, rcode = self.dns_answers(name, qtype)
        t += self._gap(1500) + 400_000
        response = dns_response(qid, name, qtype, answers, rcode=rcode)
        yield t, flow.packet(response, from_client=False).frame, "dns_udp_response", None

    def lookups(self, t: int, setup: Setup, name: str, https_record: bool) -> Generator[Emission, None, int]:
        """The queries a browser sends before connecting, in parallel: A (or AAAA), sometimes HTTPS.

        Returns the time the connection can start."""
        qtypes = ["AAAA" if setup.ipv6 else "A"] + (["HTTPS"] if https_record else [])
        streams = [self.dns_udp(t + i * 80_000, setup, name, qtype) for i, qtype in enumerate(qtypes)]
        emissions = list(heapq.merge(*streams, key=lambda emission: emission[0]))
        yield from emissions
        return emissions[-1][0] + 200_000

    # -- sessions

    def session(self, t: int) -> Iterator[Emission]:
        kind = self.rng.choices(list(self.kinds), weights=list(self.kinds.values()))[0]
        return kind(t)

    def dns_session(self, t: int) -> Iterator[Emission]:
        setup = self._setup()
        name = self.catalog.pick() if self.rng.random() < 0.97 else "wpad.example-hospital.org"
        qtype = self.rng.choices(("A", "AAAA", "HTTPS", "TXT"), weights=(55, 25, 15, 5))[0]
        yield from self.dns_udp(t, setup, name, qtype)

    def dns_tcp_session(self, t: int) -> Iterator[Emission]:
        """A lookup over TCP, as after a truncated UDP answer: handshake, query, big answer, FIN."""
        setup = self._setup()
        resolver = RESOLVER_V6 if setup.ipv6 else self.rng.choice(RESOLVERS_V4)
        conv, low_port = self._conversation(setup, resolver, 53)
        name = self.catalog.pick()
        qid = self.rng.getrandbits(16)
        addresses = [Catalog.address(f"{name}#{i}", False) for i in range(self.rng.randint(8, 40))]
        answers = [DnsRecord(name, "A", address, 60) for address in addresses]
        rtt = 600_000
        t = yield from self._handshake(t, conv, rtt, low_port)
        t += 50_000
        query = conv.segment(dns_over_tcp(dns_query(qid, name, "A")), from_client=True)
        yield t, query.frame, "dns_tcp_query", ("dns", name)
        t += rtt
        for packet in conv.send(dns_over_tcp(dns_response(qid, name, "A", answers)), from_client=False):
            yield t, packet.frame, "tcp_ack" if packet.from_client else "dns_tcp_response", None
            t += 60_000
        yield from self._close(t, conv, rtt)

    def https_session(self, t: int) -> Iterator[Emission]:
        rng = self.rng
        setup = self._setup()
        rtt = setup.rtt_ns
        name = self.catalog.pick()
        if rng.random() < 0.7:
            t = yield from self.lookups(t, setup, name, rng.random() < 0.3)
        conv, low_port = self._conversation(setup, Catalog.address(name, setup.ipv6), 443)
        t = yield from self._handshake(t, conv, rtt, low_port)

        chrome_pq = rng.random() < 0.2  # Chrome's post-quantum hello is the one that needs two segments
        ech = not chrome_pq and rng.random() < 0.01
        server_name = "cloudflare-ech.com" if ech else (name if rng.random() > 0.01 else None)
        record = client_hello_record(server_name, rng=rng, post_quantum=chrome_pq, ech=ech)
        segments = conv.send(record, ack=False)
        category = "tls_client_hello_split" if len(segments) > 1 else "tls_client_hello"
        for index, packet in enumerate(segments):
            t += 60_000
            last = index == len(segments) - 1
            yield t, packet.frame, category, ("tls", server_name) if last and server_name else None
        t += rtt
        yield t, conv.ack(from_client=False).frame, "tcp_ack", None
        flight = server_flight(rng, session_id=hello_session_id(record[5:]), encrypted_size=rng.randint(2200, 5200))
        for packet in conv.send(flight, from_client=False):
            t += 60_000
            yield t, packet.frame, "tcp_ack" if packet.from_client else "tls_server_flight", None
        t += 300_000
        yield t, conv.segment(client_finished(rng), from_client=True).frame, "tls_handshake", None

        for _round in range(rng.choice((1, 1, 1, 2, 3))):
            if rng.random() < 0.3:
                t += int(rng.expovariate(1 / 2.5) * 1e9)  # the user reads, then clicks again
            t += 100_000
            request = conv.segment(encrypted_records(rng, rng.randint(90, 900)), from_client=True)
            yield t, request.frame, "tls_request", None
            if rng.random() < 0.1:
                t = yield from self._bulk(t, conv, self._scaled(rng.randint(5, 120)), upload=True)
            t += rtt
            t = yield from self._bulk(t, conv, self._bulk_count(), upload=False)
        yield from self._close(t, conv, rtt)

    def http_session(self, t: int) -> Iterator[Emission]:
        rng = self.rng
        setup = self._setup()
        rtt = setup.rtt_ns
        tracker = rng.random() < 0.5
        name = self.catalog.pick_tracker() if tracker else self.catalog.pick()
        if rng.random() < 0.6:
            t = yield from self.lookups(t, setup, name, False)
        port = 8080 if rng.random() < 0.05 else 80
        conv, low_port = self._conversation(setup, Catalog.address(name, setup.ipv6), port)
        t = yield from self._handshake(t, conv, rtt, low_port)
        host_header = f"{name}:{port}" if port != 80 else name
        for _round in range(rng.choice((1, 1, 2, 3))):
            method, target, headers, body, chunked, gzipped = self.http_call(tracker)
            request = http_request(
                method, host_header, target, headers=headers, body=body, chunked=chunked, gzip_body=gzipped
            )
            segments = conv.send(request, ack=False)
            category = "http_request_split" if len(segments) > 1 else "http_request"
            for index, packet in enumerate(segments):
                t += 60_000 if index else 300_000
                last = index == len(segments) - 1
                yield t, packet.frame, category, ("http", (method, name, target)) if last else None
            t += rtt
            response = http_response(body=rng.randbytes(rng.choice((0, 43, 320, 1800, 3900))), content_type="image/gif")
            for packet in conv.send(response, from_client=False):
                t += 60_000
                yield t, packet.frame, "tcp_ack" if packet.from_client else "http_response", None
        yield from self._close(t, conv, rtt)

    def http_call(self, tracker: bool) -> tuple[str, str, list[tuple[str, str]], bytes, bool, bool]:
        """One plaintext request: (method, target, headers, body, chunked, gzipped)."""
        rng = self.rng
        page = quote("https://www.example-hospital.org" + rng.choice(HOSPITAL_PAGES), safe="")
        headers = [("User-Agent", CHROME_UA), ("Accept", "*/*")]
        cid = f"{rng.randrange(10**9)}.{rng.randrange(1_700_000_000, 1_705_000_000)}"
        if tracker and rng.random() < 0.6:
            pixels = (
                f"/g/collect?v=2&tid=G-{rng.randrange(10**9):09d}&cid={cid}&en=page_view&dl={page}",
                f"/tr/?id={rng.randrange(10**15)}&ev=PageView&dl={page}&ts={rng.randrange(10**12, 10**13)}",
                f"/collect?v=1&t=event&tid=UA-{rng.randrange(10**7)}-1&cid={cid}&ec=portal&ea=click&dl={page}",
            )
            return "GET", rng.choice(pixels), headers, b"", False, False
        if rng.random() < 0.3:
            event = {
                "event": rng.choice(("page_view", "login", "search", "appointment_booked")),
                "id": cid,
                "url": page,
                "pad": "x" * rng.choice((20, 200, 2200)),  # the longest bodies need a second segment
            }
            body = json.dumps(event, separators=(",", ":")).encode()
            if tracker and rng.random() < 0.5:
                body = f"data={quote(base64.b64encode(body).decode(), safe='')}".encode()
                headers.append(("Content-Type", "application/x-www-form-urlencoded"))
            else:
                headers.append(("Content-Type", "application/json"))
            chunked = rng.random() < 0.15
            target = rng.choice(("/track", "/v1/batch", "/api/events", "/collect"))
            return "POST", target, headers, body, chunked, chunked and rng.random() < 0.5
        paths = (
            "/",
            "/index.html",
            "/favicon.ico",
            f"/static/js/main.{rng.randbytes(4).hex()}.js",
            f"/images/{rng.randrange(10**5)}.jpg",
            f"/api/v1/items?page={rng.randint(1, 40)}",
            f"/app.js?v=20240115&_={rng.randrange(10**12, 10**13)}",
        )
        return "GET", rng.choice(paths), headers, b"", False, False

    def quic_session(self, t: int) -> Iterator[Emission]:
        rng = self.rng
        setup = self._setup()
        rtt = setup.rtt_ns
        name = self.catalog.pick_h3()
        if rng.random() < 0.6:
            t = yield from self.lookups(t, setup, name, True)
        client_port, _ = self._client_port(443)
        flow = UdpFlow(setup.address, client_port, Catalog.address(name, setup.ipv6), 443, link=setup.link)
        dcid, server_cid = rng.randbytes(8), rng.randbytes(8)
        params = quic_transport_parameters(b"", rng)
        hello = client_hello(name, rng=rng, alpn=("h3",), post_quantum=rng.random() < 0.7, quic_transport_params=params)
        initials = quic_initial_packets(hello, dcid=dcid, keys=initial_keys(dcid), scramble=rng)
        category = "quic_initial_split" if len(initials) > 1 else "quic_initial"
        for index, datagram in enumerate(initials):
            t += 50_000
            yield t, flow.packet(datagram).frame, category, ("quic", name) if index == len(initials) - 1 else None
        server_initial = quic_initial_packets(
            server_hello(rng),
            dcid=b"",
            scid=server_cid,
            keys=initial_keys(dcid, server=True),
            datagram_size=None,
            ack_largest=len(initials) - 1,
        )[0]
        coalesced = server_initial + quic_handshake_packet(b"", server_cid, 1200 - len(server_initial), rng)
        t += rtt
        yield t, flow.packet(coalesced, from_client=False).frame, "quic_handshake", None
        t += 60_000
        handshake = quic_handshake_packet(b"", server_cid, rng.randint(900, 1200), rng)
        yield t, flow.packet(handshake, from_client=False).frame, "quic_handshake", None
        t += 300_000
        yield t, flow.packet(quic_handshake_packet(server_cid, b"", 90, rng)).frame, "quic_handshake", None
        for _round in range(rng.choice((1, 1, 2))):
            t += 100_000
            yield t, flow.packet(self._short(server_cid, rng.randint(60, 700))).frame, "quic_1rtt", None
            t += rtt
            for index in range(max(1, self._bulk_count() // 3)):
                t += self._gap(300)
                yield t, flow.packet(self._short(b"", 1252), from_client=False).frame, "quic_1rtt", None
                if index % 3 == 2:
                    t += 40_000
                    yield t, flow.packet(self._short(server_cid, 40)).frame, "quic_1rtt", None

    def _short(self, dcid: bytes, size: int) -> bytes:
        """A 1-RTT packet whose protected bytes come from a shared random pool (cheap, and opaque anyway)."""
        start = self.rng.randrange(len(self.quic_blob) - size)
        return bytes([0x40 | self.rng.getrandbits(6)]) + dcid + self.quic_blob[start : start + size - 1 - len(dcid)]


@dataclass
class Truth:
    dns: set[str] = field(default_factory=set)
    tls: set[str] = field(default_factory=set)
    quic: set[str] = field(default_factory=set)
    http: set[tuple[str, str, str]] = field(default_factory=set)
    occurrences: Counter[str] = field(default_factory=Counter)

    def add(self, item: tuple[str, object]) -> None:
        kind, value = item
        self.occurrences[kind] += 1
        getattr(self, kind).add(value)


def vlan_and_family(frame: bytes) -> tuple[int, bool]:
    """(number of VLAN tags, is IPv6) of an Ethernet frame (of the mirrored frame in a tunnel)."""
    tunnel = tunnel_of(frame)
    if tunnel:
        frame = frame[TUNNEL_HEADER[tunnel] :]
    offset, tags = 12, 0
    while frame[offset : offset + 2] in (b"\x81\x00", b"\x88\xa8"):
        offset += 4
        tags += 1
    return tags, frame[offset : offset + 2] == b"\x86\xdd"


TUNNEL_HEADER = {"vxlan": 14 + 20 + 8 + 8, "erspan": 14 + 20 + 8 + 8}  # outer bytes before the mirrored frame


def tunnel_of(frame: bytes) -> str | None:
    if frame[:6] != MIRROR_MACS[1]:
        return None
    return "vxlan" if frame[23] == 17 else "erspan"


def generate(out: Path, packets: int, seed: int, mix: str = "standard") -> dict[str, Any]:
    """Write `packets` frames of a mix (see MIXES) to `out` and return the ground truth."""
    maker = TrafficMaker(seed, MIXES[mix])
    arrivals = random.Random(seed + 1)
    truth = Truth()
    categories: Counter[str] = Counter()
    vlan_packets = qinq_packets = ipv6_packets = 0
    tunnels: Counter[str] = Counter()
    heap: list[tuple[int, int, Emission, Iterator[Emission]]] = []
    order = count()  # ties on the timestamp go to the session that started first
    next_start = START_NS
    sessions = 0
    with out.open("wb") as stream, PcapWriter(stream, nanosecond=True) as writer:
        while writer.packets < packets:
            # start every session due before the earliest pending packet, so output stays in time order
            while not heap or next_start <= heap[0][0]:
                session = maker.session(next_start)
                first = next(session, None)
                if first is not None:
                    heapq.heappush(heap, (first[0], next(order), first, session))
                sessions += 1
                next_start += int(arrivals.expovariate(SESSIONS_PER_SECOND) * 1e9) + 1
            _, _, (ts, frame, category, item), session = heapq.heappop(heap)
            writer.write(ts, frame)
            categories[category] += 1
            tags, ipv6 = vlan_and_family(frame)
            tunnel = tunnel_of(frame)
            if tunnel:
                tunnels[tunnel] += 1
            vlan_packets += tags > 0
            qinq_packets += tags > 1
            ipv6_packets += ipv6
            if item is not None:
                truth.add(item)
            following = next(session, None)
            if following is not None:
                heapq.heappush(heap, (following[0], next(order), following, session))
        total_bytes = writer.bytes
    return {
        "capture": out.name,
        "seed": seed,
        "mix": mix,
        "packets": packets,
        "bytes": total_bytes,
        "duration_s": round((ts - START_NS) / 1e9, 3),
        "sessions_started": sessions,
        "counts": {
            "by_category": dict(sorted(categories.items())),
            "ipv6_packets": ipv6_packets,
            "vlan_packets": vlan_packets,
            "qinq_packets": qinq_packets,
            "tunnel_packets": dict(sorted(tunnels.items())),
            "dns_queries": truth.occurrences["dns"],
            "tls_client_hellos_with_sni": truth.occurrences["tls"],
            "quic_client_hellos": truth.occurrences["quic"],
            "http_requests": truth.occurrences["http"],
        },
        "dns_queries": sorted(truth.dns),
        "tls_sni": sorted(truth.tls),
        "quic_sni": sorted(truth.quic),
        "http_requests": [list(request) for request in sorted(truth.http)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="capture to write (OUT.truth.json is written next to it)")
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mix", choices=sorted(MIXES), default="standard")
    args = parser.parse_args(argv)
    if args.packets < 1:
        parser.error("--packets must be positive")
    started = time.perf_counter()
    truth = generate(args.out, args.packets, args.seed, args.mix)
    truth_path = args.out.with_name(args.out.name + ".truth.json")
    truth_path.write_text(json.dumps(truth, indent=1) + "\n")
    elapsed = time.perf_counter() - started
    print(
        f"{args.out}: {truth['packets']} packets, {truth['bytes'] / 1e6:.1f} MB in {elapsed:.1f} s "
        f"({truth['packets'] / elapsed:,.0f} packets/s); truth in {truth_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
