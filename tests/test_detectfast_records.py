"""The per-record shortcuts of detection held to the plain computation they replace: a request's
host enriched through the day's name table, a new throttle window's first host set inline, a
request part looked up before it is measured, the egress rule's sensitive-tag test."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import parse_config
from sensor.detect.base import SENSITIVE_TAGS, Alert
from sensor.detect.engine import Destination, DetectionEngine, RuleSettings, _day_of, _Window
from sensor.detect.rules import ALL_RULES, tracker_egress
from sensor.enrich.assets import PhiHost
from sensor.enrich.observation import Observation
from sensor.enrich.vendors import VendorCatalog, normalize_host, registered_domain
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.phi import layers
from sensor.records import DnsQuery, Flow, HttpRequest, TlsHello
from sensor.severity import raise_level

T0 = 1_705_330_800.0  # 2024-01-15 15:00 UTC
CONFIG = """
sensor: {name: test-sensor}
phi_hosts: [{cidr: 10.20.0.0/16, name: clinic}]
baa:
  - {vendor: segment, signed: '2023-03-01'}
  - {vendor: mixpanel, signed: '2024-01-15', expires: '2024-01-15'}
allow: [example-cdn.com]
outputs: []
"""
NAMES = ["www.google-analytics.com", "connect.facebook.net", "cdn.segment.com", "api.mixpanel.com",
         "static.example-cdn.com", "example.org", "", "."]
SPELLINGS = [str, str.upper, lambda name: name + ".", lambda name: f" {name.title()} "]


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def _engine(catalog: VendorCatalog, immediate: bool = False) -> DetectionEngine:
    config = parse_config(CONFIG, "test")
    rules = {rule.INFO.id: RuleSettings(True, throttle_seconds=300.0) for rule in ALL_RULES}
    return DetectionEngine(config.build_policy(catalog), AlertBuilder(EventBuilder("t", registered_domain)), rules,
                           immediate=immediate)


_spelled = st.builds(lambda name, spell: spell(name), st.sampled_from(NAMES), st.sampled_from(SPELLINGS))
_step = st.tuples(st.sampled_from(["dns", "tls", "http"]), _spelled, st.floats(0, 2 * 86_400.0))


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_step, min_size=1, max_size=30))
def test_a_requests_host_is_enriched_as_afresh(catalog: VendorCatalog, steps) -> None:
    """Lookups, hellos and requests of the same names, spelled alike or not, over two days: a
    request's enrichment through the day's name table is the one computed afresh for its host."""
    eng, fresh = _engine(catalog), _engine(catalog)
    flow = Flow("10.20.1.1", 50000, "203.0.113.9", 80, "tcp")
    for kind, name, offset in sorted(steps, key=lambda step: step[2]):
        ts = T0 + offset
        if kind == "dns":
            eng.on_record(DnsQuery(ts, flow, 1, name, "A", True, "NOERROR", ()))
        elif kind == "tls":
            eng.on_record(TlsHello(ts, flow, "tls", name, (), False, "1.3"))
        else:
            host = normalize_host(name) or None
            record = HttpRequest(ts, flow, "GET", "/", "1.1", (("Host", name),), host)
            obs = eng._request_observation(record, eng.policy.assets.lookup(flow.src_ip))
            names = (normalize_host(host),) if host else ()
            fresh._enriched.clear()
            vendor, destination, allowed, baa, status = fresh._enrich(names, _day_of(ts))
            assert (obs.vendor, obs.destination, obs.allowed, obs.baa, obs.baa_status, obs.source_record) == (
                vendor, destination, allowed, baa, status, "http")


_VENDOR_HOSTS = ["connect.facebook.net", "www.google-analytics.com", "static.hotjar.com"]


@settings(max_examples=100, deadline=None)
@given(visits=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["a.example", "b.example", "", None]),
                                  st.booleans(), st.floats(0, 900.0)), min_size=1, max_size=25),
       immediate=st.booleans())
def test_a_windows_hosts_and_counters_are_what_seeing_each_alert_gives(catalog: VendorCatalog, visits, immediate) -> None:
    """Alerts thrown at the throttle directly: each window's hosts, counts and the bookkeeping
    counters are those of windows that saw every alert through _Window.see."""
    eng = _engine(catalog, immediate)
    vendor = catalog.match_host("connect.facebook.net")
    expected: dict[tuple, _Window] = {}
    counts = {"suppressed": 0, "updated": 0, "escalated": 0}
    for source, host, strong, offset in sorted(visits, key=lambda visit: visit[3]):
        ts = T0 + offset
        flow = Flow(f"10.20.0.{source}", 50000, "203.0.113.9", 443, "tcp")
        obs = Observation(TlsHello(ts, flow, "tls", host, (), False, "1.3"), "tls", PhiHost(ipaddress.ip_network("10.20.0.0/16")),
                          host, vendor, None, False, "none")
        severity = "high" if strong else "low"
        eng._throttle(Alert(tracker_egress.INFO, severity, obs, "s", "facebook"), ts, 300.0, [])
        key = (tracker_egress.INFO.id, flow.src_ip, "facebook")
        window = expected.get(key)
        if window is None or ts >= window.end:
            window = expected[key] = _Window(ts, ts + 300.0, key, False, last_seen=ts)
            window.severity = severity
            window.see(host, ts, False)
            continue
        window.count += 1
        window.last_seen = max(window.last_seen, ts)
        grew = window.see(host, ts, False)
        if {"low": 0, "high": 1}[severity] > {"low": 0, "high": 1}[window.severity]:
            window.severity = severity
            counts["escalated"] += 1
        else:
            counts["updated" if grew else "suppressed"] += 1
    for key, window in expected.items():
        got = eng._windows[key]
        assert (got.count, got.start, got.last_seen, got.severity, got.hosts()) == (
            window.count, window.start, window.last_seen, window.severity, window.hosts())
    for name, count in counts.items():
        assert eng.counters.get(f"alerts.{name}") == count


def test_a_new_windows_first_host_is_the_one_see_makes(catalog: VendorCatalog) -> None:
    eng = _engine(catalog)
    flow = Flow("10.20.0.1", 50000, "203.0.113.9", 443, "tcp")
    vendor = catalog.match_host("connect.facebook.net")
    for host, expected in (("a.example", [Destination("a.example", 1, T0, T0, False)]), ("", []), (None, [])):
        obs = Observation(TlsHello(T0, flow, "tls", host, (), False, "1.3"), "tls", PhiHost(ipaddress.ip_network("10.20.0.0/16")),
                          host, vendor, None, False, "none")
        eng._windows.clear()
        eng._throttle(Alert(tracker_egress.INFO, "low", obs, "s", "facebook"), T0, 300.0, [])
        (window,) = eng._windows.values()
        assert window.hosts() == expected and window.destinations is None


_tags = st.lists(st.sampled_from([*sorted(SENSITIVE_TAGS), "default", "lab", ""]), max_size=4).map(tuple)


@settings(max_examples=100, deadline=None)
@given(tags=_tags, source=st.sampled_from(sorted(tracker_egress.BASE_SEVERITY)), vendor_host=st.sampled_from(_VENDOR_HOSTS))
def test_the_egress_rules_severity_is_the_tag_intersections(catalog: VendorCatalog, tags, source, vendor_host) -> None:
    vendor = catalog.match_host(vendor_host)
    flow = Flow("10.20.0.1", 50000, "203.0.113.9", 443, "tcp")
    obs = Observation(TlsHello(T0, flow, "tls", vendor_host, (), False, "1.3"), source,
                      PhiHost(ipaddress.ip_network("10.20.0.0/16"), "h", tags), vendor_host, vendor, None, False, "none")
    alert = tracker_egress.evaluate(obs)
    severity = tracker_egress.BASE_SEVERITY[source]
    if SENSITIVE_TAGS.intersection(tags):
        severity = raise_level(severity)
    if vendor.category == "session-replay":
        severity = raise_level(severity)
    assert alert is not None and alert.severity == severity


_query = st.text(st.sampled_from("ab=&%2F+x1"), max_size=40)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.tuples(st.sampled_from(["/p", "/a/b"]), _query, st.booleans()), min_size=1, max_size=8))
def test_a_part_is_looked_up_before_it_is_measured(parts) -> None:
    """Parts over the size bound are never remembered, and every request's fields are those of a
    peel with nothing remembered, parts seen before or not."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers, "_CACHED_PART_CHARS", 30)
        patch.setattr(layers, "_PARTS", {})
        for path, query, host in parts:
            target = f"{path}?{query}" if query else path
            headers = (("Host", "h.example"),) if host else ()
            got = layers.request_fields(target, headers, b"")
            remembered = dict(layers._PARTS)
            layers._PARTS.clear()
            assert got == layers.request_fields(target, headers, b"")
            layers._PARTS.clear()
            layers._PARTS.update(remembered)
            assert all(layers._input_chars(key[1:]) <= 30 for key in layers._PARTS)
