"""Detection rules and the engine around them: records built by hand, run through a DetectionEngine
made from a configuration, alerts checked field by field (rule, severity, vendor, BAA status, source
record, destination, PHI types and counts, redaction), plus the false-positive traps that must stay
silent, DNS attribution, ECH, throttling and escalation, and per-rule tuning from configuration."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.app.replay.main import Runner
from sensor.cli import build_parser
from sensor.config import parse_config
from sensor.detect.engine import DetectionEngine, RuleSettings
from sensor.detect.rules import ALL_RULES
from sensor.enrich.vendors import VendorCatalog, registered_domain
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, Record, TlsHello
from sensor.severity import SEVERITY_SCORE

T0 = 1705329000.0  # 2024-01-15 14:30:00 UTC, the day every BAA date below is judged against

CLINIC = "10.20.5.23"  # inside 10.20.0.0/16: a PHI host without name or tags
PORTAL = "10.40.0.9"  # inside the portal /22: tags portal, authenticated
GUEST = "10.20.99.7"  # carved out of the clinical range
OUTSIDE = "172.16.3.3"  # private, but not listed: not a PHI host under CONFIG
RESOLVER = "10.0.0.53"
TRACKER_IP = "203.0.113.35"
OTHER_IP = "198.51.100.21"
ROUTABLE_IP = "93.184.215.14"  # a globally routable address: ipaddress counts documentation ranges as private
EHR_DB = "10.30.1.5"

CONFIG = """
sensor: {name: test-sensor}
phi_hosts:
  - 10.20.0.0/16
  - {cidr: 10.40.0.0/22, name: patient-portal, tags: [portal, authenticated]}
  - {cidr: 10.30.1.5/32, name: ehr-db, tags: [database]}
phi_hosts_exclude: [10.20.99.0/24]
allow: [example-cdn.com, mixpanel.com]
outputs: []
"""

HIV_PAGE = "https://portal.example-hospital.org/conditions/hiv-prep?appointment=new"
PARKING_PAGE = "https://www.example-hospital.org/visitors/parking"
EMAIL_HASH = hashlib.sha256(b"jane.doe@example.com").hexdigest()
OCSP_PATH = (
    "/MFEwTzBNMEswSTAJBgUrDgMCGgUABBTQKuGm77zJQEbOBQ35Vf5JZrXB1AQUvX7DRjE9zxjGy3R2gM74JyC9mzYCEGuWoO3qEOfz9uYId02kpqM%3D"
)


# --- building blocks -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def make_engine(
    catalog: VendorCatalog,
    config_text: str = CONFIG,
    *,
    immediate: bool = True,
    unredacted: bool = False,
    rule_settings: dict[str, RuleSettings] | None = None,
) -> DetectionEngine:
    config = parse_config(config_text, "test")
    events = EventBuilder(config.sensor.name, registered_domain, redact_urls=not unredacted)
    return DetectionEngine(
        config.build_policy(catalog),
        AlertBuilder(events, unredacted=unredacted),
        rule_settings,
        immediate=immediate,
    )


def engine_from_config_file(tmp_path: Path, config_text: str, *, live: bool) -> DetectionEngine:
    """The engine exactly as `phi-sensor replay` (live=False) or `live` builds it from a file."""
    path = tmp_path / "sensor.yaml"
    path.write_text(config_text)
    args = build_parser().parse_args(["replay", "unused.pcap", "--config", str(path), "--quiet"])
    detector = Runner.from_args(args, live=live).pipeline.detector
    assert isinstance(detector, DetectionEngine)
    return detector


_query_ids = iter(range(1, 1 << 30))


def dns(name: str, ts: float = T0, src: str = CLINIC, answers: tuple[DnsAnswer, ...] = ()) -> DnsQuery:
    flow = Flow(src, 53001, RESOLVER, 53, "udp")
    return DnsQuery(ts, flow, next(_query_ids), name, "A", bool(answers), "NOERROR" if answers else None, answers)


def a_record(name: str, address: str, ttl: int = 300) -> DnsAnswer:
    return DnsAnswer(name, "A", address, ttl)


def hello(
    server_name: str | None,
    ts: float = T0,
    src: str = CLINIC,
    dst: str = TRACKER_IP,
    *,
    ech: bool = False,
    protocol: str = "tls",
) -> TlsHello:
    flow = Flow(src, 50443, dst, 443, "udp" if protocol == "quic" else "tcp")
    return TlsHello(ts, flow, protocol, server_name, ("h2", "http/1.1"), ech, "1.3")


def http(
    host: str | None,
    target: str,
    ts: float = T0,
    src: str = CLINIC,
    dst: str = TRACKER_IP,
    *,
    method: str = "GET",
    body: bytes = b"",
    content_type: str | None = None,
    referrer: str | None = None,
) -> HttpRequest:
    headers: list[tuple[str, str]] = []
    if host:
        headers.append(("Host", host))
    if content_type:
        headers.append(("Content-Type", content_type))
    if referrer:
        headers.append(("Referer", referrer))
    headers.append(("User-Agent", "Mozilla/5.0"))
    return HttpRequest(
        ts, Flow(src, 50080, dst, 80, "tcp"), method, target, "1.1", tuple(headers), host, body, len(body)
    )


def pixel_target(page: str, extra: str = "") -> str:
    return f"/tr/?id=1234567890&ev=PageView&dl={quote(page, safe='')}&if=false&ts=1705329012312{extra}"


def hiv_pixel() -> HttpRequest:
    target = pixel_target(HIV_PAGE, f"&cd[search_string]=HIV%20PrEP&ud[em]={EMAIL_HASH}")
    return http("www.facebook.com", target, referrer=HIV_PAGE)


GLUCOSE_EVENT = {
    "event": "glucose_logged",
    "properties": {"distinct_id": "u-58213", "glucose": "182 mg/dL", "medications": ["metformin 500 mg"]},
}


def mixpanel_body(event: dict) -> bytes:
    """A form body as Mixpanel's SDKs send it: data=<base64 of the JSON>."""
    return ("data=" + quote(base64.b64encode(json.dumps(event).encode()).decode(), safe="") + "&ip=1").encode()


def mixpanel_track(event: dict = GLUCOSE_EVENT) -> HttpRequest:
    return http("api.mixpanel.com", "/track", method="POST", body=mixpanel_body(event),
                content_type="application/x-www-form-urlencoded")


def by_rule(docs: list[dict]) -> dict[str, dict]:
    """The last document per rule (a later one is an update of the same window)."""
    return {doc["rule"]["id"]: doc for doc in docs}


def see(engine: DetectionEngine, record: Record) -> list[dict]:
    """A record as the pipeline hands it over: a lookup's answers teach the DNS cache (the
    decoder hands it the response) before the engine sees the lookup."""
    if isinstance(record, DnsQuery) and record.answers:
        engine.dns_cache.observe(record.ts, record.name, record.answers)
    return engine.on_record(record)


def run(engine: DetectionEngine, *records: Record) -> list[dict]:
    docs: list[dict] = []
    for record in records:
        docs.extend(see(engine, record))
    return docs + engine.finish()


# --- tracker-egress-no-baa: the severity model ---------------------------------------------------


@pytest.mark.parametrize(
    ("record", "source_record", "severity"),
    [
        (dns("connect.facebook.net"), "dns", "low"),
        (hello("connect.facebook.net"), "tls", "medium"),
        (hello("region1.google-analytics.com", protocol="quic"), "quic", "medium"),
        (http("www.facebook.com", pixel_target(PARKING_PAGE)), "http", "high"),
    ],
    ids=["dns", "tls", "quic", "http"],
)
def test_tracker_egress_severity_follows_what_the_record_proves(catalog, record, source_record, severity) -> None:
    docs = make_engine(catalog).on_record(record)
    assert [doc["rule"]["id"] for doc in docs] == ["tracker-egress-no-baa"]
    doc = docs[0]
    pe = doc["phi_egress"]
    assert pe["severity"] == severity
    assert doc["event"]["severity"] == SEVERITY_SCORE[severity]
    assert pe["source_record"] == source_record
    assert pe["count"] == 1
    assert pe["baa"]["status"] == "none"
    assert doc["event"]["kind"] == "alert"
    assert doc["source"]["ip"] == CLINIC
    assert pe["alert_key"] == f"tracker-egress-no-baa|{CLINIC}|{pe['vendor']['id']}"
    assert "no BAA on file" in pe["summary"]
    assert "phi" not in pe and "evidence" not in pe  # contact alone carries no health data


def test_tracker_egress_names_vendor_and_destination(catalog) -> None:
    doc = make_engine(catalog).on_record(hello("region1.google-analytics.com", protocol="quic"))[0]
    pe = doc["phi_egress"]
    assert pe["vendor"] == {
        "id": "google-analytics", "name": "Google Analytics", "owner": pe["vendor"]["owner"], "category": "analytics",
    }
    assert pe["destination"] == "region1.google-analytics.com"
    assert doc["destination"]["domain"] == "region1.google-analytics.com"
    assert doc["network"]["transport"] == "udp" and doc["network"]["protocol"] == "quic"
    assert pe["baa"]["stance"] == "no" and pe["baa"]["source"].startswith("https://")


def test_dns_alert_keeps_the_resolver_as_destination(catalog) -> None:
    doc = make_engine(catalog).on_record(dns("Connect.Facebook.NET."))[0]
    assert doc["phi_egress"]["destination"] == "connect.facebook.net"
    assert doc["destination"]["ip"] == RESOLVER
    assert "domain" not in doc["destination"]  # the name asked for is dns.question.name
    assert doc["dns"]["question"]["name"] == "Connect.Facebook.NET."


@pytest.mark.parametrize(
    ("record", "severity"),
    [
        (dns("connect.facebook.net", src=PORTAL), "medium"),
        (hello("connect.facebook.net", src=PORTAL), "high"),
        (http("www.facebook.com", pixel_target(PARKING_PAGE), src=PORTAL), "critical"),
    ],
    ids=["dns", "tls", "http"],
)
def test_portal_tags_raise_one_level(catalog, record, severity) -> None:
    doc = make_engine(catalog).on_record(record)[0]
    assert doc["rule"]["id"] == "tracker-egress-no-baa"
    assert doc["phi_egress"]["severity"] == severity
    assert doc["phi_egress"]["phi_host"] == {"name": "patient-portal", "tags": ["portal", "authenticated"]}


@pytest.mark.parametrize(
    ("record", "severity"),
    [
        (dns("static.hotjar.com"), "medium"),
        (hello("static.hotjar.com"), "high"),
        (hello("static.hotjar.com", src=PORTAL), "critical"),  # +1 portal, +1 session replay
        (http("static.hotjar.com", "/c/hotjar-123.js?sv=6", src=PORTAL), "critical"),  # capped at critical
    ],
    ids=["dns", "tls", "tls-portal", "http-portal"],
)
def test_session_replay_vendors_raise_one_level(catalog, record, severity) -> None:
    docs = make_engine(catalog).on_record(record)
    assert [doc["rule"]["id"] for doc in docs] == ["tracker-egress-no-baa"]
    assert docs[0]["phi_egress"]["vendor"]["category"] == "session-replay"
    assert docs[0]["phi_egress"]["severity"] == severity


def test_a_tag_without_weight_changes_nothing(catalog) -> None:
    doc = make_engine(catalog).on_record(hello("connect.facebook.net", src=EHR_DB))[0]
    assert doc["phi_egress"]["phi_host"] == {"name": "ehr-db", "tags": ["database"]}
    assert doc["phi_egress"]["severity"] == "medium"


# --- BAA coverage ---------------------------------------------------------------------------------


def _with(extra: str) -> str:
    return CONFIG + extra


@pytest.mark.parametrize(
    "baa",
    [
        "baa: [{vendor: Segment}]",
        "baa: [{vendor: SEGMENT, signed: 2023-03-01, expires: 2027-02-28}]",
        "baa: [{domains: [segment.io]}]",
        "baa: [{domains: [api.segment.io], signed: 2024-01-15, expires: 2024-01-15}]",  # both ends inclusive
    ],
    ids=["vendor-name", "vendor-dated", "domain", "host-one-day"],
)
def test_a_baa_in_effect_silences_tracker_rules(catalog, baa) -> None:
    engine = make_engine(catalog, _with(baa))
    track = http(
        "api.segment.io", "/v1/t", method="POST", content_type="application/json",
        body=json.dumps({"event": "Appointment Booked", "properties": {"diagnosis": "type 2 diabetes"}}).encode(),
    )
    docs = run(engine, dns("api.segment.io"), hello("api.segment.io"), track)
    # A BAA does not make plaintext acceptable: transmission security is a separate failure.
    assert sorted(by_rule(docs)) == ["plaintext-phi"]
    pe = docs[-1]["phi_egress"]
    assert pe["baa"]["status"] == "on-file"
    assert pe["vendor"]["id"] == "segment"


@pytest.mark.parametrize(
    ("baa", "status", "note"),
    [
        ("baa: [{vendor: Segment, signed: 2022-01-01, expires: 2023-12-31}]", "expired", "BAA expired"),
        ("baa: [{vendor: segment, signed: 2024-07-15}]", "not-yet-signed", "BAA not yet in effect"),
        ("baa: [{domains: [segment.io], expires: 2024-01-14}]", None, None),
        ("baa: [{domains: [segment.io], signed: 2024-01-16}]", None, None),
    ],
    ids=["vendor-expired", "vendor-not-yet-signed", "domain-expired", "domain-not-yet-signed"],
)
def test_a_baa_out_of_its_dates_covers_nothing(catalog, baa, status, note) -> None:
    doc = make_engine(catalog, _with(baa)).on_record(hello("api.segment.io"))[0]
    pe = doc["phi_egress"]
    assert doc["rule"]["id"] == "tracker-egress-no-baa"
    assert pe["severity"] == "medium"
    if status is not None:
        assert pe["baa"]["status"] == status
        assert note in pe["summary"]


def test_a_lapsed_domain_only_baa_is_reported_as_expired(catalog) -> None:
    doc = make_engine(catalog, _with("baa: [{domains: [segment.io], expires: 2023-12-31}]")).on_record(
        hello("api.segment.io")
    )[0]
    assert doc["phi_egress"]["baa"]["status"] == "expired"


def test_a_baa_for_one_vendor_does_not_cover_another(catalog) -> None:
    engine = make_engine(catalog, _with("baa: [{vendor: Segment}, {domains: [segment.com]}]"))
    docs = engine.on_record(hello("connect.facebook.net"))
    assert [doc["phi_egress"]["vendor"]["id"] for doc in docs] == ["meta-pixel"]


# --- phi-in-tracker-payload ------------------------------------------------------------------------


def test_condition_in_meta_pixel_is_critical(catalog) -> None:
    alerts = by_rule(make_engine(catalog).on_record(hiv_pixel()))
    assert sorted(alerts) == ["phi-in-tracker-payload", "plaintext-phi", "tracker-egress-no-baa"]
    doc = alerts["phi-in-tracker-payload"]
    pe = doc["phi_egress"]
    assert pe["severity"] == "critical"
    assert pe["vendor"]["id"] == "meta-pixel"
    assert pe["source_record"] == "http"
    assert pe["destination"] == "www.facebook.com"
    assert {"condition", "condition_url", "hashed_identifier"} <= set(pe["phi"]["types"])
    assert pe["phi"]["count"] == len(pe["evidence"]) >= 3
    assert pe["tracker"]["decoder"] == "meta-pixel"
    assert pe["tracker"]["event"] == "PageView"
    assert doc["rule"]["category"] == "tracker-payload"
    assert "PageView" in pe["summary"]


def test_glucose_in_mixpanel_body_is_critical(catalog) -> None:
    # mixpanel.com is allow-listed in CONFIG; this engine has no allow list.
    engine = make_engine(catalog, "phi_hosts: [10.20.0.0/16]\noutputs: []\n")
    alerts = by_rule(engine.on_record(mixpanel_track()))
    pe = alerts["phi-in-tracker-payload"]["phi_egress"]
    assert pe["severity"] == "critical"
    assert pe["vendor"]["id"] == "mixpanel"
    assert {"glucose", "health_event", "medication"} <= set(pe["phi"]["types"])
    # the event name itself says the user logs glucose: it is health data and is masked too
    assert pe["tracker"] == {"decoder": "mixpanel", "event": "[REDACTED:health_event]"}
    assert [item["path"] for item in pe["evidence"] if item["type"] == "glucose"] == ["properties.glucose"]


def test_identifier_with_weak_health_context_is_high(catalog) -> None:
    # A hashed e-mail next to a generic /schedule page: below the health-data threshold, still an
    # identifier travelling with health context.
    target = pixel_target("https://www.example-hospital.org/schedule", f"&ud[em]={EMAIL_HASH}")
    alerts = by_rule(make_engine(catalog).on_record(http("www.facebook.com", target)))
    assert alerts["phi-in-tracker-payload"]["phi_egress"]["severity"] == "high"
    assert set(alerts["phi-in-tracker-payload"]["phi_egress"]["phi"]["categories"]) == {"identifier", "context"}
    assert "plaintext-phi" not in alerts


@pytest.mark.parametrize(
    "target",
    [
        pixel_target(PARKING_PAGE),
        pixel_target(PARKING_PAGE, f"&ud[em]={EMAIL_HASH}"),  # an identifier alone is not health data
        "/tr/?id=1234567890&ev=PageView&ts=1705329012312&it=1705329011985&o=4126&v=2.9.141",
    ],
    ids=["plain-page", "identifier-only", "numbers-only"],
)
def test_pixel_without_health_data_is_only_tracker_contact(catalog, target) -> None:
    docs = make_engine(catalog).on_record(http("www.facebook.com", target))
    assert [doc["rule"]["id"] for doc in docs] == ["tracker-egress-no-baa"]


def test_health_data_to_a_covered_vendor_raises_only_plaintext(catalog) -> None:
    engine = make_engine(catalog, "phi_hosts: [10.20.0.0/16]\nbaa: [{vendor: Mixpanel}]\noutputs: []\n")
    alerts = by_rule(engine.on_record(mixpanel_track()))
    assert sorted(alerts) == ["plaintext-phi"]
    assert alerts["plaintext-phi"]["phi_egress"]["baa"]["status"] == "on-file"


# --- plaintext-phi ---------------------------------------------------------------------------------


def test_plaintext_health_data_to_a_vendor_is_high(catalog) -> None:
    target = pixel_target(HIV_PAGE)
    doc = by_rule(make_engine(catalog).on_record(http("www.facebook.com", target)))["plaintext-phi"]
    pe = doc["phi_egress"]
    assert pe["severity"] == "high"
    assert doc["rule"]["category"] == "plaintext-phi"
    assert pe["vendor"]["id"] == "meta-pixel"
    assert pe["alert_key"] == f"plaintext-phi|{CLINIC}|meta-pixel"
    assert "condition" in pe["phi"]["types"]


def _mrn_and_glucose(dst: str) -> HttpRequest:
    body = json.dumps({"patient": {"mrn": "12345678", "glucose": "182 mg/dL"}}).encode()
    return http("results.example.net", "/api/results", dst=dst, method="POST", body=body,
                content_type="application/json")


def test_identifier_with_health_data_in_plaintext_is_critical(catalog) -> None:
    docs = make_engine(catalog).on_record(_mrn_and_glucose(ROUTABLE_IP))
    assert [doc["rule"]["id"] for doc in docs] == ["plaintext-phi"]
    pe = docs[0]["phi_egress"]
    assert pe["severity"] == "critical"
    assert set(pe["phi"]["types"]) == {"glucose", "mrn"}
    assert set(pe["phi"]["categories"]) == {"identifier", "vital"}
    assert pe["phi"]["count"] == 2
    assert "vendor" not in pe and pe["baa"] == {"status": "none", "stance": "unknown"}
    assert pe["destination"] == "results.example.net"
    assert pe["alert_key"] == f"plaintext-phi|{CLINIC}|results.example.net"


def test_a_documentation_address_is_not_inside_the_organisation(catalog) -> None:
    docs = make_engine(catalog).on_record(_mrn_and_glucose(OTHER_IP))
    assert [doc["phi_egress"]["severity"] for doc in docs] == ["critical"]


def test_plaintext_to_an_internal_host_is_medium_and_silent_without_health_data(catalog) -> None:
    body = json.dumps({"glucose": "182 mg/dL"}).encode()
    to_ehr = http("ehr.example-hospital.org", "/api/results", dst=EHR_DB, method="POST", body=body,
                  content_type="application/json")
    docs = make_engine(catalog).on_record(to_ehr)
    assert [(doc["rule"]["id"], doc["phi_egress"]["severity"]) for doc in docs] == [("plaintext-phi", "medium")]
    quiet = http("ehr.example-hospital.org", "/api/worklist?page=2&size=50&ts=1705329012", dst=EHR_DB)
    assert run(make_engine(catalog), quiet) == []


# --- unreviewed-vendor -----------------------------------------------------------------------------

UNREVIEWED_ON = {"unreviewed-vendor": RuleSettings(enabled=True)}


def test_unreviewed_vendor_is_off_by_default(catalog) -> None:
    assert run(make_engine(catalog), dns("assist.example.net"), hello("assist.example.net", dst=OTHER_IP)) == []


def test_unreviewed_vendor_lists_an_unknown_third_party(catalog) -> None:
    engine = make_engine(catalog, rule_settings=UNREVIEWED_ON)
    docs = run(engine, dns("assist.example.net"), hello("widget.assist.example.net", dst=OTHER_IP))
    assert len({doc["event"]["id"] for doc in docs}) == 1  # one window for the registered domain
    doc = docs[-1]
    pe = doc["phi_egress"]
    assert doc["rule"]["id"] == "unreviewed-vendor"
    assert doc["rule"]["category"] == "inventory"
    assert pe["severity"] == "low"
    assert pe["count"] == 2
    assert pe["alert_key"] == f"unreviewed-vendor|{CLINIC}|example.net"
    assert "vendor" not in pe and pe["baa"]["status"] == "none"


@pytest.mark.parametrize(
    "record",
    [
        hello("connect.facebook.net"),  # catalogued: the tracker rule speaks for it
        hello("analytics.example-health-vendor.com", dst=OTHER_IP),  # BAA by domain
        hello("static.example-cdn.com", dst=OTHER_IP),  # allow-listed
        dns("printer.example.local"),
        dns("ehr.corp.internal"),
        dns("fileserver"),
        hello(None, dst="192.0.2.200"),  # no name at all
    ],
    ids=["catalogued", "baa-domain", "allowed", "local", "internal", "single-label", "no-name"],
)
def test_unreviewed_vendor_stays_silent(catalog, record) -> None:
    config = _with("baa: [{domains: [analytics.example-health-vendor.com], signed: 2023-07-15}]")
    docs = run(make_engine(catalog, config, rule_settings=UNREVIEWED_ON), record)
    assert [doc["rule"]["id"] for doc in docs if doc["rule"]["id"] == "unreviewed-vendor"] == []


# --- false-positive traps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        http("ocsp.digicert.com", OCSP_PATH, dst="198.51.100.90"),
        http("www.example-hospital.org", "/app.js?v=20240115&_=1700000000000", dst=OTHER_IP),
        http("ctldl.windowsupdate.com", "/msdownload/update/v3/static/trustedr/en/authrootstl.cab?bfa4e9d1e4b1e8c2",
             dst="198.51.100.80"),
        http("shop.example.com", "/api/items/1234567890?id=5551234567&order=4410382291&ts=1705329012", dst=OTHER_IP),
        http("www.example-hospital.org", "/build/2024-01-15/main.3f9a1c.css?date=20240115", dst=OTHER_IP),
        http("cdn.example-cdn.com", "/x?diagnosis=type%202%20diabetes&glucose=182%20mg%2FdL", dst=OTHER_IP),
        http("www.facebook.com", pixel_target(HIV_PAGE), src=GUEST),
        http("www.facebook.com", pixel_target(HIV_PAGE), src=OUTSIDE),
        mixpanel_track(),  # mixpanel.com is allow-listed in CONFIG
        dns("api.mixpanel.com"),
        hello("connect.facebook.net", src="203.0.113.99"),  # a public client is never a PHI host
    ],
    ids=[
        "ocsp", "cache-buster", "windows-update", "numeric-ids", "build-date", "allowed-cdn",
        "guest-network", "unlisted-private", "allowed-tracker-http", "allowed-tracker-dns", "public-client",
    ],
)
def test_false_positive_traps_raise_nothing(catalog, record) -> None:
    assert run(make_engine(catalog), record) == []


def test_guest_network_is_a_phi_host_without_the_exclusion(catalog) -> None:
    # The same record as the guest trap: only phi_hosts_exclude keeps it quiet.
    config = CONFIG.replace("phi_hosts_exclude: [10.20.99.0/24]\n", "")
    docs = make_engine(catalog, config).on_record(http("www.facebook.com", pixel_target(HIV_PAGE), src=GUEST))
    assert "plaintext-phi" in by_rule(docs)


# --- ECH and DNS attribution -----------------------------------------------------------------------


def test_ech_cover_name_without_dns_raises_nothing(catalog) -> None:
    assert run(make_engine(catalog), hello("cloudflare-ech.com", ech=True)) == []


def test_ech_cover_name_with_dns_for_an_ordinary_site_raises_nothing(catalog) -> None:
    answer = dns("crypto.cloudflare.com", answers=(a_record("crypto.cloudflare.com", OTHER_IP),))
    assert run(make_engine(catalog), answer, hello("cloudflare-ech.com", T0 + 1, dst=OTHER_IP, ech=True)) == []


def test_ech_cover_name_in_front_of_a_tracker_is_attributed_through_dns(catalog) -> None:
    engine = make_engine(catalog)
    # The lookup comes from a host outside the inventory, so only the hello can alert.
    see(engine, dns("www.google-analytics.com", src=OUTSIDE,
                         answers=(a_record("www.google-analytics.com", TRACKER_IP),)))
    docs = engine.on_record(hello("cloudflare-ech.com", T0 + 1, ech=True))
    assert len(docs) == 1
    doc = docs[0]
    assert doc["phi_egress"]["source_record"] == "dns-attribution"
    assert doc["phi_egress"]["vendor"]["id"] == "google-analytics"
    assert doc["phi_egress"]["destination"] == "www.google-analytics.com"
    assert doc["destination"]["domain"] == "www.google-analytics.com"
    assert doc["tls"]["client"]["server_name"] == "cloudflare-ech.com"


def test_grease_ech_with_the_real_tracker_name_alerts(catalog) -> None:
    engine = make_engine(catalog)
    see(engine, dns("www.google-analytics.com", src=OUTSIDE,
                         answers=(a_record("www.google-analytics.com", TRACKER_IP),)))
    docs = engine.on_record(hello("www.google-analytics.com", T0 + 1, ech=True))
    assert [(d["rule"]["id"], d["phi_egress"]["source_record"], d["phi_egress"]["severity"]) for d in docs] == [
        ("tracker-egress-no-baa", "tls", "medium")
    ]
    assert docs[0]["phi_egress"]["destination"] == "www.google-analytics.com"
    assert docs[0]["phi_egress"]["tls"]["ech"] is True


def test_hello_without_sni_is_attributed_to_the_tracker_dns_named(catalog) -> None:
    engine = make_engine(catalog)
    lookup = see(engine, dns("connect.facebook.net", answers=(a_record("connect.facebook.net", TRACKER_IP),))
    )
    docs = engine.on_record(hello(None, T0 + 2))
    assert [doc["phi_egress"]["source_record"] for doc in lookup] == ["dns"]
    assert len(docs) == 1
    pe = docs[0]["phi_egress"]
    assert pe["source_record"] == "dns-attribution"
    assert pe["severity"] == "medium"  # escalated from the lookup's low
    assert pe["count"] == 2
    assert pe["destination"] == "connect.facebook.net"
    assert docs[0]["event"]["id"] == lookup[0]["event"]["id"]
    assert "connected to an address of connect.facebook.net" in pe["summary"]


def test_attribution_follows_a_cname_chain_from_a_first_party_alias(catalog) -> None:
    engine = make_engine(catalog)
    answers = (
        DnsAnswer("metrics.example-hospital.org", "CNAME", "example-hospital.sc.omtrdc.net", 300),
        a_record("example-hospital.sc.omtrdc.net", TRACKER_IP),
    )
    # The alias itself names no vendor: the lookup raises nothing on its own.
    assert see(engine, dns("metrics.example-hospital.org", answers=answers)) == []
    docs = engine.on_record(hello(None, T0 + 5))
    assert len(docs) == 1
    pe = docs[0]["phi_egress"]
    assert pe["source_record"] == "dns-attribution"
    assert pe["vendor"]["id"] == "adobe-analytics"
    assert pe["destination"] == "example-hospital.sc.omtrdc.net"


def test_attribution_ends_with_the_ttl(catalog) -> None:
    lookup = dns("connect.facebook.net", src=OUTSIDE, answers=(a_record("connect.facebook.net", TRACKER_IP, 300),))
    engine = make_engine(catalog)
    see(engine, lookup)
    assert engine.on_record(hello(None, T0 + 299)) != []
    fresh = make_engine(catalog)
    see(fresh, lookup)
    assert run(fresh, hello(None, T0 + 301)) == []
    assert fresh.counters.get("dnscache.expired") == 1


def test_http_without_host_is_attributed_through_dns(catalog) -> None:
    engine = make_engine(catalog)
    see(engine, dns("connect.facebook.net", src=OUTSIDE, answers=(a_record("connect.facebook.net", TRACKER_IP),)))
    docs = engine.on_record(http(None, "/signals/config/1234567890", T0 + 1))
    assert [(d["rule"]["id"], d["phi_egress"]["source_record"], d["phi_egress"]["severity"]) for d in docs] == [
        ("tracker-egress-no-baa", "http", "high")
    ]


# --- redaction ---------------------------------------------------------------------------------------

RAW_VALUES = ("hiv", "prep", "182 mg", "metformin", EMAIL_HASH)


def _health_alerts(catalog, unredacted: bool) -> list[dict]:
    engine = make_engine(catalog, "phi_hosts: [10.20.0.0/16]\noutputs: []\n", unredacted=unredacted)
    return run(engine, hiv_pixel(), mixpanel_track())


def _assert_no_raw_values(doc: dict) -> None:
    text = json.dumps(doc).lower()
    for value in RAW_VALUES:
        assert value.lower() not in text, (doc["rule"]["id"], value)


@pytest.mark.parametrize("rule_id", ["plaintext-phi", "phi-in-tracker-payload"])
def test_alerts_with_findings_never_carry_health_values_by_default(catalog, rule_id) -> None:
    docs = [doc for doc in _health_alerts(catalog, unredacted=False) if doc["rule"]["id"] == rule_id]
    assert sorted(doc["phi_egress"]["vendor"]["id"] for doc in docs) == ["meta-pixel", "mixpanel"]
    for doc in docs:
        _assert_no_raw_values(doc)
        assert all(item["excerpt"].count("[REDACTED:") >= 1 for item in doc["phi_egress"]["evidence"])
    pixel = next(doc for doc in docs if doc["phi_egress"]["vendor"]["id"] == "meta-pixel")
    assert "[REDACTED:condition" in pixel["url"]["original"]
    assert "[REDACTED:" in pixel["url"]["query"]
    assert "[REDACTED:" in pixel["http"]["request"]["referrer"]
    assert pixel["url"]["path"] == "/tr/"
    if rule_id == "phi-in-tracker-payload":
        assert "[REDACTED:" in pixel["phi_egress"]["tracker"]["page_url"]


def test_contact_alert_for_a_plain_http_request_keeps_its_url(catalog) -> None:
    target = pixel_target(PARKING_PAGE)
    doc = make_engine(catalog).on_record(http("www.facebook.com", target))[0]
    assert doc["url"]["original"] == target  # nothing to mask: the request as sent


def test_contact_alert_for_an_http_request_with_health_data_is_redacted(catalog) -> None:
    docs = [doc for doc in _health_alerts(catalog, unredacted=False) if doc["rule"]["id"] == "tracker-egress-no-baa"]
    assert len(docs) == 2
    for doc in docs:
        _assert_no_raw_values(doc)


def test_a_condition_in_the_tracker_event_name_is_redacted(catalog) -> None:
    event = {"event": "hiv_test_booked", "properties": {"distinct_id": "u-58213", "clinic": "north"}}
    engine = make_engine(catalog, "phi_hosts: [10.20.0.0/16]\noutputs: []\n")
    payload = by_rule(engine.on_record(mixpanel_track(event)))["phi-in-tracker-payload"]
    assert "hiv" not in json.dumps(payload).lower()


def test_unredacted_alerts_show_the_values(catalog) -> None:
    docs = _health_alerts(catalog, unredacted=True)
    text = json.dumps(docs).lower()
    for value in ("hiv-prep", "182 mg/dl", EMAIL_HASH):
        assert value in text
    pixel = next(
        doc for doc in docs if doc["rule"]["id"] == "plaintext-phi" and doc["phi_egress"]["vendor"]["id"] == "meta-pixel"
    )
    assert "hiv-prep" in pixel["url"]["original"]
    assert "REDACTED" not in json.dumps(pixel)


# --- throttle and escalation --------------------------------------------------------------------------


def test_repeats_fold_into_one_alert_per_window_live(catalog) -> None:
    engine = make_engine(catalog, immediate=True)
    first = engine.on_record(hello("connect.facebook.net", T0))
    assert len(first) == 1 and first[0]["phi_egress"]["count"] == 1
    for step in range(1, 5):
        assert engine.on_record(hello("connect.facebook.net", T0 + step)) == []
    final = engine.finish()
    assert len(final) == 1
    pe = final[0]["phi_egress"]
    assert final[0]["event"]["id"] == first[0]["event"]["id"]
    assert pe["count"] == 5
    assert pe["first_seen"] == "2024-01-15T14:30:00.000000Z"
    assert pe["last_seen"] == "2024-01-15T14:30:04.000000Z"
    assert engine.counters.get("alerts.suppressed") == 4
    assert engine.finish() == []  # nothing left to report


def test_repeats_fold_into_one_alert_per_window_replay(catalog) -> None:
    engine = make_engine(catalog, immediate=False)
    for step in range(5):
        assert engine.on_record(hello("connect.facebook.net", T0 + step)) == []
    final = engine.finish()
    assert [doc["phi_egress"]["count"] for doc in final] == [5]


def test_windows_are_per_host_and_per_vendor(catalog) -> None:
    docs = run(
        make_engine(catalog, immediate=False),
        hello("connect.facebook.net"),
        hello("www.facebook.com", T0 + 1),  # same vendor as connect.facebook.net
        hello("connect.facebook.net", T0 + 2, src="10.20.5.24"),
        hello("www.google-analytics.com", T0 + 3),
    )
    keys = sorted((doc["source"]["ip"], doc["phi_egress"]["vendor"]["id"], doc["phi_egress"]["count"]) for doc in docs)
    assert keys == [(CLINIC, "google-analytics", 1), (CLINIC, "meta-pixel", 2), ("10.20.5.24", "meta-pixel", 1)]


def test_escalation_resends_with_higher_severity_and_same_id(catalog) -> None:
    engine = make_engine(catalog, immediate=True)
    low = engine.on_record(dns("www.facebook.com"))
    high = engine.on_record(http("www.facebook.com", pixel_target(PARKING_PAGE), T0 + 3))
    assert [d["phi_egress"]["severity"] for d in low] == ["low"]
    assert [d["phi_egress"]["severity"] for d in high] == ["high"]
    assert high[0]["event"]["id"] == low[0]["event"]["id"]
    assert high[0]["phi_egress"]["count"] == 2
    assert high[0]["phi_egress"]["source_record"] == "http"
    assert engine.counters.get("alerts.escalated") == 1
    # A weaker record later in the window neither re-sends nor downgrades.
    assert engine.on_record(dns("www.facebook.com", T0 + 5)) == []
    final = engine.finish()
    assert [(d["event"]["id"], d["phi_egress"]["severity"], d["phi_egress"]["count"]) for d in final] == [
        (low[0]["event"]["id"], "high", 3)
    ]


def test_escalation_in_replay_gives_one_document_with_the_strongest_evidence(catalog) -> None:
    docs = run(make_engine(catalog, immediate=False), dns("www.facebook.com"), hello("www.facebook.com", T0 + 1),
               http("www.facebook.com", pixel_target(PARKING_PAGE), T0 + 2))
    pe = docs[0]["phi_egress"]
    assert len(docs) == 1
    assert (pe["severity"], pe["source_record"], pe["count"]) == ("high", "http", 3)
    assert docs[0]["phi_egress"]["first_seen"] == "2024-01-15T14:30:00.000000Z"


@pytest.mark.parametrize("immediate", [True, False], ids=["live", "replay"])
def test_a_new_window_after_throttle_seconds_gets_a_new_id(catalog, immediate) -> None:
    settings_ = {"tracker-egress-no-baa": RuleSettings(enabled=True, throttle_seconds=60.0)}
    engine = make_engine(catalog, immediate=immediate, rule_settings=settings_)
    docs = run(
        engine,
        hello("connect.facebook.net", T0),
        hello("connect.facebook.net", T0 + 30),
        hello("connect.facebook.net", T0 + 61),
    )
    latest = {doc["event"]["id"]: doc["phi_egress"]["count"] for doc in docs}
    assert len(latest) == 2
    assert sorted(latest.values()) == [1, 2]
    windows = sorted(docs, key=lambda d: d["phi_egress"]["first_seen"])
    assert windows[0]["phi_egress"]["first_seen"] == "2024-01-15T14:30:00.000000Z"
    assert windows[-1]["phi_egress"]["first_seen"] == "2024-01-15T14:31:01.000000Z"


# --- per-rule tuning from configuration ----------------------------------------------------------------


@pytest.mark.parametrize("live", [True, False], ids=["live", "replay"])
def test_configured_severity_overrides_the_model(tmp_path, live) -> None:
    config = CONFIG + "rules:\n  tracker-egress-no-baa: {severity: critical}\n  plaintext-phi: {severity: low}\n"
    engine = engine_from_config_file(tmp_path, config, live=live)
    docs = run(engine, dns("connect.facebook.net"), http("www.facebook.com", pixel_target(HIV_PAGE), T0 + 1))
    alerts = by_rule(docs)
    assert alerts["tracker-egress-no-baa"]["phi_egress"]["severity"] == "critical"
    assert alerts["tracker-egress-no-baa"]["event"]["severity"] == SEVERITY_SCORE["critical"]
    assert alerts["plaintext-phi"]["phi_egress"]["severity"] == "low"
    assert alerts["phi-in-tracker-payload"]["phi_egress"]["severity"] == "critical"  # untouched


def test_configured_enabled_switches_rules(tmp_path) -> None:
    config = CONFIG + "rules:\n  tracker-egress-no-baa: {enabled: false}\n  unreviewed-vendor: {enabled: true}\n"
    engine = engine_from_config_file(tmp_path, config, live=True)
    assert engine.on_record(hello("connect.facebook.net")) == []
    docs = engine.on_record(hello("assist.example.net", dst=OTHER_IP))
    assert [doc["rule"]["id"] for doc in docs] == ["unreviewed-vendor"]


def test_configured_throttle_seconds(tmp_path) -> None:
    config = CONFIG + "rules:\n  tracker-egress-no-baa: {throttle_seconds: 10}\n"
    engine = engine_from_config_file(tmp_path, config, live=True)
    assert len(engine.on_record(hello("connect.facebook.net", T0))) == 1
    assert engine.on_record(hello("connect.facebook.net", T0 + 9)) == []
    later = engine.on_record(hello("connect.facebook.net", T0 + 11))
    assert [doc["phi_egress"]["count"] for doc in later] == [2, 1]  # the closed window, then the new one
    assert later[0]["event"]["id"] != later[1]["event"]["id"]


def test_rule_ids_are_the_documented_ones() -> None:
    assert [rule.INFO.id for rule in ALL_RULES] == [
        "tracker-egress-no-baa", "phi-in-tracker-payload", "plaintext-phi", "unreviewed-vendor",
    ]
    assert [rule.INFO.enabled_by_default for rule in ALL_RULES] == [True, True, True, False]


# --- robustness ------------------------------------------------------------------------------------------

_names = st.one_of(
    st.sampled_from(["connect.facebook.net", "api.mixpanel.com", "static.hotjar.com", "cloudflare-ech.com", "", "."]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80),
)
_IPV4 = [CLINIC, PORTAL, GUEST, OUTSIDE, TRACKER_IP, EHR_DB]
_IPV6 = ["fd00:20::50", "fd12:3456:789a::1", "2001:db8::10"]
_ips = st.sampled_from(_IPV4 + _IPV6)


@st.composite
def _records(draw: st.DrawFn):
    ts = T0 + draw(st.floats(0, 100_000, allow_nan=False))
    family = draw(st.sampled_from([_IPV4, _IPV6]))
    src, dst = draw(st.sampled_from(family)), draw(st.sampled_from(family))
    kind = draw(st.sampled_from(["dns", "tls", "http"]))
    if kind == "dns":
        answers = tuple(
            DnsAnswer(draw(_names), draw(st.sampled_from(["A", "AAAA", "CNAME"])), draw(st.one_of(_ips, _names)),
                      draw(st.integers(-5, 1 << 31)))
            for _ in range(draw(st.integers(0, 3)))
        )
        return dns(draw(_names), ts, src, answers)
    if kind == "tls":
        name = draw(st.one_of(st.none(), _names))
        return hello(name, ts, src, dst, ech=draw(st.booleans()), protocol=draw(st.sampled_from(["tls", "quic"])))
    target = draw(st.one_of(
        st.text(max_size=200),
        st.sampled_from([pixel_target(HIV_PAGE), "/track", "/g/collect?v=2&en=page_view&dl=x", OCSP_PATH]),
    ))
    host = draw(st.one_of(st.none(), _names))
    return http(host, target, ts, src, dst, method=draw(st.sampled_from(["GET", "POST", "CONNECT"])),
                body=draw(st.binary(max_size=300)), content_type=draw(st.sampled_from([None, "application/json",
                "application/x-www-form-urlencoded", "text/plain"])))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_records(), min_size=1, max_size=8), st.booleans(), st.booleans())
def test_engine_never_raises_and_alerts_stay_well_formed(catalog, records, immediate, unredacted) -> None:
    engine = make_engine(catalog, immediate=immediate, unredacted=unredacted, rule_settings=UNREVIEWED_ON)
    for doc in run(engine, *records):
        json.dumps(doc)
        pe = doc["phi_egress"]
        assert doc["event"]["kind"] == "alert"
        assert pe["severity"] in SEVERITY_SCORE
        assert pe["count"] >= 1
        assert doc["source"]["ip"] in (CLINIC, PORTAL, EHR_DB)  # the only PHI hosts among the addresses drawn


@pytest.mark.parametrize("host", ["portal\x00.example.org", "10.0.0.1\x00", "fe80::1\x00"])
def test_event_for_a_host_header_with_a_nul_byte(host: str) -> None:
    doc = EventBuilder("sensor", registered_domain)(http(host, "/"))
    assert doc["url"]["domain"] == host
    json.dumps(doc)
