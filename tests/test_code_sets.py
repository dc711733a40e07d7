"""Current code sets: ICD-10-CM of FY2026 (the simple-icd-10-cm code list, April 2026 release),
so codes added since 2022 count; a well-formed code the list lacks is kept as weak context, never
dropped; and codes sent in plaintext to a tracker raise what they must."""
from __future__ import annotations

import base64
import json

import pytest

from sensor.config import parse_config
from sensor.detect.engine import DetectionEngine
from sensor.enrich.vendors import VendorCatalog, registered_domain
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.phi import Field, is_health_data, scan_fields
from sensor.phi.lexicon import icd10_codes, icd10_release
from sensor.records import Flow, HttpRequest

NEW_CODES = ("U07.1", "U09.9", "M35.81", "E11.A")  # COVID-19, post COVID-19, MIS, T2DM in remission
CONFIG = "sensor: {name: t}\nphi_hosts: [10.20.0.0/16]\n"

pytestmark = pytest.mark.skipif(icd10_codes() is None, reason="simple-icd-10-cm not installed")


def test_the_code_list_is_fy2026_or_later() -> None:
    assert icd10_release() >= "2025-10"  # FY2026 took effect on 1 October 2025
    assert all(code.replace(".", "") in icd10_codes() for code in NEW_CODES)


@pytest.mark.parametrize("code", NEW_CODES)
def test_new_codes_are_clinical_codes(code: str) -> None:
    findings = scan_fields([Field("properties.dx", code)])
    assert [(f.type, f.category) for f in findings] == [("icd10", "clinical_code")]
    assert is_health_data(findings)


def test_a_well_formed_code_missing_from_the_list_is_kept_as_context() -> None:
    (finding,) = scan_fields([Field("dx", "E11.Z9")])
    assert (finding.type, finding.category) == ("icd10_unlisted", "context")
    assert not is_health_data([finding])
    with_identifier = scan_fields([Field("dx", "E11.Z9"), Field("email", "jane.doe@example.com")])
    assert is_health_data(with_identifier)  # context next to an identifier


@pytest.fixture(scope="module")
def engine() -> DetectionEngine:
    config = parse_config(CONFIG, "t")
    events = EventBuilder("t", registered_domain)
    return DetectionEngine(config.build_policy(VendorCatalog.load()), AlertBuilder(events), immediate=False)


@pytest.mark.parametrize("code", NEW_CODES)
def test_code_in_plaintext_to_mixpanel_raises_plaintext_phi_and_tracker_payload(engine: DetectionEngine, code: str) -> None:
    event = {"event": "visit", "properties": {"token": "t", "distinct_id": "u1", "dx": code}}
    target = "/track?data=" + base64.b64encode(json.dumps(event).encode()).decode()
    headers = (("Host", "api.mixpanel.com"),)
    record = HttpRequest(1765000000.0, Flow("10.20.5.23", 50080, "203.0.113.41", 80, "tcp"), "GET", target, "1.1",
                         headers, "api.mixpanel.com", b"", 0)
    docs = engine.on_record(record) + engine.finish()
    rules = {doc["rule"]["id"]: doc for doc in docs}
    assert {"plaintext-phi", "phi-in-tracker-payload", "tracker-egress-no-baa"} <= set(rules)
    for rule in ("plaintext-phi", "phi-in-tracker-payload"):
        assert "icd10" in rules[rule]["phi_egress"]["phi"]["types"]
