"""The bundled vendor catalog's cache: the same catalog as parsing, never stale, never in the way."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.enrich import catalog_cache, vendors
from sensor.enrich.vendors import Vendor, VendorCatalog
from sensor.errors import ConfigError
from sensor.paths import VENDORS_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory of this test."""
    directory = tmp_path / "cache"
    monkeypatch.setenv(catalog_cache.CACHE_ENV, str(directory))
    return directory


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the bundled vendor directory standing in for it, so a test can edit its files."""
    directory = tmp_path / "vendors"
    shutil.copytree(VENDORS_DIR, directory)
    monkeypatch.setattr(vendors, "VENDORS_DIR", directory)
    return directory


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The vendor files parsed from YAML (not taken from the cache), as they are."""
    parsed: list[str] = []
    parse = vendors.vendor_from_yaml

    def counting(data: bytes, source: str, expected_id: str | None = None) -> Vendor:
        parsed.append(Path(source).stem)
        return parse(data, source, expected_id)

    monkeypatch.setattr(vendors, "vendor_from_yaml", counting)
    return parsed


def _cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("catalog-*.marshal"))


def _same_catalog(cached: VendorCatalog, parsed: VendorCatalog) -> None:
    """Every vendor, every field, and the lookups the catalog answers."""
    assert [vendor.id for vendor in cached] == [vendor.id for vendor in parsed]
    for left, right in zip(cached, parsed, strict=True):
        for field in dataclasses.fields(Vendor):
            assert getattr(left, field.name) == getattr(right, field.name), (left.id, field.name)
        assert dict(left.payload) == dict(right.payload)
        assert [(e.host, e.path.pattern, e.path.flags, e.decoder) for e in left.endpoints] == [
            (e.host, e.path.pattern, e.path.flags, e.decoder) for e in right.endpoints
        ]
    for vendor in parsed:
        for host in (*vendor.hosts, *vendor.domains, *(f"x.{domain}" for domain in vendor.domains)):
            assert cached.match_rule(host) == parsed.match_rule(host)
            assert cached.match_host(host) == parsed.match_host(host)
        for endpoint in vendor.endpoints:
            host = "a.b" + endpoint.host.lstrip("*") if endpoint.host.startswith("*") else endpoint.host
            path = endpoint.pattern.lstrip("^").rstrip("$").replace("\\", "")
            assert cached.match_endpoint(host, path) == parsed.match_endpoint(host, path)


def test_the_cached_catalog_is_the_parsed_catalog(cache: Path, parses: list[str]) -> None:
    parsed = VendorCatalog.load()  # parses every file and fills the cache
    assert len(parses) == len(parsed) >= 150
    (written,) = _cache_files(cache)
    assert written.stat().st_mode & 0o777 == 0o600
    parses.clear()
    cached = VendorCatalog.load()
    assert parses == []  # not one file parsed: all from the cache
    _same_catalog(cached, parsed)


def test_an_edited_file_is_never_served_stale(cache: Path, bundled: Path, parses: list[str]) -> None:
    VendorCatalog.load(bundled)
    path = bundled / "hotjar.yaml"
    path.write_text(path.read_text().replace("name: Hotjar", "name: Hotjar Edited"))
    parses.clear()
    catalog = VendorCatalog.load(bundled)
    assert len(parses) == len(catalog)  # parsed again, and cached again under the new contents
    assert catalog.get("hotjar").name == "Hotjar Edited"
    parses.clear()
    assert VendorCatalog.load(bundled).get("hotjar").name == "Hotjar Edited"
    assert parses == []
    # broken: the same error as without a cache, wherever the file stands
    path.write_text(path.read_text().replace("category: session-replay", "category: replays"))
    with pytest.raises(ConfigError) as raised:
        VendorCatalog.load(bundled)
    assert (raised.value.source, raised.value.key) == (str(path), "category")


def test_a_bad_cache_file_is_parsed_over_silently(
    cache: Path, parses: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    parsed = VendorCatalog.load()
    (written,) = _cache_files(cache)
    good = written.read_bytes()
    for bad in (b"", good[:-100], good[:20], b"\x00" * len(good), good[:60] + b"x" + good[61:], b"phicat1\n" * 10):
        written.write_bytes(bad)
        os.chmod(written, 0o600)
        parses.clear()
        _same_catalog(VendorCatalog.load(), parsed)
        assert len(parses) == len(parsed)
        assert written.read_bytes() == good  # written again
    # a file others could have written is not trusted
    os.chmod(written, 0o666)
    parses.clear()
    _same_catalog(VendorCatalog.load(), parsed)
    assert len(parses) == len(parsed)
    assert capfd.readouterr() == ("", "")


def test_an_unwritable_cache_directory_costs_nothing_but_the_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parses: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(catalog_cache.CACHE_ENV, str(blocker / "cache"))  # a directory that cannot be made
    first = VendorCatalog.load()
    second = VendorCatalog.load()
    assert len(parses) == 2 * len(first)
    _same_catalog(second, first)
    assert capfd.readouterr() == ("", "")
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_replay_with_a_read_only_cache_says_nothing(tmp_path: Path) -> None:
    """As a hardened service with a read-only home runs it: no error, no warning, the same alerts."""
    capture = REPO / "pcaps" / "meta-pixel-portal.pcap"
    if not capture.is_file():
        pytest.skip("pcaps/meta-pixel-portal.pcap not present")
    outputs = []
    for name, directory in (("writable", tmp_path / "cache"), ("blocked", tmp_path / "a-file" / "cache")):
        (tmp_path / "a-file").touch()
        out = tmp_path / f"{name}.jsonl"
        env = {**os.environ, catalog_cache.CACHE_ENV: str(directory), "PYTHONPATH": str(REPO)}
        result = subprocess.run(
            [sys.executable, "-m", "sensor", "replay", str(capture), "--quiet", "--output", str(out)],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.stderr == ""
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and outputs[0]
    assert _cache_files(tmp_path / "cache")


def test_an_overlay_is_parsed_every_time(cache: Path, tmp_path: Path, parses: list[str]) -> None:
    VendorCatalog.load()
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "hotjar.yaml").write_bytes((VENDORS_DIR / "hotjar.yaml").read_bytes().replace(b"Hotjar", b"Hotjar Local"))
    for _ in range(2):
        parses.clear()
        catalog = VendorCatalog.with_overlay(overlay)
        assert parses == ["hotjar"]  # the bundled rest from the cache
        assert catalog.get("hotjar").name == "Hotjar Local"
    (overlay / "hotjar.yaml").write_text("id: hotjar\nname: [")
    with pytest.raises(ConfigError) as raised:
        VendorCatalog.with_overlay(overlay)
    assert raised.value.source == str(overlay / "hotjar.yaml")
    assert raised.value.problem.startswith("invalid YAML")


def test_where_the_cache_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (catalog_cache.CACHE_ENV, "CACHE_DIRECTORY", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert catalog_cache.cache_dir() == tmp_path / "home" / ".cache" / "phi-sensor"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert catalog_cache.cache_dir() == tmp_path / "home" / ".cache" / "phi-sensor"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog_cache.cache_dir() == tmp_path / "xdg" / "phi-sensor"
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path / 'unit'}:{tmp_path / 'other'}")  # systemd's CacheDirectory=
    assert catalog_cache.cache_dir() == tmp_path / "unit"
    monkeypatch.setenv(catalog_cache.CACHE_ENV, str(tmp_path / "chosen"))
    assert catalog_cache.cache_dir() == tmp_path / "chosen"


def test_the_public_suffix_rules_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from publicsuffixlist import PSLFILE

    parsed = vendors._parse_icann(Path(PSLFILE).read_text(encoding="utf-8"))
    assert len(parsed[0]) > 5000 and parsed[1]
    assert vendors._icann_lines.__wrapped__() == parsed  # parsed, and cached
    monkeypatch.setattr(vendors, "_parse_icann", None)  # from the cache, or a TypeError
    assert vendors._icann_lines.__wrapped__() == parsed
    (written,) = sorted(cache.glob("psl-*.marshal"))
    written.write_bytes(written.read_bytes()[:-1])
    with pytest.raises(TypeError):
        vendors._icann_lines.__wrapped__()  # a truncated file is not used
