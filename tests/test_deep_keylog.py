"""--keylog: HTTPS (HTTP/1.1, HTTP/2) and HTTP/3 decrypted by tshark through pyshark run through the
same detectors. The fixture (tests/data/deep/tls.pcap + tls.keys) was recorded by make_keylog.py:
curl and aioquic against local servers, tcpdump on the loopback, test-only keys."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

DATA = REPO / "tests" / "data" / "deep"
CONFIG = DATA / "config.yaml"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True, timeout=180,
                          env=env or {**os.environ, "PYTHONPATH": str(REPO)})


@needs_tshark
def test_keylog_decrypts_http1_http2_http3_and_raises_payload_alerts() -> None:
    pytest.importorskip("pyshark")
    pytest.importorskip("pylsqpack")
    proc = run("replay", str(DATA / "tls.pcap"), "--keylog", str(DATA / "tls.keys"), "--config", str(CONFIG),
               "--quiet", "--stats")
    assert proc.returncode == 0, proc.stderr
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    payload = {a["phi_egress"]["vendor"]["id"]: a for a in alerts if a["rule"]["id"] == "phi-in-tracker-payload"}
    # Mixpanel and Amplitude over HTTP/1.1 (Amplitude's body gzip-compressed), Meta and GA4 over
    # HTTP/2, Amplitude again over HTTP/3 from aioquic and from Chromium (QPACK dynamic table);
    # Segment has a BAA
    assert set(payload) == {"mixpanel", "amplitude", "meta-pixel", "google-analytics"}
    assert payload["amplitude"]["phi_egress"]["count"] == 3
    assert {"condition", "medication", "email"} <= set(payload["mixpanel"]["phi_egress"]["phi"]["types"])
    assert payload["meta-pixel"]["http"]["version"] == "2"
    assert all(a["phi_egress"]["decrypted"] is True for a in alerts)
    assert not any(a["rule"]["id"] == "plaintext-phi" for a in alerts)  # it was all encrypted on the wire
    for counter in ("keylog.http1                        2", "keylog.http2                        3",
                    "keylog.http3                        3"):
        assert counter in proc.stderr
    # health values never leave redacted
    assert "glargine" not in proc.stdout and "maria.test" not in proc.stdout


@needs_tshark
def test_without_the_keylog_the_same_capture_shows_only_connections() -> None:
    proc = run("replay", str(DATA / "tls.pcap"), "--config", str(CONFIG), "--quiet")
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert alerts and not any(a["rule"]["id"] == "phi-in-tracker-payload" for a in alerts)
    assert not any(a["phi_egress"].get("decrypted") for a in alerts)


def test_without_tshark_one_line_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": str(tmp_path)}
    proc = run("replay", str(DATA / "tls.pcap"), "--keylog", str(DATA / "tls.keys"), env=env)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert re.fullmatch(r"\S+Z phi-sensor: --keylog needs tshark and pyshark: "
                        r"apt-get install tshark && pip install pyshark", line)


def test_unreadable_keylog_is_a_usage_error(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    pytest.importorskip("pyshark")
    proc = run("replay", str(DATA / "tls.pcap"), "--keylog", str(tmp_path / "missing.keys"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr


@needs_tshark
def test_report_reads_decrypted_requests() -> None:
    pytest.importorskip("pyshark")
    pytest.importorskip("pylsqpack")
    proc = run("report", str(DATA / "tls.pcap"), "--keylog", str(DATA / "tls.keys"), "--config", str(CONFIG),
               "--format", "json", "--exposure")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {r["destination"]: r for r in data["inventory"]}
    assert rows["Amplitude"]["decrypted"] and "condition" in rows["Amplitude"]["health_data"]
    assert "POST api.amplitude.com/2/httpapi" in rows["Amplitude"]["endpoints"]  # the HTTP/3 request
    exposure = {r["destination"]: r for r in data["exposure"]}
    assert exposure["Amplitude"]["requests_with_health_data"] == 3


@pytest.mark.slow
def test_fixture_can_be_recorded_again(tmp_path: Path) -> None:
    for tool in ("tcpdump", "curl", "openssl", "tshark", "chromium"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} needed")
    pytest.importorskip("hypercorn")
    subprocess.run([sys.executable, str(DATA / "make_keylog.py"), str(tmp_path)], check=True, timeout=300)
    proc = run("replay", str(tmp_path / "tls.pcap"), "--keylog", str(tmp_path / "tls.keys"), "--config",
               str(CONFIG), "--quiet")
    payload = {json.loads(line)["phi_egress"]["vendor"]["id"] for line in proc.stdout.splitlines()
               if '"phi-in-tracker-payload"' in line}
    assert payload == {"mixpanel", "amplitude", "meta-pixel", "google-analytics"}


# -- the parsers under the HTTP/3 reader: property tests -------------------------------------------
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sensor.deep.keylog import _contiguous, _encoder_capacity, _h3_frames, _host, _text_bytes, _varint  # noqa: E402


def _encode_varint(value: int) -> bytes:
    for size, prefix in ((1, 0), (2, 1), (4, 2), (8, 3)):
        if value < 1 << (8 * size - 2):
            return (value | prefix << (8 * size - 2)).to_bytes(size, "big")
    raise ValueError(value)


@given(st.integers(0, (1 << 62) - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = _encode_varint(value)
    assert _varint(encoded + b"x", 0) == (value, len(encoded))
    assert _varint(encoded[:-1], 0)[1] is None or len(encoded) == 1


@given(st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=40)), max_size=6))
def test_h3_frames_round_trip(frames) -> None:
    data = b"".join(_encode_varint(kind) + _encode_varint(len(payload)) + payload for kind, payload in frames)
    assert list(_h3_frames(data)) == frames
    assert len(list(_h3_frames(data[:-1]))) <= len(frames)  # a cut frame is left out, never guessed


@given(st.binary(max_size=64))
def test_stream_parsers_take_any_bytes(data: bytes) -> None:
    list(_h3_frames(data))
    _encoder_capacity(data)
    _text_bytes(data.hex(":"))
    _host(data.decode("latin-1"))


@given(st.binary(min_size=1, max_size=80), st.lists(st.integers(0, 79), max_size=5))
def test_contiguous_reassembles_overlapping_pieces(data: bytes, cuts) -> None:
    points = sorted({0, *[c for c in cuts if c < len(data)]})
    parts = {start: data[start:end] for start, end in zip(points, [*points[1:], len(data)])}
    parts[points[-1]] = data[points[-1]:]
    assert _contiguous(parts) == data
    if len(points) > 1:
        del parts[points[1]]
        assert _contiguous(parts) == data[:points[1]]


def test_encoder_capacity_and_tshark_text() -> None:
    assert _encoder_capacity(bytes.fromhex("023fe11f")) == 4096  # what Chromium sent
    assert _encoder_capacity(b"\x02\x25") == 5 and _encoder_capacity(b"\x00\x25") == 0
    assert _text_bytes("7b:7d:0a:00:ff") == b'{}\n\x00\xff' and _text_bytes("data=x") == b"data=x"
    assert _host("API.Example.com:8443") == "api.example.com" and _host("[2001:db8::1]:443") == "2001:db8::1"
