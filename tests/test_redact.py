"""Redaction: typed placeholders in text, URLs and evidence excerpts; the secret never survives."""
from __future__ import annotations

import base64
import json
import re
import string
from urllib.parse import quote, unquote_plus, urlencode

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sensor.phi import Field, Finding, decode_tracker, evidence, placeholder, redact, redact_url, scan_fields, scan_tracker
from sensor.phi.redact import EXCERPT_CHARS

PLACEHOLDER = re.compile(r"\[REDACTED:[a-z0-9_]+\]")


def finding(kind: str, path: str, text: str, value: str, category: str = "condition") -> Finding:
    start = text.index(value)
    return Finding(kind, category, 0.8, path, start, start + len(value), value)


def without_placeholders(text: str) -> str:
    return PLACEHOLDER.sub("\0", text)


def test_placeholder_is_typed_and_sanitized():
    assert placeholder("condition") == "[REDACTED:condition]"
    assert placeholder("Weird Type!") == "[REDACTED:weird_type_]"


def test_redact_replaces_spans_with_typed_placeholders():
    text = "Patient MRN 00123456 has type 2 diabetes."
    findings = [finding("mrn", "note", text, "00123456", "identifier"), finding("condition", "note", text, "type 2 diabetes")]
    assert redact(text, findings) == "Patient MRN [REDACTED:mrn] has [REDACTED:condition]."


def test_redact_masks_every_occurrence_in_any_case():
    text = "HIV test; hiv prep; Hiv"
    assert (
        redact(text, [finding("condition", "q", text, "HIV")])
        == "[REDACTED:condition] test; [REDACTED:condition] prep; [REDACTED:condition]"
    )


def test_overlapping_findings_merge_into_one_placeholder():
    text = "see /conditions/type-2-diabetes now"
    hint = finding("condition_url", "dl", text, "/conditions/type-2-diabetes", "context")
    term = finding("condition", "dl", text, "type-2-diabetes")
    assert redact(text, [term, hint]) == "see [REDACTED:condition_url] now"


def test_findings_from_elsewhere_still_mask_by_value():
    elsewhere = Finding("medication", "medication", 0.9, "other.path", 100, 109, "metformin")
    assert redact("takes Metformin daily", [elsewhere]) == "takes [REDACTED:medication] daily"
    assert redact("nothing here", [elsewhere]) == "nothing here"


def test_redact_url_masks_path_query_and_fragment_and_keeps_the_rest():
    url = "https://www.example.org/conditions/asthma?ref=nav&q=asthma+inhaler&id=42#asthma"
    findings = scan_fields([Field("url", "/conditions/asthma"), Field("q", "asthma inhaler")])
    redacted = redact_url(url, findings)
    assert "asthma" not in redacted.lower()
    assert redacted.startswith("https://www.example.org/")
    assert "ref=nav" in redacted and "id=42" in redacted
    assert redact_url("https://www.example.org/shop/red-shoes?size=42", findings) == "https://www.example.org/shop/red-shoes?size=42"


def test_redact_url_replaces_an_encoded_parameter_whole():
    document = json.dumps({"event": "glucose_logged", "properties": {"glucose": "182 mg/dL"}}).encode()
    url = "http://api.mixpanel.com/track/?data=" + quote(base64.b64encode(document).decode()) + "&ip=1"
    payload = decode_tracker("generic", "GET", url, [], b"")
    findings = scan_tracker(payload)
    assert findings
    assert redact_url(url, findings) == "http://api.mixpanel.com/track/?data=[REDACTED:glucose]&ip=1"


def test_redact_url_on_a_meta_pixel_request():
    query = urlencode(
        {
            "ev": "PageView",
            "dl": "https://portal.example-hospital.org/conditions/type-2-diabetes",
            "cd[search_string]": "HIV PrEP",
        }
    )
    url = "https://www.facebook.com/tr/?" + query
    payload = decode_tracker("meta-pixel", "GET", url, [], b"")
    redacted = redact_url(url, scan_tracker(payload))
    decoded = unquote_plus(redacted).lower()
    assert "diabetes" not in decoded and "hiv" not in decoded and "prep" not in decoded
    assert "ev=PageView" in redacted and "portal.example-hospital.org" in unquote_plus(redacted)


def test_evidence_gives_short_redacted_excerpts():
    text = "Patient reports " + "x" * 100 + " and type 2 diabetes, MRN 00123456, " + "y" * 100
    fields = [Field("note", text)]
    findings = [finding("condition", "note", text, "type 2 diabetes"), finding("mrn", "note", text, "00123456", "identifier")]
    records = evidence(findings, fields)
    assert [record["type"] for record in records] == ["condition", "mrn"]
    for record in records:
        assert set(record) == {"type", "category", "confidence", "path", "excerpt"}
        assert len(record["excerpt"]) <= EXCERPT_CHARS
        assert "diabetes" not in record["excerpt"] and "00123456" not in record["excerpt"]
    assert "[REDACTED:condition]" in records[0]["excerpt"] and "and " in records[0]["excerpt"]
    assert "[REDACTED:mrn]" in records[1]["excerpt"]


def test_evidence_unredacted_shows_raw_context_when_asked():
    text = "glucose reading 182 mg/dL after lunch"
    records = evidence([finding("glucose", "r", text, "182 mg/dL", "vital")], [Field("r", text)], unredacted=True)
    assert records[0]["excerpt"] == text


def test_evidence_without_its_field_shows_only_the_label():
    lost = Finding("ssn", "identifier", 0.9, "gone", 0, 11, "123-45-6780")
    assert evidence([lost], [])[0]["excerpt"] == "[REDACTED:ssn]"
    assert evidence([lost], [], unredacted=True)[0]["excerpt"] == "123-45-6780"


# --- properties: the secret never appears -------------------------------------------------------

SECRET_ALPHABET = string.ascii_letters + string.digits + " -.@"
FILLER_ALPHABET = string.ascii_letters + string.digits + " ,.;:/?=&%-_()[]"


@settings(max_examples=300, deadline=None)
@given(
    st.text(FILLER_ALPHABET, max_size=200),
    st.lists(st.text(SECRET_ALPHABET, min_size=1, max_size=24), min_size=1, max_size=4),
    st.text(FILLER_ALPHABET, max_size=200),
    st.sampled_from(["condition", "medication", "mrn", "email", "glucose", "icd10", "a1c"]),
)
def test_redacted_text_never_contains_a_secret(before, secrets, after, kind):
    text = before + " ".join(secrets) + after
    findings = []
    for secret in secrets:
        start = text.index(secret)
        findings.append(Finding(kind, "condition", 0.9, "p", start, start + len(secret), secret))
    output = without_placeholders(redact(text, findings))
    for secret in secrets:
        assert secret not in output
    for record in evidence(findings, [Field("p", text)]):
        assert len(record["excerpt"]) <= EXCERPT_CHARS
        for secret in secrets:
            assert secret not in without_placeholders(record["excerpt"])


@settings(max_examples=200, deadline=None)
@given(
    st.text(SECRET_ALPHABET, min_size=3, max_size=24),
    st.sampled_from(["q", "cd[search_string]", "dl", "ep.medication"]),
    st.booleans(),
)
def test_redacted_url_never_contains_the_secret(secret, key, in_path):
    assume(secret.lower() not in f"https://tracker.example/collect?v=2&{key}=see".lower())  # the URL's own text
    path = "/" + quote(secret) if in_path else "/collect"
    url = "https://tracker.example/" + path.lstrip("/") + "?" + urlencode({"v": "2", key: f"see {secret} now"})
    findings = [Finding("condition", "condition", 0.9, key, 4, 4 + len(secret), secret)]
    redacted = redact_url(url, findings)
    assert secret not in without_placeholders(unquote_plus(redacted))
    assert secret.lower() not in without_placeholders(unquote_plus(redacted)).lower()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=40))
def test_redact_url_never_raises(url, value):
    redact_url(url, [Finding("condition", "condition", 0.9, "q", 0, len(value), value)])
