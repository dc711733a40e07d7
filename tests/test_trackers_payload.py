"""Tracker payload decoders: each vendor's request shape in, page/event/parameters and PHI out."""
from __future__ import annotations

import base64
import gzip
import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.phi import DECODERS, Field, TrackerPayload, decode_tracker, is_health_data, scan_tracker, summarize

FORM = [("Content-Type", "application/x-www-form-urlencoded")]
JSON = [("Content-Type", "application/json")]
TEXT = [("Content-Type", "text/plain;charset=UTF-8")]
SHA256_EMAIL = "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514"


def params(payload: TrackerPayload) -> dict[str, list[str]]:
    collected: dict[str, list[str]] = {}
    for field in payload.params:
        collected.setdefault(field.path, []).append(field.value)
    return collected


def found(payload: TrackerPayload) -> set[tuple[str, str]]:
    return {(finding.type, finding.path) for finding in scan_tracker(payload)}


# --- Meta Pixel ---------------------------------------------------------------------------------

META_QUERY = {
    "id": "1234567890123456",
    "ev": "PageView",
    "dl": "https://portal.example-hospital.org/conditions/type-2-diabetes",
    "rl": "https://www.google.com/",
    "if": "false",
    "ts": "1700000000000",
    "cd[search_string]": "HIV PrEP",
    "ud[em]": SHA256_EMAIL,
    "sw": "1920",
    "sh": "1080",
    "v": "2.9.140",
    "r": "stable",
    "_": "1700000000123",
}


def test_meta_pixel_get():
    payload = decode_tracker("meta-pixel", "GET", "/tr/?" + urlencode(META_QUERY), [], b"")
    assert payload is not None
    assert (payload.decoder, payload.event, payload.events) == ("meta-pixel", "PageView", ("PageView",))
    assert payload.page_url == META_QUERY["dl"]
    assert payload.referrer == "https://www.google.com/"
    assert params(payload)["cd[search_string]"] == ["HIV PrEP"]
    assert {("condition_url", "dl"), ("condition", "dl"), ("condition", "cd[search_string]"),
            ("medication", "cd[search_string]"), ("hashed_identifier", "ud[em]")} <= found(payload)  # fmt: skip
    # Pixel id, timestamps, screen size, version and cache buster are numbers without meaning here.
    assert all(finding.path in ("dl", "cd[search_string]", "ud[em]") for finding in scan_tracker(payload))
    assert is_health_data(scan_tracker(payload))


def test_meta_pixel_post_form_and_multipart_agree_with_get():
    by_form = decode_tracker("meta-pixel", "POST", "/tr/", FORM, urlencode(META_QUERY).encode())
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in META_QUERY.items()
    )
    by_multipart = decode_tracker(
        "meta-pixel",
        "POST",
        "/tr/",
        [("Content-Type", f"multipart/form-data; boundary={boundary}")],
        parts + f"--{boundary}--\r\n".encode(),
    )
    by_get = decode_tracker("meta-pixel", "GET", "/tr/?" + urlencode(META_QUERY), [], b"")
    assert by_form == by_get
    assert by_multipart is not None
    assert (by_multipart.event, by_multipart.page_url, by_multipart.params) == (by_get.event, by_get.page_url, by_get.params)


def test_meta_schedule_event_on_find_a_doctor_page():
    query = urlencode({"id": "1", "ev": "Schedule", "dl": "https://www.example-health.org/find-a-doctor/dr-jane-smith"})
    payload = decode_tracker("meta-pixel", "GET", "/tr?" + query, [], b"")
    assert {("health_event", "ev"), ("scheduling_url", "dl")} <= found(payload)


# --- Google Analytics -----------------------------------------------------------------------------


def test_ga4_query_only():
    query = urlencode(
        {"v": "2", "tid": "G-ABC123", "cid": "1739893711.1700000000", "en": "view_item", "ep.medication": "metformin",
         "dl": "https://pharmacy.example.org/refill", "dt": "Refill your prescription", "_p": "1700000000"}
    )  # fmt: skip
    payload = decode_tracker("ga4", "GET", "/g/collect?" + query, [], b"")
    assert (payload.event, payload.page_url, payload.title) == (
        "view_item",
        "https://pharmacy.example.org/refill",
        "Refill your prescription",
    )
    assert {("medication", "ep.medication"), ("pharmacy_url", "dl")} <= found(payload)


def test_ga4_batched_body_one_event_per_line():
    query = urlencode({"v": "2", "tid": "G-ABC123", "cid": "555.666", "dl": "https://clinic.example.org/", "dr": "https://www.bing.com/"})
    body = b"en=page_view&_et=10\nen=medication_added&ep.medication=metformin&epn.dose_mg=500\nen=scroll&epn.percent_scrolled=90"
    payload = decode_tracker("ga4", "POST", "/g/collect?" + query, TEXT, body)
    assert payload.events == ("page_view", "medication_added", "scroll")
    assert payload.event == "page_view"
    assert payload.referrer == "https://www.bing.com/"
    assert params(payload)["ep.medication"] == ["metformin"]
    assert {("medication", "ep.medication"), ("health_event", "en")} <= found(payload)


def test_universal_analytics_collect_and_batch():
    hit = urlencode({"v": "1", "tid": "UA-1-1", "cid": "1.2", "t": "event", "ec": "portal", "ea": "appointment_request",
                     "el": "cardiology", "dh": "www.example-hospital.org", "dp": "/appointments",
                     "dt": "Request an appointment"})  # fmt: skip
    single = decode_tracker("ua", "GET", "/collect?" + hit, [], b"")
    assert single.event == "appointment_request"
    assert single.page_url == "www.example-hospital.org/appointments"
    page_view = urlencode({"v": "1", "tid": "UA-1-1", "cid": "1.2", "t": "pageview", "dl": "https://www.example-hospital.org/conditions/lupus"})
    batch = decode_tracker("ua", "POST", "/batch", TEXT, f"{page_view}\n{hit}".encode())
    assert batch.events == ("pageview", "appointment_request")
    assert batch.page_url == "https://www.example-hospital.org/conditions/lupus"
    assert ("condition", "dl") in found(batch)


# --- Mixpanel -------------------------------------------------------------------------------------

MIXPANEL_EVENT = {
    "event": "glucose_logged",
    "properties": {
        "token": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "distinct_id": "$device:18c0a1b2c3d4e5-0f1e2d3c4b5a6978",
        "time": 1700000000123,
        "$insert_id": "x8y7z6w5v4u3t2s1",
        "$current_url": "https://app.meditrack.example/log",
        "glucose": "182 mg/dL",
        "medications": ["insulin glargine", "metformin 500 mg"],
    },
}


def _mixpanel_expectations(payload: TrackerPayload) -> None:
    assert payload.event == "glucose_logged"
    assert payload.page_url == "https://app.meditrack.example/log"
    assert params(payload)["properties.medications.0"] == ["insulin glargine"]
    assert {("glucose", "properties.glucose"), ("medication", "properties.medications.0"),
            ("medication", "properties.medications.1"), ("health_event", "event")} <= found(payload)  # fmt: skip
    assert is_health_data(scan_tracker(payload))


def test_mixpanel_base64_data_in_form_body_and_query():
    data = base64.b64encode(json.dumps(MIXPANEL_EVENT).encode()).decode()
    _mixpanel_expectations(decode_tracker("mixpanel", "POST", "/track", FORM, f"data={quote(data)}".encode()))
    # Older SDKs put it in the query, often with "+" left unescaped (it then reads as a space).
    _mixpanel_expectations(decode_tracker("mixpanel", "GET", f"/track/?data={data}&ip=1&_=1700000000000", [], b""))


def test_mixpanel_url_encoded_json_array_and_raw_json_body():
    batch = json.dumps([MIXPANEL_EVENT, {"event": "screen_view", "properties": {"screen": "home"}}])
    by_form = decode_tracker("mixpanel", "POST", "/track/?verbose=1", FORM, ("data=" + quote(batch)).encode())
    _mixpanel_expectations(by_form)
    assert by_form.events == ("glucose_logged", "screen_view")
    _mixpanel_expectations(decode_tracker("mixpanel", "POST", "/import", JSON, batch.encode()))


def test_mixpanel_engage_profile_update():
    update = {"$token": "abc", "$distinct_id": "u-42", "$set": {"$email": "pat@example.com", "condition": "hypothyroidism"}}
    payload = decode_tracker("mixpanel", "POST", "/engage", FORM, ("data=" + quote(json.dumps(update))).encode())
    assert payload.event is None
    assert {("email", "$set.$email"), ("condition", "$set.condition")} <= found(payload)


# --- Segment, Amplitude, TikTok -----------------------------------------------------------------


def test_segment_batch_with_traits_email():
    batch = {
        "batch": [
            {"type": "identify", "userId": "u-1", "traits": {"email": "jane.doe@example.com", "plan": "gold"}},
            {"type": "track", "event": "Appointment Booked", "properties": {"specialty": "oncology"},
             "context": {"page": {"url": "https://www.example-health.org/appointments/confirm", "title": "Confirmed",
                                  "referrer": "https://www.example-health.org/find-a-doctor"}}},
        ],
        "writeKey": "wk_123",
    }  # fmt: skip
    payload = decode_tracker("segment", "POST", "/v1/batch", JSON, json.dumps(batch).encode())
    assert payload.events == ("identify", "Appointment Booked")
    assert payload.page_url == "https://www.example-health.org/appointments/confirm"
    assert payload.title == "Confirmed"
    assert params(payload)["traits.email"] == ["jane.doe@example.com"]
    assert {("email", "traits.email"), ("condition", "properties.specialty"), ("health_event", "event")} <= found(payload)
    assert is_health_data(scan_tracker(payload))


def test_segment_single_page_call():
    message = {"type": "page", "name": "Home", "properties": {"url": "https://shop.example.com/", "path": "/"}}
    payload = decode_tracker("segment", "POST", "/v1/p", JSON, json.dumps(message).encode())
    assert (payload.event, payload.page_url) == ("page", "https://shop.example.com/")
    assert scan_tracker(payload) == []


def test_amplitude_v2_json_and_legacy_form():
    body = {
        "api_key": "k",
        "events": [
            {"event_type": "symptom_checked", "device_id": "d-1",
             "event_properties": {"symptom": "chest pain", "result": "angina"},
             "user_properties": {"email": "pat@example.com"}},
            {"event_type": "[Amplitude] Page Viewed", "event_properties": {"[Amplitude] Page URL": "https://h.example.org/symptom-checker"}},
        ],
    }  # fmt: skip
    payload = decode_tracker("amplitude", "POST", "/2/httpapi", JSON, json.dumps(body).encode())
    assert payload.events == ("symptom_checked", "[Amplitude] Page Viewed")
    assert payload.page_url == "https://h.example.org/symptom-checker"
    assert {("condition", "event_properties.result"), ("email", "user_properties.email"),
            ("health_param", "event_properties.symptom"), ("health_event", "event_type")} <= found(payload)  # fmt: skip
    legacy = decode_tracker("amplitude", "POST", "/", FORM, ("client=k&e=" + quote(json.dumps(body["events"]))).encode())
    assert legacy.events == payload.events
    # The v2 envelope's own keys (api_key) are parameters too; the events' fields are the same.
    assert Field("api_key", "k") in payload.params
    assert [f for f in payload.params if f.path != "api_key"] == list(legacy.params)


def test_tiktok_pixel_json():
    body = {
        "event": "Search",
        "event_id": "e-1",
        "context": {"pixel": {"code": "C123"}, "page": {"url": "https://www.example-clinic.org/search?q=ivf", "referrer": ""},
                    "user": {"email": SHA256_EMAIL}},
        "properties": {"query": "ivf cost"},
    }  # fmt: skip
    payload = decode_tracker("tiktok", "POST", "/api/v2/pixel", JSON, json.dumps(body).encode())
    assert (payload.event, payload.page_url) == ("Search", "https://www.example-clinic.org/search?q=ivf")
    assert {
        ("hashed_identifier", "context.user.email"),
        ("condition", "properties.query"),
        ("condition", "context.page.url.q"),
    } <= found(payload)


# --- query-string pixels --------------------------------------------------------------------------


def test_bing_uet():
    query = urlencode({"ti": "123", "evt": "custom", "ea": "book_appointment", "el": "dermatology", "p": "https://h.example.org/appointments",
                       "r": "https://www.bing.com/", "tl": "Book | Psoriasis clinic", "kw": "psoriasis doctor"})  # fmt: skip
    payload = decode_tracker("bing-uet", "GET", "/action/0?" + query, [], b"")
    assert (payload.event, payload.page_url, payload.referrer, payload.title) == (
        "book_appointment", "https://h.example.org/appointments", "https://www.bing.com/", "Book | Psoriasis clinic")  # fmt: skip
    assert {("condition", "tl"), ("condition", "kw"), ("scheduling_url", "p")} <= found(payload)


def test_linkedin_query_and_json():
    by_query = decode_tracker(
        "linkedin",
        "GET",
        "/collect?" + urlencode({"pid": "1", "fmt": "gif", "url": "https://h.example.org/conditions/copd"}),
        [],
        b"",
    )
    assert by_query.page_url == "https://h.example.org/conditions/copd"
    assert ("condition", "url") in found(by_query)
    by_json = decode_tracker("linkedin", "POST", "/wa/", JSON, json.dumps({"pids": [1], "pageUrl": "https://h.example.org/mychart/login"}).encode())
    assert by_json.page_url == "https://h.example.org/mychart/login"
    assert ("portal_url", "pageUrl") in found(by_json)


def test_snap_pixel():
    query = urlencode({"pid": "p-1", "ev": "PAGE_VIEW", "pl": "https://h.example.org/behavioral-health/depression", "rf": "",
                       "u_hem": SHA256_EMAIL, "e_ss": "bipolar disorder"})  # fmt: skip
    payload = decode_tracker("snap", "POST", "/p", FORM, query.encode())
    assert (payload.event, payload.page_url) == ("PAGE_VIEW", "https://h.example.org/behavioral-health/depression")
    assert {("hashed_identifier", "u_hem"), ("condition", "e_ss"), ("condition", "pl")} <= found(payload)


def test_pinterest_tag():
    query = urlencode({"tid": "26", "event": "search", "ed": json.dumps({"search_query": "adhd medication"}),
                       "pd": json.dumps({"em": SHA256_EMAIL}),
                       "ad": json.dumps({"loc": "https://h.example.org/search", "ref": "https://x.example/"})})  # fmt: skip
    payload = decode_tracker("pinterest", "GET", "/v3/?" + query, [], b"")
    assert (payload.event, payload.page_url, payload.referrer) == ("search", "https://h.example.org/search", "https://x.example/")
    assert {("condition", "ed.search_query"), ("hashed_identifier", "pd.em")} <= found(payload)


def test_twitter_pixel():
    query = urlencode({"txn_id": "o1", "p_id": "Twitter", "tw_document_href": "https://h.example.org/prep/hiv-prevention",
                       "events": json.dumps([["pageview", {}]]), "tw_iframe_status": "0"})  # fmt: skip
    payload = decode_tracker("twitter", "GET", "/i/adsct?" + query, [], b"")
    assert (payload.event, payload.page_url) == ("pageview", "https://h.example.org/prep/hiv-prevention")
    assert ("condition", "tw_document_href") in found(payload)


def test_generic_peels_everything():
    rx = {"drug": "sertraline", "ndc": "0049-4960-50"}
    document = {"event": "refill_requested", "url": "https://h.example.org/x", "rx": rx}
    inner = base64.b64encode(gzip.compress(json.dumps(document).encode())).decode()
    payload = decode_tracker("generic", "POST", "/ingest?src=web", FORM, ("payload=" + quote(inner)).encode())
    assert params(payload)["payload.rx.drug"] == ["sertraline"]
    assert {("medication", "payload.rx.drug"), ("ndc", "payload.rx.ndc")} <= found(payload)
    by_json = decode_tracker("generic", "POST", "/ingest", JSON, json.dumps({"event_name": "signup", "page_url": "https://a.example/"}).encode())
    assert (by_json.event, by_json.page_url) == ("signup", "https://a.example/")


# --- negatives ------------------------------------------------------------------------------------


def test_unknown_decoder_preflight_and_empty_requests_give_none():
    assert decode_tracker("no-such-vendor", "GET", "/tr?ev=PageView", [], b"") is None
    assert decode_tracker("meta-pixel", "OPTIONS", "/tr?ev=PageView", [], b"") is None
    assert decode_tracker("meta-pixel", "GET", "/tr/", [], b"") is None
    assert decode_tracker("segment", "POST", "/v1/t", JSON, b"") is None


def test_clean_shop_pageview_has_no_health_data():
    query = urlencode({"id": "1234567893", "ev": "PageView", "dl": "https://shop.example.com/shop/red-shoes?size=42",
                       "rl": "https://shop.example.com/", "ts": "1700000000000", "v": "20240115",
                       "_": "1700000000000"})  # fmt: skip
    payload = decode_tracker("meta-pixel", "GET", "/tr/?" + query, [], b"")
    assert scan_tracker(payload) == []
    assert summarize(scan_tracker(payload)) == {}


def test_every_documented_decoder_is_registered():
    assert set(DECODERS) == {"meta-pixel", "ga4", "ua", "mixpanel", "posthog", "segment", "amplitude", "bing-uet", "linkedin",
                             "tiktok", "snap", "pinterest", "twitter", "generic"}  # fmt: skip


# --- properties -------------------------------------------------------------------------------------

SEED_BODIES = [
    urlencode(META_QUERY).encode(),
    json.dumps(MIXPANEL_EVENT).encode(),
    b"data=" + base64.b64encode(json.dumps(MIXPANEL_EVENT).encode()),
    b"en=page_view&_et=10\nen=medication_added&ep.medication=metformin",
    json.dumps({"batch": [{"type": "track", "event": "x", "traits": {"email": "a@b.co"}}]}).encode(),
    json.dumps({"events": [{"event_type": "x", "event_properties": {"a": "b"}}]}).encode(),
]


@st.composite
def mutated_body(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEED_BODIES)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[position] ^= draw(st.integers(1, 255))
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=12))
    return bytes(data)


def _check(payload: TrackerPayload | None) -> None:
    if payload is None:
        return
    assert isinstance(payload, TrackerPayload)
    assert len(payload.events) <= 256 and len(payload.params) <= 4096
    assert all(isinstance(field, Field) for field in payload.params)
    assert payload.event is None or payload.event == payload.events[0]
    for finding in scan_tracker(payload):
        assert 0.5 <= finding.confidence <= 1.0


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(DECODERS)),
    st.sampled_from(["GET", "POST"]),
    st.text(max_size=300),
    st.sampled_from([[], FORM, JSON, TEXT, [("Content-Type", "multipart/form-data; boundary=b")]]),
    st.one_of(st.binary(max_size=1024), mutated_body()),
)
def test_decoders_never_raise(decoder, method, target, headers, body):
    _check(decode_tracker(decoder, method, target, headers, body))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(DECODERS)), mutated_body())
def test_decoders_never_raise_on_mutated_query(decoder, body):
    _check(decode_tracker(decoder, "GET", "/collect?" + body.decode("latin-1"), [], b""))


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_64k_payload_decodes_in_bounded_time(decoder):
    import time

    events = [dict(MIXPANEL_EVENT, event=f"e{i}") for i in range(200)]
    body = json.dumps(events).encode()[:65536]
    started = time.perf_counter()
    _check(decode_tracker(decoder, "POST", "/collect?" + urlencode(META_QUERY), JSON, body))
    assert time.perf_counter() - started < 1.0
