"""Elasticsearch and OpenSearch sinks and `phi-sensor setup` against real servers on loopback.

The official Elasticsearch client reaches osmem (an OpenSearch-compatible server) through a
header-rewriting proxy, which also plays the outages; with PHI_SENSOR_TEST_ES_URL set the same
tests run against a real Elasticsearch too.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import REAL_ES_API_KEY, Behaviour, EsCompatProxy, SearchBackend, WebhookServer, make_alert, make_event, wait_until

from sensor.app.setup import setup_main
from sensor.errors import ConfigError
from sensor.output.elasticsearch import bulk_action, index_name
from sensor.output.factory import build_sinks
from sensor.output.sinks import parse_output_spec

TESTS_DIR = Path(__file__).resolve().parent
FAST = {"backoff_base": 0.02, "backoff_max": 0.2, "timeout": 5}


def es_spec(proxy: EsCompatProxy, backend: SearchBackend, **extra: Any) -> dict[str, Any]:
    """Classic dated indices (data streams are in test_elastic_versions.py)."""
    spec: dict[str, Any] = {
        "type": "elasticsearch", "url": proxy.url, "index_prefix": backend.prefix, "data_stream": False, **FAST, **extra
    }
    if backend.kind == "elasticsearch" and REAL_ES_API_KEY:
        spec["auth"] = {"api_key_env": "PHI_SENSOR_TEST_ES_API_KEY"}
    return spec


def alert_ids(numbers: Any) -> list[str]:
    return sorted(make_alert(n)["event"]["id"] for n in numbers)


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("-", {"type": "jsonl", "path": "-"}),
        ("alerts.jsonl", {"type": "jsonl", "path": "alerts.jsonl"}),
        ("jsonl=out=1.jsonl", {"type": "jsonl", "path": "out=1.jsonl"}),
        ("jsonl=/var/log/a.jsonl", {"type": "jsonl", "path": "/var/log/a.jsonl"}),
        ("elasticsearch=https://es:9200", {"type": "elasticsearch", "url": "https://es:9200"}),
        ("opensearch=http://os:9200", {"type": "opensearch", "url": "http://os:9200"}),
        ("webhook=https://h/x", {"type": "webhook", "format": "generic", "url": "https://h/x"}),
        ("slack=https://hooks.slack.com/s/1", {"type": "webhook", "format": "slack", "url": "https://hooks.slack.com/s/1"}),
        ("pagerduty", {"type": "webhook", "format": "pagerduty"}),
        ("pagerduty=/etc/pd.key", {"type": "webhook", "format": "pagerduty", "routing_key_file": "/etc/pd.key"}),
    ],
)
def test_parse_output_spec(spec: str, expected: dict[str, Any]) -> None:
    assert parse_output_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "   ", "elasticsearch=", "https://es:9200", "out=1.jsonl", "foo=bar"])
def test_parse_output_spec_rejects(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_output_spec(spec)
    assert caught.value.key == "--output"


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    def key_of(spec: Any) -> str:
        with pytest.raises(ConfigError) as caught:
            build_sinks([{"type": "jsonl"}, {"type": "jsonl"}, spec], spool_dir=tmp_path, observer="o", source="s.yaml")
        assert caught.value.source == "s.yaml"
        return caught.value.key

    assert key_of({"type": "elasticsearch", "url": "es:9200"}) == "outputs[2].url"
    assert key_of({"type": "elasticsearch"}) == "outputs[2].url"
    assert key_of({"type": "elasticserch", "url": "http://es"}) == "outputs[2].type"
    assert key_of("elasticsearch") == "outputs[2]"
    assert key_of({"type": "elasticsearch", "url": "http://es", "min_severity": "urgent"}) == "outputs[2].min_severity"
    assert key_of({"type": "elasticsearch", "url": "http://es", "index_prefix": "Upper*"}) == "outputs[2].index_prefix"
    assert key_of({"type": "elasticsearch", "url": "http://es", "ca_file": str(tmp_path / "nope.pem")}) == "outputs[2].ca_file"
    assert key_of({"type": "elasticsearch", "url": "http://es", "auth": {"username": "u"}}) == "outputs[2].auth"
    assert (
        key_of({"type": "elasticsearch", "url": "http://es", "auth": {"api_key_env": "A", "api_key_file": "f"}})
        == "outputs[2].auth"
    )
    assert key_of({"type": "elasticsearch", "url": "http://es", "auth": {"api_key_env": "PHI_SENSOR_TEST_UNSET"}}) == (
        "outputs[2].auth.api_key_env"
    )
    assert key_of({"type": "opensearch", "url": "http://os", "auth": {"api_key_env": "HOME"}}) == "outputs[2].auth"
    twice = {"type": "elasticsearch", "url": "http://es", "name": "main"}
    with pytest.raises(ConfigError) as caught:
        build_sinks([twice, twice], spool_dir=tmp_path, observer="o")
    assert caught.value.key == "outputs[1].name"
    assert not list(tmp_path.iterdir())


@settings(max_examples=300, deadline=None)
@given(spec=st.text(max_size=80))
def test_parse_output_spec_gives_an_entry_or_a_config_error(spec: str) -> None:
    try:
        entry = parse_output_spec(spec)
    except ConfigError as exc:
        assert exc.key == "--output"
        return
    assert entry["type"] in {"jsonl", "elasticsearch", "opensearch", "webhook"}


scalars = st.none() | st.booleans() | st.integers(-5, 10**7) | st.floats(allow_nan=False) | st.text(max_size=20)
output_types = st.sampled_from(["elasticsearch", "opensearch", "webhook", "slack", "pagerduty", "kafka"])
field_values = {
    "url": st.sampled_from(["http://127.0.0.1:9", "https://x.example/h", "ftp://x", "", "http://"]) | scalars,
    "format": st.sampled_from(["generic", "slack", "pagerduty", "teams"]) | scalars,
    "auth": st.fixed_dictionaries({}, optional={
        "api_key_env": st.sampled_from(["HOME", "PHI_SENSOR_TEST_UNSET"]) | scalars,
        "username": scalars,
        "password_env": st.just("HOME") | scalars,
        "password_file": scalars,
    }) | scalars,
}
for key in ("min_severity", "events", "timeout", "index_prefix", "batch_size", "throttle_seconds", "name",
            "routing_key_env", "spool_max_items", "verify", "backoff_base", "data_stream", "unknown"):
    field_values[key] = st.sampled_from(["high", "phi-sensor", "HOME", 0, 1, -1, 2.5, True]) | scalars


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": output_types}, optional=field_values),
        st.fixed_dictionaries({}, optional={"type": scalars, **field_values}),
        st.none() | st.text(max_size=5),
    ),
    max_size=3,
))
def test_any_outputs_list_builds_or_raises_config_error(tmp_path: Path, specs: list[Any]) -> None:
    try:
        sinks = build_sinks(specs, spool_dir=tmp_path, observer="o", source="s.yaml")
    except ConfigError as exc:
        assert exc.source in ("s.yaml", "command line") and exc.key.startswith(("outputs[", "spool_dir"))
        return
    for sink in sinks:
        sink.close(0)


def test_jsonl_outputs_take_events_unless_told_otherwise(tmp_path: Path) -> None:
    everything, alerts_only = tmp_path / "all.jsonl", tmp_path / "alerts.jsonl"
    specs = [parse_output_spec(str(everything)), {"type": "jsonl", "path": str(alerts_only), "events": False}]
    sinks = build_sinks(specs, spool_dir=tmp_path / "spool", observer="o")
    for sink in sinks:
        sink.send(make_event(1))
        sink.send(make_alert(2))
        sink.close(1)
    assert [json.loads(line)["event"]["kind"] for line in everything.read_text().splitlines()] == ["event", "alert"]
    assert [json.loads(line)["event"]["kind"] for line in alerts_only.read_text().splitlines()] == ["alert"]
    assert not (tmp_path / "spool").exists()  # local files need no spool


def test_credentials_come_from_files_and_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "es.key"
    key_file.write_text("id123:S3CR3TKEY\n")
    monkeypatch.setenv("PHI_SENSOR_TEST_PASSWORD", "HUNTER2PASS")
    specs = [
        {"type": "elasticsearch", "url": "http://127.0.0.1:9", "auth": {"api_key_file": str(key_file)}, "name": "a"},
        {"type": "opensearch", "url": "http://127.0.0.1:9", "name": "b",
         "auth": {"username": "sensor", "password_env": "PHI_SENSOR_TEST_PASSWORD"}},
    ]
    sinks = build_sinks(specs, spool_dir=tmp_path / "spool", observer="o")
    try:
        for sink in sinks:
            text = repr(sink) + repr(vars(sink))
            assert "S3CR3TKEY" not in text and "HUNTER2PASS" not in text
        assert sorted(p.name for p in (tmp_path / "spool").iterdir() if p.suffix == ".db") == ["a.db", "b.db"]
    finally:
        for sink in sinks:
            sink.close(0.1)


def test_index_names() -> None:
    alert, event = make_alert(1, day="2023-12-31"), make_event(1, day="2024-02-29")
    assert index_name(alert) == "phi-sensor-alerts-2023.12.31"
    assert index_name(event, "custom") == "custom-events-2024.02.29"
    assert index_name(alert, data_stream=True) == "logs-phi_sensor.alert-default"
    assert index_name(event, data_stream=True, namespace="lab") == "logs-phi_sensor.dns-lab"  # an older "dns"
    odd = make_alert(2)
    odd["@timestamp"] = "2024-13-45T00:00:00Z"
    today = time.strftime("%Y.%m.%d", time.gmtime())
    assert index_name(odd) == f"phi-sensor-alerts-{today}"
    odd["@timestamp"] = 1715940000
    assert index_name(odd) == f"phi-sensor-alerts-{today}"


def test_bulk_actions() -> None:
    alert = make_alert(1)
    alert["phi_egress"]["count"] = 4
    action = bulk_action(alert, "p", data_stream=False)
    assert (action["_op_type"], action["_id"], action["_version"], action["_version_type"]) == (
        "index", alert["event"]["id"], 4, "external"
    )
    assert action["_source"] is alert and action["_index"] == "p-alerts-2024.05.17"
    streamed = bulk_action(alert, "p", data_stream=True, namespace="lab")
    assert (streamed["_op_type"], streamed["_index"], "_version" in streamed) == ("create", "logs-phi_sensor.alert-lab", False)
    assert streamed["_source"]["data_stream"] == {"type": "logs", "dataset": "phi_sensor.alert", "namespace": "lab"}
    assert "data_stream" not in alert  # the spooled document is left as it was
    event = bulk_action(make_event(1), "p", data_stream=False)
    assert (event["_op_type"], event["_id"], "_version" in event) == ("create", "event-000001", False)
    anonymous = make_event(2)
    del anonymous["event"]["id"]
    assert "_id" not in bulk_action(anonymous, "p", data_stream=False)
    alert["phi_egress"]["count"] = True  # not a count
    assert bulk_action(alert, "p", data_stream=False)["_op_type"] == "create"


# -- delivery -----------------------------------------------------------------------------------
def test_alerts_and_events_land_in_dated_indices_with_their_ids(
    search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path
) -> None:
    (sink,) = build_sinks([es_spec(es_proxy, search_backend, events=True, min_severity="medium")],
                          spool_dir=tmp_path, observer="o")
    for n in range(40):
        sink.send(make_alert(n, "high", day="2024-05-17" if n < 30 else "2024-05-18"))
    sink.send(make_alert(99, "low"))
    for n in range(5):
        sink.send(make_event(n))
    assert sink.flush(10)
    prefix = search_backend.prefix
    assert search_backend.indices() == [
        f"{prefix}-alerts-2024.05.17", f"{prefix}-alerts-2024.05.18", f"{prefix}-events-2024.05.17"
    ]
    assert sorted(search_backend.ids()) == alert_ids(range(40))
    assert len(search_backend.ids("events")) == 5
    stats = sink.stats()
    assert (stats["sent"], stats["filtered"], stats["failed"], stats["spool_depth"]) == (45, 1, 0, 0)
    sink.close(2)


def test_events_stay_out_unless_asked_for(search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path) -> None:
    (sink,) = build_sinks([es_spec(es_proxy, search_backend)], spool_dir=tmp_path, observer="o")
    sink.send(make_event(1))
    sink.send(make_alert(1))
    assert sink.flush(10)
    assert search_backend.ids() == alert_ids([1]) and search_backend.ids("events") == []
    assert sink.stats()["filtered"] == 1
    sink.close(2)


def test_the_same_alert_twice_is_one_document(search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path) -> None:
    (sink,) = build_sinks([es_spec(es_proxy, search_backend)], spool_dir=tmp_path, observer="o")
    sink.send(make_alert(1))
    assert sink.flush(10)
    sink.send(make_alert(1))
    assert sink.flush(10)
    assert search_backend.ids() == alert_ids([1])
    assert (sink.stats()["sent"], sink.stats()["duplicates"]) == (2, 1)
    sink.close(2)


def test_a_throttle_window_update_replaces_the_first_version_whatever_the_order(
    search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path
) -> None:
    def version(count: int) -> dict[str, Any]:
        alert = make_alert(1)
        alert["phi_egress"]["count"] = count
        return alert

    (sink,) = build_sinks([es_spec(es_proxy, search_backend)], spool_dir=tmp_path, observer="o")
    sink.send(version(1))
    assert sink.flush(10)
    sink.send(version(7))  # the window closed: same id, final count
    sink.send(version(3))  # a stale copy arriving late changes nothing
    assert sink.flush(10)
    search_backend.refresh()
    stored = search_backend.session.get(
        f"{search_backend.url}/{index_name(version(1), search_backend.prefix)}/_doc/{version(1)['event']['id']}"
    ).json()
    assert stored["_source"]["phi_egress"]["count"] == 7
    assert search_backend.ids() == alert_ids([1])
    assert (sink.stats()["sent"], sink.stats()["duplicates"]) == (3, 1)
    sink.close(2)


def test_outage_mid_stream_every_alert_arrives_exactly_once(
    search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path
) -> None:
    (sink,) = build_sinks([es_spec(es_proxy, search_backend, batch_size=50)], spool_dir=tmp_path, observer="o")
    for n in range(100):
        sink.send(make_alert(n))
    assert sink.flush(10)
    es_proxy.stop()  # connections refused
    for n in range(100, 250):
        sink.send(make_alert(n))
    assert wait_until(lambda: sink.stats()["retries"] > 0, 5)
    assert sink.stats()["spool_depth"] == 150
    es_proxy.start()  # same port
    for n in range(250, 300):
        sink.send(make_alert(n))
    assert sink.flush(10)
    ids = search_backend.ids()
    assert len(ids) == 300 and sorted(ids) == alert_ids(range(300))
    sink.close(2)


def test_server_answers_503_for_a_while(search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path) -> None:
    (sink,) = build_sinks([es_spec(es_proxy, search_backend)], spool_dir=tmp_path, observer="o")
    es_proxy.fail_status = 503
    for n in range(60):
        sink.send(make_alert(n))
    assert not sink.flush(0.4)
    es_proxy.fail_status = 0
    assert sink.flush(10)
    assert sorted(search_backend.ids()) == alert_ids(range(60))
    assert sink.stats()["retries"] > 0 and sink.stats()["failed"] == 0
    sink.close(2)


def test_ambiguous_failure_is_retried_without_duplicates(
    search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path
) -> None:
    es_proxy.drop_after_forward = 1  # the cluster indexes the batch, the answer never comes back
    (sink,) = build_sinks([es_spec(es_proxy, search_backend)], spool_dir=tmp_path, observer="o")
    for n in range(80):
        sink.send(make_alert(n))
    assert sink.flush(10)
    ids = search_backend.ids()
    assert len(ids) == 80 and sorted(ids) == alert_ids(range(80))
    stats = sink.stats()
    assert stats["duplicates"] > 0 and stats["sent"] == 80
    sink.close(2)


def test_only_the_rejected_items_are_retried(search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path) -> None:
    (sink,) = build_sinks([es_spec(es_proxy, search_backend)], spool_dir=tmp_path, observer="o")
    es_proxy.reject_items = 7  # 429 for the first seven items seen
    for n in range(50):
        sink.send(make_alert(n))
    assert sink.flush(10)
    assert len(es_proxy.rejected_ids) == 7
    assert sorted(search_backend.ids()) == alert_ids(range(50))
    stats = sink.stats()
    # Had whole batches been resent, the documents already indexed would come back as conflicts.
    assert (stats["retries"], stats["duplicates"], stats["sent"]) == (7, 0, 50)
    sink.close(2)


def test_a_document_the_cluster_refuses_is_counted_and_skipped(
    search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path
) -> None:
    (sink,) = build_sinks([es_spec(es_proxy, search_backend)], spool_dir=tmp_path, observer="o")
    sink.send(make_alert(1))
    assert sink.flush(10)
    bad = make_alert(2)
    bad["rule"]["id"] = {"nested": "object where a keyword lives"}
    sink.send(bad)
    sink.send(make_alert(3))
    assert sink.flush(10)
    assert sorted(search_backend.ids()) == alert_ids([1, 3])
    stats = sink.stats()
    assert (stats["failed"], stats["sent"], stats["spool_depth"]) == (1, 2, 0)
    sink.close(2)


CRASHING_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from servers import make_alert
from sensor.output.factory import build_sinks
spec = {"type": "elasticsearch", "url": sys.argv[1], "index_prefix": sys.argv[2], "name": "es",
        "backoff_base": 0.4, "backoff_max": 0.4, "batch_size": 40, "data_stream": False}
(sink,) = build_sinks([spec], spool_dir=Path(sys.argv[3]), observer="o")
for n in range(120):
    sink.send(make_alert(n))
print("queued", flush=True)
time.sleep(60)
"""


def test_killed_mid_run_the_next_run_delivers_the_rest_exactly_once(
    search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path
) -> None:
    if search_backend.kind != "osmem":
        pytest.skip("the subprocess writer has no credentials for a real cluster")
    es_proxy.drop_after_forward = 1  # first batch indexed but never confirmed
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, es_proxy.url, search_backend.prefix, str(tmp_path), str(TESTS_DIR)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "queued"
        # Let the ambiguous batch through, then refuse everything until the kill (the writer waits
        # at least 0.2 s before retrying, ample time to flip the switch).
        assert wait_until(lambda: es_proxy.bulk_requests() >= 1, 5)
        es_proxy.fail_status = 503
        assert wait_until(lambda: es_proxy.bulk_requests() >= 3, 5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    indexed_before_restart = len(search_backend.ids())
    assert 0 < indexed_before_restart < 120

    es_proxy.fail_status = 0
    (sink,) = build_sinks([es_spec(es_proxy, search_backend, name="es")], spool_dir=tmp_path, observer="o")
    assert sink.stats()["spool_depth"] == 120  # nothing was confirmed before the kill
    assert sink.flush(10)
    ids = search_backend.ids()
    assert len(ids) == 120 and sorted(ids) == alert_ids(range(120))
    assert sink.stats()["duplicates"] == indexed_before_restart
    sink.close(2)


def test_opensearch_sink_through_an_outage(osmem_backend: SearchBackend, tmp_path: Path) -> None:
    proxy = EsCompatProxy(osmem_backend.url)  # a plain relay here: opensearch-py speaks the server's dialect
    proxy.start()
    try:
        spec = {"type": "opensearch", "url": proxy.url, "index_prefix": osmem_backend.prefix, "events": True, **FAST}
        (sink,) = build_sinks([spec], spool_dir=tmp_path, observer="o")
        for n in range(50):
            sink.send(make_alert(n))
        sink.send(make_event(1))
        assert sink.flush(10)
        proxy.stop()
        for n in range(50, 120):
            sink.send(make_alert(n))
        assert wait_until(lambda: sink.stats()["retries"] > 0, 5)
        proxy.drop_after_forward = 1
        proxy.start()
        assert sink.flush(10)
        ids = osmem_backend.ids()
        assert len(ids) == 120 and sorted(ids) == alert_ids(range(120))
        assert len(osmem_backend.ids("events")) == 1
        sink.close(2)
    finally:
        proxy.stop()


# -- setup --------------------------------------------------------------------------------------
def test_setup_then_sink_gives_ecs_mappings(
    search_backend: SearchBackend, es_proxy: EsCompatProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--elasticsearch", es_proxy.url, "--no-data-stream", "--index-prefix", search_backend.prefix, "--events"]
    if search_backend.kind == "elasticsearch" and REAL_ES_API_KEY:
        argv += ["--api-key-env", "PHI_SENSOR_TEST_ES_API_KEY"]
    assert setup_main(argv) == 0
    assert setup_main(argv) == 0  # idempotent
    out, err = capsys.readouterr()
    assert out.count(f"_index_template/{search_backend.prefix}-alerts") == 2
    assert out.count("ok  Elasticsearch ") == 2  # the version negotiated first
    if search_backend.kind == "osmem":
        assert "no ILM API" in err  # osmem has no lifecycle API: templates go in without it
    (sink,) = build_sinks([es_spec(es_proxy, search_backend, events=True)], spool_dir=tmp_path, observer="o")
    sink.send(make_alert(5))
    sink.send(make_event(5))
    assert sink.flush(10)
    sink.close(2)
    mapping = search_backend.mapping(f"{search_backend.prefix}-alerts-2024.05.17")["properties"]
    assert mapping["source"]["properties"]["ip"]["type"] == "ip"
    assert mapping["event"]["properties"]["severity"]["type"] == "long"
    assert mapping["phi_egress"]["properties"]["vendor"]["properties"]["name"]["type"] == "keyword"
    assert mapping["phi_egress"]["properties"]["evidence"]["properties"]["confidence"]["type"] == "float"
    assert mapping["data_stream"]["properties"]["dataset"]["type"] == "keyword"  # a classic index mixes datasets
    events = search_backend.mapping(f"{search_backend.prefix}-events-2024.05.17")["properties"]
    assert events["dns"]["properties"]["resolved_ip"]["type"] == "ip"
    assert events["dns"]["properties"]["answers"]["properties"]["ttl"]["type"] == "long"


def test_setup_for_opensearch(osmem_backend: SearchBackend, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--opensearch", osmem_backend.url, "--index-prefix", osmem_backend.prefix]
    assert setup_main(argv) == 0
    out, err = capsys.readouterr()
    assert "no ISM API" in err
    template = osmem_backend.session.get(f"{osmem_backend.url}/_index_template/{osmem_backend.prefix}-alerts").json()
    body = template["index_templates"][0]["index_template"]
    assert body["index_patterns"] == [f"{osmem_backend.prefix}-alerts-*"]
    assert body["composed_of"] == [f"{osmem_backend.prefix}-ecs"]
    assert "lifecycle" not in body["template"]["settings"].get("index", {})


def test_setup_request_bodies_for_a_cluster_with_lifecycle_apis(webhook_server: WebhookServer) -> None:
    webhook_server.default = Behaviour(
        200, {"X-Elastic-Product": "Elasticsearch"}, body=b'{"acknowledged":true,"version":{"number":"8.17.0"}}'
    )
    assert setup_main(["--elasticsearch", webhook_server.url, "--retention-days", "2190", "--namespace", "lab"]) == 0
    sent = {r.path: r.json() if r.body else None for r in webhook_server.received}
    assert list(sent) == [
        "/", "/_ilm/policy/phi_sensor-lab-alerts", "/_component_template/phi_sensor-lab-ecs",
        "/_index_template/phi_sensor-lab-alert",
    ]
    headers = {k.lower(): v for k, v in webhook_server.received[1].headers.items()}
    assert headers["content-type"] == "application/vnd.elasticsearch+json; compatible-with=8"  # the server's major
    phases = sent["/_ilm/policy/phi_sensor-lab-alerts"]["policy"]["phases"]
    assert phases["delete"]["min_age"] == "2190d" and "rollover" in phases["hot"]["actions"]
    template = sent["/_index_template/phi_sensor-lab-alert"]
    assert template["index_patterns"] == ["logs-phi_sensor.alert-lab"] and template["data_stream"] == {}
    assert template["priority"] > 100  # wins over Elasticsearch's built-in logs-*-* template
    assert template["composed_of"] == ["phi_sensor-lab-ecs"]
    assert template["template"]["settings"]["index"]["lifecycle"] == {"name": "phi_sensor-lab-alerts"}
    assert template["template"]["mappings"]["properties"]["data_stream"]["properties"] == {
        "type": {"type": "constant_keyword", "value": "logs"},
        "dataset": {"type": "constant_keyword", "value": "phi_sensor.alert"},
        "namespace": {"type": "constant_keyword", "value": "lab"},
    }

    webhook_server.received.clear()
    webhook_server.script.append(Behaviour(200, body=b'{"_id":"phi-sensor-alerts","_seq_no":7,"_primary_term":2}'))
    assert setup_main(["--opensearch", webhook_server.url, "--index-prefix", "clinic"]) == 0  # classic by default
    paths = [r.path for r in webhook_server.received]
    assert paths[:2] == [
        "/_plugins/_ism/policies/clinic-alerts", "/_plugins/_ism/policies/clinic-alerts?if_seq_no=7&if_primary_term=2"
    ]
    ism = webhook_server.received[1].json()["policy"]
    assert ism["ism_template"][0]["index_patterns"] == ["clinic-alerts-*"]
    assert ism["states"][0]["transitions"][0]["conditions"]["min_index_age"] == "400d"
    template = webhook_server.received[3].json()
    assert template["index_patterns"] == ["clinic-alerts-*"] and "lifecycle" not in template["template"]["settings"]["index"]


def test_setup_dry_run_prints_every_request_and_sends_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code = setup_main([
        "--elasticsearch", "http://user:pw@127.0.0.1:9", "--kibana", "http://127.0.0.1:9", "--events",
        "--retention-days", "2190", "--security-rules", "--dry-run",
    ])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("PUT http://127.0.0.1:9/_ilm/policy/phi_sensor-default-alerts ") and "2190 days" in lines[0]
    assert lines[1].startswith("PUT http://127.0.0.1:9/_ilm/policy/phi_sensor-default-events ") and "30 days" in lines[1]
    assert lines[2].startswith("PUT http://127.0.0.1:9/_component_template/phi_sensor-default-ecs ")
    assert "data stream" in lines[3] and lines[3].startswith(
        "PUT http://127.0.0.1:9/_index_template/phi_sensor-default-alert "
    )
    streams = [line.split(" for ")[1].split(",")[0] for line in lines[3:9]]
    assert streams == [f"logs-phi_sensor.{name}-default" for name in ("alert", "dns", "tls", "quic", "http", "stats")]
    assert lines[9].startswith("POST http://127.0.0.1:9/api/saved_objects/_import?overwrite=true ")
    assert lines[10].startswith("POST http://127.0.0.1:9/api/detection_engine/rules ")
    assert lines[11] == "dry run: 11 request(s) not sent"
    assert "pw" not in "\n".join(lines)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], 2, "nothing to do"),
        (["--elasticsearch", "es:9200"], 2, "--elasticsearch"),
        (["--elasticsearch", "http://a", "--opensearch", "http://b"], 2, "not allowed with"),
        (["--elasticsearch", "http://a", "--retention-days", "many"], 2, "invalid int"),
        (["--elasticsearch", "http://a", "--api-key-env", "PHI_SENSOR_TEST_UNSET"], 2, "PHI_SENSOR_TEST_UNSET"),
        (["--elasticsearch", "http://a", "--username", "u"], 2, "--password-env"),
        (["--elasticsearch", "http://a", "--index-prefix", "Phi Sensor"], 2, "--index-prefix"),
        (["--elasticsearch", "http://127.0.0.1:9"], 4, "connection refused"),
    ],
)
def test_setup_errors_are_one_line_with_an_exit_code(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup_main(argv) == code
    err = capsys.readouterr().err.strip()
    assert message in err.splitlines()[-1]


def test_setup_reports_a_refusal(webhook_server: WebhookServer, capsys: pytest.CaptureFixture[str]) -> None:
    webhook_server.default = Behaviour(
        403, body=b'{"error":{"type":"security_exception","reason":"missing authentication credentials"},"status":403}'
    )
    assert setup_main(["--elasticsearch", webhook_server.url]) == 4
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"phi-sensor setup: elasticsearch at {webhook_server.url} permission denied (HTTP 403): the credentials "
        "lack the privileges the sensor needs (security_exception: missing authentication credentials)"
    )
    webhook_server.default = Behaviour(
        200, {"X-Elastic-Product": "Elasticsearch"}, body=b'{"version":{"number":"9.0.1"},"acknowledged":true}'
    )
    webhook_server.script.extend([
        Behaviour(200, {"X-Elastic-Product": "Elasticsearch"}, body=b'{"version":{"number":"9.0.1"}}'),
        Behaviour(403, body=b'{"error":{"type":"security_exception","reason":"action [cluster:admin/ilm/put] is '
                            b'unauthorized"},"status":403}'),
    ])
    assert setup_main(["--elasticsearch", webhook_server.url]) == 4
    out, err = capsys.readouterr()
    assert out.strip() == f"ok  Elasticsearch 9.0.1 at {webhook_server.url} (REST compatibility 9)"
    assert err.strip() == (
        "phi-sensor setup: elasticsearch refused PUT /_ilm/policy/phi_sensor-default-alerts: "
        "HTTP 403 security_exception: action [cluster:admin/ilm/put] is unauthorized"
    )
