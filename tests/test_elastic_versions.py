"""Elasticsearch 8 and 9 through the real official client: the sink and `setup` ask the server its
version and speak the REST compatibility version both understand; a refusal is one clear line;
data streams take `create` only. The servers are osmem (OpenSearch-compatible, real) behind a
loopback proxy that answers like an 8.x or a 9.x Elasticsearch (tests/servers.py), and osmem itself
as OpenSearch."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PCAPS, REPO
from elasticsearch import BadRequestError, Elasticsearch
from servers import Behaviour, EsCompatProxy, SearchBackend, WebhookServer, make_alert

from sensor.app.setup import Layout, setup_main
from sensor.output.elasticsearch import CLIENT_MAJOR, elasticsearch_client, negotiate
from sensor.output.factory import build_sinks

EXAMPLE = yaml.safe_load((REPO / "deploy" / "config" / "sensor.example.yaml").read_text())
FAST = {"backoff_base": 0.02, "backoff_max": 0.2, "timeout": 5}


def proxy_for(backend: SearchBackend, version: str) -> EsCompatProxy:
    proxy = EsCompatProxy(backend.url, version)
    proxy.start()
    return proxy


def sensor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(CLIENT_MAJOR != 9, reason="the refusal shown is client 9's against server 8")
def test_the_proxy_refuses_what_an_8x_refuses(osmem_backend: SearchBackend) -> None:
    """The emulation bites: the client left to itself sends compatible-with=9, which 8.x refuses."""
    proxy = proxy_for(osmem_backend, "8.17.0")
    try:
        client = Elasticsearch(proxy.url, max_retries=0)
        with pytest.raises(BadRequestError) as refused:
            client.info()
        assert refused.value.body["error"]["type"] == "media_type_header_exception"
        assert "Accept version must be either version 8 or 7, but found 9" in json.dumps(refused.value.body)
        client.close()
    finally:
        proxy.stop()


def test_the_client_speaks_the_version_the_server_understands(es_like: EsCompatProxy) -> None:
    client = elasticsearch_client(es_like.url)
    assert negotiate(client) == f"Elasticsearch {es_like.version}"
    assert client.phi_compat.major == min(es_like.major, CLIENT_MAJOR)
    client.indices.create(index="probe")
    client.index(index="probe", id="1", document={"@timestamp": "2024-05-17T10:00:00Z"})
    assert client.get(index="probe", id="1")["_source"] == {"@timestamp": "2024-05-17T10:00:00Z"}
    assert es_like.compat_seen == {min(es_like.major, CLIENT_MAJOR)} and es_like.media_refusals == 0
    client.close()


def test_one_replay_delivers_every_alert_exactly_once_to_es8_es9_and_opensearch(
    osmem_backend: SearchBackend, tmp_path: Path
) -> None:
    es8, es9 = proxy_for(osmem_backend, "8.17.0"), proxy_for(osmem_backend, "9.1.0")
    try:
        for proxy, namespace in ((es8, "es8"), (es9, "es9")):
            done = sensor("setup", "--elasticsearch", proxy.url, "--namespace", namespace, "--events")
            assert done.returncode == 0, done.stderr
            assert f"ok  Elasticsearch {proxy.version} at {proxy.url}" in done.stdout
        done = sensor("setup", "--opensearch", osmem_backend.url, "--index-prefix", "os-classic")
        assert done.returncode == 0, done.stderr
        local = tmp_path / "alerts.jsonl"
        config = dict(EXAMPLE)
        config["outputs"] = [
            {"type": "elasticsearch", "url": es8.url, "namespace": "es8", "events": True, **FAST},
            {"type": "elasticsearch", "url": es9.url, "namespace": "es9", **FAST},
            {"type": "opensearch", "url": osmem_backend.url, "index_prefix": "os-classic", **FAST},
            {"type": "jsonl", "path": str(local)},
        ]
        path = tmp_path / "sensor.yaml"
        path.write_text(yaml.safe_dump(config))
        captures = [str(p) for p in sorted(PCAPS.glob("*.pcap"))]
        for _ in range(2):  # the second replay re-sends every alert under the same ids
            run = sensor("replay", *captures, "--config", str(path), "--spool-dir", str(tmp_path / "spool"),
                         "--emit", "all", "--quiet")
            assert run.returncode == 0, run.stderr
        written = [json.loads(line) for line in local.read_text().splitlines()]
        alerts = {doc["event"]["id"] for doc in written if doc["event"]["kind"] == "alert"}
        assert len(alerts) >= 10
        for pattern in (Layout(True, "es8").pattern("alerts"), Layout(True, "es9").pattern("alerts"),
                        Layout(False, prefix="os-classic").pattern("alerts")):
            found = osmem_backend.ids_in(pattern)
            assert sorted(found) == sorted(alerts), pattern  # each alert once, where the data view looks
        events = osmem_backend.ids_in(Layout(True, "es8").pattern("events"))
        # events get ids from their content: the second replay re-sends each under the same id
        assert len(events) == len(set(events)) == sum(1 for doc in written if doc["event"]["kind"] == "event") // 2
        assert osmem_backend.ids_in(Layout(True, "es9").pattern("events")) == []  # es9 takes alerts only
        for proxy in (es8, es9):
            assert proxy.compat_seen == {min(proxy.major, CLIENT_MAJOR)} and proxy.media_refusals == 0
        mapping = osmem_backend.mapping("logs-phi_sensor.alert-es8")["properties"]
        assert mapping["url"]["properties"]["original"]["type"] == "wildcard"
        assert mapping["message"]["type"] == "match_only_text"
        assert mapping["data_stream"]["properties"]["dataset"] == {"type": "constant_keyword", "value": "phi_sensor.alert"}
    finally:
        es8.stop()
        es9.stop()


def test_a_data_stream_takes_create_only_and_a_resent_alert_stays_one_document(
    es_like: EsCompatProxy, osmem_backend: SearchBackend, tmp_path: Path
) -> None:
    assert setup_main(["--elasticsearch", es_like.url, "--namespace", "lab"]) == 0
    (sink,) = build_sinks([{"type": "elasticsearch", "url": es_like.url, "namespace": "lab", **FAST}],
                          spool_dir=tmp_path, observer="o")

    def version(n: int, count: int, severity: str = "high") -> dict[str, Any]:
        doc = make_alert(n, severity)
        doc["phi_egress"]["count"] = count
        return doc

    def stored(n: int) -> dict[str, Any]:
        doc_id = make_alert(n)["event"]["id"]
        return osmem_backend.session.get(f"{osmem_backend.url}/logs-phi_sensor.alert-lab/_doc/{doc_id}").json()["_source"]

    sink.send(version(1, 1))
    assert sink.flush(10)
    sink.send(version(1, 5))  # the window's final count: 409 on create, then it replaces the stored one
    assert sink.flush(10)
    sink.send(version(1, 3))  # a stale copy arriving late: 409, and the stored one is stronger
    sink.send(version(1, 3, "critical"))  # an escalation: a higher severity wins whatever the count
    assert sink.flush(10)
    assert osmem_backend.ids_in("logs-phi_sensor.alert-lab") == [make_alert(1)["event"]["id"]]
    assert (stored(1)["phi_egress"]["count"], stored(1)["phi_egress"]["severity"]) == (3, "critical")
    assert stored(1)["data_stream"] == {"type": "logs", "dataset": "phi_sensor.alert", "namespace": "lab"}
    stats = sink.stats()
    assert (stats["sent"], stats["duplicates"], stats["superseded"]) == (4, 3, 2)

    es_like.forbid_updates = True  # a key that may only create: the first version stands, still delivered
    sink.send(version(2, 1))
    sink.send(version(2, 9))
    assert sink.flush(10)
    assert stored(2)["phi_egress"]["count"] == 1
    assert (sink.stats()["not_superseded"], sink.stats()["spool_depth"]) == (1, 0)
    sink.close(2)

    client = elasticsearch_client(es_like.url)
    answer = client.bulk(operations=[{"index": {"_index": "logs-phi_sensor.alert-lab", "_id": "x"}},
                                     {"@timestamp": "2024-05-17T10:00:00Z"}])
    assert answer["items"][0]["index"]["error"]["type"] == "illegal_argument_exception"  # as Elasticsearch says
    client.close()


REFUSALS = {
    401: "authentication failed (HTTP 401): check the API key or the user and password",
    403: "permission denied (HTTP 403): the credentials lack the privileges the sensor needs",
    406: "refused the request format (HTTP 406 Not Acceptable)",
}


@pytest.mark.parametrize("status", sorted(REFUSALS))
def test_a_refusal_is_one_line_for_setup_and_for_the_sink(
    status: int, osmem_backend: SearchBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = proxy_for(osmem_backend, "8.17.0")
    proxy.fail_status = status
    try:
        assert setup_main(["--elasticsearch", proxy.url]) == 4
        line = f"phi-sensor setup: elasticsearch at {proxy.url} {REFUSALS[status]} (unavailable: proxy says no)"
        assert capsys.readouterr().err.strip() == line
        with caplog.at_level(logging.WARNING):
            (sink,) = build_sinks([{"type": "elasticsearch", "url": proxy.url, **FAST}], spool_dir=tmp_path, observer="o")
            sink.send(make_alert(1))
            assert not sink.flush(0.5)
            sink.close(0)
        assert f"delivery failed, retrying with backoff: the server {REFUSALS[status]}" in caplog.text
    finally:
        proxy.stop()


def test_a_server_that_is_not_elasticsearch_is_named(
    osmem_backend: SearchBackend, webhook_server: WebhookServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup_main(["--elasticsearch", osmem_backend.url]) == 4
    assert capsys.readouterr().err.strip().endswith(
        "is OpenSearch, not Elasticsearch: use opensearch=URL (setup --opensearch URL)"
    )
    webhook_server.default = Behaviour(200, body=b'{"ok":true}')
    assert setup_main(["--elasticsearch", webhook_server.url]) == 4
    assert capsys.readouterr().err.strip() == (
        f"phi-sensor setup: elasticsearch at {webhook_server.url} does not answer as Elasticsearch "
        "(no X-Elastic-Product header or version in GET /)"
    )
    old = proxy_for(osmem_backend, "7.17.0")
    try:
        assert setup_main(["--elasticsearch", old.url]) == 4
        assert capsys.readouterr().err.strip().endswith(
            "is Elasticsearch 7.17.0; this sensor writes to Elasticsearch 8.x and 9.x"
        )
    finally:
        old.stop()


def test_the_opensearch_output_keeps_its_own_client(osmem_backend: SearchBackend, tmp_path: Path) -> None:
    (sink,) = build_sinks([{"type": "opensearch", "url": osmem_backend.url, "index_prefix": "os", **FAST}],
                          spool_dir=tmp_path, observer="o")
    sink.send(make_alert(3))
    assert sink.flush(10)
    assert osmem_backend.ids_in("os-alerts-*") == [make_alert(3)["event"]["id"]]
    sink.close(2)
