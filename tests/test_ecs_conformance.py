"""Every document the sensor writes, held field by field against the ECS 8.11 definitions
(`../shared/reference/ecs_flat_8.11.yml`, from elastic/ecs): fields, types, allowed values, no null
or empty value, alerts with `message` and the window, one dataset scheme; and the installed
templates map every field written with its ECS type.

Documents: the story captures and the shared corpus replayed with the example configuration
(alerts and events), a stats document, and hand-made records for the shapes captures rarely hold.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PCAPS, REPO, SHARED

from sensor.app.live.stats import stats_document
from sensor.app.setup import Layout, _index_template
from sensor.output.ecs import DATASETS, EventBuilder
from sensor.paths import TEMPLATES_DIR
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, TlsHello

ECS_YML = SHARED / "reference" / "ecs_flat_8.11.yml"
CORPUS = SHARED / "corpus"
LOCAL_NAME_PROTOCOLS = {"mdns", "llmnr", "netbios-ns"}
EXAMPLE_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"
COMPONENT = TEMPLATES_DIR / "component-template-ecs.json"
OWN = "phi_egress"  # the sensor's own field set; everything else must be ECS
TEXT_TYPES = {"keyword", "wildcard", "match_only_text", "constant_keyword", "text"}

needs_ecs = pytest.mark.skipif(not ECS_YML.is_file(), reason="../shared/reference/ecs_flat_8.11.yml is absent")


@functools.cache
def ecs() -> dict[str, Any]:
    return yaml.load(ECS_YML.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def leaves(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted field, value); arrays of objects (dns.answers) give their members' fields."""
    found: list[tuple[str, Any]] = []
    for key, value in doc.items():
        name = prefix + key
        if isinstance(value, dict):
            found.extend(leaves(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            found.append((name, value))
            for item in value:
                found.extend(leaves(item, name + "."))
        else:
            found.append((name, value))
    return found


def empties(value: Any, path: str = "") -> list[str]:
    if value is None or value == "" or value == [] or value == {}:
        return [path]
    if isinstance(value, dict):
        return [hit for key, item in value.items() for hit in empties(item, f"{path}.{key}".lstrip("."))]
    if isinstance(value, list):
        return [hit for item in value for hit in empties(item, path)]
    return []


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_date(value: Any) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return False
    return True


TYPE_CHECKS = {
    "keyword": lambda v: isinstance(v, str), "wildcard": lambda v: isinstance(v, str),
    "match_only_text": lambda v: isinstance(v, str), "constant_keyword": lambda v: isinstance(v, str),
    "text": lambda v: isinstance(v, str), "long": lambda v: type(v) is int, "integer": lambda v: type(v) is int,
    "float": lambda v: type(v) in (int, float), "scaled_float": lambda v: type(v) in (int, float),
    "boolean": lambda v: type(v) is bool, "ip": _is_ip, "date": _is_date, "object": lambda v: isinstance(v, list),
}


def ecs_problems(doc: dict[str, Any]) -> list[str]:
    """What keeps `doc` from being ECS 8.11 to the letter (empty when nothing does)."""
    problems = [f"{path}: null or empty" for path in empties(doc)]
    definitions = ecs()
    for name, value in leaves(doc):
        if name.split(".")[0] == OWN:
            continue
        spec = definitions.get(name)
        if spec is None:
            problems.append(f"{name}: not an ECS field")
            continue
        values = value if isinstance(value, list) and spec["type"] != "object" else [value]
        if isinstance(value, list) and "array" not in spec.get("normalize", []):
            problems.append(f"{name}: an array where ECS expects one value")
        check = TYPE_CHECKS.get(spec["type"])
        if check is None:
            problems.append(f"{name}: ECS type {spec['type']} not known to this test")
            continue
        problems.extend(f"{name}: {item!r} is not an ECS {spec['type']}" for item in values if not check(item))
        allowed = {entry["name"] for entry in spec.get("allowed_values", [])}
        problems.extend(f"{name}: {item!r} not among ECS's allowed values" for item in values
                        if allowed and item not in allowed)
    event = doc.get("event", {})
    categories = {entry["name"]: set(entry.get("expected_event_types", []))
                  for entry in definitions["event.category"]["allowed_values"]}
    for kind in event.get("type", []):
        if not any(kind in categories.get(category, set()) for category in event.get("category", [])):
            problems.append(f"event.type: {kind} is expected by none of the categories {event.get('category')}")
    for required in ("@timestamp", "ecs", "event", "data_stream", "observer"):
        if required not in doc:
            problems.append(f"{required}: missing")
    stream = doc.get("data_stream", {})
    if event.get("dataset") != stream.get("dataset") or stream.get("dataset") not in DATASETS:
        problems.append(f"event.dataset {event.get('dataset')} / data_stream.dataset {stream.get('dataset')}")
    if stream.get("type") != "logs" or "-" in stream.get("namespace", "-"):
        problems.append(f"data_stream: {stream}")
    if event.get("kind") == "alert":
        for name in ("message", "event.start", "event.end", "event.id", "rule.id", "event.severity"):
            if not dict(leaves(doc)).get(name):
                problems.append(f"{name}: an alert needs it")
        if event.get("dataset") != "phi_sensor.alert":
            problems.append("event.dataset: an alert's is phi_sensor.alert")
    elif event.get("kind") == "event":
        protocol = doc.get("network", {}).get("protocol")
        family = "dns" if protocol in LOCAL_NAME_PROTOCOLS else protocol  # local names share the DNS dataset
        if event.get("dataset") != f"phi_sensor.{family}":
            problems.append(f"event.dataset {event.get('dataset')} does not name network.protocol")
    elif event.get("kind") == "metric" and event.get("dataset") != "phi_sensor.stats":
        problems.append("event.dataset: stats are phi_sensor.stats")
    return problems


def replayed(captures: list[Path]) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", *map(str, captures), "--config", str(EXAMPLE_CONFIG),
         "--emit", "all", "--quiet"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@functools.cache
def story_documents() -> tuple[dict[str, Any], ...]:
    """The story captures and the protocol fixtures (tunnels, STARTTLS, local names, ...)."""
    fixtures = sorted((Path(__file__).parent / "data").glob("*.pcap"))
    return tuple(replayed([*sorted(PCAPS.glob("*.pcap")), *fixtures]))


@functools.cache
def corpus_documents() -> tuple[dict[str, Any], ...]:
    captures = sorted(p for p in CORPUS.glob("*") if p.suffix in (".pcap", ".pcapng"))
    return tuple(replayed(captures)) if captures else ()


def odd_documents() -> list[dict[str, Any]]:
    """Shapes captures seldom hold: no server name, no version, an unanswered query, the root name,
    answers with broken data, an IP literal Host, a request without headers, and a stats document."""
    builder = EventBuilder("sensor-1", lambda host: "")
    tcp, udp = Flow("10.0.0.5", 40000, "192.0.2.9", 443, "tcp"), Flow("fd00::5", 5353, "fd00::53", 53, "udp")
    records = [
        TlsHello(1.0, tcp, "tls", None), TlsHello(1.0, tcp, "quic", "", ("h3",), True, "1.3"),
        DnsQuery(1.0, udp, 7, "", "A"), DnsQuery(1.0, udp, 8, "a.example", "AAAA", True, "NXDOMAIN"),
        DnsQuery(1.0, udp, 9, "b.example", "A", True, "NOERROR", (  # broken rdata, as decode writes it
            DnsAnswer("", "A", "0a0000", 5), DnsAnswer("b.example", "A", "", 5), DnsAnswer("b.example", "A", "192.0.2.1", 5),
        )),
        HttpRequest(1.0, tcp, "GET", "/", "1.1", (), "fd00::9"),
        HttpRequest(1.0, tcp, "CONNECT", "a.example:443", "1.1", (("User-Agent", "curl/8"),), "a.example"),
        HttpRequest(1.0, tcp, "GET", "http://a.example/p?q=1", "1.0", (), None),
    ]
    docs = [builder(record) for record in records]
    docs.append(stats_document(
        [{"counters": {"packets": 3}, "kernel": {}, "flows_active": 0, "interface_down_events": 0, "interface_up": True}],
        [], now=5.0, uptime=5.0, period=5.0, previous=(0, 0), interval=5.0, observer="sensor-1", interface="eth0",
        reloads=(0, 0),
    ))
    return docs


@functools.cache
def tunnelled_documents() -> tuple[dict[str, Any], ...]:
    """The story captures wrapped in every encapsulation the decoder takes (VXLAN, GRE, NFLOG, ...)."""
    from test_tunnels import ENCAPSULATIONS, replay, wrapped_dir

    with tempfile.TemporaryDirectory() as scratch:
        docs = []
        for name in sorted(ENCAPSULATIONS):
            docs += replay(wrapped_dir(name, Path(scratch)), "--emit", "all", "--prefilter", "never")
    return tuple(docs)


@needs_ecs
def test_tunnelled_documents_are_ecs() -> None:
    docs = tunnelled_documents()
    assert {doc["phi_egress"]["tunnel"]["type"] for doc in docs if "tunnel" in doc.get("phi_egress", {})} >= {
        "vxlan", "gre"
    }
    for doc in docs:
        assert ecs_problems(doc) == [], doc


@needs_ecs
def test_the_checker_finds_what_is_not_ecs() -> None:
    good = story_documents()[0]
    assert ecs_problems(good) == []
    bad = json.loads(json.dumps(good))
    bad["dns"] = {"id": 7, "question": {"name": ""}}
    bad["tls"] = {"client": {}}
    bad["event"]["kind"] = "notice"
    bad["event"]["dataset"] = "dns"
    bad["network"]["bytes"] = "many"
    problems = "\n".join(ecs_problems(bad))
    for expected in ("dns.id: 7 is not an ECS keyword", "dns.question.name: null or empty", "tls.client: null or empty",
                     "event.kind: 'notice' not among", "event.dataset dns", "network.bytes: 'many' is not an ECS long"):
        assert expected in problems


@needs_ecs
def test_story_documents_are_ecs() -> None:
    docs = story_documents()
    assert {doc["event"]["kind"] for doc in docs} == {"alert", "event"}
    assert {doc["event"]["dataset"] for doc in docs} >= {
        "phi_sensor.dns", "phi_sensor.tls", "phi_sensor.quic", "phi_sensor.http", "phi_sensor.alert"
    }
    for doc in docs:
        assert ecs_problems(doc) == [], doc
    for alert in (doc for doc in docs if doc["event"]["kind"] == "alert"):
        assert alert["message"] == alert["phi_egress"]["summary"]
        assert (alert["event"]["start"], alert["event"]["end"]) == (
            alert["phi_egress"]["first_seen"], alert["phi_egress"]["last_seen"]
        )


@needs_ecs
def test_corpus_documents_are_ecs() -> None:
    docs = corpus_documents()
    if not docs:
        pytest.skip("../shared/corpus is absent")
    for doc in docs:
        assert ecs_problems(doc) == [], doc


@needs_ecs
def test_odd_shapes_and_stats_are_ecs() -> None:
    for doc in odd_documents():
        assert ecs_problems(doc) == [], doc


def template_mapping(dataset: str) -> dict[str, dict[str, Any]]:
    """Field -> mapping of a data stream of `dataset`: the component template with what the index
    template setup installs adds."""
    component = json.loads(COMPONENT.read_text())["template"]["mappings"]["properties"]
    kind = "alerts" if dataset == "phi_sensor.alert" else "events"
    index = _index_template(Layout(True), kind, ["x"], dataset, lifecycle=False)["template"]["mappings"]["properties"]
    fields: dict[str, dict[str, Any]] = {}

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                fields[prefix + name] = spec

    walk(component, "")
    walk(index, "")
    return fields


@needs_ecs
def test_templates_map_every_field_written_with_its_ecs_type() -> None:
    docs = [*story_documents(), *corpus_documents(), *odd_documents(), *tunnelled_documents()]
    checked = set()
    for doc in docs:
        mapping = template_mapping(doc["data_stream"]["dataset"])
        for name, value in leaves(doc):
            if name.startswith(("phi_egress.stats.kernel.", "phi_egress.stats.records.", "phi_egress.stats.counters.",
                                "phi_egress.stats.alerts.by_rule.", "phi_egress.stats.sinks.")):
                continue  # counters by name, mapped by the stats dynamic templates
            if isinstance(value, list) and value and isinstance(value[0], dict):
                continue  # an array of objects: its members' fields are checked
            spec = ecs().get(name)
            assert name in mapping, f"{name} is not mapped"
            checked.add(name)
            if name.startswith(OWN + "."):
                continue
            assert mapping[name]["type"] == spec["type"], name
            for multi in spec.get("multi_fields", []):
                assert mapping[name]["fields"][multi["name"]]["type"] == multi["type"], name
    assert {"url.original", "url.path", "message", "dns.id", "event.start", "data_stream.dataset",
            "observer.ingress.interface.name"} <= checked
    url = template_mapping("phi_sensor.http")
    assert url["url.original"] == url["url.path"] == {"type": "wildcard", "fields": {"text": {"type": "match_only_text"}}}


@needs_ecs
def test_every_ecs_field_in_the_template_has_its_ecs_type() -> None:
    mapping = template_mapping("phi_sensor.alert")
    for name, spec in mapping.items():
        if name.startswith(OWN + "."):
            continue
        assert name in ecs(), f"{name} is mapped but not ECS"
        assert spec["type"] == ecs()[name]["type"], name
        if spec["type"] == "keyword":
            assert spec.get("ignore_above") == ecs()[name].get("ignore_above"), name
