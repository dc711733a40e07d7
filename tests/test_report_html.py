"""The readable report: HTML (rendered offline in headless Chromium) and Markdown, the exposure
and the Content-Security-Policy suggestion, all from the same document the JSON format writes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PCAPS, REPO

from sensor.app.report import Inventory
from sensor.app.report_html import INVENTORY_COLUMNS, render_html, render_markdown
from sensor.detect.base import Observation
from sensor.enrich.assets import PhiHost
from sensor.records import Flow, HttpRequest

DATA = REPO / "tests" / "data" / "deep"
CONFIG = DATA / "config.yaml"
INPUTS = (str(DATA / "chromium.har"), str(DATA / "mitmproxy.har"), str(PCAPS / "demo.pcap"))


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sensor", "report", *INPUTS, "--config", str(CONFIG), "--har-source", "patient-portal",
         *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    out = {}
    for fmt in ("json", "html", "markdown"):
        proc = report("--format", fmt, "--exposure")
        assert proc.returncode == 0, proc.stderr
        out[fmt] = proc.stdout
    return out


def test_html_is_self_contained(documents) -> None:
    page = documents["html"]
    assert "<script" not in page.lower()
    assert "default-src 'none'" in page and "<svg" in page
    for reference in ("src=", "href=", "@import", "url("):
        assert reference not in page.lower(), reference
    # health data values never reach the page
    for value in ("metformin", "type 2 diabetes", "jane.doe@example.com", "HIV test", "lithium"):
        assert value not in page


def test_markdown_has_every_section(documents) -> None:
    text = documents["markdown"]
    data = json.loads(documents["json"])
    for heading in ("## Data flows", "## Inventory", "## What each third party received",
                    "## Suggested egress allow list", "## Exposure", "## Suggested Content-Security-Policy"):
        assert heading in text
    inventory_lines = [line for line in text.split("## Inventory")[1].split("##")[0].splitlines()
                       if line.startswith("| ") and not line.startswith("| phi_host")]
    assert len(inventory_lines) == len(data["inventory"])
    assert "metformin" not in text and "jane.doe" not in text


def test_exposure_counts(documents) -> None:
    data = json.loads(documents["json"])
    rows = {(r["phi_host"], r["destination"]): r for r in data["exposure"]}
    mixpanel = rows[("patient-portal", "Mixpanel")]
    assert mixpanel["requests_with_health_data"] == 2 and mixpanel["client_hosts"] == 1
    assert mixpanel["distinct_identifiers"] >= 2  # two e-mail addresses, two people
    assert {"condition", "medication", "email"} <= set(mixpanel["health_data"])
    assert mixpanel["span_seconds"] >= 0
    # the identifiers themselves, and their hashes, are nowhere in any format
    for text in documents.values():
        assert "jane.doe@example.com" not in text and "john.roe@example.com" not in text


def _obs(ts: float, src: str, host: str, target: str, headers=(), method: str = "GET", tags=("portal",)) -> Observation:
    import ipaddress

    record = HttpRequest(ts, Flow(src, 50000, "192.0.2.1", 443, "tcp"), method, target, "1.1",
                         (("host", host), *headers), host)
    phi = PhiHost(ipaddress.ip_network("10.40.0.0/22"), "portal", tags)
    return Observation(record, "http", phi, host, None, None, False)


def test_exposure_distinct_clients_and_identifiers_are_counted_not_kept() -> None:
    from sensor.phi import scan_http

    inventory = Inventory()
    for index, (src, email) in enumerate([("10.40.0.5", "a@example.com"), ("10.40.0.6", "b@example.com"),
                                          ("10.40.0.6", "B@example.com")]):
        obs = _obs(1000.0 + index * 60, src, "collector.example.net",
                   f"/c?email={email}&condition=asthma&dx=J45.909", method="GET", tags=())
        obs.findings = scan_http("GET", obs.record.target, obs.record.headers, b"", None)
        inventory.observe(obs)
    (row,) = inventory.document(exposure=True)["exposure"]
    assert row["client_hosts"] == 2 and row["requests_with_health_data"] == 3
    assert row["distinct_identifiers"] == 2  # the same address in another case is one person
    assert row["span_seconds"] == 120.0
    assert "a@example.com" not in json.dumps(inventory.document(exposure=True))


def test_csp_from_what_a_portal_loaded() -> None:
    inventory = Inventory()
    inventory.observe(_obs(1.0, "10.40.0.9", "cdn.example-clinic.org", "/app.js", (("sec-fetch-dest", "script"),)))
    inventory.observe(_obs(2.0, "10.40.0.9", "img.example-cdn.com", "/logo.png"))
    inventory.observe(_obs(3.0, "10.40.0.9", "api.example-clinic.org", "/v1/slots", (("sec-fetch-dest", "empty"),),
                           method="POST"))
    inventory.observe(_obs(4.0, "10.40.0.9", "fonts.example.net", "/x"))  # nothing says what it was
    inventory.observe(_obs(5.0, "10.40.0.7", "cdn.example-clinic.org", "/a.js", tags=()))  # not a portal
    (policy,) = inventory.csp()
    assert policy["phi_host"] == "10.40.0.9"
    assert policy["directives"]["script-src"] == ["https://cdn.example-clinic.org"]
    assert policy["directives"]["img-src"] == ["https://img.example-cdn.com"]
    assert policy["directives"]["connect-src"] == ["https://api.example-clinic.org"]
    assert policy["unclassified"] == ["https://fonts.example.net"]
    assert policy["header"].startswith("default-src 'self'; connect-src 'self' https://api.example-clinic.org")


def test_csp_leaves_out_trackers_without_baa(documents) -> None:
    data = json.loads(documents["json"])
    (policy,) = data["csp"]
    sources = " ".join(policy["header"].split())
    assert "facebook" not in sources and "mixpanel" not in sources and "google-analytics" not in sources
    assert "www.facebook.com" in policy["removed_trackers"]
    assert "https://api.segment.io" in policy["directives"]["connect-src"]  # covered by a BAA


def test_renderers_escape_what_they_show() -> None:
    row = {c: "<img src=x onerror=alert(1)>" for c in INVENTORY_COLUMNS}
    row.update(health_data=["<b>x</b>"], hosts=["h"], verdict="tracker without BAA", baa="none", category="a|b",
               endpoints=["GET a|b"], examples=["p: <x>"], protocols=["http"])
    doc = {"inventory": [row], "allow": [], "block": ["<s>"], "csp": []}
    page = render_html(doc)
    assert "<img" not in page and "<b>x" not in page and "<s>" not in page
    text = render_markdown(doc)
    assert "a\\|b" in text and "<s>" not in text and "<img" not in text


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="chromium and chromium-driver (Debian) needed")
def test_html_renders_offline_in_headless_chromium(documents, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(documents["html"])
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1400",
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get(page.as_uri())
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        requests = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
        assert urls == [page.as_uri()]  # the page itself, nothing else
        rows = driver.find_elements(By.CSS_SELECTOR, "#inventory tbody tr")
        shown = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        svg = driver.find_element(By.TAG_NAME, "svg").size
    finally:
        driver.quit()
    expected = [[", ".join(r[c]) if isinstance(r[c], list) else str(r[c]) for c in INVENTORY_COLUMNS]
                for r in json.loads(documents["json"])["inventory"]]
    assert [[" ".join(cell.split()) for cell in row] for row in shown] == expected
    assert svg["width"] > 500 and svg["height"] > 50
    _assert_not_blank(shot)


def _assert_not_blank(png: Path) -> None:
    """A blank page compresses to a few kilobytes of one repeated value; text, badges and the
    picture make a large PNG whose pixel rows hold many distinct byte values."""
    import struct
    import zlib

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 40_000
    idat, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        if data[offset + 4:offset + 8] == b"IDAT":
            idat += data[offset + 8:offset + 8 + length]
        offset += 12 + length
    assert len(set(zlib.decompress(idat))) > 200
