"""Detection's shortcuts of this round, each held to what it replaces: the compiled front of
on_record (sensor/_fast/detect.c) against on_record_py, the names that remember the rules a lookup
or hello may fire, the spill's shared write stream and reads across two blocks, and an alert's
findings told by identity before equality."""
from __future__ import annotations

import dataclasses
import math
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import parse_config
from sensor.detect import engine as engine_module
from sensor.detect.engine import DetectionEngine, RuleSettings
from sensor.detect.rules import ALL_RULES
from sensor.enrich.vendors import VendorCatalog, normalize_host, registered_domain
from sensor.output import ecs
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.phi.recognizers import Finding, url_findings
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, LocalNameQuery, TlsHello, UpgradedHello

try:
    from sensor._fast import detect_front
except ImportError:  # built without a C compiler: the front's own tests skip
    detect_front = None

needs_front = pytest.mark.skipif(detect_front is None, reason="compiled extension not built")

T0 = 1_705_330_800.0  # 2024-01-15 15:00 UTC
CONFIG = """
sensor: {name: test-sensor}
phi_hosts:
  - {cidr: 10.20.0.0/16, name: clinic}
  - {cidr: 10.30.0.0/16, name: portal, tags: [patient-portal]}
baa:
  - {vendor: segment, signed: '2023-03-01'}
  - {vendor: mixpanel, signed: '2024-01-15', expires: '2024-01-15'}
outputs: []
"""
# vendor hosts (a BAA on file, one lapsing after the first day), names no catalog knows, names
# that normalize to nothing
NAMES = ["www.google-analytics.com", "connect.facebook.net", "cdn.segment.com", "api.mixpanel.com",
         "static.hotjar.com", "example.org", "news.example", "WWW.Example.Org.", "", ".", " "]
SOURCES = ["10.20.5.23", "10.30.1.5", "192.0.2.44", "fd12::5"]


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def _engine(catalog: VendorCatalog, immediate: bool, unreviewed: bool = False) -> DetectionEngine:
    """An engine as a run assembles it (the unreviewed-vendor rule off by default: most names
    then have no rule to ask)."""
    config = parse_config(CONFIG, "test")
    settings_ = {rule.INFO.id: RuleSettings(rule.INFO.enabled_by_default or unreviewed, throttle_seconds=300.0)
                 for rule in ALL_RULES}
    events = EventBuilder(config.sensor.name, registered_domain)
    return DetectionEngine(config.build_policy(catalog), AlertBuilder(events), settings_, immediate=immediate)


def _without_front(eng: DetectionEngine) -> DetectionEngine:
    if "on_record" in vars(eng):
        delattr(eng, "on_record")
    return eng


def _flow(source: int, port: int, transport: str = "tcp") -> Flow:
    server = "2001:db8::35" if ":" in SOURCES[source] else "203.0.113.35"
    return Flow(SOURCES[source], 50000 + source, server, port, transport)


# times mostly close together (the front's common case), sometimes a jump past a sweep or into the
# next day or back
_step = st.one_of(st.floats(0, 0.5), st.floats(0, 0.5), st.floats(0, 0.5), st.floats(4, 700),
                  st.sampled_from([86_400.0, -86_400.0, -3.0]))


@st.composite
def _records(draw) -> list:
    out, ts = [], T0 + draw(st.floats(0, 86_399.0))
    for _ in range(draw(st.integers(1, 60))):
        ts += draw(_step)
        at = ts  # (a time no day holds, NaN, is handed on: test_the_front_answers_only_...)
        kind = draw(st.sampled_from(["dns", "dns", "tls", "tls", "quic", "ech", "none", "upgraded", "local", "http"]))
        source, name = draw(st.integers(0, len(SOURCES) - 1)), draw(st.sampled_from(NAMES))
        if kind == "dns":
            out.append(DnsQuery(at, _flow(source, 53, "udp"), 7, name, "A", True, "NOERROR",
                                (DnsAnswer(name, "A", "203.0.113.35", 60),)))
        elif kind == "local":
            out.append(LocalNameQuery(at, _flow(source, 5353, "udp"), 0, name, "A", True, "NOERROR", ()))
        elif kind == "upgraded":
            out.append(UpgradedHello(at, _flow(source, 3128), "tls", name, (), False, "1.2", "http-connect"))
        elif kind == "http":
            out.append(HttpRequest(at, _flow(source, 80), "GET", "/collect?v=2&en=page_view", "1.1",
                                   (("Host", name),), normalize_host(name) or None))
        else:
            sni = None if kind == "none" else name
            out.append(TlsHello(at, _flow(source, 443), "quic" if kind == "quic" else "tls", sni, ("h2",),
                                kind == "ech", "1.3"))
    return out


def _run(eng: DetectionEngine, records: list) -> tuple:
    per_record = [eng.on_record(record) for record in records]
    windows = [(key, window.count, window.last_seen) for key, window in eng._windows.items()]
    named = dict(eng._by_name)
    return per_record, windows, named, eng.finish(), dict(eng.counters.values)


@needs_front
@settings(max_examples=200, deadline=None)
@given(records=_records(), immediate=st.booleans(), unreviewed=st.booleans())
def test_the_front_answers_as_on_record_py_does(catalog: VendorCatalog, records: list, immediate: bool,
                                                unreviewed: bool) -> None:
    fronted = _engine(catalog, immediate, unreviewed)
    assert "on_record" in vars(fronted)  # the compiled front, in place of the method
    assert _run(fronted, records) == _run(_without_front(_engine(catalog, immediate, unreviewed)), records)


def _answered_alone(eng: DetectionEngine, record) -> list | None:
    """What a front over `eng`'s tables gives for `record` where it answers by itself; None where
    it hands the record on."""
    handed: list = []
    front = detect_front(eng._kinds, eng._by_name, eng._times, lambda record: handed.append(record) or ["handed"],
                         engine_module._DNS, engine_module._HELLO)
    got = front(record)
    return None if handed else got


@needs_front
def test_the_front_answers_only_lookups_and_hellos_no_rule_may_fire_on(catalog: VendorCatalog) -> None:
    eng = _engine(catalog, immediate=False)
    flow, dns_flow = _flow(0, 443), _flow(0, 53, "udp")
    # names remembered for the day: one no catalog knows, a tracker's, and one normalizing to nothing
    for name in ("example.org", "www.google-analytics.com", "."):
        eng.on_record(TlsHello(T0, flow, "tls", name, (), False, "1.3"))
    ts = T0 + 1.0
    assert _answered_alone(eng, DnsQuery(ts, dns_flow, 1, "example.org", "A")) == []
    assert _answered_alone(eng, TlsHello(ts, flow, "quic", "example.org", (), False, "1.3")) == []
    upgraded = UpgradedHello(ts, flow, "tls", "example.org", (), False, "1.2", "smtp")
    assert _answered_alone(eng, upgraded) is None  # a class whose kind on_record_py has not learned yet
    assert eng.on_record(upgraded) == [] and _answered_alone(eng, upgraded) == []
    handed_on = [
        DnsQuery(ts, dns_flow, 1, "www.google-analytics.com", "A"),  # a rule may fire
        TlsHello(ts, flow, "tls", "news.example", (), False, "1.3"),  # not remembered yet
        TlsHello(ts, flow, "tls", "example.org", (), True, "1.3"),  # ECH: only a cover name
        TlsHello(ts, flow, "tls", "example.org", (), 1, "1.3"),  # (a flag of another kind)
        TlsHello(ts, flow, "tls", ".", (), False, "1.3"),  # no name once normalized: DNS attribution
        TlsHello(ts, flow, "tls", None, (), False, "1.3"),
        DnsQuery(ts, dns_flow, 1, "", "A"),
        LocalNameQuery(ts, dns_flow, 1, "example.org", "A"),
        HttpRequest(ts, _flow(0, 80), "GET", "/", "1.1", (), "example.org"),
        DnsQuery(T0 + 10.0, dns_flow, 1, "example.org", "A"),  # a sweep is due
        DnsQuery(T0 + 86_400.0, dns_flow, 1, "example.org", "A"),  # another day
        DnsQuery(math.nan, dns_flow, 1, "example.org", "A"),
        DnsQuery(int(ts), dns_flow, 1, "example.org", "A"),  # (a time of another kind)
    ]
    for record in handed_on:
        assert _answered_alone(eng, record) is None, record


@needs_front
def test_the_front_reads_the_times_the_engine_shares(catalog: VendorCatalog) -> None:
    eng = _engine(catalog, immediate=False)
    flow = _flow(0, 443)
    for offset in (0.0, 1.0, 7.0, 86_400.0, 86_406.0, 86_405.0):
        eng.on_record(TlsHello(T0 + offset, flow, "tls", "example.org", (), False, "1.3"))
        assert engine_module._TIMES.unpack(eng._times) == (eng._sweep_at, eng._day_start, eng._day_end)
    eng._times[:] = b""  # (bounds it cannot read: every record handed on)
    assert _answered_alone(eng, TlsHello(T0 + 86_406.0, flow, "tls", "example.org", (), False, "1.3")) is None


@needs_front
def test_an_error_reading_a_record_is_raised(catalog: VendorCatalog) -> None:
    class Broken:
        @property
        def ts(self) -> float:
            raise RuntimeError("unreadable")

    eng = _engine(catalog, immediate=False)
    eng._kinds[Broken] = engine_module._DNS  # (as if a lookup's class)
    with pytest.raises(RuntimeError, match="unreadable"):
        eng.on_record(Broken())


def test_names_remember_the_rules_a_lookup_or_hello_may_fire(catalog: VendorCatalog) -> None:
    for unreviewed in (False, True):
        eng = _engine(catalog, immediate=False, unreviewed=unreviewed)
        for name in ("example.org", "www.google-analytics.com", "cdn.segment.com"):
            normal, enrichment, rules = eng._name(eng._by_name, name, engine_module._day_of(T0))
            expected = eng._rules_for[enrichment[0] is not None]
            assert rules == (expected or None) and normal == normalize_host(name)
    observed: list = []
    eng = DetectionEngine(parse_config(CONFIG, "test").build_policy(catalog), AlertBuilder(EventBuilder("s", registered_domain)),
                          immediate=False, on_observation=observed.append)
    assert eng._name(eng._by_name, "example.org", engine_module._day_of(T0))[2] == []  # (observed, no rule asked)


# -- the spill ------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 3 * engine_module._SPILL_BLOCK // 2), min_size=1, max_size=10),
       kept_blocks=st.sampled_from([1, 2, 16]), order=st.randoms())
def test_the_spill_reads_back_what_lies_across_blocks(sizes: list[int], kept_blocks: int, order: random.Random) -> None:
    spill = engine_module._Spill()
    spill.read_blocks = kept_blocks
    kept = [(spill.put(os.urandom(size)), None) for size in sizes]
    data = [(place, spill.get(place)) for place, _ in kept]  # (the first read of each, as it lies)
    spill.put(b"x" * engine_module._SPILL_BLOCK)  # the tail written out: every alert now in the file
    order.shuffle(data)
    assert all(spill.get(place) == value for place, value in data)


def test_spill_writes_share_a_key_stream_and_a_failed_write_is_sealed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    spill = engine_module._Spill()
    chunks = [bytes([index]) * (engine_module._SPILL_BLOCK + 7 * index) for index in range(1, 6)]
    real_pwrite, failed = os.pwrite, []

    def pwrite(fd: int, data, offset: int) -> int:
        if len(failed) < 1 and offset > 0:  # the second write fails once
            failed.append(offset)
            raise OSError("disk full")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(engine_module.os, "pwrite", pwrite)
    places = [spill.put(chunk) for chunk in chunks]
    monkeypatch.undo()
    assert failed and spill._written > failed[0]  # written again, later, with more of the tail
    written = os.pread(spill._fd, spill._written, 0)
    # the file holds each byte sealed by the key stream of its own offset
    assert spill._seal(0, written) == b"".join(chunks)[:spill._written]
    assert [spill.get(place) for place in places] == chunks


# -- an alert's findings merged with the URL scan's -------------------------------------------------

def _merged_plainly(found: tuple, known: list) -> list:
    """The merge as `in` makes it (equality, identity first)."""
    findings = list(found)
    for finding in known:
        if finding not in findings:
            findings.append(finding)
    return findings


_finding = st.builds(Finding, st.sampled_from(["email", "condition", "ssn"]), st.sampled_from(["identifier", "condition"]),
                     st.sampled_from([0.5, 0.9]), st.sampled_from(["query.e", "url.path"]), st.integers(0, 5),
                     st.integers(5, 9), st.sampled_from(["diabetes", "jane@example.org", "123-45-6789"]))


@settings(max_examples=300, deadline=None)
@given(found=st.lists(_finding, max_size=6), picks=st.lists(st.tuples(st.integers(0, 8), st.booleans()), max_size=8),
       extra=st.lists(_finding, max_size=3))
def test_an_alerts_findings_merge_as_equality_merges_them(found, picks, extra) -> None:
    """The rule's findings: the scan's own objects, equal copies of them, and others."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _merge(monkeypatch, found, picks, extra)


def _merge(monkeypatch: pytest.MonkeyPatch, found: list, picks: list, extra: list) -> None:
    scanned = tuple(found)
    known = [scanned[at % len(scanned)] if same else dataclasses.replace(scanned[at % len(scanned)])
             for at, same in picks if scanned] + extra
    target = "/p?e=jane%40example.org&c=diabetes&s=123-45-6789"
    seen: list = []

    def redact_url(url: str, findings) -> str:
        seen.append(list(findings))
        return url

    monkeypatch.setattr(ecs, "_url_findings_cached", lambda method, target, referrer: scanned)
    monkeypatch.setattr(ecs, "redact_url", redact_url)
    monkeypatch.setattr(ecs, "_redacted_event_urls", lambda method, target, referrer: ("event", None))
    got = ecs._redacted_request_urls("GET", target, None, known)
    merged = _merged_plainly(scanned, known)
    if known and len(merged) == len(scanned):
        assert got == ("event", None)
    else:
        assert got == (target, None) and seen == [merged]
        assert all(a is b for a, b in zip(seen[0], merged))


def test_a_scans_findings_are_what_the_alert_masks_with(catalog: VendorCatalog) -> None:
    """The merge on a real request: the URL scan's findings and a rule's copies of them."""
    target = "/collect?en=page_view&dl=https%3A%2F%2Fportal.example%2Fconditions%2Fdiabetes&ep.email=jane%40example.org"
    scanned = url_findings("GET", target, None)
    assert scanned
    copies = [dataclasses.replace(finding) for finding in scanned]
    assert ecs._redacted_request_urls("GET", target, None, copies) == ecs._redacted_event_urls("GET", target, None)
