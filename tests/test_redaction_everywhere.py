"""Redaction is a superset of detection: identifiers planted in every field of HTTP requests
(known-fake and check-digit-failing ones included) are found in no output, spool or dead-letter file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import yaml
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import EsCompatProxy, SearchBackend

from sensor.phi.redact import redact, redact_url

sys.path.insert(0, str(REPO / "bench"))
import hostile  # noqa: E402

# Each needle is a piece of a planted value that survives any encoding the outputs use.
NEEDLES = ["078-05-1120", "078051120", "jane.doe", "123-4567", "5551234567", "00123456", "1961-02-03", "1122334455",
           "+4915112345678"]
EMAIL, SSN_FAKE = "jane.doe@example.org", "078-05-1120"


def planted_requests() -> list[bytes]:
    query = ("id=1234567890&ev=PageView&ssn=078-05-1120&q=078-05-1120&em=jane.doe%40example.org"
             "&phone=%28555%29+123-4567&patientId=A0123456&npi=1122334455&note=SSN%3A+078051120"
             "&dl=https%3A%2F%2Fportal.example-hospital.org%2Foncology%3Fmrn%3D00123456&tel=%2B4915112345678")
    referer = "https://portal.example-hospital.org/chart?mrn=00123456&dob=1961-02-03&ssn=078051120"
    body = ("ud%5Bem%5D=jane.doe%40example.org&ud%5Bph%5D=5551234567&cd%5Bssn%5D=078-05-1120"
            "&cd%5Bcondition%5D=type+2+diabetes&cd%5Bnote%5D=call+%28555%29+123-4567")
    ua = "Mozilla/5.0 (contact jane.doe@example.org, SSN 078-05-1120)"
    head = (f"Referer: {referer}\r\nUser-Agent: {ua}\r\n")
    return [
        f"GET /tr/{EMAIL}/{SSN_FAKE}?{query} HTTP/1.1\r\nHost: www.facebook.com\r\n{head}\r\n".encode(),
        (f"POST /tr?id=1234567890&ev=Lead HTTP/1.1\r\nHost: www.facebook.com\r\n{head}"
         f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode(),
        f"GET /search?{query} HTTP/1.1\r\nHost: www.example.com\r\n{head}\r\n".encode(),
    ]


class RefuseAll(EsCompatProxy):
    def take_rejections(self, body: bytes) -> tuple[bytes, dict[int, dict[str, Any]]]:
        self.reject_items = 1 << 30
        kept, rejected = super().take_rejections(body)
        for item in rejected.values():
            meta = next(iter(item.values()))
            meta["status"], meta["error"] = 400, {"type": "mapper_parsing_exception", "reason": "no"}
        return kept, rejected


@pytest.fixture
def refusing(osmem_backend: SearchBackend):
    proxy = RefuseAll(osmem_backend.url)
    proxy.reject_items = 1
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_planted_identifiers_are_in_nothing_written(tmp_path: Path, refusing: RefuseAll, osmem_backend: SearchBackend) -> None:
    capture = tmp_path / "planted.pcap"
    hostile.write(capture, hostile.request_frames(planted_requests()))
    spool, local = tmp_path / "spool", tmp_path / "out" / "all.jsonl"
    config = tmp_path / "sensor.yaml"
    doc = yaml.safe_load((REPO / "deploy" / "config" / "sensor.example.yaml").read_text())
    doc["outputs"] = [
        {"type": "jsonl", "path": str(local), "events": True},
        {"type": "elasticsearch", "url": refusing.url, "index_prefix": osmem_backend.prefix, "verify": False,
         "events": True},
        {"type": "webhook", "url": "http://127.0.0.1:9/never", "format": "generic"},
    ]
    config.write_text(yaml.safe_dump(doc))
    run = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", str(capture), "--emit", "all", "--config", str(config),
         "--spool-dir", str(spool), "--flush-timeout", "3", "--stats"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 4, run.stderr
    docs = [json.loads(line) for line in local.read_text().splitlines()]
    assert {d["event"]["kind"] for d in docs} == {"alert", "event"}
    assert sum(d["event"]["kind"] == "alert" for d in docs) >= 2
    dead = list(spool.glob("*.dead-letter.jsonl"))
    assert dead and dead[0].stat().st_size > 0
    spool_files = [p for p in spool.iterdir() if p.is_file()]
    assert any(p.suffix == ".db" for p in spool_files)
    written = {"stdout": run.stdout, "stderr": run.stderr, str(local): local.read_text(errors="replace")}
    for path in spool_files:
        written[str(path)] = path.read_bytes().decode("latin-1")
    for name, text in written.items():
        for needle in NEEDLES:
            assert needle not in text, f"{needle} found in {name}"
    assert "[REDACTED:ssn]" in written[str(local)] and "[REDACTED:email]" in written[str(local)]


@pytest.mark.parametrize("text, kind", [
    ("078-05-1120", "ssn"), ("219-09-9999", "ssn"), ("000-12-3456", "ssn"), ("SSN: 123456789", "ssn"),
    ("jane.doe@example.org", "email"), ("(555) 123-4567", "phone"), ("+4915112345678", "phone"),
    ("MRN 00123456", "mrn"), ("NPI 1122334455", "npi"), ("1EG4-TE5-MK73", "mbi"),
])
def test_identifier_shapes_are_masked_believed_or_not(text: str, kind: str) -> None:
    assert f"[REDACTED:{kind}]" in redact(f"see {text} here", [])
    masked = redact_url("/x?v=" + quote_plus(f"see {text}"), [])
    assert quote_plus(text.split()[-1]) not in masked and f"[REDACTED:{kind}]" in masked


def test_identifier_keys_mask_whatever_the_value() -> None:
    url = redact_url("/x?ssn=12&patientId=zz9&email=nobody&dob=yesterday&other=keep", [])
    assert url == "/x?ssn=[REDACTED:ssn]&patientId=[REDACTED:mrn]&email=[REDACTED:email]&dob=[REDACTED:dob]&other=keep"


def test_ordinary_numbers_stay() -> None:
    url = "/tr?id=1234567890123456&ts=1700000000&d=2024-05-17&ip=10.20.1.1&v=1.2.3"
    assert redact_url(url, []) == url


IDENTIFIERS = st.sampled_from([
    "078-05-1120", "219-09-9999", "123 45 6789", "666.12.3456", "jane.doe@example.org", "x_y+z@mail.example.co.uk",
    "(555) 123-4567", "555-123-4567", "+1 555 123 4567", "+4915112345678", "1EG4-TE5-MK73", "1EG4TE5MK73",
])
FILLER = st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FILLER, IDENTIFIERS), min_size=1, max_size=4), FILLER)
def test_planted_identifiers_never_survive_redaction(pieces: list[tuple[str, str]], tail: str) -> None:
    """Whatever surrounds them (short of running into letters or digits that make another token)."""
    text = "".join(f"{before} {value} " for before, value in pieces) + tail
    redacted = redact(text, [])
    for _, value in pieces:
        assert value not in redacted


def test_identifiers_in_parameter_names_and_evidence_paths_are_masked() -> None:
    from sensor.phi import evidence, scan_http

    url = "/tr?078-05-1120=diabetes&jane.doe%40example.org%5Bcondition%5D=diabetes"
    masked = redact_url(url, [])
    assert "078-05-1120" not in masked and "jane.doe" not in masked and "diabetes" in masked
    findings = scan_http("GET", url, (), b"", None)
    assert findings
    for record in evidence(findings, []):
        assert "078-05-1120" not in str(record["path"]) and "jane.doe" not in str(record["path"])
