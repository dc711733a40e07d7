"""Alerts that name every destination host: a throttle window lists each host of the vendor it saw
(related.hosts, phi_egress.destinations with counts, times and which received health data), names
the host that received health data (else the most contacted) in destination.domain and the
summary, re-sends live under the same event.id as the list grows, and writes the final list once
in a replay. Then the story captures: each vendor host a PHI host reached is in its alert."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from sensor.config import parse_config
from sensor.detect.engine import DetectionEngine
from sensor.enrich.vendors import VendorCatalog, registered_domain
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.records import Flow, HttpRequest, TlsHello

REPO = Path(__file__).resolve().parents[1]
T0 = 1705329000.0
CLINIC = "10.20.5.23"
CONFIG = """
sensor: {name: test-sensor}
phi_hosts: [10.20.0.0/16]
outputs: []
"""


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def engine(catalog: VendorCatalog, immediate: bool) -> DetectionEngine:
    config = parse_config(CONFIG, "test")
    events = EventBuilder(config.sensor.name, registered_domain)
    return DetectionEngine(config.build_policy(catalog), AlertBuilder(events), immediate=immediate)


def hello(name: str, ts: float) -> TlsHello:
    return TlsHello(ts, Flow(CLINIC, 50443, "203.0.113.35", 443, "tcp"), "tls", name, ("h2",), False, "1.3")


def post(host: str, target: str, body: bytes, ts: float) -> HttpRequest:
    headers = (("Host", host), ("Content-Type", "application/x-www-form-urlencoded"))
    return HttpRequest(ts, Flow(CLINIC, 50080, "203.0.113.35", 80, "tcp"), "POST", target, "1.1", headers, host, body, len(body))


def run(eng: DetectionEngine, records) -> list[dict]:
    out = [doc for record in records for doc in eng.on_record(record)]
    return out + eng.finish()


def egress(docs: list[dict]) -> list[dict]:
    return [doc for doc in docs if doc["rule"]["id"] == "tracker-egress-no-baa"]


AMPLITUDE_TLS = [
    hello("sr-client-cfg.amplitude.com", T0),
    hello("api2.amplitude.com", T0 + 1),
    hello("api2.amplitude.com", T0 + 2),
]


def test_live_resends_under_the_same_id_as_hosts_are_added(catalog: VendorCatalog) -> None:
    docs = egress(run(engine(catalog, immediate=True), AMPLITUDE_TLS))
    assert len({doc["event"]["id"] for doc in docs}) == 1
    first, last = docs[0], docs[-1]
    assert first["related"]["hosts"] == ["sr-client-cfg.amplitude.com"]
    assert len(docs) == 3  # first sight, the new host, the final count at the end
    assert set(last["related"]["hosts"]) == {"sr-client-cfg.amplitude.com", "api2.amplitude.com"}
    listed = {entry["host"]: entry for entry in last["phi_egress"]["destinations"]}
    assert listed["api2.amplitude.com"]["count"] == 2 and listed["sr-client-cfg.amplitude.com"]["count"] == 1
    assert listed["api2.amplitude.com"]["first_seen"] == "2024-01-15T14:30:01.000000Z"
    assert listed["api2.amplitude.com"]["last_seen"] == "2024-01-15T14:30:02.000000Z"
    assert not any(entry["health_data"] for entry in listed.values())
    # no health data anywhere: the most contacted host is the one named
    assert last["destination"]["domain"] == last["phi_egress"]["destination"] == "api2.amplitude.com"
    assert "to api2.amplitude.com (Amplitude" in last["phi_egress"]["summary"]
    assert "also sr-client-cfg.amplitude.com" in last["phi_egress"]["summary"]
    assert last["phi_egress"]["count"] == 3


def test_replay_writes_one_document_with_the_final_list(catalog: VendorCatalog) -> None:
    docs = egress(run(engine(catalog, immediate=False), AMPLITUDE_TLS))
    assert len(docs) == 1
    assert [entry["host"] for entry in docs[0]["phi_egress"]["destinations"]] == [
        "sr-client-cfg.amplitude.com",
        "api2.amplitude.com",
    ]


def test_the_host_that_received_health_data_is_named(catalog: VendorCatalog) -> None:
    event = {
        "event": "reading",
        "properties": {"token": "t", "distinct_id": "u1", "glucose": "182 mg/dL", "medication": "metformin"},
    }
    body = b"data=" + base64.b64encode(json.dumps(event).encode())
    records = [hello("api-js.mixpanel.com", T0 + n) for n in range(5)] + [post("api.mixpanel.com", "/track", body, T0 + 6)]
    docs = run(engine(catalog, immediate=False), records)
    (alert,) = egress(docs)
    listed = {entry["host"]: entry for entry in alert["phi_egress"]["destinations"]}
    assert listed["api.mixpanel.com"]["health_data"] is True and listed["api-js.mixpanel.com"]["health_data"] is False
    assert listed["api-js.mixpanel.com"]["count"] == 5
    assert alert["destination"]["domain"] == "api.mixpanel.com"  # fewer requests, but it got the data
    assert "to api.mixpanel.com (Mixpanel" in alert["phi_egress"]["summary"]
    payload = [doc for doc in docs if doc["rule"]["id"] == "phi-in-tracker-payload"]
    assert payload and "at api.mixpanel.com" in payload[0]["phi_egress"]["summary"]


# --- the story captures ---------------------------------------------------------------------------


def _replay(capture: Path) -> list[dict]:
    command = [sys.executable, "-m", "sensor", "replay", str(capture), "--config",
               str(REPO / "deploy" / "config" / "sensor.example.yaml"), "--quiet", "--emit", "all"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


STORY_CAPTURES = [entry["file"] for entry in json.loads((REPO / "pcaps" / "stories.json").read_text())["captures"]]


@pytest.mark.parametrize("capture", STORY_CAPTURES)
def test_story_alerts_name_every_vendor_host_reached(capture: str, catalog: VendorCatalog) -> None:
    docs = _replay(REPO / "pcaps" / capture)
    alerts = {doc["event"]["id"]: doc for doc in docs if doc["event"]["kind"] == "alert"}
    named: dict[tuple[str, str], set[str]] = defaultdict(set)
    for doc in alerts.values():
        if doc["rule"]["id"] == "tracker-egress-no-baa":
            named[(doc["source"]["ip"], doc["phi_egress"]["vendor"]["id"])].update(doc["related"]["hosts"])
    reached: dict[tuple[str, str], set[str]] = defaultdict(set)
    for doc in docs:
        if doc["event"]["kind"] != "event":
            continue
        host = (doc.get("dns", {}).get("question", {}).get("name") or doc.get("destination", {}).get("domain"))
        vendor = catalog.match_host(host) if host else None
        if vendor is not None and (doc["source"]["ip"], vendor.id) in named:
            reached[(doc["source"]["ip"], vendor.id)].add(host.lower().rstrip("."))
    assert bool(reached) == bool(named)
    for key, hosts in reached.items():
        assert hosts <= named[key], f"{key}: {sorted(hosts - named[key])} reached but not named"


def test_summary_names_the_primary_host_wherever_the_rule_put_it() -> None:
    from sensor.detect.engine import Destination
    from sensor.output.ecs import _summary_naming

    hosts = [Destination("a.example-tracker.com", 1, T0, T0), Destination("b.example-tracker.com", 2, T0, T0, True)]
    assert _summary_naming("sent x in plaintext HTTP POST to a.example-tracker.com", "a.example-tracker.com",
                           "b.example-tracker.com", hosts) == (
        "sent x in plaintext HTTP POST to b.example-tracker.com; also a.example-tracker.com")
    many = [Destination(f"h{n}.example-tracker.com", 1, T0, T0) for n in range(8)]
    text = _summary_naming("to h0.example-tracker.com (X)", "h0.example-tracker.com", "h0.example-tracker.com", many)
    assert text.endswith("h5.example-tracker.com and 2 more")


def test_at_equal_severity_the_request_with_health_data_is_the_one_shown(catalog: VendorCatalog) -> None:
    event = {"event": "reading", "properties": {"token": "t", "distinct_id": "u1", "glucose": "182 mg/dL"}}
    body = b"data=" + base64.b64encode(json.dumps(event).encode())
    plain = b"data=" + base64.b64encode(json.dumps({"event": "app_open", "properties": {"token": "t"}}).encode())
    records = [post("api-js.mixpanel.com", "/track", plain, T0), post("api.mixpanel.com", "/track", body, T0 + 1)]
    (alert,) = egress(run(engine(catalog, immediate=False), records))
    assert alert["url"]["domain"] == alert["destination"]["domain"] == "api.mixpanel.com"
