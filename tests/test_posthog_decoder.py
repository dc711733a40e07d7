"""The PostHog decoder on every body PostHog's clients send (JSON event, list, batch, feature-flag
request, data= as base64 or lz-string, gzip) and the bounded lz-string decompressor under it,
whose vectors come from the npm lz-string package (1.5.0, compressToBase64)."""
from __future__ import annotations

import base64
import gzip
import json
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from sensor.phi.lzstring import decompress_from_base64
from sensor.phi.trackers import decode_tracker, scan_tracker

EVENT = {"event": "symptom_checked", "distinct_id": "u-77", "properties": {
    "$current_url": "https://clinic.example/symptoms", "$referrer": "https://search.example/", "title": "Symptoms",
    "medication": "sertraline", "dx": "F32.9"}}
# lz-string 1.5.0 compressToBase64 of a JSON event and of a short repeated text
LZ_EVENT = ("N4IgpgbmB2AuIC4QBIAOBDA5pAlmA7iADQioBOA9qmGbHgM6KjIDGArmWTLAPocA2iEAAtYsVPQQB6Kagq10/AHRgAHugC2qfmCk"
            "sK0ACY46B+lOE4IxENAqwwQlugBmAS4AEgXg3AAHsgAvv5AA")


def decode(target: str, body: bytes, content_type: str = "application/json"):
    return decode_tracker("posthog", "POST", target, [("Content-Type", content_type)], body)


def test_single_event_list_and_batch_bodies() -> None:
    for target, body in (
        ("/capture/", EVENT),
        ("/e/", [EVENT, {**EVENT, "event": "$pageview"}]),
        ("/batch/", {"api_key": "phc_x", "batch": [EVENT]}),
        ("/i/v0/e/", EVENT),
    ):
        payload = decode(target, json.dumps(body).encode())
        assert payload.event == "symptom_checked"
        assert payload.page_url == "https://clinic.example/symptoms"
        assert payload.referrer == "https://search.example/"
        assert payload.title == "Symptoms"
        assert {"medication", "icd10"} <= {f.type for f in scan_tracker(payload)}


def test_feature_flag_request_carries_person_properties() -> None:
    body = {
        "token": "phc_x",
        "distinct_id": "u-77",
        "person_properties": {"email": "jane@example.com", "condition": "type 1 diabetes"},
    }
    payload = decode("/flags/?v=2", json.dumps(body).encode())
    assert payload.event is None
    fields = {field.path: field.value for field in payload.params}
    assert fields["person_properties.email"] == "jane@example.com"
    assert "condition" in {f.type for f in scan_tracker(payload)}


def test_compression_parameter_and_bodies() -> None:
    text = json.dumps([EVENT])
    as_form = "application/x-www-form-urlencoded"
    gz = decode("/e/?compression=gzip-js&ver=1.2", gzip.compress(text.encode()), "text/plain")
    b64 = decode("/e/?compression=base64", b"data=" + quote(base64.b64encode(text.encode()).decode()).encode(), as_form)
    lz = decode("/e/?compression=lz64", b"data=" + quote(LZ_EVENT).encode(), as_form)
    for payload in (gz, b64):
        assert payload.event == "symptom_checked"
    assert lz.event == "$pageview"
    assert lz.page_url == "https://portal.example/conditions/hiv"
    assert {"condition_url"} <= {f.type for f in scan_tracker(lz)}


def test_lz_string_vectors() -> None:
    assert decompress_from_base64("IYI17SKA") == "abababababababab"
    assert json.loads(decompress_from_base64(LZ_EVENT))["properties"]["note"] == "café \U0001F600"
    assert decompress_from_base64("") is None
    assert decompress_from_base64("not lz at all!") is None


def test_lz_string_output_is_bounded() -> None:
    assert decompress_from_base64(LZ_EVENT, max_output=20) is None


@given(st.text(max_size=300))
def test_lz_string_never_raises(text: str) -> None:
    result = decompress_from_base64(text, max_output=4096)
    assert result is None or (isinstance(result, str) and len(result) <= 4096 * 2)


@given(st.binary(max_size=400), st.sampled_from(["gzip-js", "lz64", "base64", ""]))
def test_posthog_decoder_never_raises(body: bytes, compression: str) -> None:
    decode(f"/e/?compression={compression}", body, "application/x-www-form-urlencoded")
