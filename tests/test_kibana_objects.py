"""The Kibana saved objects and the index templates they rely on: they parse, every reference
resolves, every field they use is mapped (and aggregatable where aggregated), and `setup`
imports them the way Kibana expects."""
from __future__ import annotations

import json
import re
from email import policy
from email.parser import BytesParser
from typing import Any

import pytest
from servers import Behaviour, WebhookServer, webhook_server  # noqa: F401

from sensor.paths import KIBANA_DIR, TEMPLATES_DIR
from sensor.setup import setup_main

NDJSON = KIBANA_DIR / "phi-sensor.ndjson"
TEMPLATES = TEMPLATES_DIR
AGGREGATABLE = {"keyword", "ip", "long", "float", "date", "boolean"}
KQL_FIELD = re.compile(r"([A-Za-z_@][\w.@]*)\s*:")


def load_objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in NDJSON.read_text(encoding="utf-8").splitlines() if line.strip()]


def mapped_fields() -> dict[str, str]:
    """Every mapped field path (multi-fields included) -> its type."""
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
    return fields


def search_source(obj: dict[str, Any]) -> dict[str, Any]:
    return json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])


def test_every_line_is_a_saved_object() -> None:
    objects = load_objects()
    assert {o["type"] for o in objects} == {"index-pattern", "search", "visualization", "dashboard"}
    for obj in objects:
        assert set(obj) >= {"id", "type", "attributes", "references"}
        assert obj["attributes"]["title"]
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys))
    (data_view,) = [o for o in objects if o["type"] == "index-pattern"]
    assert data_view["attributes"]["title"] == "phi-sensor-alerts-*"
    assert data_view["attributes"]["timeFieldName"] == "@timestamp"
    titles = {o["attributes"]["title"] for o in objects}
    assert {"PHI egress: latest alerts", "PHI egress: latest plaintext PHI", "PHI egress: vendors without a BAA"} <= titles


def test_every_reference_resolves_and_every_ref_name_is_declared() -> None:
    objects = load_objects()
    present = {(o["type"], o["id"]) for o in objects}
    for obj in objects:
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


def test_dashboard_panels_do_not_overlap() -> None:
    (dashboard,) = [o for o in load_objects() if o["type"] == "dashboard"]
    cells: set[tuple[int, int]] = set()
    for panel in json.loads(dashboard["attributes"]["panelsJSON"]):
        grid = panel["gridData"]
        assert grid["x"] + grid["w"] <= 48
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & area
        cells |= area


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
    assert fields["@timestamp"] == fields["phi_egress.first_seen"] == fields["phi_egress.last_seen"] == "date"
    assert fields["event.severity"] == fields["phi_egress.count"] == fields["http.request.body.bytes"] == "long"
    assert fields["phi_egress.evidence.confidence"] == "float"
    assert fields["tls.client.server_name"] == fields["rule.id"] == fields["phi_egress.vendor.name"] == "keyword"
    assert component["template"]["mappings"]["dynamic_templates"][0]["strings_as_keyword"]["mapping"]["type"] == "keyword"
    for kind in ("alerts", "events"):
        template = json.loads((TEMPLATES / f"index-template-{kind}.json").read_text())
        assert template["index_patterns"] == [f"phi-sensor-{kind}-*"]
        assert template["composed_of"] == ["phi-sensor-ecs"]
        assert template["template"]["settings"]["index"]["lifecycle"]["name"] == f"phi-sensor-{kind}"
    ilm = json.loads((TEMPLATES / "ilm-policy.json").read_text())
    assert ilm["policy"]["phases"]["delete"] == {"min_age": "400d", "actions": {"delete": {}}}
    ism = json.loads((TEMPLATES / "ism-policy.json").read_text())["policy"]
    assert ism["ism_template"][0]["index_patterns"] == ["phi-sensor-alerts-*"]
    assert {state["name"] for state in ism["states"]} == {"hot", "delete"}


def uploaded_objects(received: Any) -> list[dict[str, Any]]:
    content_type = received.headers["Content-Type"].encode()
    message = BytesParser(policy=policy.default).parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n" + received.body)
    (part,) = list(message.iter_parts())
    assert part.get_param("name", header="content-disposition") == "file"
    assert part.get_filename().endswith(".ndjson")
    return [json.loads(line) for line in part.get_payload(decode=True).decode().splitlines() if line]


def test_setup_imports_the_saved_objects(webhook_server: WebhookServer, capsys: pytest.CaptureFixture[str]) -> None:
    webhook_server.default = Behaviour(200, body=b'{"success":true,"successCount":9}')
    assert setup_main(["--kibana", webhook_server.url, "--index-prefix", "clinic-a"]) == 0
    (request,) = webhook_server.received
    assert request.path == "/api/saved_objects/_import?overwrite=true"
    assert request.headers["kbn-xsrf"] == "true"
    objects = uploaded_objects(request)
    assert [(o["type"], o["id"]) for o in objects] == [(o["type"], o["id"]) for o in load_objects()]
    (data_view,) = [o for o in objects if o["type"] == "index-pattern"]
    assert data_view["attributes"]["title"] == "clinic-a-alerts-*"
    assert "ok  POST" in capsys.readouterr().out


def test_setup_reports_objects_kibana_refused(webhook_server: WebhookServer, capsys: pytest.CaptureFixture[str]) -> None:
    webhook_server.default = Behaviour(200, body=json.dumps({
        "success": False, "successCount": 8,
        "errors": [{"id": "phi-sensor-overview", "type": "dashboard", "error": {"type": "missing_references"}}],
    }).encode())
    assert setup_main(["--kibana", webhook_server.url]) == 4
    assert capsys.readouterr().err.strip() == (
        "phi-sensor setup: kibana refused 1 saved object(s); first: dashboard phi-sensor-overview: missing_references"
    )


def test_setup_with_kibana_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    assert setup_main(["--kibana", "http://127.0.0.1:9"]) == 4
    assert capsys.readouterr().err.strip() == "phi-sensor setup: cannot reach kibana at http://127.0.0.1:9: connection refused"

