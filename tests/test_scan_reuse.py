"""What detection remembers to go faster gives exactly what computing afresh gives: request parts
peeled and scanned once, enrichment per destination and day, the day of a time, URL redaction."""
from __future__ import annotations

import base64
import datetime as dt
import gzip
import math
from urllib.parse import quote, unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import load_config
from sensor.detect.engine import DetectionEngine, _day_of
from sensor.enrich.vendors import VendorCatalog, domain_suffixes, normalize_host
from sensor.phi import layers, recognizers, scan_fields, scan_http
from sensor.phi.layers import DEFAULT_LIMITS, Field, LayerLimits, Peeler, request_fields, split_target
from sensor.phi.recognizers import url_findings
from sensor.phi.redact import _redact_url, redact_url
from sensor.records import Flow, TlsHello


def fields_in_one_peel(target: str, headers, body: bytes, content_type: str | None = None) -> list[Field]:
    """The request's fields from one peeler that shares the budget over every part, as before parts."""
    peeler = Peeler(DEFAULT_LIMITS)
    path, query = split_target(target)
    if path:
        peeler.emit("url.path", unquote(path, errors="replace"))
    if query:
        peeler.form(query, "query", 1)
    for name, value in headers:
        lowered = name.lower()
        if lowered == "referer":
            peeler.value(value, "header.referer")
        elif lowered == "host":
            peeler.emit("header.host", value.strip())
        elif lowered == "content-type" and content_type is None:
            content_type = value
    if body:
        peeler.body(body, content_type, "body")
    return peeler.fields


def check(target: str, headers, body: bytes = b"", content_type: str | None = None) -> None:
    expected = fields_in_one_peel(target, headers, body, content_type)
    referrer = next((value for name, value in headers if name.lower() == "referer"), None)
    page = scan_fields(fields_in_one_peel(target, [("Referer", referrer)] if referrer else [], b""))
    for _ in range(2):  # cold, then from what the first call remembered
        assert request_fields(target, headers, body, content_type) == expected
        assert scan_http("GET", target, headers, body, content_type) == scan_fields(expected)
        # what an alert's document asks of the target and Referer, remembered or not
        assert list(url_findings("GET", target, referrer)) == page


PAGE = "https://www.example-hospital.org/conditions/diabetes?dl=" + quote("https://x.org/find-a-doctor?q=insulin")


def test_a_part_seen_before_gives_the_fields_of_one_peel_in_any_header_order() -> None:
    check("/tr/?ev=PageView&dl=" + quote(PAGE, safe=""), [("Host", "t.example"), ("Referer", PAGE)])
    check("/collect?cid=1", [("Referer", PAGE), ("Host", "t.example")])  # the Referer now at another point of the budget
    body = b'{"event":"page_view","url":"' + PAGE.encode() + b'","pad":"' + b"x" * 2200 + b'"}'
    check("/track", [("Host", "a.example"), ("Content-Type", "application/json")], body)
    check("/track?v=2", [("Referer", PAGE), ("Content-Type", "application/json")], body)
    check("/api", [("Content-Encoding", "gzip")], gzip.compress(body), "application/json")


def test_parts_near_the_limits_are_peeled_as_one_request() -> None:
    budget = DEFAULT_LIMITS.max_output
    check("/r", [("Referer", PAGE)])  # remembered with the whole budget
    # The query leaves less budget than the Referer needs: it must be cut as one peel cuts it.
    check("/q?big=" + "y" * (budget - 40), [("Referer", PAGE)])
    check("/q?big=" + "y" * (budget - 5), [("Host", "h.example"), ("Referer", PAGE)])
    # Field count: a query of nearly max_fields parameters, then a Referer with several fields.
    many = "&".join(f"k{i}=v" for i in range(DEFAULT_LIMITS.max_fields - 2))
    check("/m?" + many, [("Referer", PAGE)])
    # An inflation that fits a whole budget but not what is left after a long query.
    inflated = b'{"a":"' + b"z" * 60_000 + b'"}'
    check("/g", [], gzip.compress(inflated), "application/json")
    check("/g?big=" + "y" * (budget - 30_000), [], gzip.compress(inflated), "application/json")
    # A bomb is refused alone and with less budget alike.
    bomb = gzip.compress(b"a" * (4 << 20))
    check("/b", [], bomb, "application/octet-stream")
    check("/b?x=" + "y" * 1000, [], bomb, "application/octet-stream")


_TEXT = st.text(st.sampled_from("ab=&%2F/?:.x y+#\n{}\"[],05é"), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    target=st.one_of(_TEXT.map(lambda text: "/" + text), _TEXT.map(lambda text: "https://h.example/" + text)),
    referer=st.one_of(st.none(), _TEXT, st.just(PAGE)),
    host_first=st.booleans(),
    body=st.one_of(st.just(b""), _TEXT.map(str.encode), _TEXT.map(lambda text: gzip.compress(text.encode()))),
    content_type=st.sampled_from([None, "application/json", "application/x-www-form-urlencoded", "text/plain"]),
    pad=st.sampled_from([0, 1000, DEFAULT_LIMITS.max_output - 50]),
)
def test_any_request_gives_the_fields_of_one_peel(target, referer, host_first, body, content_type, pad) -> None:
    if pad:
        target += ("&" if "?" in target else "?") + "p=" + "w" * pad
    headers = [("Host", "h.example")]
    if referer is not None:
        headers = headers + [("Referer", referer)] if host_first else [("Referer", referer), *headers]
    check(target, headers, body, content_type)


# inflates to far more than its fields take: reused only where the inflation fits
_INFLATED = gzip.compress(b'{"q": "insulin"' + b" " * 3000 + b"}")
_VALUES = [
    quote(PAGE, safe=""),
    quote('{"q":"insulin pump","mrn":"12345678","x":{"' + "k" * 130 + '":1}}'),  # a long key: a cap counted
    base64.b64encode(b'{"event":"search","url":"https://x.org/conditions/diabetes?q=a+b"}').decode(),
    base64.b64encode(_INFLATED).decode(),  # an inflation: needs more budget than its fields spend
    quote(base64.b64encode(_INFLATED).decode()),
    quote("a=b&c=" + quote('{"d":[1,2,"e f"]}')),
    quote("line=1&a=b\nline=2&c=d"),
    quote("a=1&b=2&c=3&d=&e="),  # keys after its last field: a form's rest may take them
    quote("&".join(f"k{i}={i}" for i in range(20))),  # more fields than are kept
    "+".join(["metformin"] * 3),
    "1702562607123",
    "",
]
_PIECE = st.tuples(st.sampled_from(["q", "dl", "data", "e", "k%20y", "a+b"]), st.one_of(st.sampled_from(_VALUES), _TEXT))


def _peel_state(limits: LayerLimits, pad_chars: int, pad_fields: int, pieces: list, body: str):
    layers.take_capped()
    peeler = Peeler(limits)
    for index in range(pad_fields):
        peeler.emit(f"f{index}", "v")
    if pad_chars:
        peeler.emit("pad", "p" * pad_chars)
    peeler.form("&".join(f"{key}={value}" for key, value in pieces), "query", 1)
    peeler.value(body.encode(), "body")
    return peeler.fields, peeler._budget, peeler.bound, peeler.reach, layers.take_capped()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1000, DEFAULT_LIMITS.max_output - 2000, DEFAULT_LIMITS.max_output - 200]),
            st.one_of(st.just(0), st.integers(DEFAULT_LIMITS.max_fields - 8, DEFAULT_LIMITS.max_fields)),
            st.lists(_PIECE, max_size=5),
            st.one_of(st.sampled_from(_VALUES), _TEXT),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_values_peeled_before_give_what_a_fresh_peel_gives(requests) -> None:
    """Equal limits that are not the defaults peel every value afresh: the reference."""
    for pad_chars, pad_fields, pieces, body in requests:  # values come back at other points of the budget
        fresh = _peel_state(LayerLimits(), pad_chars, pad_fields, pieces, body)
        for _ in range(2):  # cold, then from what was remembered
            assert _peel_state(DEFAULT_LIMITS, pad_chars, pad_fields, pieces, body) == fresh


def test_only_small_peels_are_kept() -> None:
    """The memo holds values, paths and fields of bounded size whatever requests come."""
    layers._PEELED.clear()
    kept = quote(PAGE, safe="")
    many = quote("&".join(f"k{i}={i}" for i in range(layers._PEELED_FIELDS + 1)))
    inflated = quote(base64.b64encode(gzip.compress(b'{"q":"' + b"z" * (layers._PEELED_SPENT + 1) + b'"}')))
    long_path = "k" * (layers._PEELED_CHARS + 1)
    peeler = Peeler()
    peeler.form(f"dl={kept}&m={many}&b={inflated}&{long_path}={kept}", "query", 1)
    assert [field.path for field in peeler.fields].count("query.b.q") == 1  # inflated, and peeled
    texts = {key[0] for key in layers._PEELED}
    assert kept in texts and many not in texts and inflated not in texts
    assert [key[1] for key in layers._PEELED if key[0] == kept] == ["query.dl"]


def test_the_findings_of_a_target_and_referer_are_kept_from_the_request_scan(monkeypatch) -> None:
    """An alert's document asks for them long after detection scanned the whole request."""
    target = "/tr/?id=1234567890&ev=PageView&dl=" + quote(PAGE, safe="")
    headers = [("Host", "t.example"), ("Referer", PAGE), ("Content-Type", "application/json")]
    found = scan_http("GET", target, headers, b'{"q":"insulin"}', None)
    assert any(f.path.startswith("body") for f in found)

    def no_scan(*args, **kwargs):
        raise AssertionError("scanned again")

    monkeypatch.setattr(recognizers, "scan_http", no_scan)
    page = url_findings("GET", target, PAGE)
    assert page and all(not f.path.startswith("body") for f in page)
    assert list(page) == [f for f in found if not f.path.startswith("body")]
    monkeypatch.undo()
    recognizers._URL_FINDINGS.clear()
    assert url_findings("GET", target, PAGE) == page


def test_url_redaction_remembered_is_the_same() -> None:
    findings = scan_http("GET", PAGE, [], b"", None)
    assert findings
    assert redact_url(PAGE, findings) == redact_url(PAGE, findings) == _redact_url(PAGE, findings)
    assert "diabetes" not in redact_url(PAGE, findings)


@settings(max_examples=500, deadline=None)
@given(
    day=st.integers(0, 40_000),
    offset=st.one_of(
        st.floats(0, 86_400, exclude_max=True),
        st.floats(86_400 - 2e-6, 86_400, exclude_max=True),
        st.floats(0, 2e-6),
    ),
)
def test_the_day_remembered_is_the_day_of_the_time(day: int, offset: float) -> None:
    engine = _engine()
    ts = day * 86_400.0 + offset
    for probe in (ts, ts + 0.5e-6, ts - 0.5e-6, ts + 1.0, math.nextafter(ts, math.inf)):
        assert engine._day(probe) == _day_of(probe)
    assert engine._day(float("nan")) == _day_of(float("nan"))
    assert engine._day(1e300) == _day_of(1e300) == dt.date.max


def test_enrichment_remembered_is_the_same_for_every_record_to_a_destination() -> None:
    engine = _engine()
    fresh = _engine()
    flow = Flow("10.20.0.5", 51000, "192.0.2.9", 443, "tcp")
    ts = 1_705_330_800.0
    for name in ("www.google-analytics.com", "example.org", "www.google-analytics.com", "connect.facebook.net"):
        hello = TlsHello(ts, flow, "tls", name)
        ours, theirs = engine._observe(hello, None), fresh._observe(hello, None)
        fresh._enriched.clear()
        assert (ours.vendor, ours.destination, ours.allowed, ours.baa, ours.baa_status) == (
            theirs.vendor, theirs.destination, theirs.allowed, theirs.baa, theirs.baa_status
        )
    assert engine._observe(TlsHello(ts, flow, "tls", "www.google-analytics.com"), None).vendor is not None


def _engine() -> DetectionEngine:
    policy = load_config(None).build_policy(_catalog())
    return DetectionEngine(policy, lambda *args: {}, immediate=False)


_CATALOGS: list[VendorCatalog] = []


def _catalog() -> VendorCatalog:
    if not _CATALOGS:
        _CATALOGS.append(VendorCatalog.load())
    return _CATALOGS[0]


@settings(max_examples=300, deadline=None)
@given(target=_TEXT.map(lambda text: "/" + text))
def test_an_origin_form_target_is_its_own_endpoint_path(target: str) -> None:
    """Detection gives match_endpoint an origin-form target whole: what it leaves out of it is
    what split_target leaves out."""
    assert target.partition("?")[0].partition("#")[0] == split_target(target)[0]


def _endpoint_reference(catalog: VendorCatalog, host: str, path: str):
    """match_endpoint as it was, its candidates gathered afresh for every request."""
    name = normalize_host(host)
    candidates = list(catalog._endpoints_by_host.get(name, ()))
    for suffix in domain_suffixes(name):
        candidates.extend(catalog._endpoints_by_domain.get(suffix, ()))
    candidates.extend(catalog._endpoints_any_host)
    path = path.partition("?")[0].partition("#")[0]
    return next(((vendor, endpoint) for vendor, endpoint in candidates if endpoint.path.search(path)), None)


def _endpoint_hosts() -> list[str]:
    catalog = _catalog()
    names = [*catalog._endpoints_by_host, *catalog._endpoints_by_domain]
    return names + [f"x.{name}" for name in names] + [f"{name}:8080" for name in names] + ["example.org", ""]


@settings(max_examples=300, deadline=None)
@given(
    host=st.one_of(st.sampled_from(_endpoint_hosts()), _TEXT).map(lambda host: host.upper() if len(host) % 3 == 0 else host),
    path=st.one_of(
        st.sampled_from([e.path.pattern.strip("^$") for vendor in VendorCatalog.load()._vendors for e in vendor.endpoints]),
        _TEXT.map(lambda text: "/" + text),
    ),
)
def test_the_endpoints_remembered_per_host_match_as_gathered_afresh(host: str, path: str) -> None:
    catalog = _catalog()
    for _ in range(2):  # cold, then remembered
        assert catalog.match_endpoint(host, path) == _endpoint_reference(catalog, host, path)


@settings(max_examples=200, deadline=None)
@given(
    types=st.lists(st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]), max_size=3),
    body=st.sampled_from([b'{"q":"insulin","n":"x"}', b"q=insulin&ssn=123-45-6789", b"insulin"]),
)
def test_the_scan_finds_the_first_content_type_itself(types: list[str], body: bytes) -> None:
    headers = [("Host", "h.example"), *(("Content-Type", value) for value in types)]
    first = next((value for name, value in headers if name == "Content-Type"), None)
    assert scan_http("POST", "/c", headers, body, None) == scan_http("POST", "/c", headers, body, first)
