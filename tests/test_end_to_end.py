"""The whole product against a real server: setup, replay into Elasticsearch data streams (where the
data view and the dashboards look), an outage, a rerun."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import PCAPS, REPO
from servers import EsCompatProxy, SearchBackend

from sensor.app.setup import Layout

EXAMPLE = yaml.safe_load((REPO / "deploy" / "config" / "sensor.example.yaml").read_text())


def sensor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True, timeout=180)


def config_for(tmp_path: Path, url: str, namespace: str, local: Path) -> Path:
    config = dict(EXAMPLE)
    config["outputs"] = [
        {"type": "elasticsearch", "url": url, "namespace": namespace, "verify": False},
        {"type": "jsonl", "path": str(local)},
    ]
    path = tmp_path / "sensor.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def alert_ids(path: Path) -> list[str]:
    return [json.loads(line)["event"]["id"] for line in path.read_text().splitlines()]


def test_setup_then_replay_indexes_every_alert_once(
    tmp_path: Path, es_proxy: EsCompatProxy, search_backend: SearchBackend
) -> None:
    setup = sensor("setup", "--elasticsearch", es_proxy.url, "--namespace", search_backend.namespace)
    assert setup.returncode == 0, setup.stderr
    local = tmp_path / "alerts.jsonl"
    config = config_for(tmp_path, es_proxy.url, search_backend.namespace, local)
    for _ in range(2):  # a second replay of the same capture must not duplicate anything
        run = sensor("replay", str(PCAPS / "demo.pcap"), "--config", str(config), "--spool-dir", str(tmp_path / "spool"),
                     "--quiet")
        assert run.returncode == 0, run.stderr
    ids = alert_ids(local)
    assert len(ids) == 2 * len(set(ids)) and ids
    # where the alerts data view (and Elastic Security's logs-* default) looks
    assert sorted(search_backend.ids_in(Layout(True, search_backend.namespace).pattern("alerts"))) == sorted(set(ids))


def test_outage_then_rerun_delivers_exactly_once(
    tmp_path: Path, es_proxy: EsCompatProxy, search_backend: SearchBackend
) -> None:
    local = tmp_path / "alerts.jsonl"
    config = config_for(tmp_path, es_proxy.url, search_backend.namespace, local)
    alerts = Layout(True, search_backend.namespace).pattern("alerts")
    spool = tmp_path / "spool"
    es_proxy.stop()  # the cluster is unreachable for the whole first run
    down = sensor("replay", str(PCAPS / "demo.pcap"), "--config", str(config), "--spool-dir", str(spool),
                  "--flush-timeout", "1", "--quiet")
    assert down.returncode == 4, down.stderr
    assert "spool" in down.stderr and "Traceback" not in down.stderr
    expected = set(alert_ids(local))
    assert expected and search_backend.ids_in(alerts) == []
    es_proxy.start()
    # the next run, even of a capture that raises nothing, delivers what the spool kept
    again = sensor("replay", str(PCAPS / "clean-network.pcap"), "--config", str(config), "--spool-dir", str(spool),
                   "--quiet")
    assert again.returncode == 0, again.stderr
    assert sorted(search_backend.ids_in(alerts)) == sorted(expected)
