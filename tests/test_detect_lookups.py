"""Detection of DNS lookups and TLS/QUIC hellos, and what throttle windows keep.

The engine takes shortcuts for lookups and hellos (a rule is asked only about destinations it may
fire on, enrichment is remembered per name as spelled, PHI-host lookups and CNAME chains take
quicker paths) and keeps less of an alert in its window than the rule made. These tests hold
each shortcut to the plain computation it replaces.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import itertools
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sensor.config import parse_config
from sensor.deep import HttpsRequest
from sensor.detect import engine as engine_module
from sensor.detect.engine import DetectionEngine, RuleSettings, _day_of, _Window
from sensor.detect.rules import ALL_RULES
from sensor.enrich.assets import AssetInventory, PhiHost
from sensor.enrich.dnscache import DnsCache
from sensor.enrich.vendors import VendorCatalog, normalize_host, registered_domain
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, LocalNameQuery, TlsHello, UpgradedHello

T0 = 1_705_330_800.0  # 2024-01-15 15:00 UTC
CONFIG = """
sensor: {name: test-sensor}
phi_hosts:
  - {cidr: 10.20.0.0/16, name: clinic}
  - {cidr: 10.30.0.0/16, name: portal, tags: [patient-portal]}
phi_hosts_exclude: [10.20.99.0/24]
baa:
  - {vendor: segment, signed: '2023-03-01'}
  - {vendor: mixpanel, signed: '2024-01-15', expires: '2024-01-15'}
  - {domains: [example-health-vendor.com]}
allow: [example-cdn.com]
rules: {unreviewed-vendor: {enabled: true}}
outputs: []
"""
# vendor hosts (one with a BAA, one whose BAA lapses after the first day, one session replay),
# names no catalog knows, an allowed one, an internal one; spelled as clients and servers do
NAMES = [
    "www.google-analytics.com", "connect.facebook.net", "cdn.segment.com", "api.mixpanel.com",
    "static.hotjar.com", "o152.ingest.sentry.io", "x.analytics.example-health-vendor.com",
    "static.example-cdn.com", "example.org", "portal.hospital.example", "printer.local", "localhost", "",
]
SPELLINGS = [str, str.upper, lambda name: name + ".", lambda name: f" {name.title()} "]
SOURCES = ["10.20.5.23", "10.20.7.7", "10.30.1.5", "10.20.99.7", "192.0.2.44", "fd12::5"]
SERVERS = ["203.0.113.35", "203.0.113.36", "203.0.113.37"]
SERVERS_V6 = ["2001:db8::35", "2001:db8::36", "2001:db8::37"]


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def _config():
    return parse_config(CONFIG, "test")


def _engine(catalog: VendorCatalog, cls: type[DetectionEngine] = DetectionEngine) -> DetectionEngine:
    config = _config()
    settings_ = {rule.INFO.id: RuleSettings(True, throttle_seconds=300.0) for rule in ALL_RULES}
    events = EventBuilder(config.sensor.name, registered_domain)
    return cls(config.build_policy(catalog), AlertBuilder(events), settings_, immediate=False)


class _Plain(DetectionEngine):
    """The engine without its shortcuts: every record of a PHI host observed, every rule asked
    about it, every name normalized and enriched afresh."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rules_for = {True: self.rules, False: self.rules}
        self._day_start, self._day_end = math.inf, -math.inf  # and no day remembered

    def on_record(self, record):
        # every record of a PHI host observed the plain way (_observe), before any shortcut
        out = self._close_passed(record.ts) if record.ts >= self._sweep_at else None
        phi_host = self.policy.assets.lookup(record.flow.src_ip)
        obs = None if phi_host is None or isinstance(record, LocalNameQuery) else self._observe(record, phi_host)
        return out or [] if obs is None else self._evaluate(obs, self.rules, record.ts, out)

    def _day(self, ts):
        return _day_of(ts)

    def _name(self, named, name, day):
        normal = normalize_host(name)
        return normal, self._enrich((normal,), day)

    def _enrich(self, names, day):
        self._enriched.clear()
        return super()._enrich(names, day)


def _flow(source: int, server: int, port: int, transport: str = "tcp") -> Flow:
    return Flow(SOURCES[source], 50000 + source, _server(source, server), port, transport)


def _server(source: int, server: int) -> str:
    return (SERVERS_V6 if ":" in SOURCES[source] else SERVERS)[server]


# (and names that are no name once normalized, as a hello may carry)
_name = st.builds(lambda name, spell: spell(name) if name else name, st.sampled_from(NAMES),
                  st.sampled_from(SPELLINGS)) | st.sampled_from([".", " "])
_ts = st.floats(0, 2 * 86_400.0).map(lambda offset: T0 + offset)


@st.composite
def _records(draw) -> list:
    """Lookups (some answered, with CNAME chains to vendors), hellos (SNI, none, ECH cover
    names, upgraded), local names, and plain and decrypted requests, in time order."""
    out = []
    for ts in sorted(draw(st.lists(_ts, min_size=1, max_size=40))):
        kind = draw(st.sampled_from(["dns", "dns", "tls", "quic", "ech", "none", "upgraded", "local", "http", "https"]))
        source, server = draw(st.integers(0, len(SOURCES) - 1)), draw(st.integers(0, len(SERVERS) - 1))
        name = draw(_name)
        if kind == "dns":
            target = draw(_name)
            answers = (
                (DnsAnswer(name, "CNAME", target, 300), DnsAnswer(target, "A", SERVERS[server], draw(st.integers(0, 200))))
                if draw(st.booleans()) else (DnsAnswer(name, "AAAA", SERVERS_V6[server], 30),)
            )
            out.append(DnsQuery(ts, _flow(source, 0, 53, "udp"), 7, name, "A", True, "NOERROR", answers))
        elif kind == "local":
            out.append(LocalNameQuery(ts, _flow(source, 0, 5353, "udp"), 0, name, "A", True, "NOERROR",
                                      (DnsAnswer(name, "A", SERVERS[server], 120),)))
        elif kind in ("tls", "quic", "ech", "none"):
            sni = None if kind == "none" else ("cloudflare-ech.com" if kind == "ech" else name)
            out.append(TlsHello(ts, _flow(source, server, 443), "quic" if kind == "quic" else "tls", sni, ("h2",),
                                kind == "ech", "1.3"))
        elif kind == "upgraded":
            out.append(UpgradedHello(ts, _flow(source, server, 3128), "tls", name, (), False, "1.2", "http-connect"))
        else:
            target = "/collect?v=2&tid=G-X&dl=https%3A%2F%2Fportal.example%2Fconditions%2Fdiabetes&en=page_view"
            headers = (("Host", name), ("User-Agent", "Mozilla/5.0"), ("Referer", "https://portal.example/diabetes"))
            record_type = HttpsRequest if kind == "https" else HttpRequest
            out.append(record_type(ts, _flow(source, server, 80), "GET", target, "1.1", headers, normalize_host(name) or None))
    return out


def _run(eng: DetectionEngine, records) -> tuple[list[dict], dict[str, int]]:
    docs = [doc for record in records for doc in eng.on_record(record)]
    docs += eng.finish()
    return docs, dict(eng.counters.values)


@settings(max_examples=150, deadline=None)
@given(records=_records())
def test_the_shortcuts_raise_what_asking_every_rule_raises(catalog: VendorCatalog, records) -> None:
    assert _run(_engine(catalog), records) == _run(_engine(catalog, _Plain), records)


@settings(max_examples=300, deadline=None)
@given(records=_records())
def test_a_rule_not_asked_about_a_lookup_or_hello_would_not_have_fired(catalog: VendorCatalog, records) -> None:
    eng = _engine(catalog)
    for record in records:
        if isinstance(record, HttpRequest | LocalNameQuery):
            continue
        phi_host = eng.policy.assets.lookup(record.flow.src_ip)
        obs = eng._observe(record, phi_host) if phi_host is not None else None
        if obs is None:
            continue
        asked = {rule for rule, _ in eng._rules_for[obs.vendor is not None]}
        for rule in ALL_RULES:
            if rule not in asked:
                assert rule.evaluate(obs) is None, (rule.INFO.id, record)


def test_names_are_enriched_as_their_normal_form(catalog: VendorCatalog) -> None:
    eng = _engine(catalog)
    flow = _flow(0, 0, 443)
    for name, spell, day in itertools.product(NAMES[:-1], SPELLINGS, (0, 1, 0)):
        spelled = spell(name)
        ts = T0 + day * 86_400.0
        obs = eng._observe(TlsHello(ts, flow, "tls", spelled), None)
        fresh = _engine(catalog)._observe(TlsHello(ts, flow, "tls", normalize_host(spelled)), None)
        assert obs is not None and fresh is not None
        assert (obs.vendor, obs.destination, obs.allowed, obs.baa, obs.baa_status) == (
            fresh.vendor, fresh.destination, fresh.allowed, fresh.baa, fresh.baa_status
        )


def _chain_by_passes(query: DnsQuery) -> dict[str, tuple[str, ...]]:
    """CNAME paths the plain way: pass over every CNAME until a pass adds nothing."""
    paths = {query.name.lower(): (query.name.lower(),)}
    cnames = [(a.name.lower(), a.data.lower().rstrip(".")) for a in query.answers if a.type == "CNAME"]
    changed = True
    while changed:
        changed = False
        for owner, target in cnames:
            if owner in paths and target not in paths and len(paths[owner]) < 16:
                paths[target] = paths[owner] + (target,)
                changed = True
    return paths


_label = st.sampled_from(["a.example", "B.example", "c.example.", "d.example", "A.example", "b.example."])
_answer = st.one_of(
    st.builds(lambda owner, target: DnsAnswer(owner, "CNAME", target, 300), _label, _label),
    st.builds(lambda owner, address, ttl: DnsAnswer(owner, "AAAA" if ":" in address else "A", address, ttl),
              _label, st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"]), st.integers(0, 100_000)),
    st.builds(lambda owner: DnsAnswer(owner, "HTTPS", "1 . alpn=h2", 300), _label),
)


def _observe_plainly(entries: dict, query: DnsQuery) -> int:
    """DnsCache.observe the plain way (an LRU dict; chains only when a CNAME is there); how many
    addresses it stored."""
    chain = _chain_by_passes(query) if any(answer.type == "CNAME" for answer in query.answers) else None
    stored = 0
    for answer in query.answers:
        if answer.type in ("A", "AAAA"):
            ttl = min(max(float(answer.ttl), 60.0), 86_400.0)
            asked = (query.name.lower(),)
            entries.pop(answer.data, None)
            entries[answer.data] = (query.ts + ttl, asked if chain is None else chain.get(answer.name.lower(), asked))
            stored += 1
    return stored


@settings(max_examples=500, deadline=None)
@given(queries=st.lists(st.tuples(_label, st.lists(_answer, max_size=10)), max_size=6))
@example(queries=[("a.example", [DnsAnswer("b.example", "A", "192.0.2.1", 30),
                                   DnsAnswer("A.example.", "CNAME", "b.example.", 300)])])  # an address before its chain
def test_the_dns_cache_stores_what_the_plain_way_stores(queries) -> None:
    cache, plain, stored = DnsCache(), {}, 0
    for offset, (asked, answers) in enumerate(queries):
        query = DnsQuery(T0 + offset, Flow("10.0.0.2", 5353, "10.0.0.53", 53, "udp"), 1, asked, "A", True, "NOERROR",
                         tuple(answers))
        cache.observe(query.ts, query.name, query.answers)
        stored += _observe_plainly(plain, query)
    assert list(cache._entries.items()) == list(plain.items())
    assert cache.counters.get("dnscache.stored") == stored


_network = st.one_of(
    st.builds(lambda n, length: ipaddress.ip_network((n, length), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda n, length: ipaddress.ip_network((n, length), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128)),
)


@settings(max_examples=300, deadline=None)
@given(
    included=st.lists(_network, min_size=1, max_size=8),
    excluded=st.lists(_network, max_size=4),
    probes=st.lists(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**128 - 1)), max_size=20),
)
def test_phi_host_lookup_is_the_longest_prefix(included, excluded, probes) -> None:
    hosts = [PhiHost(network, f"h{i}") for i, network in enumerate(included)]
    inventory = AssetInventory(hosts, excluded)
    for number in probes:
        address = ipaddress.ip_address(number)
        first = {}
        for host in hosts:  # the first entry listed for a network stays
            first.setdefault(host.network, host)
        inside = [host for network, host in first.items() if address in network]
        out = [network for network in excluded if address in network]
        best = max(inside, key=lambda host: host.network.prefixlen, default=None)
        if best is not None and out and max(network.prefixlen for network in out) >= best.network.prefixlen:
            best = None
        assert inventory.lookup(str(address)) == best


@settings(max_examples=300, deadline=None)
@given(
    visits=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", ""]), st.floats(0, 100), st.booleans()), max_size=30),
    cap=st.integers(1, 4),
)
def test_a_window_lists_its_hosts_as_a_dict_would(visits, cap) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "MAX_DESTINATIONS", cap)
        _visit_all(visits, cap)


def _visit_all(visits, cap: int) -> None:
    window = _Window(0.0, 100.0, ("r", "s", "t"), False)
    table: dict[str, list] = {}
    for host, ts, health in visits:
        if not host:
            changed = False
        elif host not in table:
            changed = len(table) < cap or health
            if changed:
                table[host] = [host, 1, ts, ts, health]
        else:
            entry = table[host]
            entry[1] += 1
            entry[2], entry[3] = min(entry[2], ts), max(entry[3], ts)
            changed = health and not entry[4]
            entry[4] = entry[4] or health
        assert window.see(host, ts, health) == changed
        assert [[d.host, d.count, d.first_seen, d.last_seen, d.health_data] for d in window.hosts()] == list(table.values())


def test_a_window_keeps_what_its_document_reads_and_no_more(catalog: VendorCatalog) -> None:
    eng = _engine(catalog)
    builders = [AlertBuilder(EventBuilder("s", registered_domain)),
                AlertBuilder(EventBuilder("s", registered_domain, redact_urls=False), unredacted=True)]
    body = b"email=jane%40example.org&dob=1970-01-01&dx=E11.9&note=type%202%20diabetes"
    headers = (("Host", "www.google-analytics.com"), ("user-agent", "Mozilla/5.0 (member 123456789)"),
               ("Cookie", "_ga=GA1.2.3"), ("REFERER", "https://portal.example/diabetes?mrn=12345678"),
               ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"), ("X-Other", "1"),
               ("Referer", "https://second.example/"))
    targets = ["/g/collect?v=2&tid=G-X&en=page_view&dl=https%3A%2F%2Fportal.example%2Fconditions%2Fdiabetes"
               "&ep.email=jane%40example.org", "/submit?dx=E11.9"]
    seen_rules = set()
    for record_type, target, host in itertools.product((HttpRequest, HttpsRequest), targets,
                                                       ("www.google-analytics.com", "intake.example.org")):
        record = record_type(T0, _flow(0, 0, 80), "POST", target, "1.1", headers, host, body, len(body))
        obs = eng._observe(record, eng.policy.assets.lookup(record.flow.src_ip))
        for rule in ALL_RULES:
            alert = rule.evaluate(obs)
            if alert is None:
                continue
            seen_rules.add(rule.INFO.id)
            window = _Window(T0, T0 + 3600, (rule.INFO.id, record.flow.src_ip, alert.throttle_subject), False)
            window.keep(alert, False)
            window.pack(eng._spill)
            assert isinstance(window.packed, int)
            kept = window.alert(eng._spill)
            assert kept.observation.record.body == b"" and len(kept.observation.record.headers) == 4
            assert type(kept.observation.record) is record_type
            destinations = [engine_module.Destination(host, 2, T0, T0 + 5, True)]
            for build in builders:
                assert build(kept, 2, T0, T0 + 5, "id", destinations) == build(alert, 2, T0, T0 + 5, "id", destinations)
    assert seen_rules == {"tracker-egress-no-baa", "phi-in-tracker-payload", "plaintext-phi", "unreviewed-vendor"}


def test_lookups_and_hellos_are_kept_as_they_are(catalog: VendorCatalog) -> None:
    eng = _engine(catalog)
    hello = TlsHello(T0, _flow(0, 0, 443), "tls", "static.hotjar.com", ("h2",), False, "1.3")
    obs = eng._observe(hello, eng.policy.assets.lookup(hello.flow.src_ip))
    alert = next(alert for rule in ALL_RULES if (alert := rule.evaluate(obs)) is not None)
    window = _Window(T0, T0 + 3600, (alert.rule.id, hello.flow.src_ip, alert.throttle_subject), False)
    window.keep(alert, False)
    window.pack(eng._spill)
    assert window.alert(eng._spill) == alert and alert.findings == () and alert.fields == ()


def test_day_is_the_records_day(catalog: VendorCatalog) -> None:
    # the BAA of mixpanel is in effect on the first day only: the same name, remembered per day
    eng = _engine(catalog)
    flow = _flow(0, 0, 443)
    first = eng._observe(TlsHello(T0, flow, "tls", "api.mixpanel.com"), None)
    second = eng._observe(TlsHello(T0 + 86_400.0, flow, "tls", "api.mixpanel.com"), None)
    assert first is not None and second is not None
    assert (first.baa is not None, first.baa_status) == (True, "on-file")
    assert (second.baa, second.baa_status) == (None, "expired")
    assert dt.datetime.fromtimestamp(T0, dt.timezone.utc).date() == dt.date(2024, 1, 15)


def test_names_remembered_are_forgotten_when_a_request_starts_the_next_day(catalog: VendorCatalog) -> None:
    # a request is the first record of the next day: a name looked up then is enriched for that
    # day (mixpanel's BAA has lapsed), not as remembered from the day before (in effect)
    eng = _engine(catalog)
    midnight = T0 + 9 * 3600.0
    lookup = DnsQuery(T0, _flow(0, 0, 53, "udp"), 7, "api.mixpanel.com", "A")
    request = HttpRequest(midnight, _flow(0, 0, 80), "GET", "/", "1.1", (("Host", "example.org"),), "example.org")
    docs = [doc for record in (lookup, request, dataclasses.replace(lookup, ts=midnight)) for doc in eng.on_record(record)]
    docs += eng.finish()
    assert [doc["phi_egress"]["baa"]["status"] for doc in docs if doc["rule"]["id"] == "tracker-egress-no-baa"] == ["expired"]
