"""End to end: every story capture through `phi-sensor replay` (a real subprocess), alerts compared
with what `pcaps/stories.json` says the example configuration must raise; then the command-line
switches that change what comes out (--fail-on, --emit, --output, --stats, --unredacted)."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sensor.detect.rules import ALL_RULES
from sensor.enrich.vendors import VendorCatalog

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
EXAMPLE_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"
MANIFEST = json.loads((PCAPS / "stories.json").read_text())["captures"]
STORIES = {entry["file"]: entry for entry in MANIFEST}


def replay(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sensor", "replay", *map(str, args)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, cwd=cwd)


def documents(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def latest_alerts(docs: list[dict]) -> list[dict]:
    """One document per alert: a later document with the same event.id updates an earlier one."""
    latest = {doc["event"]["id"]: doc for doc in docs if doc["event"]["kind"] == "alert"}
    return list(latest.values())


@functools.cache
def example_run(capture: str) -> tuple[int, tuple[dict, ...], str]:
    """Exit code, alert documents and stderr of one capture replayed with the example configuration."""
    result = replay(PCAPS / capture, "--config", EXAMPLE_CONFIG, "--quiet")
    return result.returncode, tuple(documents(result.stdout)), result.stderr


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def names_vendor(manifest_name: str, vendor: dict) -> bool:
    """The manifest names vendors as people do: the product ("Mixpanel") or its company ("Meta")."""
    return manifest_name in (vendor["name"], vendor["owner"]) or vendor["owner"].startswith(manifest_name + " ")


def enabled_rules(config: dict) -> set[str]:
    """Rule ids a configuration leaves on: its `enabled` where set, else the rule's own default."""
    tuning = config.get("rules") or {}
    return {
        rule.INFO.id for rule in ALL_RULES
        if tuning.get(rule.INFO.id, {}).get("enabled", rule.INFO.enabled_by_default)
    }


def check_alerts(alerts: list[dict], expected: list[dict], catalog: VendorCatalog) -> None:
    """Every expected alert present with its rule, source, vendor and a listed domain; nothing else."""
    unmatched = list(alerts)
    for want in expected:
        found = [
            doc for doc in unmatched
            if doc["rule"]["id"] == want["rule"] and doc["source"]["ip"] == want["source_ip"]
            and doc["phi_egress"]["destination"] in want["domains"]
        ]
        assert len(found) == 1, f"expected one alert for {want}, found {len(found)}"
        doc = found[0]
        pe = doc["phi_egress"]
        if want["vendor"] is None:
            assert "vendor" not in pe
            assert all(catalog.match_host(domain) is None for domain in want["domains"])
        else:
            assert names_vendor(want["vendor"], pe["vendor"]), (want["vendor"], pe["vendor"])
            assert {catalog.match_host(domain).id for domain in want["domains"]} == {pe["vendor"]["id"]}
        assert pe["baa"]["status"] != "on-file"
        unmatched.remove(doc)
    assert unmatched == [], [(d["rule"]["id"], d["source"]["ip"], d["phi_egress"]["destination"]) for d in unmatched]


# --- the stories with the example configuration --------------------------------------------------


@pytest.mark.parametrize("capture", sorted(STORIES))
def test_story_raises_what_the_manifest_expects(capture: str, catalog: VendorCatalog) -> None:
    code, docs, stderr = example_run(capture)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    expected = [want for want in STORIES[capture]["expected_alerts"] if want["rule"] in enabled_rules(config)]
    check_alerts(latest_alerts(list(docs)), expected, catalog)


def test_clean_network_raises_nothing() -> None:
    code, docs, stderr = example_run("clean-network.pcap")
    assert (code, docs) == (0, ())
    assert "Traceback" not in stderr


def test_demo_raises_the_inventory_alert_where_it_is_enabled(tmp_path: Path, catalog: VendorCatalog) -> None:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["rules"]["unreviewed-vendor"] = {"enabled": True}
    # The organisation's own sites are not third parties: they belong on the allow list.
    config["allow"] = [*config["allow"], "example-hospital.org"]
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(config))
    result = replay(PCAPS / "demo.pcap", "--config", path, "--quiet")
    assert result.returncode == 0, result.stderr
    check_alerts(latest_alerts(documents(result.stdout)), STORIES["demo.pcap"]["expected_alerts"], catalog)


@pytest.mark.parametrize("capture", sorted(STORIES))
def test_alerts_only_name_phi_hosts(capture: str) -> None:
    _, docs, _ = example_run(capture)
    story = STORIES[capture]
    for doc in docs:
        assert doc["source"]["ip"] in story["phi_hosts"]
        assert doc["source"]["ip"] not in story["non_phi_hosts"]


def test_alert_details_of_the_mixpanel_story() -> None:
    _, docs, _ = example_run("mixpanel-plaintext.pcap")
    alerts = {doc["rule"]["id"]: doc for doc in latest_alerts(list(docs))}
    # TLS, then plaintext to the same vendor: one escalated window, counted in full.
    egress = alerts["tracker-egress-no-baa"]["phi_egress"]
    assert (egress["severity"], egress["source_record"]) == ("high", "http")
    assert egress["count"] >= 3
    # The example configuration pins plaintext-phi to critical.
    assert alerts["plaintext-phi"]["phi_egress"]["severity"] == "critical"
    payload = alerts["phi-in-tracker-payload"]["phi_egress"]
    assert payload["severity"] == "critical"
    assert payload["tracker"]["decoder"] == "mixpanel"
    assert {"glucose", "medication"} <= set(payload["phi"]["types"])
    for doc in alerts.values():
        assert doc["observer"]["name"] == "gw-1"
        assert doc["destination"]["ip"] == "203.0.113.41"


# --- default behaviour (no configuration) --------------------------------------------------------


def test_clean_network_without_configuration() -> None:
    """Without a configuration every private address is a PHI host and no BAA is on file, so the
    guest (10.99.4.4) is a PHI host contacting Meta, and Segment has no agreement; the OCSP request,
    the cache-buster, the Windows update and the ECH cover name still raise nothing, and no request
    carries health data."""
    result = replay(PCAPS / "clean-network.pcap", "--quiet")
    assert result.returncode == 0, result.stderr
    alerts = latest_alerts(documents(result.stdout))
    found = sorted(
        (doc["rule"]["id"], doc["source"]["ip"], doc["phi_egress"]["vendor"]["id"], doc["phi_egress"]["baa"]["status"])
        for doc in alerts
    )
    assert found == [
        ("tracker-egress-no-baa", "10.20.6.31", "segment", "none"),
        ("tracker-egress-no-baa", "10.99.4.4", "meta-pixel", "none"),
    ]
    for doc in alerts:
        assert doc["phi_egress"]["phi_host"] == {"name": "private address space", "tags": ["default"]}
    guest = next(doc for doc in alerts if doc["source"]["ip"] == "10.99.4.4")
    assert guest["phi_egress"]["severity"] == "high"  # a plaintext pixel request, with no health data in it
    assert "phi" not in guest["phi_egress"]


# --- exit codes and output switches -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("capture", "threshold", "code"),
    [
        ("mixpanel-plaintext.pcap", "critical", 1),
        ("mixpanel-plaintext.pcap", "low", 1),
        ("ga4-quic.pcap", "medium", 1),  # medium alerts only
        ("ga4-quic.pcap", "high", 0),
        ("clean-network.pcap", "low", 0),
    ],
)
def test_fail_on_exit_code(capture: str, threshold: str, code: int) -> None:
    result = replay(PCAPS / capture, "--config", EXAMPLE_CONFIG, "--fail-on", threshold, "--quiet")
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr


def test_emit_events_writes_protocol_events_only() -> None:
    story = STORIES["meta-pixel-portal.pcap"]
    result = replay(PCAPS / "meta-pixel-portal.pcap", "--config", EXAMPLE_CONFIG, "--emit", "events")
    assert result.returncode == 0, result.stderr
    docs = documents(result.stdout)
    assert {doc["event"]["kind"] for doc in docs} == {"event"}
    names = {doc["dns"]["question"]["name"] for doc in docs if doc["event"]["dataset"] == "phi_sensor.dns"}
    assert names == set(story["dns_queries"])
    snis = sorted(doc["tls"]["client"]["server_name"] for doc in docs if doc["event"]["dataset"] == "phi_sensor.tls")
    assert snis == sorted(story["sni"])
    requests = [doc for doc in docs if doc["event"]["dataset"] == "phi_sensor.http"]
    assert [(doc["http"]["request"]["method"], doc["url"]["domain"]) for doc in requests] == [
        (item["method"], item["host"]) for item in story["http"]
    ]
    assert "alert(s)" not in result.stderr  # no summary table when only events were asked for


def test_events_redact_health_data_in_urls() -> None:
    result = replay(PCAPS / "meta-pixel-portal.pcap", "--emit", "events", "--quiet")
    request = next(doc for doc in documents(result.stdout) if doc["event"]["dataset"] == "phi_sensor.http")
    original = request["url"]["original"]
    assert original.startswith("http://www.facebook.com/tr/?id=1234567890&ev=PageView&dl=")
    assert "[REDACTED:condition" in original
    for raw in ("hiv", "prep", "86e0b9e56c17cc4d"):
        assert raw not in original.lower()
        assert raw not in request["url"]["query"].lower()
    assert "[REDACTED:" in request["http"]["request"]["referrer"]
    assert request["url"]["path"] == "/tr/"


def test_emit_all_writes_events_and_alerts(tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    result = replay(
        PCAPS / "ga4-quic.pcap", "--config", EXAMPLE_CONFIG, "--emit", "all", "--output", out, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # --output replaces stdout
    docs = documents(out.read_text())
    kinds = {(doc["event"]["kind"], doc["event"]["dataset"]) for doc in docs}
    assert kinds == {
        ("event", "phi_sensor.dns"), ("event", "phi_sensor.tls"), ("event", "phi_sensor.quic"), ("alert", "phi_sensor.alert")
    }
    quic = [doc for doc in docs if doc["event"]["kind"] == "event" and doc["event"]["dataset"] == "phi_sensor.quic"]
    assert {doc["network"]["transport"] for doc in quic} == {"udp"}
    assert [doc["tls"]["client"]["server_name"] for doc in quic] == STORIES["ga4-quic.pcap"]["quic_sni"]
    assert len(latest_alerts(docs)) == 2


def test_output_file_is_json_lines_and_appends(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "alerts.jsonl"
    for _ in range(2):
        result = replay(PCAPS / "chrome-split-hello.pcap", "--config", EXAMPLE_CONFIG, "--output", out, "--quiet")
        assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    assert len(docs) == 4  # two alerts per run
    assert {doc["phi_egress"]["source_record"] for doc in docs} == {"tls"}
    assert sorted({doc["source"]["ip"] for doc in docs}) == ["10.20.1.50", "fd00:20::50"]


def test_stats_go_to_stderr() -> None:
    story = STORIES["meta-pixel-portal.pcap"]
    result = replay(PCAPS / "meta-pixel-portal.pcap", "--config", EXAMPLE_CONFIG, "--stats", "--quiet")
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert "phi-sensor: stats" in lines
    stats = dict(line.split() for line in lines[lines.index("phi-sensor: stats") + 1 :])
    assert int(stats["packets"]) == story["packets"]
    assert int(stats["files"]) == 1
    assert int(stats["records.http"]) == len(story["http"])
    assert int(stats["records.tls"]) == len(story["sni"])
    for rule in ("tracker-egress-no-baa", "plaintext-phi", "phi-in-tracker-payload"):
        assert int(stats[f"alerts.{rule}"]) >= 1
    assert int(stats["sink.stdout.sent"]) == len(documents(result.stdout))
    assert all(not line.startswith("{") for line in lines)  # documents stay on stdout


def test_stats_count_dns_records() -> None:
    result = replay(PCAPS / "meta-pixel-portal.pcap", "--stats", "--quiet")
    lines = result.stderr.splitlines()
    stats = dict(line.split() for line in lines[lines.index("phi-sensor: stats") + 1 :])
    assert int(stats.get("records.dns", 0)) == len(STORIES["meta-pixel-portal.pcap"]["dns_queries"])


def test_unredacted_logs_a_warning_and_shows_values() -> None:
    result = replay(PCAPS / "mixpanel-plaintext.pcap", "--config", EXAMPLE_CONFIG, "--unredacted", "--quiet")
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if "unredacted" in line]
    assert len(warnings) == 1 and re.match(r"\S+Z phi-sensor: ", warnings[0])
    payload = next(doc for doc in documents(result.stdout) if doc["rule"]["id"] == "phi-in-tracker-payload")
    assert any("182 mg/dL" in item["excerpt"] for item in payload["phi_egress"]["evidence"])


def test_redacted_by_default_and_no_warning() -> None:
    _, docs, stderr = example_run("mixpanel-plaintext.pcap")
    assert "unredacted" not in stderr
    text = json.dumps(docs).lower()
    for raw in ("182 mg", "metformin", "glargine", "maria.gonzalez"):
        assert raw not in text


def test_summary_table_on_stderr_without_quiet() -> None:
    result = replay(PCAPS / "ga4-quic.pcap", "--config", EXAMPLE_CONFIG)
    assert result.returncode == 0
    assert "phi-sensor: 2 alert(s)" in result.stderr
    assert "Google Tag Manager" in result.stderr and "Google Analytics" in result.stderr
    assert len(documents(result.stdout)) == 2
    clean = replay(PCAPS / "clean-network.pcap", "--config", EXAMPLE_CONFIG)
    assert "phi-sensor: no alerts" in clean.stderr
