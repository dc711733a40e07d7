"""HAR input: exports recorded by headless Chromium (Playwright) and by mitmproxy run through the
same detectors as captured traffic (fixtures and the script that recorded them: tests/data/deep)."""
from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st

from sensor.deep import DecryptedHttpRequest, HttpsRequest
from sensor.deep.har import parse_har
from sensor.records import Counters

DATA = REPO / "tests" / "data" / "deep"
CONFIG = DATA / "config.yaml"


def replay(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sensor", "replay", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def alerts_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def by_rule(alerts: list[dict], rule: str) -> dict[str, dict]:
    return {a["phi_egress"]["vendor"]["id"]: a for a in alerts if a["rule"]["id"] == rule}


def test_chromium_har_raises_tracker_payload_alerts_for_every_vendor_without_baa() -> None:
    proc = replay(str(DATA / "chromium.har"), "--config", str(CONFIG), "--har-source", "patient-portal",
                  "--quiet", "--stats")
    assert proc.returncode == 0, proc.stderr
    alerts = alerts_of(proc.stdout)
    payload = by_rule(alerts, "phi-in-tracker-payload")
    assert set(payload) == {"mixpanel", "meta-pixel", "google-analytics", "amplitude"}
    assert {"condition", "medication", "email"} <= set(payload["mixpanel"]["phi_egress"]["phi"]["types"])
    assert "condition" in payload["meta-pixel"]["phi_egress"]["phi"]["types"]  # cd[content_name]=HIV test results
    assert all(a["phi_egress"]["decrypted"] is True for a in alerts)
    assert all(a["source"]["ip"] == "10.40.0.1" for a in alerts)  # the first address of patient-portal
    # Segment has a BAA; every request was HTTPS, so nothing was plaintext on the wire
    assert not any(a["phi_egress"].get("vendor", {}).get("id") == "segment" for a in alerts)
    assert not any(a["rule"]["id"] == "plaintext-phi" for a in alerts)
    # the gzip body Chromium saved as text lost its bytes: counted, not guessed at
    assert "har.bodies.lossy" in proc.stderr and "har.requests                        8" in proc.stderr


def test_mitmproxy_har_already_decompressed_body_is_read() -> None:
    proc = replay(str(DATA / "mitmproxy.har"), "--config", str(CONFIG), "--har-source", "10.20.5.23",
                  "--quiet", "--stats")
    assert proc.returncode == 0, proc.stderr
    alerts = alerts_of(proc.stdout)
    payload = by_rule(alerts, "phi-in-tracker-payload")
    assert set(payload) == {"mixpanel", "meta-pixel", "amplitude"}
    # curl sent it gzip-compressed; mitmproxy wrote it decompressed and kept the header
    assert {"medication", "condition"} <= set(payload["amplitude"]["phi_egress"]["phi"]["types"])
    assert "har.bodies.already_decoded" in proc.stderr
    # plain HTTP through the proxy was plaintext on the wire: that rule applies here
    assert any(a["rule"]["id"] == "plaintext-phi" for a in alerts)
    assert all(a["phi_egress"]["decrypted"] is True and a["source"]["ip"] == "10.20.5.23" for a in alerts)


def test_har_ids_follow_the_same_scheme_and_are_stable() -> None:
    first = alerts_of(replay(str(DATA / "chromium.har"), "--config", str(CONFIG), "--quiet").stdout)
    second = alerts_of(replay(str(DATA / "chromium.har"), "--config", str(CONFIG), "--quiet").stdout)
    assert [a["event"]["id"] for a in first] == [a["event"]["id"] for a in second]
    assert all(len(a["event"]["id"]) == 40 for a in first)
    # without --har-source the first phi_hosts entry stands for the HAR
    assert {a["source"]["ip"] for a in first} == {"10.40.0.1"}


def test_events_of_har_requests_say_decrypted() -> None:
    proc = replay(str(DATA / "mitmproxy.har"), "--config", str(CONFIG), "--emit", "events", "--quiet")
    assert proc.returncode == 0, proc.stderr
    events = alerts_of(proc.stdout)
    assert len(events) == 4 and all(e["event"]["kind"] == "event" for e in events)
    assert all(e["phi_egress"]["decrypted"] is True and e["url"]["domain"] for e in events)


def test_bad_har_source_and_bad_har_file() -> None:
    proc = replay(str(DATA / "chromium.har"), "--config", str(CONFIG), "--har-source", "nowhere")
    assert proc.returncode == 2 and "--har-source 'nowhere'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_not_a_har_is_a_capture_problem(tmp_path: Path) -> None:
    bad = tmp_path / "broken.har"
    bad.write_text('{"log": ')
    proc = replay(str(bad), "--quiet")
    assert proc.returncode == 3 and "not a HAR file" in proc.stderr and "Traceback" not in proc.stderr


def _har(*entries: dict) -> bytes:
    return json.dumps({"log": {"version": "1.2", "entries": list(entries)}}).encode()


def _entry(url: str, post: dict | None = None, headers: list | None = None, **extra) -> dict:
    request = {"method": "POST" if post else "GET", "url": url, "httpVersion": "HTTP/1.1",
               "headers": headers or [], "bodySize": extra.pop("bodySize", -1)}
    if post is not None:
        request["postData"] = post
    return {"startedDateTime": "2026-03-01T12:00:00.000+01:00", "request": request, **extra}


GZIP_HEADER = [{"name": "Content-Encoding", "value": "gzip"}]


def test_body_forms_exporters_write() -> None:
    counters = Counters()
    body = b'{"condition":"asthma"}'
    records, problem = parse_har(_har(
        _entry("https://a.example/x", {"mimeType": "text/plain", "text": body.decode()}),
        _entry("https://a.example/b64", {"text": base64.b64encode(body).decode(), "encoding": "base64"}),
        _entry("https://a.example/gz", {"text": base64.b64encode(gzip.compress(body)).decode(), "encoding": "base64"},
               GZIP_HEADER),
        _entry("https://a.example/already", {"text": body.decode()}, GZIP_HEADER),
        _entry("https://a.example/lost", {"text": "\x1f\ufffd\x08\x00junk"}, GZIP_HEADER),
        _entry("https://a.example/params", {"params": [{"name": "q", "value": "asthma"}]}),
        _entry("https://a.example/missing", None, bodySize=500),
        _entry("data:text/plain,hello"),
        _entry("https://a.example/cached", _fromCache="disk"),
        _entry("https://a.example/blocked", response={"status": 0, "_error": "net::ERR_BLOCKED_BY_CLIENT"}),
        {"request": "nonsense"},
    ), "10.0.0.5", counters=counters)
    assert problem is None
    bodies = {r.target: r.body for r in records}
    assert bodies["/x"] == bodies["/b64"] == bodies["/gz"] == bodies["/already"] == body
    assert bodies["/lost"] == b"" and bodies["/params"] == b"q=asthma" and bodies["/missing"] == b""
    for name, count in {"har.bodies.base64": 2, "har.bodies.already_decoded": 1, "har.bodies.unreadable": 1,
                        "har.bodies.params": 1, "har.bodies.missing": 1, "har.entries.skipped": 1,
                        "har.entries.invalid": 1, "har.entries.not_sent": 2, "har.requests": 7}.items():
        assert counters.get(name) == count, name
    assert all(isinstance(r, HttpsRequest) for r in records)
    assert records[0].ts == 1772362800.0 and records[0].flow.src_ip == "10.0.0.5" and records[0].flow.dst_port == 443


def test_http2_pseudo_headers_and_server_address() -> None:
    records, _ = parse_har(_har(_entry(
        "http://tracker.example:8080/p?a=1",
        headers=[{"name": ":authority", "value": "Tracker.Example:8080"}, {"name": ":path", "value": "/p?a=1"},
                 {"name": "user-agent", "value": "x"}],
        serverIPAddress="[2001:db8::1]", connection="51234",
    )), "fd00::7")
    (record,) = records
    assert type(record) is DecryptedHttpRequest  # plain http: not encrypted on the wire
    assert record.host == "tracker.example" and record.headers == (("user-agent", "x"),)
    assert record.flow.dst_ip == "2001:db8::1" and record.flow.dst_port == 8080 and record.flow.src_port == 51234
    assert record.target == "/p?a=1"
    # an IPv6 server for an IPv4 PHI host cannot share a flow: the unspecified address stands in
    (other,), _ = parse_har(_har(_entry("https://t.example/", serverIPAddress="2001:db8::1")), "10.0.0.1")
    assert other.flow.dst_ip == "0.0.0.0"


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["log", "entries", "request", "url", "postData", "text", "encoding", "headers", "name",
                         "value", "startedDateTime", "serverIPAddress", "params", "bodySize", "connection"]),
        children, max_size=5),
    max_leaves=30,
))
def test_parse_har_never_raises(document) -> None:
    records, problem = parse_har(json.dumps(document).encode(), "10.0.0.1")
    assert isinstance(records, list) and (problem is None or isinstance(problem, str))


@given(st.binary(max_size=200))
def test_parse_har_takes_any_bytes(data: bytes) -> None:
    parse_har(data, "10.0.0.1")


@pytest.mark.slow
def test_fixtures_can_be_recorded_again(tmp_path: Path) -> None:
    """The recording script still works with the tools installed here, and what it records today
    raises the same payload alerts as the committed fixtures."""
    mitmdump = os.environ.get("MITMDUMP") or shutil.which("mitmdump")
    if not (shutil.which("chromium") and mitmdump):
        pytest.skip("chromium and mitmproxy needed")
    pytest.importorskip("playwright")
    subprocess.run([sys.executable, str(DATA / "make_har.py"), str(tmp_path)], check=True, timeout=300,
                   env={**os.environ, "MITMDUMP": mitmdump})
    for name in ("chromium.har", "mitmproxy.har"):
        fresh = by_rule(alerts_of(replay(str(tmp_path / name), "--config", str(CONFIG), "--quiet").stdout),
                        "phi-in-tracker-payload")
        kept = by_rule(alerts_of(replay(str(DATA / name), "--config", str(CONFIG), "--quiet").stdout),
                       "phi-in-tracker-payload")
        assert set(fresh) == set(kept)
