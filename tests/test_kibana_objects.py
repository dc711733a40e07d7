"""The Kibana saved objects, the Elastic Security rule and the index templates they rely on: they
parse, every reference resolves, every field they use is mapped (and aggregatable where
aggregated), every value they filter on is one the sensor emits, and `setup` imports them the way
Kibana expects, under ids of their own for each install."""
from __future__ import annotations

import ast
import inspect
import json
import re
from email import policy
from email.parser import BytesParser
from typing import Any

import pytest
from servers import Behaviour, WebhookServer

from sensor.app.setup import SECURITY_RULES_DIR, Layout, kibana_objects, security_rules, setup_main
from sensor.detect.rules import ALL_RULES
from sensor.enrich.baa import BaaRegistry
from sensor.output.ecs import DATASETS, MODULE
from sensor.paths import KIBANA_DIR, TEMPLATES_DIR
from sensor.severity import SEVERITY_SCORE

NDJSON = KIBANA_DIR / "phi-sensor.ndjson"
TEMPLATES = TEMPLATES_DIR
AGGREGATABLE = {"keyword", "constant_keyword", "wildcard", "ip", "long", "float", "date", "boolean"}
KQL_FIELD = re.compile(r"([A-Za-z_@][\w.@]*)\s*:")
# `field : "value"` and `field : ("a" or "b")`
KQL_VALUES = re.compile(r'([A-Za-z_@][\w.@]*)\s*:\s*(\("[^)]*"\)|"[^"]*")')


def load_objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in NDJSON.read_text(encoding="utf-8").splitlines() if line.strip()]


def mapped_fields() -> dict[str, str]:
    """Every mapped field path (multi-fields included) -> its type: the component template and what
    the data stream index templates add."""
    component = json.loads((TEMPLATES / "component-template-ecs.json").read_text())
    fields: dict[str, str] = {}

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            path = f"{prefix}{name}"
            if "properties" in spec:
                walk(spec["properties"], f"{path}.")
                continue
            fields[path] = spec["type"]
            for sub, sub_spec in spec.get("fields", {}).items():
                fields[f"{path}.{sub}"] = sub_spec["type"]

    walk(component["template"]["mappings"]["properties"], "")
    for name in ("type", "dataset", "namespace"):
        fields[f"data_stream.{name}"] = "constant_keyword"
    return fields


def search_source(obj: dict[str, Any]) -> dict[str, Any]:
    return json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])


def emitted_values() -> dict[str, set[str]]:
    """What the sensor writes in the fields the objects filter on, read from where it is decided."""
    source = inspect.getsource(BaaRegistry.standing)
    tree = ast.parse(source.replace("\n    ", "\n").strip())
    baa = {node.value.elts[-1].value for node in ast.walk(tree)
           if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple)}
    return {
        "phi_egress.baa.status": baa,
        "rule.id": {rule.INFO.id for rule in ALL_RULES},
        "phi_egress.severity": set(SEVERITY_SCORE),
        "event.kind": {"alert", "event", "metric"},
        "event.module": {MODULE},
        "event.dataset": set(DATASETS),
    }


def kql_values(query: str) -> list[tuple[str, str]]:
    return [(name, value) for name, values in KQL_VALUES.findall(query) for value in re.findall(r'"([^"]*)"', values)]


def queries() -> list[tuple[str, str]]:
    found = [(obj["id"], search_source(obj)["query"]["query"]) for obj in load_objects()
             if obj["type"] in ("search", "visualization")]
    found += [(rule["rule_id"], rule["query"]) for rule in security_rules(Layout(True))]
    return found


def test_every_line_is_a_saved_object() -> None:
    objects = load_objects()
    assert {o["type"] for o in objects} == {"index-pattern", "search", "visualization", "dashboard"}
    for obj in objects:
        assert set(obj) >= {"id", "type", "attributes", "references"}
        assert obj["attributes"]["title"] and obj["id"].startswith("phi-sensor-")
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys))
    views = {o["id"]: o["attributes"] for o in objects if o["type"] == "index-pattern"}
    assert set(views) == {"phi-sensor-alerts", "phi-sensor-events"}
    assert all(view["timeFieldName"] == "@timestamp" for view in views.values())
    titles = {o["attributes"]["title"] for o in objects}
    assert {
        "PHI egress: latest alerts", "PHI egress: latest plaintext PHI", "PHI egress: vendors without a BAA",
        "PHI egress: alerts over time by rule", "PHI egress: alerts over time by severity", "PHI egress: top PHI hosts",
        "PHI egress: health data types", "PHI egress: data flows", "PHI egress: latest protocol events",
    } <= titles


def test_every_reference_resolves_and_every_ref_name_is_declared() -> None:
    for layout in (Layout(True), Layout(True, "clinic_b"), Layout(False, prefix="clinic-a")):
        objects, _ = kibana_objects(layout)
        present = {(o["type"], o["id"]) for o in objects}
        for obj in objects:
            assert obj["id"].startswith(layout.install + "-")
            names = {ref["name"] for ref in obj["references"]}
            for ref in obj["references"]:
                assert (ref["type"], ref["id"]) in present, f"{obj['id']} -> {ref}"
            if obj["type"] in ("search", "visualization"):
                assert search_source(obj)["indexRefName"] in names
            if obj["type"] == "dashboard":
                panels = json.loads(obj["attributes"]["panelsJSON"])
                assert {panel["panelRefName"] for panel in panels} == names
                assert len({panel["panelIndex"] for panel in panels}) == len(panels)
        dashboards = [o for o in objects if o["type"] == "dashboard"]
        shown = {ref["id"] for d in dashboards for ref in d["references"]}
        assert shown == {o["id"] for o in objects if o["type"] in ("search", "visualization")}


def test_two_installs_share_no_object_and_each_view_reads_its_own_indices() -> None:
    first, _ = kibana_objects(Layout(True))
    second, _ = kibana_objects(Layout(True, "clinic_b"))
    classic, _ = kibana_objects(Layout(False, prefix="clinic-a"))
    ids = [{(o["type"], o["id"]) for o in objects} for objects in (first, second, classic)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    views = {o["id"]: o["attributes"]["title"] for o in second if o["type"] == "index-pattern"}
    assert views == {
        "phi_sensor-clinic_b-alerts": "logs-phi_sensor.alert-clinic_b",
        "phi_sensor-clinic_b-events": "logs-phi_sensor.dns-clinic_b,logs-phi_sensor.tls-clinic_b,"
                                      "logs-phi_sensor.quic-clinic_b,logs-phi_sensor.http-clinic_b",
    }
    views = {o["id"]: o["attributes"]["title"] for o in classic if o["type"] == "index-pattern"}
    assert views == {"clinic-a-alerts": "clinic-a-alerts-*", "clinic-a-events": "clinic-a-events-*"}
    (rule,) = security_rules(Layout(True, "clinic_b"))
    assert rule["rule_id"] == "phi_sensor-clinic_b-phi-in-tracker-payload"
    assert rule["index"] == ["logs-phi_sensor.alert-clinic_b"]


def test_every_filter_value_is_one_the_sensor_emits() -> None:
    emitted = emitted_values()
    assert emitted["phi_egress.baa.status"] == {"on-file", "expired", "not-yet-signed", "none"}
    filtered = 0
    for owner, query in queries():
        for name, value in kql_values(query):
            assert name in emitted, f"{owner} filters on {name}, whose values this test does not know"
            assert value in emitted[name], f"{owner}: {name} is never {value!r}"
            filtered += 1
    assert filtered >= 15
    # "without a BAA" means every status but on-file: none on file, expired, not yet signed
    no_baa = [query for owner, query in queries() if "vendors-without-baa" in owner]
    assert len(no_baa) == 2
    for query in no_baa:
        statuses = {value for name, value in kql_values(query) if name == "phi_egress.baa.status"}
        assert statuses == emitted["phi_egress.baa.status"] - {"on-file"}


def test_the_security_rule_turns_a_critical_tracker_payload_alert_into_a_security_alert() -> None:
    (path,) = SECURITY_RULES_DIR.glob("*.json")
    rule = json.loads(path.read_text())
    assert rule["type"] == "query" and rule["language"] == "kuery" and rule["severity"] == "critical"
    assert rule["risk_score"] == SEVERITY_SCORE["critical"]
    assert ("rule.id", "phi-in-tracker-payload") in kql_values(rule["query"])
    assert ("phi_egress.severity", "critical") in kql_values(rule["query"])
    fields = mapped_fields()
    for name in [*KQL_FIELD.findall(rule["query"]), rule["rule_name_override"], rule["timestamp_override"]]:
        assert name in fields
    for required in rule["required_fields"]:
        assert fields[required["name"]] == required["type"]


def test_every_field_used_is_mapped_and_aggregations_use_aggregatable_types() -> None:
    fields = mapped_fields()
    used: list[tuple[str, str]] = []  # (object id, field)
    aggregated: list[tuple[str, str]] = []
    for obj in load_objects():
        attributes = obj["attributes"]
        if obj["type"] == "index-pattern":
            used.append((obj["id"], attributes["timeFieldName"]))
            continue
        if obj["type"] in ("search", "visualization"):
            query = search_source(obj)["query"]["query"]
            used.extend((obj["id"], name) for name in KQL_FIELD.findall(query))
        if obj["type"] == "search":
            used.extend((obj["id"], column) for column in attributes["columns"])
            used.extend((obj["id"], field) for field, _ in attributes["sort"])
        if obj["type"] == "visualization":
            for agg in json.loads(attributes["visState"])["aggs"]:
                if "field" in agg["params"]:
                    aggregated.append((obj["id"], agg["params"]["field"]))
    assert len(used) > 20 and len(aggregated) >= 7
    for owner, name in used + aggregated:
        assert name in fields, f"{owner} uses {name}, which the template does not map"
    for owner, name in aggregated:
        assert fields[name] in AGGREGATABLE, f"{owner} aggregates on {name} ({fields[name]})"


def test_templates_fit_together() -> None:
    component = json.loads((TEMPLATES / "component-template-ecs.json").read_text())
    fields = mapped_fields()
    assert fields["source.ip"] == fields["destination.ip"] == fields["related.ip"] == fields["dns.resolved_ip"] == "ip"
    assert fields["@timestamp"] == fields["phi_egress.first_seen"] == fields["event.start"] == "date"
    assert fields["event.severity"] == fields["phi_egress.count"] == fields["http.request.body.bytes"] == "long"
    assert fields["phi_egress.evidence.confidence"] == "float"
    assert fields["tls.client.server_name"] == fields["rule.id"] == fields["phi_egress.vendor.name"] == "keyword"
    assert fields["url.original"] == fields["url.path"] == "wildcard"
    assert fields["url.original.text"] == fields["url.path.text"] == fields["message"] == "match_only_text"
    dynamic = component["template"]["mappings"]["dynamic_templates"]
    assert dynamic[-1]["strings_as_keyword"]["mapping"]["type"] == "keyword"
    for kind in ("alerts", "events"):
        template = json.loads((TEMPLATES / f"index-template-{kind}.json").read_text())
        assert "lifecycle" in template["template"]["settings"]["index"]
    ilm = json.loads((TEMPLATES / "ilm-policy.json").read_text())
    assert ilm["policy"]["phases"]["delete"] == {"min_age": "400d", "actions": {"delete": {}}}
    ism = json.loads((TEMPLATES / "ism-policy.json").read_text())["policy"]
    assert {state["name"] for state in ism["states"]} == {"hot", "delete"}


def uploaded_objects(received: Any) -> list[dict[str, Any]]:
    content_type = received.headers["Content-Type"].encode()
    message = BytesParser(policy=policy.default).parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n" + received.body)
    (part,) = list(message.iter_parts())
    assert part.get_param("name", header="content-disposition") == "file"
    assert part.get_filename().endswith(".ndjson")
    return [json.loads(line) for line in part.get_payload(decode=True).decode().splitlines() if line]


def test_setup_imports_the_saved_objects(webhook_server: WebhookServer, capsys: pytest.CaptureFixture[str]) -> None:
    webhook_server.default = Behaviour(200, body=b'{"success":true,"successCount":14}')
    assert setup_main(["--kibana", webhook_server.url, "--no-data-stream", "--index-prefix", "clinic-a"]) == 0
    (request,) = webhook_server.received
    assert request.path == "/api/saved_objects/_import?overwrite=true"
    assert request.headers["kbn-xsrf"] == "true"
    objects = uploaded_objects(request)
    assert [(o["type"], o["id"]) for o in objects] == [
        (o["type"], "clinic-a" + o["id"].removeprefix("phi-sensor")) for o in load_objects()
    ]
    views = {o["id"]: o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"}
    assert views == {"clinic-a-alerts": "clinic-a-alerts-*", "clinic-a-events": "clinic-a-events-*"}
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok  POST")
    # one line per object
    assert out[1:] == [f"ok  kibana {o['type']} {o['id']}: {o['attributes']['title']}" for o in objects]


def test_setup_installs_the_security_rule_and_updates_it_the_second_time(
    webhook_server: WebhookServer, capsys: pytest.CaptureFixture[str]
) -> None:
    webhook_server.default = Behaviour(200, body=b'{"success":true}')
    webhook_server.script.extend([
        Behaviour(200, body=b'{"success":true}'), Behaviour(200, body=b'{"id":"x"}'),  # first install
        Behaviour(200, body=b'{"success":true}'),
        Behaviour(409, body=b'{"message":"rule_id: \\"phi_sensor-lab-phi-in-tracker-payload\\" already exists"}'),
        Behaviour(200, body=b'{"id":"x"}'),
    ])
    argv = ["--kibana", webhook_server.url, "--namespace", "lab", "--security-rules"]
    assert setup_main(argv) == 0
    assert setup_main(argv) == 0
    calls = [(r.path, json.loads(r.body)["rule_id"] if r.path.endswith("/rules") else None) for r in webhook_server.attempts]
    rule = ("/api/detection_engine/rules", "phi_sensor-lab-phi-in-tracker-payload")
    assert calls[1] == calls[3] == calls[4] == rule
    assert webhook_server.attempts[1].headers["kbn-xsrf"] == "true"
    assert json.loads(webhook_server.attempts[1].body)["index"] == ["logs-phi_sensor.alert-lab"]
    assert capsys.readouterr().out.count("ok  POST") == 4
    assert setup_main(["--security-rules"]) == 2



def test_setup_reports_objects_kibana_refused(webhook_server: WebhookServer, capsys: pytest.CaptureFixture[str]) -> None:
    webhook_server.default = Behaviour(200, body=json.dumps({
        "success": False, "successCount": 8,
        "errors": [{"id": "phi_sensor-default-overview", "type": "dashboard", "error": {"type": "missing_references"}},
                   {"id": "phi_sensor-default-alerts", "type": "index-pattern", "error": {"type": "conflict"}}],
    }).encode())
    assert setup_main(["--kibana", webhook_server.url]) == 4
    assert capsys.readouterr().err.strip().splitlines() == [
        "kibana refused index-pattern phi_sensor-default-alerts: conflict",
        "phi-sensor setup: kibana refused 2 saved object(s); first: dashboard phi_sensor-default-overview: missing_references",
    ]


def test_setup_with_kibana_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    assert setup_main(["--kibana", "http://127.0.0.1:9"]) == 4
    assert capsys.readouterr().err.strip() == "phi-sensor setup: cannot reach kibana at http://127.0.0.1:9: connection refused"

