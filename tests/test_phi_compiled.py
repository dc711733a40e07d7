"""The compiled steps of the health-data scan (sensor/_fast/phi.c) do what their Python references do.

plain_text is layers._plain_py, peel_form takes the pieces Peeler.form_py takes, peel_json
flattens as Peeler.json_py does, term_may_occur answers as TermMatcher.may_occur_py, and
scan_fields finds what scan_fields_py finds; each hands what it does not take to Python. The peels
are compared on the whole peeler afterwards (fields, budget, bound, reach) and on the caps counted,
with limits small enough that the budget, the field cap and the nesting cap are met.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.phi import layers, lexicon, recognizers
from sensor.phi.layers import DEFAULT_LIMITS, Field, LayerLimits, Peeler

fast = pytest.importorskip("sensor._fast", reason="compiled extension not built")
if getattr(fast, "__file__", None) is None:
    pytest.skip("compiled extension not built", allow_module_level=True)

# text that meets every branch: escapes, separators, blanks str.strip() takes off (ASCII and not),
# base64 and hex alphabets, digits, JSON and URL starts, and a few characters beyond ASCII
_ALPHABET = "ab=&%+2F/{[\n \t\x1c.-_x0Z9é\u2028ü"
_TEXT = st.text(alphabet=_ALPHABET, max_size=40) | st.text(max_size=12)
_LIMITS = st.sampled_from(
    [
        DEFAULT_LIMITS,
        LayerLimits(max_output=24, max_fields=6),
        LayerLimits(max_output=200, max_fields=3, max_depth=2),
        LayerLimits(max_json_nesting=3, max_fields=10),
    ]
)


def _state(peeler: Peeler) -> tuple[Any, ...]:
    return (list(peeler.fields), peeler._budget, peeler.bound, peeler.reach)


def _peeler(limits: LayerLimits, spent: int, held: int) -> Peeler:
    """A peeler part way through a request: some budget spent, some fields held."""
    peeler = Peeler(limits)
    peeler._budget -= min(spent, limits.max_output)
    peeler.fields.extend(Field(f"f{i}", "v") for i in range(min(held, limits.max_fields)))
    return peeler


def _run(step: Any, peeler: Peeler) -> tuple[tuple[Any, ...], dict[str, int]]:
    layers._PEELED.clear()  # each peel on its own: neither reuses the other's values
    before = dict(layers.CAPPED)
    step(peeler)
    after = dict(layers.CAPPED)
    return _state(peeler), {key: after.get(key, 0) - before.get(key, 0) for key in after}


@settings(max_examples=600, deadline=None)
@given(text=_TEXT)
def test_plain_text_is_plain_py(text: str) -> None:
    assert fast.plain_text(text) is layers._plain_py(text)


@settings(max_examples=600, deadline=None)
@given(
    pieces=st.lists(_TEXT, max_size=8),
    prefix=st.sampled_from(["", "query", "body.é"]),
    depth=st.integers(0, 6),
    limits=_LIMITS,
    spent=st.integers(0, 300),
    held=st.integers(0, 8),
)
def test_peel_form_takes_what_form_py_takes(
    pieces: list[str], prefix: str, depth: int, limits: LayerLimits, spent: int, held: int
) -> None:
    text = "&".join(pieces)
    compiled = _run(lambda peeler: peeler.form(text, prefix, depth), _peeler(limits, spent, held))
    reference = _run(lambda peeler: peeler.form_py(text, prefix, depth), _peeler(limits, spent, held))
    assert compiled == reference


def test_peel_form_stops_at_the_first_piece_it_does_not_take() -> None:
    peeler = Peeler()
    pieces = ["a=1", "b= word ", "c=x%2Fy", "d%5B0%5D=2", "e=3"]
    assert fast.peel_form(peeler, pieces, "query", 1, DEFAULT_LIMITS.max_fields, False) == 3
    assert [(f.path, f.value) for f in peeler.fields] == [("query.a", "1"), ("query.b", "word"), ("query.c", "x/y")]
    assert peeler._budget == DEFAULT_LIMITS.max_output - len("1word") - len("x/y")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT | st.just("k" * 129), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None)
@given(
    document=_JSON,
    prefix=st.sampled_from(["", "body", "ü"]),
    depth=st.integers(0, 6),
    nesting=st.integers(0, 4),
    limits=_LIMITS,
    spent=st.integers(0, 300),
    held=st.integers(0, 8),
)
def test_peel_json_flattens_as_json_py(
    document: object, prefix: str, depth: int, nesting: int, limits: LayerLimits, spent: int, held: int
) -> None:
    compiled = _run(lambda peeler: peeler.json(document, prefix, depth, nesting), _peeler(limits, spent, held))
    reference = _run(lambda peeler: peeler.json_py(document, prefix, depth, nesting), _peeler(limits, spent, held))
    assert compiled == reference


def test_peel_json_takes_a_simple_document_and_leaves_others() -> None:
    document = json.loads('{"a": [1, 2.5, true, null], "b": {"c": " x "}, "u": "https://x.org/p?q=1"}')
    peeler = Peeler()
    assert fast.peel_json(peeler, document, "body", 1, 0, 32, 4096, False) is True
    assert [(f.path, f.value) for f in peeler.fields] == [
        ("body.a.0", "1"), ("body.a.1", "2.5"), ("body.a.2", "true"), ("body.b.c", "x"),
        ("body.u", "https://x.org/p"), ("body.u.q", "1"),
    ]  # fmt: skip
    untouched = Peeler()
    for other in ({"k" * 129: 1}, {"a": "é"}, {1: 2}, ({"a": 1},)):
        assert fast.peel_json(untouched, other, "", 1, 0, 32, 4096, False) is False
    assert fast.peel_json(untouched, {"a": {"b": 1}}, "", 1, 0, 2, 4096, False) is False  # meets the nesting cap
    assert _state(untouched) == _state(Peeler())


@settings(max_examples=600, deadline=None)
@given(text=_TEXT | st.sampled_from(["diabetes", "metformin 500", "HIV", "a1c 7.2", "x" * 300]))
def test_term_may_occur_is_may_occur_py(text: str) -> None:
    matcher = lexicon.term_matcher()
    for lowered in (text.lower(), None):
        assert matcher.may_occur(text, lowered) is matcher.may_occur_py(text, lowered)


def test_term_may_occur_reads_digit_runs_when_a_term_starts_with_digits() -> None:
    matcher = lexicon.TermMatcher([("5 fu", "medication", False), ("flu", "condition", False)])
    assert matcher.digits_lead
    for text in ("dose 5 daily", "x5x", "25", "flu", "influenza"):
        assert matcher.may_occur(text, text.lower()) is matcher.may_occur_py(text, text.lower())


_PATHS = ["url.path", "header.host", "query.q", "query.dob", "mrn", "ud.em", "ep.medication", "body.data.0.glucose"]
_VALUES = st.sampled_from(
    ["123456", "12.5", "2024-01-02", "555-12-3456", "diabetes", "metformin", "/conditions/hiv", "a@b.org", "x" * 300]
) | _TEXT


@settings(max_examples=400, deadline=None)
@given(fields=st.lists(st.tuples(st.sampled_from(_PATHS), _VALUES), max_size=6), least=st.sampled_from([0.0, 0.5, 0.8]))
def test_scan_fields_finds_what_scan_fields_py_finds(fields: list[tuple[str, str]], least: float) -> None:
    items = [Field(path, value) for path, value in fields]
    expected = recognizers.scan_fields_py(items, least)
    assert recognizers.scan_fields(items, least) == expected
    assert recognizers.scan_fields(tuple(items), least) == expected
    assert recognizers.scan_fields(iter(items), least) == expected  # (not a list or tuple: Python's)


def test_match_endpoint_asks_the_endpoints_valid_anywhere_as_one_search() -> None:
    """The union of the endpoints valid on any host matches exactly where one of them does: a
    request's endpoint is the first of its host's, then of those, whose path matches."""
    from sensor.enrich.vendors import VendorCatalog, domain_suffixes, normalize_host

    catalog = VendorCatalog.load()
    gate, anywhere = catalog._endpoints_anywhere()
    assert gate is not None and anywhere

    def reference(host: str, path: str) -> tuple[object, object] | None:
        name = normalize_host(host)
        candidates = list(catalog._endpoints_by_host.get(name, ()))
        for suffix in domain_suffixes(name):
            candidates.extend(catalog._endpoints_by_domain.get(suffix, ()))
        for vendor, endpoint in candidates + catalog._endpoints_any_host:
            if endpoint.path.search(path.partition("?")[0]):
                return vendor, endpoint
        return None

    hosts = ["www.google-analytics.com", "analytics.example.org", "connect.facebook.net", "www.facebook.com", ""]
    hosts += sorted({host for vendor in catalog for host in vendor.hosts})[:40]
    paths = ["/", "/g/collect", "/g/collect?v=2", "/b/ss/suite/1", "/ee/v1/interact", "/ee/abc/v2/collect", "/tr/",
             "/collect", "/favicon.ico", "/app.js", "/v1/batch", "/api/2/envelope/"]  # fmt: skip
    for host in hosts:
        for path in paths:
            assert catalog.match_endpoint(host, path) == reference(host, path), (host, path)


@settings(max_examples=600, deadline=None)
@given(
    data=st.binary(max_size=40)
    | st.text(alphabet="ab \t\r\n{}=\x7f\x00é", max_size=40).map(lambda text: text.encode())
    | st.sampled_from([b"", b"x" * 5000 + b"\x00", b'{"a": 1}'])
)
def test_bytes_text_is_bytes_to_text_py(data: bytes) -> None:
    assert fast.bytes_text(data) == layers._bytes_to_text_py(data)


_TOKEN = (
    st.text(alphabet="ABCGUaz019+/-_", min_size=6, max_size=60)
    | st.binary(min_size=1, max_size=30).map(lambda data: __import__("base64").b64encode(data).decode().rstrip("="))
    | st.sampled_from(["aGVsbG8gd29ybGQ", "H4sIAAAAAAAAA", "eJxLTEoGAAJNASc", "G-462427724", "UA-9819197-1"])
)


@settings(max_examples=800, deadline=None)
@given(tokens=st.lists(_TOKEN, min_size=1, max_size=4), depth=st.integers(0, 5), limits=_LIMITS)
def test_tokens_are_taken_as_layers_takes_them(tokens: list[str], depth: int, limits: LayerLimits) -> None:
    """A value no layer unwraps (an id, base64 of binary) is the field itself; others go to Python."""
    text = "&".join(f"k{i}={token}" for i, token in enumerate(tokens))
    compiled = _run(lambda peeler: peeler.form(text, "query", depth), _peeler(limits, 0, 0))
    reference = _run(lambda peeler: peeler.form_py(text, "query", depth), _peeler(limits, 0, 0))
    assert compiled == reference
    document = {f"k{i}": token for i, token in enumerate(tokens)}
    compiled = _run(lambda peeler: peeler.json(document, "body", depth), _peeler(limits, 0, 0))
    reference = _run(lambda peeler: peeler.json_py(document, "body", depth), _peeler(limits, 0, 0))
    assert compiled == reference


_GATED = st.text(alphabet="0123456789-. ()+1ACBZSsocnmgbp%MRNdxhlé", max_size=30) | st.sampled_from(
    ["555-12-3456", "(555) 123 4567", "+15551234567", "1EG4-TE5-MK73", "0123-4567-89", "mrn 1234567", "a1c 7%",
     "dob 01/02/1990", "SSN 123", "12 mm hg", "1C", "9)"]
)  # fmt: skip


@settings(max_examples=800, deadline=None)
@given(text=_GATED | _TEXT)
def test_gate_hints_is_gate_hints_py(text: str) -> None:
    assert fast.gate_hints(text, text.lower()) == recognizers._gate_hints_py(text, text.lower())
