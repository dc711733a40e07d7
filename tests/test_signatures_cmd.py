"""`phi-sensor signatures`: validate, lookup (vendor, matched entry, BAA stance with its source,
the local BAA registry), list, and import of public tracker lists into an overlay the sensor
loads on top of the bundled catalog, each entry keeping its source and licence."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor.cli import main
from sensor.enrich.vendors import VendorCatalog
from sensor.errors import SensorError
from sensor.signatures_cmd import _adblock_entries, _hosts_entries, _json_entries

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["signatures", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_the_bundled_catalog(capsys) -> None:
    code, out, _ = run(capsys, "validate")
    assert code == 0
    count = int(out.split("(")[1].split()[0])
    assert count == len(VendorCatalog.load()) >= 150


def test_validate_reports_a_bad_file_with_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "acme.yaml").write_text(
        "name: Acme\nid: acme\nowner: Acme\ncategory: analytics\ndomains: [acme-analytics.com]\n"
        "baa:\n  stance: maybe\n  summary: x\n"
    )
    code, _, err = run(capsys, "validate", str(tmp_path))
    assert code == 2 and "acme.yaml: baa.stance: expected one of" in err


def test_lookup_names_vendor_rule_stance_source_and_local_baa(capsys) -> None:
    code, out, _ = run(capsys, "lookup", "http://api.segment.io/v1/batch", "--config", str(EXAMPLE_CONFIG), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["vendor"]["id"] == "segment"
    assert result["matched"] == {"key": "domains", "entry": "segment.io"}
    assert result["vendor"]["baa"]["stance"] == "yes-enterprise"
    assert result["vendor"]["baa"]["source"].startswith("https://")
    assert result["endpoint"]["decoder"] == "segment"
    assert result["local_baa"]["status"] == "on-file"  # the example configuration has a Segment BAA

    code, out, _ = run(capsys, "lookup", "us.i.posthog.com", "--config", str(EXAMPLE_CONFIG))
    assert "PostHog (posthog)" in out and "local BAA:  none on file" in out
    assert "https://posthog.com/docs/privacy/hipaa-compliance" in out

    code, out, _ = run(capsys, "lookup", "www.example.org")
    assert code == 0 and "not in the catalog" in out


def test_list_table_and_json(capsys) -> None:
    code, out, _ = run(capsys, "list", "--format", "json", "--category", "chat")
    vendors = json.loads(out)
    assert code == 0 and vendors and {vendor["category"] for vendor in vendors} == {"chat"}
    code, out, _ = run(capsys, "list")
    assert out.splitlines()[0].split()[:4] == ["ID", "NAME", "CATEGORY", "BAA"]
    assert any(line.startswith("posthog ") for line in out.splitlines())


HOSTS = "127.0.0.1 localhost\n0.0.0.0 tracker.example-ads.com # ads\n0.0.0.0 api.mixpanel.com\n"
ADBLOCK = (
    "[Adblock Plus 2.0]\n! c\n||stats.health-beacon.io^$third-party\n@@||ok.example.com^\nx.com##.ad\n||cdn.example.net/t.js\n"
)
DISCONNECT = {
    "categories": {"Analytics": [{"Metrics Co": {"https://metrics.example/": ["metrics-co.io"], "performance": "true"}}]}
}


@pytest.mark.parametrize(
    ("fmt", "text", "host", "vendor_id", "category"),
    [
        ("hosts", HOSTS, "tracker.example-ads.com", "imported-example-ads-com", "advertising"),
        ("adblock", ADBLOCK, "a.stats.health-beacon.io", "imported-health-beacon-io", "advertising"),
        ("json", json.dumps(DISCONNECT), "cdn.metrics-co.io", "imported-metrics-co-io", "analytics"),
    ],
)
def test_import_writes_an_overlay_on_top_of_the_bundled_catalog(
    tmp_path: Path, capsys, fmt: str, text: str, host: str, vendor_id: str, category: str
) -> None:
    source = tmp_path / "list.txt"
    source.write_text(text)
    out = tmp_path / "overlay"
    code, printed, _ = run(capsys, "import", "--format", fmt, str(source), "--source", "Sample list",
                           "--licence", "GPL-3.0-or-later OR CC-BY-SA-3.0", "--out", str(out))
    assert code == 0 and "--signatures" in printed
    catalog = VendorCatalog.with_overlay(out)
    assert len(catalog) == len(VendorCatalog.load()) + 1  # the bundled catalog stays under the overlay
    vendor = catalog.match_host(host)
    assert (vendor.id, vendor.category, vendor.imported_from, vendor.licence) == (
        vendor_id, category, "Sample list", "GPL-3.0-or-later OR CC-BY-SA-3.0")
    assert vendor.baa_stance == "unknown"
    assert catalog.match_host("api.mixpanel.com").id == "mixpanel"  # catalogued hosts are not re-imported
    if fmt == "hosts":
        assert catalog.match_host("other.example-ads.com") is None  # a hosts line names one host only
    if fmt == "adblock":
        assert catalog.match_host("ok.example.com") is None and catalog.match_host("cdn.example.net") is None


def test_the_sensor_loads_an_imported_overlay(tmp_path: Path, capsys) -> None:
    source = tmp_path / "hosts"
    source.write_text("0.0.0.0 collect.example-tracker.net\n")
    out = tmp_path / "overlay"
    run(capsys, "import", "--format", "hosts", str(source), "--licence", "MIT", "--out", str(out))
    result = subprocess.run([sys.executable, "-m", "sensor", "check-config", str(EXAMPLE_CONFIG), "--signatures", str(out)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert f"{len(VendorCatalog.load()) + 1} vendors in the catalog" in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "hosts", "https://lists.example/hosts", "--out", "OUT"], "downloads nothing"),
        (["--format", "hosts", "LIST", "--licence", "not a licence!", "--out", "OUT"], "SPDX"),
        (["--format", "hosts", "LIST", "--category", "spyware", "--out", "OUT"], "--category"),
        (["--format", "json", "LIST", "--out", "OUT"], "not JSON"),
        (["--format", "hosts", "LIST", "--out", "FULL"], "new or empty directory"),
    ],
)
def test_import_refuses_bad_input_with_one_line_and_exit_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    (tmp_path / "list").write_text("0.0.0.0 a.example-ads.com\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    paths = {"LIST": str(tmp_path / "list"), "OUT": str(tmp_path / "out"), "FULL": str(tmp_path / "full")}
    code, _, err = run(capsys, "import", *[paths.get(arg, arg) for arg in argv])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@given(st.text(max_size=400))
def test_list_parsers_never_raise(text: str) -> None:
    for entry in [*_hosts_entries(text), *_adblock_entries(text)]:
        assert entry.name and not any(char.isspace() for char in entry.name)
    try:
        list(_json_entries(text, "list.json"))
    except SensorError as exc:  # not JSON: a usage error, one line
        assert "not JSON" in str(exc)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=30))
def test_json_lists_of_any_shape_never_raise(document) -> None:
    for entry in _json_entries(json.dumps(document), "list.json"):
        assert isinstance(entry.name, str)
