"""The health-data scan's shortcuts find exactly what the plain scan finds.

The scan calls a recognizer only when a gate says it can find something (a key name, a word, a
pattern), shares one scan between fields whose keys reduce alike, looks the lexicon's first tokens
up before matching, and the peeler takes plain values as they are. The reference here is the scan
without any of that: every recognizer called on every field with a digit, the lexicon always
matched, each field scanned under its own key.
"""
from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.phi import layers, recognizers
from sensor.phi.layers import Field, peel
from sensor.phi.lexicon import term_matcher


def reference_scan(item: Field) -> tuple[recognizers.Finding, ...]:
    """The scan of one field with every recognizer called, under the field's own key."""
    scan = recognizers._FieldScan(item, recognizers._key(item.path))
    if not scan.text:
        return ()
    page_hint = recognizers._page_hints(scan)
    if recognizers._DIGIT.search(scan.text):
        for recognizer in recognizers._DIGIT_RECOGNIZERS:
            recognizer(scan)
    if "@" in scan.text:
        recognizers._email(scan)
    recognizers._terms(scan, page_hint)
    last = scan.key.last
    if last in recognizers._LOOSE_PARAM_HINTS and (
        any(
            f.category in (recognizers.CONDITION, recognizers.MEDICATION)
            and f.confidence >= recognizers.HEALTH_THRESHOLD
            for f in scan.findings
        )
        or (last == "provider" and recognizers._CLINICIAN_NAME.search(scan.text))
    ):
        scan.add("health_param", recognizers.CONTEXT, recognizers._PARAM_HINT_CONFIDENCE, 0, len(scan.text), keyed=True)
    return tuple(scan.findings)


def _key_names() -> list[str]:
    names: set[str] = set()
    for name, value in vars(recognizers).items():
        if name.endswith(("_KEYS", "_KEY_WORDS", "_PARENTS")) and isinstance(value, frozenset):
            names |= value
    names |= set(recognizers._PARAM_HINTS)
    return sorted(names) + ["q", "id", "tid", "cid", "ts", "dl", "a1c_level", "npiNumber", "ndc_code", "patientId"]


_PARENTS = ["", "query", "body", "ud", "cd", "properties", "ep", "user", "traits", "data.0", "patient", "header"]
_PIECES = [
    # terms, with and without context
    "metformin", "Metformin 500mg", "diabetes", "type 2 diabetes", "asthma", "cancer", "hiv", "hiv2x", "depression",
    "pregnancy", "heart attack", "blood sugar", "fasting", "insulin", "bolus", "lantus",
    # identifiers and their words
    "mrn", "MRN:", "medical record", "chart #", "dob", "DOB:", "born", "birth date", "npi", "NPI", "national provider",
    "ssn", "SSN:", "social security", "soc sec", "member id", "policy #", "group no", "medicare", "mbi", "beneficiary",
    "123-45-6789", "123 45 6789", "123.45.6789", "123456789", "234567890", "078-05-1120", "666-12-3456",
    "1EG4-TE5-MK73", "1EG4TE5MK73", "1234567893", "1234-567-893", "A1234567", "MR1234567",
    "555-867-5309", "(555) 234-5678", "+12125551234", "2125551234", "212.555.1234",
    "john@example.com", "x@2x.png", "@",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "1985-04-12", "04/12/1985", "19850412", "12/31/99",
    # codes
    "icd", "ICD-10", "dx", "diag", "E11.9", "E119", "F32.A", "Z00.00", "U07.1", "cpt", "hcpcs", "99213", "G0438",
    "loinc", "4548-4", "2345-7", "ndc", "0002-1433-80", "12345-678-90", "12345-6789-1", "2019-0412-01",
    # vitals
    "glucose", "182 mg/dL", "7.2 mmol/L", "120/80", "bp", "128/82 mmHg", "SpO2 97%", "o2 sat: 95%", "a1c 6.5%",
    "hba1c was 7.1%", "hr", "72 bpm", "pulse", "10 units", "4.5 u", "systolic",
    # pages and hints
    "http://", "https://mychart.example.org/", "/mychart", "/conditions/asthma", "/find-a-doctor", "/appointments",
    "/providers/smith", "/schedule", "/symptom-checker", "/refills", "Dr. Smith", "Smith, MD",
    # encodings and opaque tokens
    "%20", "%2F", "+", "-", ".", "/", " ", "_", "=", "&", ":", "?", "#", "{", "[",
    "dGhpcyBpcyBhIHRlc3Q=", "550e8400-e29b-41d4-a716-446655440000", "aB3dE5gH7jK9mN1pQ3sT5vX7",
    "G-716396600", "UA-7585519-1", "340611068.1702562607", "1702562607123",
    # characters whose case folding reaches ASCII letters
    "\u017f", "\u212a", "\u0130", "\u0131", "\u00e9", "\u65e5\u672c", "\u00a0",
]  # fmt: skip
_piece = st.one_of(
    st.sampled_from(_PIECES),
    st.text(max_size=6),
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
    st.from_regex(r"[A-Z0-9.\-]{3,14}", fullmatch=True),
)
values = st.lists(_piece, max_size=8).map("".join) | st.lists(_piece, max_size=8).map(" ".join)
paths = st.one_of(
    st.tuples(st.sampled_from(_PARENTS), st.sampled_from(_key_names()), st.sampled_from(["", *_key_names()])).map(
        lambda parts: ".".join(part for part in parts if part)
    ),
    st.sampled_from(["url.path", "header.host", "header.referer", "query.q", "tid", "query.tid", "cd[search_string]"]),
)
_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(paths, values, st.sampled_from(["", "query.", "body.data."]))
def test_gated_scan_finds_what_every_recognizer_finds(path: str, value: str, prefix: str) -> None:
    for item in (Field(path, value), Field(prefix + path, value)):  # the second may share the first's scan
        expected = reference_scan(item)
        assert recognizers._scan_field(item) == expected
        assert recognizers._scan_field_uncached(item) == expected
        assert recognizers.scan_fields([item], 0.0) == list(expected)


_NUMBERS = st.one_of(
    st.from_regex(r"[0-9]{1,40}(\.[0-9]{1,40})?", fullmatch=True),
    st.sampled_from(["123456789", "5551234567", "15551234567", "123.4567", "555.1234", "0123456789.11", "1"]),
)


def test_no_gate_word_is_found_in_a_number() -> None:
    assert all(set(word) - set("0123456789.") for gate in recognizers._DIGIT_GATES for word in gate.words)


@_SETTINGS
@given(st.one_of(paths, st.sampled_from(["query.provider", "query.condition", "query.ts", "body.id"])), _NUMBERS)
def test_a_number_scans_as_every_recognizer_finds(path: str, value: str) -> None:
    """The shortcut for numbers no key names: what the full scan finds in them, nothing."""
    item = Field(path, value)
    assert recognizers._scan_field_uncached(item) == reference_scan(item)
    assert recognizers._ANY_PATTERN_GATE.search(value) is None and recognizers._ANY_GATE_WORD.search(value) is None


@pytest.mark.parametrize(
    ("path", "value", "kind"),
    [
        ("query.ssn", "234567891", "ssn"),
        ("body.notes", "SSN 234567891", "ssn"),
        ("body.notes", "234-56-7891", "ssn"),
        ("body.notes", "dob 04/12/1985", "dob"),
        ("ud.db", "19850412", "dob"),
        ("query.npi", "1234567893", "npi"),
        ("query.mrn", "MR1234567", "mrn"),
        ("query.memberId", "XYZ123456", "member_id"),
        ("body.text", "medicare 1EG4-TE5-MK73", "mbi"),
        ("ud.em", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "hashed_identifier"),
        ("query.phone", "2125551234", "phone"),
        ("query.dx", "E11.9", "icd10"),
        ("query.ndc", "00021433801", "ndc"),
        ("query.cpt", "99213", "cpt"),
        ("query.loinc", "4548-4", "loinc"),
        ("query.glucose", "182", "glucose"),
        ("query.bp", "128/82", "blood_pressure"),
        ("body.note", "SpO2 97%", "spo2"),
        ("query.q", "metformin", "medication"),
        ("url.path", "/conditions/asthma", "condition_url"),
    ],
)
def test_each_gate_lets_its_recognizer_find(path: str, value: str, kind: str) -> None:
    found = recognizers._scan_field(Field(path, value))
    assert found == reference_scan(Field(path, value))
    assert kind in {finding.type for finding in found}


def test_fields_sharing_a_scan_keep_their_own_path() -> None:
    first = recognizers._scan_field(Field("data.q", "metformin 19"))
    second = recognizers._scan_field(Field("body.q", "metformin 19"))
    assert recognizers._context("data.q") is recognizers._context("body.q")
    assert first and {f.path for f in first} == {"data.q"} and {f.path for f in second} == {"body.q"}
    # a key that differs in what a recognizer asks of it does not share
    assert recognizers._context("ud.db") is not recognizers._context("cd.db")


@_SETTINGS
@given(values, st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=3))
def test_lexicon_first_tokens_tell_when_nothing_can_match(text: str, skips: list[tuple[int, int]]) -> None:
    matcher = term_matcher()
    spans = [(min(a, b), max(a, b)) for a, b in skips]
    if not matcher.may_occur(text):
        assert matcher.find(text) == [] and matcher.find(text, spans) == []
    if matcher.find(text):
        assert matcher.may_occur(text)


@_SETTINGS
@given(values)
def test_one_search_answers_for_every_page_hint(text: str) -> None:
    if recognizers._ANY_PAGE_HINT.search(text) is None:
        assert not any(pattern.search(text) for _, _, pattern in recognizers._PAGE_HINTS)


def _encoded(value: str) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            value,
            quote(value),
            base64.b64encode(value.encode()).decode(),
            base64.urlsafe_b64encode(value.encode()).decode().rstrip("="),
            json.dumps({"q": value, "n": [1, value]}),
            f"https://example.org/p?q={quote(value)}&x=1",
            f"a={quote(value)}&b=2",
        ]
    )


@_SETTINGS
@given(values.flatmap(_encoded), st.integers(0, 6))
def test_plain_values_peel_as_the_full_peel_does(text: str, depth: int) -> None:
    fast = layers.Peeler()
    fast._text(text, "query.v", depth)
    plain = layers._plain
    layers._plain = lambda text: False  # every value takes the full peel
    try:
        full = layers.Peeler()
        full._text(text, "query.v", depth)
    finally:
        layers._plain = plain
    assert fast.fields == full.fields
    if depth == 0:
        assert peel(text, "query.v") == fast.fields


@_SETTINGS
@given(st.one_of(values.flatmap(_encoded), st.text(max_size=80), st.text("x{[/=%\n\r -9A", max_size=300)))
def test_the_plain_test_is_the_pattern_it_stands_for(text: str) -> None:
    """_plain's substring tests find what a search for the characters JSON, URLs, forms, lines and
    escapes need finds."""
    structural = re.search(r"[{\[/=%\n]", text) is not None
    assert layers._plain(text) == (not structural and bool(
        layers._NOT_BASE64.search(text) or len(text) < layers._MIN_BASE64_CHARS or text.isalpha()
        or layers._HEX_OR_DIGITS.fullmatch(text)
    ))


@_SETTINGS
@given(values)
def test_one_search_answers_for_every_pattern_gate(text: str) -> None:
    if recognizers._ANY_PATTERN_GATE.search(text) is None:
        for _, _, _, patterns in recognizers._PATTERN_GATES_ONLY:
            assert not any(pattern.search(text) for pattern in patterns)


def _printable_share_reference(text: str) -> float:
    sample = text[: layers._SAMPLE_CHARS]
    if not sample:
        return 0.0
    return sum(1 for ch in sample if (ch.isprintable() and ch != "\ufffd") or ch in "\t\r\n") / len(sample)


@_SETTINGS
@given(st.one_of(st.binary(max_size=64), values.map(str.encode), st.text(max_size=40).map(str.encode)))
def test_printable_share_and_text_of_bytes_as_counted_char_by_char(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    assert layers._printable_share(text) == _printable_share_reference(text)
    expected = text if _printable_share_reference(text) >= layers._PRINTABLE_SHARE else None
    assert layers._bytes_to_text(data) == expected


def test_every_ascii_character_counts_as_counted_char_by_char() -> None:
    for code in range(128):
        for text in (chr(code), "ab" + chr(code) + "cd"):
            assert layers._printable_share(text) == _printable_share_reference(text)


_LABELS = st.sampled_from(["mychart", "mychartx", "amychart", "myhealth", "my", "health", "followmyhealth", "iqhealth", "x", ""])


@_SETTINGS
@given(st.lists(_LABELS, min_size=1, max_size=4).map(".".join))
def test_portal_host_labels_found_by_one_search(host: str) -> None:
    expected = any(label.startswith(recognizers._PORTAL_HOST_LABELS) for label in host.split("."))
    assert bool(recognizers._PORTAL_LABEL_START.search(host)) == expected


_GATE_PATTERNS = [pattern for _, _, _, patterns in recognizers._PATTERN_GATES_ONLY for pattern in patterns]


@_SETTINGS
@given(
    st.one_of(
        values,
        st.sampled_from(_GATE_PATTERNS).flatmap(st.from_regex),  # a match with text around it
        st.sampled_from(_GATE_PATTERNS).flatmap(lambda p: st.from_regex(p, alphabet=st.characters(max_codepoint=127))),
        st.text("0123456789 .-()+ACEKMRYsSnNoOc\u017f\u0663", max_size=24),
    )
)
def test_the_pattern_gate_hint_turns_down_only_what_the_union_would(text: str) -> None:
    if not recognizers._gate_hints(text, text.lower()) & 2:
        assert not recognizers._ANY_PATTERN_GATE.search(text)
