"""The URL redaction's shortcuts hold to plain `redact`: a part of a URL is masked by the findings
whose value it holds (told by lowered ASCII), those parts are remembered, masked query values are
encoded once; and an alert's `phi_egress.phi` counts what summarize counts."""
from __future__ import annotations

import sys
from urllib.parse import quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sensor.phi.redact  # noqa: F401  (sensor.phi's `redact` function shadows the module name)
from sensor.output import ecs
from sensor.phi import summarize
from sensor.phi.recognizers import Finding

redaction = sys.modules["sensor.phi.redact"]

# Values that fold case beyond ASCII (the Kelvin sign and "k", long s and "s", dotted I and "i"),
# identifier shapes, empty values, and text that holds them in any case
_VALUES = st.sampled_from(
    ["hiv", "HIV", "Hiv", "diabetes", "ſsn", "\u212a", "k", "İ", "i", "555-123-4567", "", "a", "oncology", "/x"]
)
_PIECES = st.sampled_from(
    ["hiv", "HIV", "Diabetes", "k", "K", "ssn", "S", "ı", "i", "é", "555-123-4567", "jane@example.com", "/", "?",
     "=", "&", "%20", "%2F", "+", "#", "a", "1", "oncology", "x", " "]
)
_TEXT = st.lists(_PIECES, max_size=16).map("".join) | st.text(max_size=30)


def _findings(data: st.DataObject, text: str) -> list[Finding]:
    values = data.draw(st.lists(_VALUES, max_size=5))
    kinds = st.sampled_from(["condition", "health_param", "email"])
    paths = st.sampled_from(["query.q", "query.dl", "path", "body.url", "query."])
    found = []
    for value in values:
        start = data.draw(st.integers(-1, len(text) + 1))
        found.append(Finding(data.draw(kinds), "condition", 0.9, data.draw(paths), start, start + len(value), value))
    return found


@given(_TEXT, st.data())
@settings(max_examples=600)
def test_a_part_is_masked_as_redact_masks_it(text: str, data: st.DataObject) -> None:
    findings = _findings(data, text)
    needles = redaction._needles(findings)
    expected = redaction.redact(text, findings)
    assert redaction._redact_part(text, findings, needles) == expected
    assert redaction._redact_part(text, findings, needles) == expected  # remembered, the same


def _plain_part(text: str, findings, needles) -> str:
    return redaction.redact(text, findings)


@given(st.lists(_PIECES | st.sampled_from(["http://", "https://h.org", "?q=", "&dl=", "#f"]), max_size=16).map("".join),
       st.data())
@settings(max_examples=500)
def test_a_url_is_masked_as_with_plain_redact(url: str, data: st.DataObject) -> None:
    findings = _findings(data, url)
    fast = redaction._redact_url(url, findings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redaction, "_redact_part", _plain_part)
        patch.setattr(redaction, "_quoted_value", lambda value: quote_plus(value, safe="[]:/"))
        patch.setattr(redaction, "_query_fast", None)  # (it calls back the _redact_part bound at import)
        patch.setattr(redaction, "_plain_component", redaction._plain_component.__wrapped__)
        assert redaction._redact_url(url, findings) == fast


@given(st.lists(st.tuples(st.sampled_from(["condition", "email", "mrn"]), st.sampled_from(["condition", "identifier"])),
                min_size=1, max_size=6))
def test_phi_fields_count_what_summarize_counts(kinds: list[tuple[str, str]]) -> None:
    findings = [Finding(kind, category, 0.9, "query.q", 0, 1, "x") for kind, category in kinds]
    counts = summarize(findings)
    assert ecs._phi_fields(findings) == {
        "types": sorted(counts),
        "categories": sorted({category for _, category in kinds}),
        "count": sum(counts.values()),
    }


# Worded identifiers and their hint words in any case, overlapping ("ssnational provider": a
# hint inside another), next to digits, separators and text beyond ASCII
_WORDED_PIECES = st.sampled_from(
    ["ssn", "SSN", "social security number", "Soc. Sec", "soc sec", "mrn", "MRN: ", "medical record no.", "chart #",
     "member id", "Member ID", "policy no.", "group number", "subscriber #", "npi", "NPI", "national provider",
     "ssnational provider ", "mrnational provider", "websocket", "member id ", "npi1234567890", "123456789",
     "1234567890", "A12345678", "ab-123-4",
     " ", ":", "#", "=", "-", ".", "x", "ſsn", "\u212a", "é"]
)


@given(st.lists(_WORDED_PIECES, max_size=16).map("".join))
@settings(max_examples=800)
def test_worded_identifiers_are_found_where_a_search_of_every_place_finds_them(text: str) -> None:
    expected = [(match.start(), match.end(), match.lastgroup) for match in redaction._WORDED.finditer(text)]
    assert [(match.start(), match.end(), match.lastgroup) for match in redaction._worded_matches(text)] == expected


_QUERY_PIECES = st.sampled_from(
    ["q=", "dl=", "mrn=", "cid=", "ssn=", "email=", "path=", "x", "=", "&", "%20", "%2F", "%3D", "%26", "%E2%84%AA", "%ZZ",
     "+", "hiv", "HIV", "k", "K", "\u212a", "é", "1", "555-123-4567", "609311563.1700476380", "jane@example.com",
     "https%3A%2F%2Fh.org%2Fconditions%2Fdiabetes", "diabetes", " "]
)


@given(st.lists(_QUERY_PIECES, max_size=16).map("".join), st.data())
@settings(max_examples=800)
def test_the_compiled_query_loop_writes_what_the_reference_writes(query: str, data: st.DataObject) -> None:
    if redaction._query_fast is None:
        pytest.skip("compiled extension not built")
    findings = _findings(data, query)
    needles = redaction._needles(findings)
    expected = redaction._redact_query_py(query, findings, needles)
    assert redaction._redact_query(query, findings, needles) == expected
    masks = redaction._url_masks(tuple(findings))
    assert masks[0] == needles
    assert redaction._query_fast(query, masks[1], masks[2], findings, needles) == expected  # taken, not declined


def test_the_compiled_query_loop_masks_values_names_and_carriers() -> None:
    finding = Finding("condition", "condition", 0.9, "query.dl", 0, 8, "diabetes")
    query = "cid=609311563.1700476380&dl=https%3A%2F%2Fh.org%2Fdiabetes&mrn=12345678&q=555-123-4567&x"
    expected = "cid=609311563.1700476380&dl=https://h.org/[REDACTED:condition]&mrn=[REDACTED:mrn]&q=[REDACTED:phone]&x"
    assert redaction._redact_query_py(query, [finding], redaction._needles([finding])) == expected
    assert redaction._redact_query(query, [finding], redaction._needles([finding])) == expected
    carried = Finding("condition", "condition", 0.9, "query.dl.page", 0, 3, "zzz")  # decoded out of dl
    assert redaction._redact_query("dl=abc", [carried], redaction._needles([carried])) == "dl=[REDACTED:condition]"
