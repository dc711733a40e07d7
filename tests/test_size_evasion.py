"""No evasion by size: over-long heads, long keys, many keys and deep nesting still reach the
detectors (what fits, flagged and counted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.http import HttpRequestStream
from sensor.phi import layers
from sensor.records import Counters

sys.path.insert(0, str(REPO / "bench"))
import hostile  # noqa: E402


def test_oversized_requests_still_alert(tmp_path: Path) -> None:
    capture = tmp_path / "oversized.pcap"
    hostile.write(capture, hostile.request_frames(hostile.oversized_requests()))
    result = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", str(capture), "--output", "-", "--quiet", "--stats"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found: dict[int, set[tuple[str, tuple[str, ...]]]] = {}
    for line in result.stdout.splitlines():
        doc = json.loads(line)
        types = tuple(doc["phi_egress"].get("phi", {}).get("types", []))
        found.setdefault(doc["source"]["port"], set()).add((doc["rule"]["id"], types))
    assert ("phi-in-tracker-payload", ("condition",)) in found[41000]  # 70 KB cookie after Host
    assert ("phi-in-tracker-payload", ("condition",)) in found[41001]  # 70 KB URL: the whole request line
    assert ("phi-in-tracker-payload", ("glucose",)) in found[41002]  # padding before Host and the framing
    assert ("phi-in-tracker-payload", ("glucose",)) in found[41003]  # last form key of 300 characters
    assert any("condition" in types for _, types in found[41004])  # 6,000 keys before the condition
    assert any("glucose" in types for _, types in found[41005])  # JSON nested 60 deep
    for counter in ("http.head_truncated", "phi.capped.fields", "phi.capped.json_nesting", "phi.capped.long_keys"):
        assert counter in result.stderr


def test_truncated_head_is_flagged_and_the_stream_goes_on() -> None:
    counters = Counters()
    stream = HttpRequestStream(header_cap=4096, counters=counters)
    data = (b"POST /a HTTP/1.1\r\nX-Pad: " + b"x" * 10_000 + b"\r\nHost: t.example\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /b HTTP/1.1\r\nHost: n.example\r\n\r\n")
    out = []
    for i in range(0, len(data), 500):
        out += stream.feed(data[i : i + 500])
    first, second = out
    assert (first.target, first.host, first.body, first.body_truncated) == ("/a", "t.example", b"abc", True)
    assert (second.target, second.host, second.body_truncated) == ("/b", "n.example", False)
    assert counters.get("http.head_truncated") == 1 and not stream.failed


@settings(max_examples=60, deadline=None)
@given(pad=st.integers(0, 20_000), cap=st.integers(64, 4096), step=st.integers(1, 3000))
def test_any_oversized_head_keeps_request_line_and_host(pad: int, cap: int, step: int) -> None:
    stream = HttpRequestStream(header_cap=cap)
    data = b"GET /x?q=1 HTTP/1.1\r\nX-A: " + b"a" * pad + b"\r\nHost: h.example\r\n\r\n"
    out = []
    for i in range(0, len(data), step):
        out += stream.feed(data[i : i + step])
    (request,) = out
    assert request.target == "/x?q=1" and request.host == "h.example"
    assert request.body_truncated == (len(data) > cap)


def test_declared_form_with_long_keys_many_keys_and_deep_json_is_peeled() -> None:
    layers.take_capped()
    long_key = "k" * 300
    fields = layers.request_fields(
        "/c", [("Content-Type", "application/x-www-form-urlencoded")], f"glucose=487+mg%2FdL&{long_key}=1".encode()
    )
    assert ("body.glucose", "487 mg/dL") in [(f.path, f.value) for f in fields]
    many = "&".join(f"k{i}=v" for i in range(10_000)) + "&last=telling"
    fields = layers.request_fields("/c?" + many, [], b"")
    assert len(fields) <= layers.DEFAULT_LIMITS.max_fields
    assert fields[-1].path == "query._rest" and fields[-1].value.endswith("last=telling")
    nested: object = {"dx": "insulin"}
    for _ in range(100):
        nested = [nested]
    fields = layers.request_fields("/c", [("Content-Type", "application/json")], json.dumps(nested).encode())
    assert any("insulin" in f.value for f in fields)
    capped = layers.take_capped()
    assert capped["long_keys"] == 1 and capped["fields"] >= 1 and capped["json_nesting"] == 1
    assert layers.take_capped() == {}
