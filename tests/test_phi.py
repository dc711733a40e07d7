"""The PHI detector: layer peeling, recognizers, lexicons, scan_http, false-positive traps, speed."""
from __future__ import annotations

import base64
import datetime
import gzip
import json
import re
import time
import zlib
from pathlib import Path
from urllib.parse import quote, unquote

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.paths import PHI_LEXICON_DIR
from sensor.phi import Field, Finding, LayerLimits, is_health_data, peel, request_fields, scan_fields, scan_http, summarize
from sensor.phi.layers import decompress, find_json, split_target
from sensor.phi.lexicon import icd10_codes, read_terms, term_matcher

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def types(findings) -> set[str]:
    return {finding.type for finding in findings}


def scan_one(path: str, value: str, min_confidence: float = 0.5):
    return scan_fields([Field(path, value)], min_confidence)


# --- layers ------------------------------------------------------------------------------------


def test_form_and_percent_and_plus_are_undone_with_key_paths():
    fields = peel("cd%5Bsearch_string%5D=HIV+PrEP&dl=https%3A%2F%2Fh.example.org%2Fconditions%2Fasthma%3Fq%3Dinhaler%2Brefill")
    assert Field("cd[search_string]", "HIV PrEP") in fields
    # A URL value keeps its page at its own path and its query parameters below it.
    assert Field("dl", "https://h.example.org/conditions/asthma") in fields
    assert Field("dl.q", "inhaler refill") in fields


def test_nested_json_is_flattened_to_dotted_paths():
    document = {"data": {"properties": {"medication": "metformin", "doses": [500, 1000], "ok": True, "none": None}}}
    fields = peel(json.dumps(document))
    assert fields == [
        Field("data.properties.medication", "metformin"),
        Field("data.properties.doses.0", "500"),
        Field("data.properties.doses.1", "1000"),
        Field("data.properties.ok", "true"),
    ]


def test_base64_json_and_base64url_and_gzip_inside_base64_are_followed():
    document = json.dumps({"event": "glucose_logged", "properties": {"glucose": "182 mg/dL"}}).encode()
    expected = Field("data.properties.glucose", "182 mg/dL")
    assert expected in peel("data=" + quote(base64.b64encode(document).decode()))
    assert expected in peel("data=" + base64.urlsafe_b64encode(document).decode().rstrip("="))
    assert expected in peel("data=" + quote(base64.b64encode(gzip.compress(document)).decode()))


def test_compressed_bodies_are_inflated():
    body = b"condition=diabetes&medication=insulin"
    for packed in (gzip.compress(body), zlib.compress(body)):
        assert Field("medication", "insulin") in peel(packed)


def test_one_record_per_line_bodies_are_split():
    fields = peel(b"en=page_view&dl=%2Fhome\nen=refill&ep.medication=lisinopril\n")
    assert Field("ep.medication", "lisinopril") in fields
    assert [f.value for f in fields if f.path == "en"] == ["page_view", "refill"]


def test_base64_is_not_followed_into_binary(ocsp_path):
    # An OCSP GET path is base64 DER: binary, so it stays one opaque value (URL escapes undone).
    encoded = ocsp_path.lstrip("/")
    assert peel(encoded) == [Field("", unquote(encoded))]


def test_prose_and_plain_words_are_leaves():
    assert peel("Hello there, this is a note.") == [Field("", "Hello there, this is a note.")]
    assert peel("username") == [Field("", "username")]


def test_multipart_parts_are_peeled_by_name():
    body = (
        b"--XyZ\r\nContent-Disposition: form-data; name=\"ev\"\r\n\r\nPageView\r\n"
        b"--XyZ\r\nContent-Disposition: form-data; name=\"cd[search_string]\"\r\n\r\nbipolar disorder\r\n--XyZ--\r\n"
    )
    fields = request_fields("/tr/", [("Content-Type", "multipart/form-data; boundary=XyZ")], body)
    assert Field("body.ev", "PageView") in fields
    assert Field("body.cd[search_string]", "bipolar disorder") in fields


def test_depth_limit_stops_peeling():
    value = "medication=insulin"
    for _ in range(8):
        value = base64.b64encode(value.encode()).decode()
    fields = peel(value, limits=LayerLimits(max_depth=5))
    assert all(field.value != "insulin" for field in fields)
    assert Field("medication", "insulin") in peel(value, limits=LayerLimits(max_depth=12))


def test_output_cap_bounds_total_characters_and_field_count():
    limits = LayerLimits(max_output=10_000, max_fields=50)
    form = "&".join(f"k{i}={'v' * 40}" for i in range(5000))
    fields = peel(form, limits=limits)
    assert len(fields) <= 50
    assert sum(len(field.value) for field in fields) <= 10_000


def test_decompression_bomb_is_refused_and_honest_data_is_not():
    bomb = gzip.compress(b"\0" * 20_000_000)
    started = time.perf_counter()
    assert decompress(bomb) is None
    assert peel(bomb) == []
    assert time.perf_counter() - started < 2
    assert decompress(gzip.compress(b"a=b&" * 100)) == b"a=b&" * 100


def test_deeply_nested_json_does_not_raise():
    deep = "[" * 100_000 + "]" * 100_000
    peel(deep)
    nested: object = "insulin"
    for _ in range(60):
        nested = {"k": nested}
    (field,) = peel(json.dumps(nested))  # past max_json_nesting the rest goes out whole, as text
    assert "insulin" in field.value and field.path.count("k") == 32


def test_find_json_through_encodings():
    document = {"event": "x", "properties": {"a": 1}}
    text = json.dumps(document)
    assert find_json(text) == document
    assert find_json(quote(text)) == document
    assert find_json(base64.b64encode(text.encode()).decode().replace("+", " ")) == document
    assert find_json(gzip.compress(text.encode())) == document
    assert find_json("not json at all") is None


def test_split_target_forms():
    assert split_target("/g/collect?v=2&en=x#frag") == ("/g/collect", "v=2&en=x")
    assert split_target("http://www.example.com/tr?ev=PageView") == ("/tr", "ev=PageView")
    assert split_target("http://www.example.com?ev=1") == ("/", "ev=1")


# --- recognizers: positives ----------------------------------------------------------------------

POSITIVES = [
    ("mrn", "00123456", "mrn"),
    ("patientId", "A1234567", "mrn"),
    ("note", "MRN: 48213377 seen today", "mrn"),
    ("ssn", "123-45-6780", "ssn"),
    ("note", "SSN 212 55 4321 on file", "ssn"),
    ("dob", "1975-03-14", "dob"),
    ("ud[db]", "19750314", "dob"),
    ("note", "DOB: 03/14/1975", "dob"),
    ("npi", "1234567893", "npi"),
    ("note", "Referring NPI 1234567893", "npi"),
    ("memberId", "XJH123456789", "member_id"),
    ("policyNumber", "P-77120349", "member_id"),
    ("mbi", "1EG4TE5MK73", "mbi"),
    ("note", "Medicare MBI 1EG4-TE5-MK73", "mbi"),
    ("traits.email", "jane.doe@example.com", "email"),
    ("phone", "(617) 555-0142", "phone"),
    ("phone", "6175550142", "phone"),
    ("ud[em]", "8b1a9953c4611296a827abf8c47804d7e6c49c6b33d1d7a2f8a4d4b9e3e1a1c2", "hashed_identifier"),
    ("u_hem", "8b1a9953c4611296a827abf8c47804d7e6c49c6b33d1d7a2f8a4d4b9e3e1a1c2", "hashed_identifier"),
    ("user_data.em", "8b1a9953c4611296a827abf8c47804d7e6c49c6b33d1d7a2f8a4d4b9e3e1a1c2", "hashed_identifier"),
    ("dx", "E11.9", "icd10"),
    ("note", "Diagnosis: F32.9, follow up", "icd10"),
    ("note", "NDC 0002-7510-01 dispensed", "ndc"),
    ("item", "50090-3520-0", "ndc"),
    ("cpt", "99213", "cpt"),
    ("note", "billed CPT 0042T", "cpt"),
    ("loinc", "4548-4", "loinc"),
    ("note", "LOINC 2345-7 result", "loinc"),
    ("reading", "182 mg/dL", "glucose"),
    ("glucose", "182", "glucose"),
    ("note", "fasting 6.1 mmol/L", "glucose"),
    ("note", "BP 128/82 today", "blood_pressure"),
    ("vitals", "140/90 mmHg", "blood_pressure"),
    ("note", "SpO2: 97%", "spo2"),
    ("note", "HbA1c 7.2%", "a1c"),
    ("note", "heart rate 72 bpm", "heart_rate"),
    ("note", "bolus insulin 6 units", "insulin_dose"),
    ("q", "type 2 diabetes", "condition"),
    ("title", "Living with Crohn's disease", "condition"),
    ("ep.medication", "metformin", "medication"),
    ("note", "started Ozempic last week", "medication"),
    ("url.path", "/MyChart/Scheduling", "portal_url"),
    ("url.path", "/find-a-doctor/cardiology", "scheduling_url"),
    ("dl", "https://h.example.org/conditions/asthma", "condition_url"),
    ("url.path", "/pharmacy/refill", "pharmacy_url"),
    ("query.physician", "Jane Smith", "health_param"),
    ("query.provider", "Dr. Jane Smith", "health_param"),
    ("query.reason", "asthma follow-up", "health_param"),
]


@pytest.mark.parametrize(("path", "value", "expected"), POSITIVES)
def test_recognizer_positive(path, value, expected):
    found = scan_one(path, value)
    assert expected in types(found), [(f.type, f.confidence) for f in found]
    for finding in found:
        assert value[finding.start : finding.end] == finding.value


def test_value_is_hidden_from_repr():
    (finding,) = scan_one("ssn", "123-45-6780")
    assert "123-45-6780" not in repr(finding)
    assert finding.value == "123-45-6780"


# --- recognizers: the false-positive traps -------------------------------------------------------


NEGATIVES = [
    ("_", "1700000000000"),
    ("v", "20240115"),
    ("build", "2024-01-15"),
    ("id", "1234567893"),  # Luhn-valid as an NPI, but nothing says it is one
    ("id", "1234567890"),
    ("cid", "1739893711.1700000000"),
    ("uid", "550e8400-e29b-41d4-a716-446655440000"),
    ("ver", "2.14.0"),
    ("v", "1.2.3.4567"),
    ("sid", "3f9a0b7c1d2e4f6a8b9c0d1e2f3a4b5c"),
    ("hash", "8b1a9953c4611296a827abf8c47804d7e6c49c6b33d1d7a2f8a4d4b9e3e1a1c2"),  # hex under no identity key
    ("url.path", "/shop/red-shoes"),
    ("dl", "https://shop.example.com/products/red-shoes?color=red&size=42"),
    ("msg", "Today I went to the store to buy milk, bread and a new pair of running shoes."),
    ("msg", "The meeting moved to 10:30 on 2024-01-15; see release v2.1.0 notes, order 12345."),
    ("msg", "Please call the office between 9 and 5, or write to us."),
    ("zip", "02139-4307"),
    ("price", "129.99"),
    ("ratio", "16/9"),
    ("date", "12/05/2024"),
    ("asset", "logo@2x.png"),
    ("condition", "new"),
    ("reason", "timeout"),
    ("provider", "google"),
    ("tempo", "128 bpm"),
]


@pytest.mark.parametrize(("path", "value"), NEGATIVES)
def test_no_finding_on_ordinary_values(path, value):
    found = scan_one(path, value)
    assert found == [], [(f.type, f.confidence, f.value) for f in found]


def test_context_turns_the_same_number_into_a_finding():
    # The traps above are not blind spots: the same values count once a key or word says what they are.
    assert types(scan_one("npi", "1234567893")) == {"npi"}
    assert types(scan_one("dob", "20240115")) == {"dob"}
    assert types(scan_one("ud[em]", "8b1a9953c4611296a827abf8c47804d7e6c49c6b33d1d7a2f8a4d4b9e3e1a1c2")) == {
        "hashed_identifier"
    }
    assert types(scan_one("heart_rate", "128 bpm")) == {"heart_rate"}


def test_invalid_ssn_areas_are_rejected():
    for value in ("000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000", "111-11-1111"):
        assert scan_one("ssn", value) == []


def test_npi_requires_the_luhn_check():
    assert scan_one("npi", "1234567890") == []


def test_icd10_is_checked_against_the_code_list():
    if icd10_codes() is None:
        pytest.skip("ICD-10-CM code list (simple-icd-10-cm) not installed")
    assert "E119" in icd10_codes()
    assert types(scan_one("dx", "E11.9")) == {"icd10"}
    # right shape, no such code: kept as weak context, not health data on its own
    for code in ("E11.99", "A99.8"):
        (finding,) = scan_one("dx", code)
        assert (finding.type, finding.category) == ("icd10_unlisted", "context")
        assert not is_health_data([finding])


def test_icd10_needs_key_or_context():
    assert scan_one("sku", "E11.9") == []
    assert types(scan_one("note", "dx E11.9")) == {"icd10"}


def test_cpt_and_loinc_need_context_and_loinc_needs_its_check_digit():
    assert scan_one("zip", "99213") == []
    assert scan_one("loinc", "4548-5") == []
    assert scan_one("range", "4548-4") == []


def test_opaque_tokens_cannot_spell_findings(ocsp_path):
    assert scan_one("url.path", ocsp_path) == []
    token = "xQ9HIVz7Kp2MmetforminQ8zR4tY6uI0oP3aS5dF7gH9jK1lZ3xC5vB7nM9"
    assert scan_one("sid", token) == []


def test_ocsp_get_request_raises_nothing(ocsp_path):
    assert scan_http("GET", ocsp_path, [("Host", "ocsp.example-ca.com")], b"", None) == []


# --- terms ----------------------------------------------------------------------------------------


def test_terms_match_whole_words_case_insensitively_longest_first():
    matcher = term_matcher()
    found = [(match.term, match.kind) for match in matcher.find("Type-2-Diabetes, on INSULIN GLARGINE and hivemind")]
    assert found == [("type 2 diabetes", "condition"), ("insulin glargine", "medication")]


def test_condition_plurals_match():
    assert types(scan_one("q", "migraines")) == {"condition"}
    assert types(scan_one("q", "food allergies")) == {"condition"}


def test_stop_list_terms_need_health_context():
    alone = scan_one("msg", "The Great Depression changed everything", min_confidence=0.0)
    assert [f.confidence for f in alone if f.type == "condition"] == [0.35]
    assert scan_one("msg", "The Great Depression changed everything") == []
    assert types(scan_one("q", "depression")) == {"condition"}  # a search key is health context
    assert types(scan_one("cd[search_string]", "HIV PrEP")) == {"condition", "medication"}
    assert scan_one("title", "Meal prep ideas for busy weeks") == []


def test_lexicon_files_are_well_formed():
    for name in ("conditions.txt", "medications.txt", "stoplist.txt"):
        path = PHI_LEXICON_DIR / name
        header = path.read_text(encoding="utf-8").split("\n\n", 1)[0].lower()
        assert "source" in header and "licence" in header, name
    conditions = read_terms(PHI_LEXICON_DIR / "conditions.txt")
    medications = read_terms(PHI_LEXICON_DIR / "medications.txt")
    stop = read_terms(PHI_LEXICON_DIR / "stoplist.txt")
    assert len(conditions) > 200 and len(medications) > 500
    assert set(stop) <= set(conditions) | set(medications)
    assert (PHI_LEXICON_DIR / "README.md").is_file()


# --- summary, threshold, scan_http -----------------------------------------------------------------


def test_summarize_counts_by_type():
    found = scan_fields([Field("q", "asthma"), Field("q2", "diabetes"), Field("email", "a@example.com")])
    assert summarize(found) == {"condition": 2, "email": 1}


def test_is_health_data_threshold():
    assert is_health_data(scan_one("q", "diabetes"))
    assert is_health_data(scan_one("mrn", "00123456"))  # a record number says "patient" on its own
    assert not is_health_data(scan_one("email", "a@example.com"))
    assert not is_health_data(scan_one("url.path", "/MyChart/Authentication/Login"))
    both = scan_fields([Field("email", "a@example.com"), Field("url.path", "/MyChart/Authentication/Login")])
    assert is_health_data(both)
    assert not is_health_data(scan_one("msg", "The Great Depression", min_confidence=0.0))
    assert not is_health_data([])


def test_scan_http_reads_query_referer_and_form_body():
    found = scan_http(
        "POST",
        "/api/intake?visitType=new-patient",
        [("Host", "www.example-hospital.org"), ("Referer", "https://www.example-hospital.org/conditions/asthma")],
        b"email=pat%40example.com&reason=wheezing+and+asthma+flare&dob=1980-02-29",
        "application/x-www-form-urlencoded",
    )
    by_path = {(f.path, f.type) for f in found}
    assert ("query.visitType", "health_param") in by_path
    assert ("header.referer", "condition_url") in by_path
    assert ("body.email", "email") in by_path
    assert ("body.reason", "condition") in by_path
    assert ("body.dob", "dob") in by_path
    assert is_health_data(found)


def test_scan_http_reads_gzip_json_body():
    body = gzip.compress(json.dumps({"user": {"mrn": "00123456"}, "readings": [{"glucose": 182}]}).encode())
    found = scan_http("POST", "/v1/sync", [], body, "application/json")
    assert types(found) == {"mrn", "glucose"}


def test_scan_http_connect_target_is_not_a_path():
    assert scan_http("CONNECT", "mychart.example.org:443", [], b"", None) == []


# --- real captures: ordinary traffic raises no health data ----------------------------------------

_REQUEST_LINE = re.compile(rb"(GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH|CONNECT) (\S+) HTTP/1\.[01]\r?\n")


def _network_layer(linktype: int, frame: bytes):
    if linktype == dpkt.pcap.DLT_EN10MB:
        return dpkt.ethernet.Ethernet(frame).data
    if linktype == dpkt.pcap.DLT_NULL:
        return dpkt.loopback.Loopback(frame).data
    if linktype == dpkt.pcap.DLT_LINUX_SLL:
        return dpkt.sll.SLL(frame).data
    if linktype == 276:  # LINKTYPE_LINUX_SLL2
        return dpkt.sll2.SLL2(frame).data
    return None


def _corpus_requests(path: Path):
    """HTTP requests of a capture as (method, target, headers, body): a plain test-side extraction."""
    streams: dict[tuple, dict[int, bytes]] = {}
    with path.open("rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        for _, frame in reader:
            try:
                packet = _network_layer(reader.datalink(), frame)
            except (dpkt.UnpackError, IndexError):
                continue
            segment = getattr(packet, "data", None)
            if isinstance(segment, dpkt.tcp.TCP) and segment.data:
                key = (bytes(packet.src), segment.sport, bytes(packet.dst), segment.dport)
                streams.setdefault(key, {}).setdefault(segment.seq, bytes(segment.data))
    for segments in streams.values():
        data = b"".join(segments[seq] for seq in sorted(segments))
        starts = list(_REQUEST_LINE.finditer(data))
        for index, match in enumerate(starts):
            end = starts[index + 1].start() if index + 1 < len(starts) else len(data)
            head, _, body = data[match.end() : end].partition(b"\r\n\r\n")
            headers = []
            for line in head.split(b"\r\n"):
                name, colon, value = line.partition(b":")
                if colon:
                    headers.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
            length = next((int(v) for k, v in headers if k.lower() == "content-length" and v.isdigit()), None)
            yield match.group(1).decode(), match.group(2).decode("latin-1"), headers, body[:length]


def test_corpus_http_requests_are_not_health_data():
    if not (CORPUS / "expected.jsonl").exists():
        pytest.skip("shared corpus not present beside the repository")
    seen = 0
    findings = []
    for capture in sorted(CORPUS.glob("*.pcap")):
        for method, target, headers, body in _corpus_requests(capture):
            seen += 1
            found = scan_http(method, target, headers, body, None)
            assert not is_health_data(found), (capture.name, target, summarize(found))
            findings.extend(found)
    assert seen >= 20
    # The one personal datum in these captures is a form field "mail=test%40oisf.net": found, as an identifier only.
    assert {(f.type, f.path) for f in findings} == {("email", "body.mail")}


# --- properties: nothing escapes, output and time stay bounded ------------------------------------

SEED_PAYLOADS = [
    b"ev=PageView&dl=https%3A%2F%2Fh.example.org%2Fconditions%2Fasthma&cd%5Bsearch_string%5D=HIV+PrEP",
    json.dumps({"event": "x", "properties": {"glucose": "182 mg/dL", "meds": ["metformin"]}}).encode(),
    b"data=" + base64.b64encode(b'{"event":"e","properties":{"mrn":"00123456"}}'),
    gzip.compress(b'{"a":[{"b":"c=d&e=f"}]}'),
    b"en=page_view&dl=%2F\nen=refill&ep.medication=lisinopril",
]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEED_PAYLOADS)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(("flip", "delete", "insert", "duplicate")))
        if operation == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[position:position] = data[position : position + draw(st.integers(1, 64))]
    return bytes(data)


def _assert_bounded_fields(fields: list[Field]) -> None:
    assert len(fields) <= LayerLimits().max_fields
    assert sum(len(field.value) for field in fields) <= LayerLimits().max_output
    assert all(isinstance(field.path, str) and isinstance(field.value, str) for field in fields)


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.binary(max_size=2048), mutated()))
def test_peel_and_scan_never_raise_on_bytes(data):
    fields = peel(data)
    _assert_bounded_fields(fields)
    found = scan_fields(fields)
    assert all(0.0 <= f.confidence <= 1.0 and 0 <= f.start <= f.end for f in found)
    summarize(found)
    is_health_data(found)


@settings(max_examples=250, deadline=None)
@given(st.text(max_size=1024), st.text(max_size=64))
def test_peel_and_scan_never_raise_on_text(text, path):
    fields = peel(text, path)
    _assert_bounded_fields(fields)
    for finding in scan_fields(fields, min_confidence=0.0):
        # Every finding points at its own text inside one of the fields it came from.
        assert any(f.path == finding.path and f.value[finding.start : finding.end] == finding.value for f in fields)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "CONNECT", "PUT"]),
    st.text(max_size=200),
    st.lists(st.tuples(st.sampled_from(["Host", "Referer", "Content-Type", "X-Any"]), st.text(max_size=80)), max_size=4),
    st.one_of(st.binary(max_size=1024), mutated()),
    st.one_of(
        st.none(),
        st.sampled_from(
            ["application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=XyZ"]
        ),
    ),
)
def test_scan_http_never_raises(method, target, headers, body, content_type):
    found = scan_http(method, target, headers, body, content_type)
    assert all(f.confidence >= 0.5 for f in found)


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=1, max_size=1024))
def test_64k_random_bodies_scan_in_bounded_time(seed):
    data = (seed * (65536 // len(seed) + 1))[:65536]
    started = time.perf_counter()
    scan_http("POST", "/collect", [], data, None)
    scan_http("POST", "/collect", [], base64.b64encode(data)[:65536], "text/plain")
    assert time.perf_counter() - started < 1.0


# --- speed -------------------------------------------------------------------------------------------


def _bodies_64k() -> dict[str, tuple[bytes, str]]:
    words = (
        "the patient visited the clinic and reported feeling better after taking metformin 500 mg "
        "glucose 182 mg/dL order 12345 id 1234567890 https://example.org/a/b?c=d"
    ).split()
    prose = " ".join(words[i % len(words)] for i in range(12000)).encode()[:65536]
    events = [{"event": "e", "properties": {f"k{j}": words[(i + j) % len(words)] for j in range(20)}} for i in range(150)]
    return {
        "text": (prose, "text/plain"),
        "json": (json.dumps({"batch": events}).encode()[:65536], "application/json"),
        "form": (
            "&".join(f"k{i}={words[i % len(words)]}" for i in range(4000)).encode()[:65536],
            "application/x-www-form-urlencoded",
        ),
        "base64": (base64.b64encode(bytes(range(256)) * 192)[:65536], "text/plain"),
    }


@pytest.mark.parametrize("kind", ["text", "json", "form", "base64"])
def test_scanning_a_64k_body_is_fast(kind):
    body, content_type = _bodies_64k()[kind]
    scan_http("POST", "/collect", [], body, content_type)  # lexicon and code list loaded once, before timing
    best = min(_timed(lambda: scan_http("POST", "/collect", [], body, content_type)) for _ in range(3))
    # Typically 12-30 ms on one core; the bound leaves room for a busy shared CI machine.
    assert best < 0.1, f"{kind}: {best * 1000:.1f} ms"


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ocsp_path() -> str:
    """A real OCSP GET request path: a DER OCSPRequest, base64, URL-escaped (RFC 6960 appendix A)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import ocsp
    from cryptography.x509.oid import NameOID

    def certificate(subject: str, key, issuer_name: str, issuer_key, serial: int) -> x509.Certificate:
        now = datetime.datetime(2024, 1, 15, tzinfo=datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=90))
            .sign(issuer_key, hashes.SHA256())
        )

    issuer_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    issuer = certificate("Example CA", issuer_key, "Example CA", issuer_key, 1)
    leaf = certificate("www.example.org", leaf_key, "Example CA", issuer_key, 0x1234567893ABCDEF)
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    der = request.public_bytes(serialization.Encoding.DER)
    path = "/" + quote(base64.b64encode(der).decode(), safe="")
    assert path.startswith("/M")  # base64 of a DER SEQUENCE, like every OCSP GET path
    return path


def test_repeated_fields_scan_the_same_whether_cached_or_not() -> None:
    from sensor.phi import recognizers

    short = Field("query.q", "metformin 500mg for type 2 diabetes")
    long = Field("body.notes", "patient on metformin; " + "x" * recognizers._CACHED_VALUE_CHARS)
    longer = Field("body.notes", "patient on metformin; " + "x" * recognizers._CACHED_LONG_VALUE_CHARS)
    for item in (short, long, longer):
        first, again = recognizers._scan_field(item), recognizers._scan_field(item)
        assert first == again == recognizers._scan_field_uncached(item)
        assert isinstance(first, tuple)  # shared between callers, so it must not be mutable
        assert any(finding.type == "medication" for finding in first)
    hits = recognizers._scan_short_field.cache_info().hits
    recognizers._scan_field(short)
    assert recognizers._scan_short_field.cache_info().hits == hits + 1
    assert recognizers._scan_short_field.cache_info().maxsize == recognizers._CACHED_FIELDS
    hits = recognizers._scan_long_field.cache_info().hits
    assert recognizers._scan_field(Field("x.notes", long.value)) == tuple(
        Finding(f.type, f.category, f.confidence, "x.notes", f.start, f.end, f.value) for f in recognizers._scan_field(long)
    )
    assert recognizers._scan_long_field.cache_info().hits == hits + 2
