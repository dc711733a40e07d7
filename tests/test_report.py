"""The data-flow inventory an auditor gets from `phi-sensor report`."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

from conftest import PCAPS, REPO

CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"


def report(*captures: str, fmt: str = "json") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor", "report", *(str(PCAPS / c) for c in captures), "--config", str(CONFIG),
         "--format", fmt],
        capture_output=True, text=True, timeout=120,
    )


def test_inventory_lists_every_phi_host_flow_with_its_verdict() -> None:
    proc = report("demo.pcap", "ga4-quic.pcap")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {(r["phi_host"], r["destination"]): r for r in data["inventory"]}
    mixpanel = rows[("10.20.5.23", "Mixpanel")]
    assert mixpanel["verdict"] == "tracker without BAA"
    assert {"glucose", "medication"} <= set(mixpanel["health_data"])
    assert {"dns", "http"} <= set(mixpanel["protocols"])
    segment = rows[("10.20.6.31", "Segment")]
    assert segment["verdict"] == "covered by BAA" and segment["baa"] == "on-file"
    assert segment["health_data"] == []
    assert rows[("10.20.3.7", "Google Analytics")]["protocols"] == ["dns", "quic"]
    # the guest network is not a PHI host: nothing of 10.99.4.4 is inventoried
    assert not any(host == "10.99.4.4" for host, _ in rows)
    assert "segment.io" in data["allow"]
    assert {"mixpanel.com", "facebook.com", "google-analytics.com"} <= set(data["block"])
    assert not set(data["allow"]) & set(data["block"])


def test_inventory_verdict_order_puts_trackers_first() -> None:
    data = json.loads(report("demo.pcap").stdout)
    verdicts = [r["verdict"] for r in data["inventory"]]
    assert verdicts == sorted(verdicts, key=["tracker without BAA", "unreviewed third party", "covered by BAA",
                                             "allowed", "internal"].index)


def test_csv_and_table_formats() -> None:
    rows = list(csv.DictReader(io.StringIO(report("mixpanel-plaintext.pcap", fmt="csv").stdout)))
    assert rows and rows[0]["destination"] == "Mixpanel" and "http" in rows[0]["protocols"].split()
    table = report("mixpanel-plaintext.pcap", fmt="table")
    assert table.returncode == 0 and "Mixpanel" in table.stdout and "trackers reached without a BAA" in table.stdout


def test_unreadable_capture_is_reported_and_the_rest_inventoried(tmp_path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_text("not a capture")
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "report", str(bad), str(PCAPS / "mixpanel-plaintext.pcap"),
         "--config", str(CONFIG), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 3
    assert "bad.pcap" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["inventory"]
