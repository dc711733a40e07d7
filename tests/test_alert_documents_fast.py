"""The fast paths of alert documents hold to their references: the compiled prune and identifier
hints, the gated identifier scan, the summary's host replacement, the cached query names, and an
alert's URLs redacted once for the findings its event already had."""
from __future__ import annotations

import base64
import json
import re
import sys
from urllib.parse import quote, quote_plus, unquote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sensor.phi.redact  # noqa: F401  (sensor.phi's `redact` function shadows the module name)
from sensor.config import parse_config
from sensor.detect.engine import DetectionEngine
from sensor.enrich.vendors import VendorCatalog, registered_domain
from sensor.output import ecs
from sensor.output.elasticsearch import bulk_action
from sensor.output.webhook import slack_message
from sensor.phi.recognizers import Finding
from sensor.records import Flow, HttpRequest, Record, TlsHello

redaction = sys.modules["sensor.phi.redact"]

# --- prune ------------------------------------------------------------------------------------

_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.sampled_from(["", "x", " "]) | st.text(max_size=4)
)
_JSON_LIKE = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5),
    max_leaves=40,
)


@given(_JSON_LIKE)
@settings(max_examples=400)
def test_compiled_prune_equals_the_reference(value: object) -> None:
    fast = ecs._prune_fast
    if fast is None:
        pytest.skip("compiled extension not built")
    expected = ecs.prune_py(value)
    pruned = fast(value)
    if pruned is None:  # declined: only what the reference would return as None itself
        assert expected is None
        return
    assert repr(pruned) == repr(expected)  # key order too: it is the order orjson writes
    if repr(expected) == repr(value):
        assert pruned is value  # nothing left out: not copied


class _Odd:
    """Neither a JSON type nor empty: the reference keeps it, whatever its __ne__ says."""

    def __ne__(self, other: object) -> bool:
        return other != ""


def test_compiled_prune_declines_what_it_does_not_know() -> None:
    if ecs._prune_fast is None:
        pytest.skip("compiled extension not built")
    odd = _Odd()
    for value in ({"a": odd}, [odd], {1: "a"}, {"deep": json.loads("[" * 200 + "]" * 200)}):
        assert ecs._prune_fast(value) is None
        assert repr(ecs.prune(value)) == repr(ecs.prune_py(value))
    assert ecs.prune({"a": odd, "b": ""}) == {}  # odd != "" is False here: dropped, as the reference does


# --- times ---------------------------------------------------------------------------------------


@given(
    st.floats(min_value=-7e10, max_value=3e11, allow_nan=False)
    | st.sampled_from([-62135596800.0, -62135596800.5, 253402300799.9999995, 253402300800.0, 0.9999995, -0.0])
    | st.floats(min_value=1.6e9, max_value=1.8e9)
)
@settings(max_examples=500)
def test_compiled_iso_time_equals_the_reference(ts: float) -> None:
    if ecs._iso_time_fast is None:
        pytest.skip("compiled extension not built")
    assert ecs._iso_time_fast(ts) == ecs.iso_time_py(ts)


def test_compiled_iso_time_declines_what_the_reference_decides() -> None:
    if ecs._iso_time_fast is None:
        pytest.skip("compiled extension not built")
    for ts in (float("nan"), float("inf"), -float("inf"), 1705329000, True):
        assert ecs._iso_time_fast(ts) is None
    assert ecs.iso_time(1705329000) == "2024-01-15T14:30:00.000000Z"
    with pytest.raises(ValueError):
        ecs.iso_time(float("nan"))


# --- identifier hints and spans ---------------------------------------------------------------

# Text that hits every family's hint and shape now and then: digits, separators, MBI letters,
# the worded hints, mail addresses, and a little beyond ASCII.
_PIECES = st.sampled_from(
    ["1", "23", "456", "7890", "-", ".", " ", "(", ")", "+", "+1", "@", "a", "x.com", "1EG4", "TE5", "MK73",
     "555-123-4567", "123 45 6789", "(555) 123-4567", "+15551234567", "1EG4-TE5-MK73", "jane@example.com",
     "ssn", "SSN:", "mrn ", "Member ID", "policy #", "npi", "group", "chart no.", "é", "٣", "İ", "K", "/", "=",
     "(555)123-4567", "609311563.1700476380", "UA-6064393-1", "12.34 5678", "123.456-7890"]
)
_TEXT = st.lists(_PIECES, max_size=24).map("".join) | st.text(max_size=40)


def _spans_ungated(text: str) -> list[tuple[int, int, str]]:
    """identifier_spans as it was before the hints: every family behind its own regex hint."""
    r = redaction
    spans = []
    for hint in r._NUMERIC_HINT.finditer(text):
        start = max(0, hint.start() - 5)
        for match in r._NUMERIC.finditer(text, start, start + 48):
            group = match.lastgroup or ""
            spans.append((match.start(group), match.end(group), group.rstrip("_")))
    if r._MBI_HINT.search(text):
        spans.extend((match.start(1), match.end(1), "mbi") for match in r._MBI.finditer(text))
    lowered = text.lower()
    if any(word in lowered for word in r._WORD_HINTS):
        for match in r._WORDED.finditer(text):
            group = match.lastgroup or ""
            spans.append((match.start(group), match.end(group), group.rstrip("_")))
    if "@" in text:
        for match in r._EMAIL.finditer(text):
            if match.group(1).rsplit(".", 1)[-1].lower() not in r._FILE_SUFFIXES:
                spans.append((match.start(1), match.end(1), "email"))
    return spans


@given(_TEXT)
@settings(max_examples=600)
def test_compiled_identifier_hints_equal_the_reference(text: str) -> None:
    fast = redaction._hints_fast
    if fast is None:
        pytest.skip("compiled extension not built")
    hints = fast(text)
    if text.isascii():
        assert hints == redaction.identifier_hints_py(text)
    else:
        assert hints is None  # \d and lower() reach beyond ASCII: the reference decides


@given(_TEXT)
@settings(max_examples=600)
def test_hinted_spans_are_the_ungated_ones(text: str) -> None:
    assert redaction.identifier_spans(text) == _spans_ungated(text)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redaction, "_hints_fast", None)
        assert redaction.identifier_spans(text) == _spans_ungated(text)


def test_hint_words_are_checked_before_they_are_taken() -> None:
    if redaction._hints_fast is None:
        pytest.skip("compiled extension not built")
    from sensor._fast import bind_hints as bind

    r = redaction
    for words in (("ssn", "SSN"), ("ssn", ""), ("ssn", "x" * 33), ("ssn", "é"), ("ssn", 1)):
        with pytest.raises(ValueError):
            bind(words, r._NUMERIC_BIT, r._MBI_BIT, r._WORDED_BIT, r._EMAIL_BIT)
    assert r._hints_fast("medical record") == r._WORDED_BIT  # the words bound at import still hold


def test_hints_name_each_family() -> None:
    r = redaction
    assert r.identifier_hints_py("PHI host 10.20.14.130 (private address space)") == 0  # no numeric shape
    assert r.identifier_hints_py("call 555-123-4567") == r._NUMERIC_BIT
    assert r.identifier_hints_py("+15551234567") == r._NUMERIC_BIT
    assert r.identifier_hints_py("(555)123-4567") == r._NUMERIC_BIT
    # one separator between digits: no numeric shape (a client id, a tag id)
    assert r.identifier_hints_py("cid=609311563.1700476380&tid=UA-6064393-1") == 0
    assert r.identifier_hints_py("1EG4-TE5-MK73") & r._MBI_BIT
    assert r.identifier_hints_py("Patient SSN") == r._WORDED_BIT
    assert r.identifier_hints_py("jane@example.com") == r._EMAIL_BIT
    assert r.redact("call 555-123-4567 now", ()) == "call [REDACTED:phone] now"


# --- redaction with findings -------------------------------------------------------------------


def _finding(value: str, start: int = 0, path: str = "query.q", kind: str = "condition") -> Finding:
    return Finding(kind, "condition", 0.9, path, start, start + len(value), value)


def _intervals_always(text: str, findings) -> list[tuple[int, int, str]]:
    """_intervals as it was: every finding's pattern run over the text."""
    raw = redaction.identifier_spans(text)
    for finding in findings:
        if 0 <= finding.start < finding.end <= len(text) and text[finding.start : finding.end] == finding.value:
            raw.append((finding.start, finding.end, finding.type))
        if finding.value:
            pattern = re.compile(re.escape(finding.value), re.IGNORECASE)
            raw.extend((match.start(), match.end(), finding.type) for match in pattern.finditer(text))
    raw.sort(key=lambda span: (span[0], -span[1]))
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in raw:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end), merged[-1][2])
        else:
            merged.append((start, end, kind))
    return merged


_VALUES = st.sampled_from(["hiv", "HIV", "Hiv", "diabetes", "ſsn", "K", "k", "İ", "i", "555-123-4567", "", "a"])


_FINDING_TEXT = _TEXT | st.sampled_from(["HIV prep", "hiv and HIV", "diabetes type 2", "kK", "ıi"])


@given(_FINDING_TEXT, st.lists(_VALUES, max_size=4), st.data())
@settings(max_examples=500)
def test_finding_patterns_run_only_where_they_can_match(text: str, values: list[str], data: st.DataObject) -> None:
    findings = [_finding(value, data.draw(st.integers(-1, len(text) + 1))) for value in values]
    assert redaction._intervals(text, findings) == _intervals_always(text, findings)


def _carries(param: str, finding: Finding) -> bool:
    path = finding.path.removeprefix("query.")
    return path == param or path.startswith((param + ".", param + "["))


def _redact_query_uncached(query: str, findings) -> str:
    """_redact_query as it was: each parameter's name decoded, masked and looked up every time."""
    r = redaction
    pieces = []
    for piece in query.split("&"):
        raw_key, equals, raw_value = piece.partition("=")
        key = unquote_plus(raw_key, errors="replace")
        value = unquote_plus(raw_value, errors="replace")
        redacted = r.redact(value, findings)
        masked_key = r.redact(key, ())
        if masked_key != key:
            raw_key = quote_plus(masked_key, safe="[]:/")
        keyed = r._keyed_type(key) if value.strip() else None
        if keyed is not None:
            redacted = r.placeholder(keyed)
        elif redacted == value:
            carried = next((finding for finding in findings if _carries(key, finding)), None)
            if carried is None:
                pieces.append(raw_key + equals + raw_value if masked_key != key else piece)
                continue
            redacted = r.placeholder(carried.type)
        pieces.append(raw_key + equals + quote_plus(redacted, safe="[]:/"))
    return "&".join(pieces)


_KEYS = st.sampled_from(
    ["q", "ssn", "email", "dob", "member_id", "cd[search]", "cd", "cd.x", "cd[search].y", "555-123-4567", "a%20b", "x+y", "",
     "npi"]
)
_FINDING_KEYS = _KEYS | st.sampled_from(["cd[search][z]", "cd.x.y", "cd[", "."])
_QUERY_VALUES = st.sampled_from(["", " ", "hiv", "1", "555-123-4567", "HIV%20PrEP", "a+b", "%zz", "jane@example.com"])


@given(
    st.lists(st.tuples(_KEYS, st.booleans(), _QUERY_VALUES), max_size=6),
    st.lists(st.tuples(_VALUES, _FINDING_KEYS, st.sampled_from(["query.", "", "body."])), max_size=4),
)
@settings(max_examples=400)
def test_query_redaction_equals_the_uncached_one(params: list, found: list) -> None:
    query = "&".join(key + ("=" + value if equals else "") for key, equals, value in params)
    findings = [_finding(value, path=prefix + key) for value, key, prefix in found]
    assert redaction._redact_query(query, findings, redaction._needles(findings)) == _redact_query_uncached(query, findings)


# --- summary ------------------------------------------------------------------------------------


def _replace_word_regex(text: str, word: str, replacement: str) -> str:
    return re.sub(rf"(?<= ){re.escape(word)}(?= |$)", lambda _: replacement, text, count=1)


_WORDS = st.sampled_from(["a.com", "b", "a", "x y", "a.com\n", ""])


@given(st.lists(st.sampled_from(["a.com", "b", "a", " ", "\n", "ab.com", "x y", "."]), max_size=10).map("".join), _WORDS)
@settings(max_examples=500)
def test_summary_host_replacement_equals_the_regex(text: str, word: str) -> None:
    if word:
        assert ecs._replace_word(text, word, "R") == _replace_word_regex(text, word, "R")


# --- whole documents ------------------------------------------------------------------------------

CLINIC = "10.20.5.23"
T0 = 1705329000.0
CONFIG = """
sensor: {name: test-sensor}
phi_hosts: [10.20.0.0/16]
outputs: []
"""


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def _documents(catalog: VendorCatalog, records: list[Record]) -> list[dict]:
    config = parse_config(CONFIG, "test")
    events = ecs.EventBuilder(config.sensor.name, registered_domain)
    engine = DetectionEngine(config.build_policy(catalog), ecs.AlertBuilder(events), immediate=True)
    return [doc for record in records for doc in engine.on_record(record)] + engine.finish()


def _http(target: str, ts: float, host: str = "www.facebook.com", referrer: str | None = None) -> HttpRequest:
    headers = [("Host", host), ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0")]
    if referrer:
        headers.append(("Referer", referrer))
    return HttpRequest(ts, Flow(CLINIC, 50080, "203.0.113.35", 80, "tcp"), "GET", target, "1.1", tuple(headers), host, b"", 0)


def _mixpanel(ts: float) -> HttpRequest:
    properties = {"distinct_id": "u-1", "glucose": "182 mg/dL", "medications": ["metformin"]}
    event = {"event": "glucose_logged", "properties": properties}
    body = ("data=" + quote(base64.b64encode(json.dumps(event).encode()).decode(), safe="")).encode()
    headers = (("Host", "api.mixpanel.com"), ("Content-Type", "application/x-www-form-urlencoded"))
    return HttpRequest(ts, Flow(CLINIC, 50081, "203.0.113.36", 80, "tcp"), "POST", "/track?ip=1", "1.1", headers,
                       "api.mixpanel.com", body, len(body))


PAGE = "https://portal.example-hospital.org/conditions/hiv-prep?appointment=new"
RECORDS: list[Record] = [
    TlsHello(T0, Flow(CLINIC, 50443, "203.0.113.35", 443, "tcp"), "tls", "connect.facebook.net", ("h2",), False, "1.3"),
    _http(f"/tr/?id=1234567890&ev=PageView&dl={quote(PAGE, safe='')}&cd[search_string]=HIV%20PrEP&ts=17053290", T0 + 1,
          referrer=PAGE),
    _http("/tr/?id=1234567890&ev=PageView&ph=555-123-4567", T0 + 2),
    _mixpanel(T0 + 3),
]


def test_documents_are_the_same_on_the_pure_python_path(catalog: VendorCatalog, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = _documents(catalog, RECORDS)
    assert {doc["rule"]["id"] for doc in fast} >= {"plaintext-phi", "tracker-egress-no-baa", "phi-in-tracker-payload"}
    ecs._redacted_event_urls_cached.cache_clear()
    ecs._url_findings_cached.cache_clear()
    redaction._redact_url_cached.cache_clear()
    redaction._query_key.cache_clear()
    monkeypatch.setattr(ecs, "_prune_fast", None)
    monkeypatch.setattr(redaction, "_hints_fast", None)
    slow = _documents(catalog, RECORDS)
    assert [json.dumps(doc) for doc in fast] == [json.dumps(doc) for doc in slow]
    text = json.dumps(fast)
    assert "555-123-4567" not in text and "HIV%20PrEP" not in text and "hiv-prep" not in text


def test_the_parts_documents_share_stay_as_they_are(catalog: VendorCatalog) -> None:
    """Documents share their constant parts (observer, data stream, rule fields, event category):
    neither building documents nor the sinks' reading of them changes those."""
    first = json.dumps(_documents(catalog, RECORDS))
    docs = _documents(catalog, RECORDS)
    for doc in docs:
        bulk_action(doc, "phi", data_stream=True)
        bulk_action(doc, "phi", data_stream=False)
        slack_message(doc, "sensor")
    assert json.dumps(docs) == first == json.dumps(_documents(catalog, RECORDS))


def test_an_alert_url_masks_what_only_the_rule_found() -> None:
    target = "/collect?v=2&en=page_view&q=lupus%20flare&cid=42"
    event_url, _ = ecs._redacted_request_urls("GET", target, None)
    found = list(ecs.url_findings("GET", target, None))
    # the rule's findings repeat the scan's: the alert's URL is the event's
    assert ecs._redacted_request_urls("GET", target, None, found + found) == (event_url, None)
    # a finding the scan did not make is masked as well
    extra = Finding("page_view_event", "context", 0.9, "query.en", 0, 9, "page_view")
    alert_url, _ = ecs._redacted_request_urls("GET", target, None, [*found, extra])
    assert "en=page_view" in event_url and "en=[REDACTED:page_view_event]" in alert_url
    assert alert_url == redaction.redact_url(target, [*found, extra])
