"""Webhook sinks against a real HTTP server on loopback: formats, thresholds, throttling, retries,
Retry-After, timeouts, outages and restarts."""
from __future__ import annotations

import email.utils
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import Behaviour, WebhookServer, make_alert, make_event, wait_until

from sensor.errors import ConfigError
from sensor.output.factory import build_sinks
from sensor.output.sinks import parse_output_spec
from sensor.output.spool import Backoff, Spool
from sensor.output.webhook import (
    PAGERDUTY_SUMMARY_MAX,
    WebhookSink,
    pagerduty_event,
    retry_after_seconds,
    slack_message,
)

FAST = Backoff(base=0.01, maximum=0.05)


def hook(server: WebhookServer, tmp_path: Path, name: str = "hook", **options: Any) -> WebhookSink:
    options.setdefault("backoff", FAST)
    options.setdefault("timeout", 2.0)
    return WebhookSink(name, Spool(tmp_path / f"{name}.db"), f"{server.url}/hook", **options)


def bodies(server: WebhookServer) -> list[Any]:
    return [received.json() for received in server.received]


def test_generic_webhook_posts_the_alert_document(webhook_server: WebhookServer, tmp_path: Path) -> None:
    sink = hook(webhook_server, tmp_path)
    alerts = [make_alert(n) for n in range(3)]
    for alert in alerts:
        sink.send(alert)
    assert sink.flush(5)
    assert bodies(webhook_server) == alerts
    first = webhook_server.received[0]
    assert first.path == "/hook"
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["User-Agent"].startswith("phi-egress-sensor/")
    stats = sink.stats()
    assert (stats["sent"], stats["retries"], stats["failed"], stats["spool_depth"]) == (3, 0, 0, 0)
    sink.close(1)


def test_slack_message_carries_triage_fields_and_no_evidence(webhook_server: WebhookServer, tmp_path: Path) -> None:
    sink = hook(webhook_server, tmp_path, format="slack", observer="edge-1")
    alert = make_alert(7, "critical")
    alert["destination"]["domain"] = "<!channel> evil.example"
    sink.send(alert)
    assert sink.flush(5)
    (message,) = bodies(webhook_server)
    header, summary, fields, context = message["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "[CRITICAL] PHI host sent data to a tracker without a BAA"},
    }
    assert summary["text"]["text"] == alert["phi_egress"]["summary"]
    texts = {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1] for f in fields["fields"]}
    assert texts["*Rule*"] == "tracker-egress-no-baa"
    assert texts["*Severity*"] == "critical"
    assert texts["*Source host*"] == "portal.example-health.org"
    assert texts["*Vendor*"] == "Meta Pixel (advertising)"
    assert texts["*BAA status*"] == "none: Meta does not sign BAAs"
    assert texts["*PHI types*"] == "condition"
    assert texts["*Destination*"] == "&lt;!channel&gt; evil.example"
    assert "observer sensor-test" in context["elements"][0]["text"]
    raw = webhook_server.received[0].body.decode()
    assert "[REDACTED]" not in raw and "excerpt" not in raw and "/tr/" not in raw
    sink.close(1)


def test_pagerduty_event_shape_and_severity_mapping(tmp_path: Path) -> None:
    expected = {"low": "info", "medium": "warning", "high": "error", "critical": "critical"}
    for severity, pd_severity in expected.items():
        alert = make_alert(1, severity)
        event = pagerduty_event(alert, "R0UT1NGKEY", observer="edge-1")
        assert event["routing_key"] == "R0UT1NGKEY"
        assert event["event_action"] == "trigger"
        assert event["dedup_key"] == alert["phi_egress"]["alert_key"]
        assert event["payload"]["severity"] == pd_severity
        assert event["payload"]["source"] == "portal.example-health.org"
        assert event["payload"]["component"] == "Meta Pixel"
        assert event["payload"]["group"] == "tracker-egress-no-baa"
        assert event["payload"]["timestamp"] == alert["@timestamp"]
        assert event["payload"]["custom_details"]["baa_status"] == "none"
        assert "excerpt" not in json.dumps(event)
    long_alert = make_alert(2)
    long_alert["phi_egress"]["summary"] = "s" * 5000
    assert len(pagerduty_event(long_alert, "k")["payload"]["summary"]) == PAGERDUTY_SUMMARY_MAX
    bare = {"event": {"kind": "alert"}}
    assert pagerduty_event(bare, "k", observer="edge-1")["payload"]["source"] == "edge-1"


def test_pagerduty_sink_from_the_command_line_shorthand(webhook_server: WebhookServer, tmp_path: Path) -> None:
    key_file = tmp_path / "routing.key"
    key_file.write_text("  R0UT1NGKEY\n")
    spec = parse_output_spec(f"pagerduty={key_file}")
    spec.update(url=f"{webhook_server.url}/v2/enqueue", backoff_base=0.01)
    (sink,) = build_sinks([spec], spool_dir=tmp_path / "spool", observer="edge-1")
    sink.send(make_alert(3, "high"))
    assert sink.flush(5)
    (event,) = bodies(webhook_server)
    assert event["routing_key"] == "R0UT1NGKEY" and event["payload"]["severity"] == "error"
    assert "R0UT1NGKEY" not in repr(sink)
    sink.close(1)


def test_min_severity_and_events_are_filtered_and_counted(webhook_server: WebhookServer, tmp_path: Path) -> None:
    sink = hook(webhook_server, tmp_path, min_severity="high")
    for n, severity in enumerate(("low", "medium", "high", "critical")):
        sink.send(make_alert(n, severity))
    sink.send(make_event(9))
    assert sink.flush(5)
    assert [b["phi_egress"]["severity"] for b in bodies(webhook_server)] == ["high", "critical"]
    assert sink.stats()["filtered"] == 3
    sink.close(1)

    with_events = hook(webhook_server, tmp_path, name="ev", events=True)
    with_events.send(make_event(10))
    assert with_events.flush(5)
    assert bodies(webhook_server)[-1]["event"]["kind"] == "event"
    with_events.close(1)


def test_throttle_per_alert_key(webhook_server: WebhookServer, tmp_path: Path) -> None:
    sink = hook(webhook_server, tmp_path, throttle_seconds=0.5)
    for n in range(5):
        sink.send(make_alert(n, alert_key="host-a|meta"))
    sink.send(make_alert(5, alert_key="host-b|meta"))
    assert sink.flush(5)
    assert [b["phi_egress"]["alert_key"] for b in bodies(webhook_server)] == ["host-a|meta", "host-b|meta"]
    assert sink.stats()["throttled"] == 4
    time.sleep(0.55)
    sink.send(make_alert(6, alert_key="host-a|meta"))
    assert sink.flush(5)
    assert len(webhook_server.received) == 3
    sink.close(1)


def test_server_errors_are_retried_in_order(webhook_server: WebhookServer, tmp_path: Path) -> None:
    webhook_server.script.extend([Behaviour(500), Behaviour(502), Behaviour(503)])
    sink = hook(webhook_server, tmp_path)
    alerts = [make_alert(n) for n in range(4)]
    for alert in alerts:
        sink.send(alert)
    assert sink.flush(5)
    assert bodies(webhook_server) == alerts
    assert len(webhook_server.attempts) == 7
    assert sink.stats()["retries"] >= 3
    sink.close(1)


def test_retry_after_in_seconds_is_honoured(webhook_server: WebhookServer, tmp_path: Path) -> None:
    webhook_server.script.append(Behaviour(429, {"Retry-After": "1"}))
    sink = hook(webhook_server, tmp_path)
    sink.send(make_alert(0))
    assert sink.flush(5)
    first, second = webhook_server.attempts
    assert 0.95 <= second.at - first.at < 2.0  # the backoff alone would have waited ~0.01 s
    sink.close(1)


def test_retry_after_as_http_date_is_honoured(webhook_server: WebhookServer, tmp_path: Path) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    webhook_server.script.append(Behaviour(503, {"Retry-After": when}))
    sink = hook(webhook_server, tmp_path)
    sink.send(make_alert(0))
    assert sink.flush(6)
    first, second = webhook_server.attempts
    assert 0.9 <= second.at - first.at < 3.0  # whole-second date resolution
    sink.close(1)


def test_a_hanging_webhook_blocks_neither_the_caller_nor_other_sinks(webhook_server: WebhookServer, tmp_path: Path) -> None:
    other = WebhookServer()
    other.start()
    try:
        webhook_server.script.append(Behaviour(hang=5.0))
        slow = hook(webhook_server, tmp_path, name="slow", timeout=1.5)
        fast = WebhookSink("fast", Spool(tmp_path / "fast.db"), f"{other.url}/hook", backoff=FAST)
        slow.send(make_alert(0))
        assert wait_until(lambda: len(webhook_server.attempts) == 1, 2)
        started = time.monotonic()
        for n in range(1, 51):
            for sink in (slow, fast):
                sink.send(make_alert(n))
        assert time.monotonic() - started < 1.0  # sending never waits on the stuck request
        assert fast.flush(3)
        assert len(other.received) == 50
        assert webhook_server.received == []  # the slow one is still waiting for its first answer
        assert slow.flush(10)
        assert [b["event"]["id"] for b in bodies(webhook_server)] == [make_alert(n)["event"]["id"] for n in range(51)]
        assert slow.stats()["retries"] >= 1
        slow.close(1)
        fast.close(1)
    finally:
        other.stop()


def test_permanent_rejection_is_counted_and_does_not_block_the_queue(webhook_server: WebhookServer, tmp_path: Path) -> None:
    webhook_server.script.append(Behaviour(400, body=b'{"error":"invalid payload"}'))
    sink = hook(webhook_server, tmp_path)
    sink.send(make_alert(0))
    sink.send(make_alert(1))
    assert sink.flush(5)
    assert [b["event"]["id"] for b in bodies(webhook_server)] == [make_alert(1)["event"]["id"]]
    stats = sink.stats()
    assert (stats["failed"], stats["sent"], stats["spool_depth"]) == (1, 1, 0)
    sink.close(1)


def test_outage_then_recovery_on_the_same_port_delivers_everything_once(webhook_server: WebhookServer, tmp_path: Path) -> None:
    sink = hook(webhook_server, tmp_path)
    for n in range(10):
        sink.send(make_alert(n))
    assert sink.flush(5)
    webhook_server.stop()
    for n in range(10, 30):
        sink.send(make_alert(n))
    assert not sink.flush(0.3)
    assert sink.stats()["retries"] > 0
    webhook_server.start()
    for n in range(30, 40):
        sink.send(make_alert(n))
    assert sink.flush(5)
    assert [b["event"]["id"] for b in bodies(webhook_server)] == [make_alert(n)["event"]["id"] for n in range(40)]
    sink.close(1)


def test_undelivered_alerts_wait_in_the_spool_for_the_next_run(webhook_server: WebhookServer, tmp_path: Path) -> None:
    webhook_server.default = Behaviour(503)
    first_run = hook(webhook_server, tmp_path)
    for n in range(5):
        first_run.send(make_alert(n))
    first_run.close(0.3)
    assert webhook_server.received == []

    webhook_server.default = Behaviour(200)
    second_run = hook(webhook_server, tmp_path)
    assert second_run.stats()["spool_depth"] == 5
    assert second_run.flush(5)
    assert [b["event"]["id"] for b in bodies(webhook_server)] == [make_alert(n)["event"]["id"] for n in range(5)]
    second_run.close(1)


def test_webhook_config_validation(tmp_path: Path) -> None:
    def error(spec: dict[str, Any]) -> ConfigError:
        with pytest.raises(ConfigError) as caught:
            build_sinks([{"type": "jsonl", "path": "-"}, spec], spool_dir=tmp_path, observer="o", source="sensor.yaml")
        return caught.value

    assert error({"type": "slack", "url": "https://hooks.example/x", "events": True}).key == "outputs[1].events"
    assert error({"type": "webhook", "url": "hooks.example/x"}).key == "outputs[1].url"
    assert error({"type": "webhook", "url": "https://h.example", "throttle_seconds": -1}).key == "outputs[1].throttle_seconds"
    assert error({"type": "webhook", "url": "https://h.example", "colour": "red"}).key == "outputs[1].colour"
    missing = error({"type": "pagerduty", "routing_key_env": "PHI_SENSOR_TEST_UNSET_VARIABLE"})
    assert (missing.source, missing.key) == ("sensor.yaml", "outputs[1].routing_key_env")
    assert "PHI_SENSOR_TEST_UNSET_VARIABLE" in missing.problem
    assert not list(tmp_path.glob("*.db"))  # nothing was started for a configuration that failed


def test_slack_url_stays_out_of_reprs(tmp_path: Path) -> None:
    secret = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
    (sink,) = build_sinks([parse_output_spec(f"slack={secret}")], spool_dir=tmp_path, observer="o")
    from sensor.output.specs import WebhookOutput

    assert "XXXXSECRET" not in repr(sink)
    assert "XXXXSECRET" not in repr(WebhookOutput.model_validate({"type": "webhook", "format": "slack", "url": secret}))
    sink.close(0.1)


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None
    assert retry_after_seconds("²") is None
    assert retry_after_seconds("Mon, 01 Jan 99999 00:00:00 GMT") is None


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(st.text(max_size=60), st.from_regex(r"[A-Za-z]{3}, \d{1,2} [A-Za-z]{3} \d{1,5} \d\d:\d\d:\d\d [A-Z]{1,4}"))
)
def test_retry_after_never_raises(value: str) -> None:
    result = retry_after_seconds(value, now=0.0)
    assert result is None or result >= 0.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
doc_keys = st.sampled_from(["event", "rule", "phi_egress", "source", "destination", "observer", "@timestamp", "x"])


@settings(max_examples=300, deadline=None)
@given(doc=st.dictionaries(doc_keys, json_values, max_size=8), alert=st.booleans(), long_text=st.text(min_size=0, max_size=4000))
def test_payload_builders_accept_any_document_shape(doc: dict[str, Any], alert: bool, long_text: str) -> None:
    if alert:
        doc["event"] = {"kind": "alert", "id": long_text}
        doc["phi_egress"] = {"summary": long_text, "alert_key": long_text, "severity": "high"}
        doc["rule"] = {"name": long_text}
    message = slack_message(doc, "obs")
    assert message["blocks"][0]["type"] == "header"
    assert len(message["blocks"][0]["text"]["text"]) <= 150
    assert all(len(f["text"]) <= 2000 for b in message["blocks"] for f in b.get("fields", []))
    event = pagerduty_event(doc, "key", "obs")
    assert len(event["payload"]["summary"]) <= PAGERDUTY_SUMMARY_MAX
    assert len(event.get("dedup_key", "")) <= 255
    assert event["payload"]["severity"] in {"info", "warning", "error", "critical"}
    json.dumps(message)
    json.dumps(event)
