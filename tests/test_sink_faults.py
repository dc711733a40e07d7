"""Nothing refused goes unseen: against the real OpenSearch-compatible server behind a fault
proxy, documents refused for good go to a dead-letter file (exit 4), events retried after a lost
answer are not indexed twice, and the spool is written before any other output."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PCAPS, REPO
from servers import EsCompatProxy, SearchBackend

EXAMPLE = yaml.safe_load((REPO / "deploy" / "config" / "sensor.example.yaml").read_text())


class RefusingProxy(EsCompatProxy):
    """The fault proxy, refusing bulk items with `reject_status` (400: the document is unacceptable)."""

    reject_status = 400

    def take_rejections(self, body: bytes) -> tuple[bytes, dict[int, dict[str, Any]]]:
        kept_body, rejected = super().take_rejections(body)
        for item in rejected.values():
            meta = next(iter(item.values()))
            meta["status"] = self.reject_status
            meta["error"] = {"type": "mapper_parsing_exception", "reason": "failed to parse field [x]"}
        return kept_body, rejected


@pytest.fixture
def proxy(osmem_backend: SearchBackend):
    server = RefusingProxy(osmem_backend.url)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sensor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor", *args], capture_output=True, text=True, timeout=180,
        env={**os.environ, **(env or {})},
    )


def config(tmp_path: Path, url: str, prefix: str, local: Path, events: bool = False) -> Path:
    doc = dict(EXAMPLE)
    doc["outputs"] = [
        {"type": "jsonl", "path": str(local)},  # listed first: the spool must still be written first
        # classic indices: the prefix names where the documents land (osmem has no data streams)
        {"type": "elasticsearch", "url": url, "index_prefix": prefix, "verify": False, "events": events,
         "data_stream": False},
    ]
    path = tmp_path / "sensor.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_refused_for_good_goes_to_the_dead_letter_file_and_exit_4(
    tmp_path: Path, proxy: RefusingProxy, osmem_backend: SearchBackend
) -> None:
    local, spool = tmp_path / "alerts.jsonl", tmp_path / "spool"
    proxy.reject_items = 2
    run = sensor("replay", str(PCAPS / "demo.pcap"), "--config", str(config(tmp_path, proxy.url, osmem_backend.prefix, local)),
                 "--spool-dir", str(spool), "--quiet", "--stats", "--flush-timeout", "20")
    assert run.returncode == 4, run.stderr
    dead = sorted(spool.glob("*.dead-letter.jsonl"))
    assert len(dead) == 1
    refused = lines(dead[0])
    assert sorted(doc["event"]["id"] for doc in refused) == sorted(proxy.rejected_ids)
    assert f"2 document(s) refused for good, kept in {dead[0]}" in run.stderr
    assert any(line.split()[-1] == "2" and "dead_lettered" in line for line in run.stderr.splitlines())
    # everything else was indexed, once; nothing is left in the spool to retry forever
    written = {doc["event"]["id"] for doc in lines(local)}
    indexed = osmem_backend.ids("alerts")
    assert sorted(indexed) == sorted(written - set(proxy.rejected_ids))
    assert stat.S_IMODE(dead[0].stat().st_mode) == 0o600
    again = sensor("replay", str(PCAPS / "clean-network.pcap"), "--config", str(tmp_path / "sensor.yaml"),
                   "--spool-dir", str(spool), "--quiet")
    assert again.returncode == 0, again.stderr  # refusals of an earlier run are not this run's


def test_a_throttled_item_is_retried_not_dead_lettered(
    tmp_path: Path, proxy: RefusingProxy, osmem_backend: SearchBackend
) -> None:
    local, spool = tmp_path / "alerts.jsonl", tmp_path / "spool"
    proxy.reject_status, proxy.reject_items = 429, 2
    run = sensor("replay", str(PCAPS / "demo.pcap"), "--config", str(config(tmp_path, proxy.url, osmem_backend.prefix, local)),
                 "--spool-dir", str(spool), "--quiet", "--flush-timeout", "20")
    assert run.returncode == 0, run.stderr
    assert not list(spool.glob("*.dead-letter.jsonl"))
    assert sorted(osmem_backend.ids("alerts")) == sorted({doc["event"]["id"] for doc in lines(local)})


def test_events_are_not_duplicated_when_a_bulk_answer_is_lost(
    tmp_path: Path, proxy: RefusingProxy, osmem_backend: SearchBackend
) -> None:
    local, spool = tmp_path / "all.jsonl", tmp_path / "spool"
    proxy.drop_after_forward = 1  # the server indexes the first bulk; its answer never arrives
    run = sensor("replay", str(PCAPS / "demo.pcap"), "--emit", "all",
                 "--config", str(config(tmp_path, proxy.url, osmem_backend.prefix, local, events=True)),
                 "--spool-dir", str(spool), "--quiet", "--flush-timeout", "30")
    assert run.returncode == 0, run.stderr
    events = [doc for doc in lines(local) if doc["event"]["kind"] != "alert"]
    indexed = osmem_backend.ids("events")
    assert events and len(indexed) == len(set(indexed))
    assert len(indexed) == len({json.dumps(doc, sort_keys=True) for doc in events})


def test_spooled_sinks_come_first_whatever_the_configured_order(tmp_path: Path) -> None:
    from sensor.output.factory import build_sinks
    from sensor.output.spool import SpooledSink

    sinks = build_sinks(
        [{"type": "jsonl", "path": "-"}, {"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
        spool_dir=tmp_path / "spool", observer="t",
    )
    try:
        assert isinstance(sinks[0], SpooledSink) and not isinstance(sinks[1], SpooledSink)
    finally:
        for sink in sinks:
            sink.close(0.1)


def test_event_ids_are_deterministic_and_alert_ids_kept() -> None:
    from sensor.output.spool import with_event_id

    event = {"@timestamp": "2024-01-01T00:00:00Z", "event": {"kind": "event", "dataset": "dns"}, "dns": {"id": 7}}
    first, second = with_event_id(event), with_event_id(json.loads(json.dumps(event)))
    assert first["event"]["id"] == second["event"]["id"] and len(first["event"]["id"]) == 40
    assert "id" not in event["event"]  # the caller's document is left as it was
    other = with_event_id({**event, "dns": {"id": 8}})
    assert other["event"]["id"] != first["event"]["id"]
    alert = {"event": {"kind": "alert", "id": "abc"}}
    assert with_event_id(alert) is alert


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "soon"])
def test_timeouts_must_be_finite_and_positive(value: str) -> None:
    run = sensor("replay", str(PCAPS / "demo.pcap"), "--output", "-", f"--flush-timeout={value}")
    assert run.returncode == 2
    assert "--flush-timeout" in run.stderr and "Traceback" not in run.stderr


def test_unwritable_outputs_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for target in (blocker / "alerts.jsonl", Path("/proc/no-such-dir/alerts.jsonl")):
        run = sensor("replay", str(PCAPS / "demo.pcap"), "--output", str(target), "--quiet")
        assert run.returncode == 2, run.stderr
        assert run.stderr.count("\n") == 1 and str(target.parent) in run.stderr


def test_files_are_private(tmp_path: Path) -> None:
    out, spool = tmp_path / "new" / "alerts.jsonl", tmp_path / "spool"
    run = sensor("replay", str(PCAPS / "demo.pcap"), "--output", str(out), "--output", "webhook=http://127.0.0.1:9/x",
                 "--spool-dir", str(spool), "--quiet", "--flush-timeout", "0.2")
    assert run.returncode == 4, run.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    spool_files = list(spool.iterdir())
    assert spool_files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in spool_files)
    shared = tmp_path / "shared.jsonl"
    run = sensor("replay", str(PCAPS / "demo.pcap"), "--output", str(shared), "--quiet",
                 env={"PHI_SENSOR_GROUP_READABLE": "1"})
    assert run.returncode == 0
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640


def test_sigkill_never_leaves_an_alert_only_on_stdout(tmp_path: Path) -> None:
    """Killed mid-run while the sink is down: every alert already on stdout is in the spool."""
    import signal
    import sqlite3
    import time

    sys.path.insert(0, str(REPO / "bench"))
    import hostile

    requests = [
        f"GET /tr?id={n}&ev=PageView&dl=https%3A%2F%2Fportal.example-hospital.org%2Foncology HTTP/1.1\r\n"
        f"Host: www.facebook.com\r\n\r\n".encode()
        for n in range(2500)
    ]
    capture = tmp_path / "many.pcap"
    hostile.write(capture, hostile.request_frames(requests))  # a client each: alerts of their own
    out, spool = tmp_path / "stdout.jsonl", tmp_path / "spool"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sensor", "replay", str(capture), "--output", "-",
             "--output", "webhook=http://127.0.0.1:9/down", "--spool-dir", str(spool), "--quiet", "--workers", "1"],
            stdout=stdout, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while out.stat().st_size < 64 * 1024 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    shown = [json.loads(line)["event"]["id"] for line in out.read_bytes().splitlines() if line.endswith(b"}")]
    assert shown, "killed before any alert was written"
    (db,) = spool.glob("*.db")
    with sqlite3.connect(db) as conn:
        spooled = {json.loads(body)["event"]["id"] for (body,) in conn.execute("SELECT body FROM items")}
    assert set(shown) <= spooled
