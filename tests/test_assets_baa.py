"""PHI asset inventory (longest prefix, exclusions, defaults) and the BAA registry (vendor, domain, dates)."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.enrich.assets import AssetInventory, PhiHost
from sensor.enrich.baa import BaaRegistry
from sensor.enrich.vendors import VendorCatalog
from sensor.errors import ConfigError


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


# --- assets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "phi"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.254", True),
        ("192.168.1.1", True),
        ("fd00::1", True),
        ("fc00::1", True),
        ("::ffff:10.0.0.1", True),  # IPv4-mapped form of a private address
        (" 10.0.0.1 ", True),
        ("172.32.0.1", False),
        ("8.8.8.8", False),
        ("100.64.0.1", False),  # carrier-grade NAT: not by default
        ("127.0.0.1", False),
        ("169.254.10.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("2001:db8::1", False),
        ("not-an-ip", False),
        ("", False),
        ("10.0.0.256", False),
    ],
)
def test_default_inventory_is_private_space(ip: str, phi: bool) -> None:
    inventory = AssetInventory.from_config(None, "<defaults>")
    assert inventory.is_phi_host(ip) is phi
    assert (inventory.lookup(ip) is not None) is phi


def test_private_addresses_in_the_corpus_are_phi_hosts_by_default(corpus: Path) -> None:
    hosts = set()
    for line in (corpus / "expected.jsonl").read_text().splitlines():
        hosts.update(request["host"] for request in json.loads(line).get("http", []) if request.get("host"))
    addresses = sorted(host for host in hosts if host[0].isdigit())
    assert addresses == ["172.16.238.11", "192.168.1.21", "192.168.13.31", "192.168.28.253"]
    inventory = AssetInventory.from_config(None, "<defaults>")
    assert all(inventory.is_phi_host(address) for address in addresses)
    assert not inventory.is_phi_host("example.com")


def test_longest_prefix_and_exclusions() -> None:
    inventory = AssetInventory.from_config(
        [
            "10.20.0.0/16",
            {"cidr": "10.20.5.0/24", "name": "ehr", "tags": ["ehr", "tier-1"]},
            {"cidr": "10.20.99.7/32", "name": "kiosk"},
            "2001:db8:1::/48",
        ],
        "site.yaml",
        exclude=["10.20.99.0/24", "10.20.5.128/25", "2001:db8:1:ff::/64"],
    )
    whole = inventory.lookup("10.20.1.1")
    assert whole is not None and whole.network == ipaddress.ip_network("10.20.0.0/16") and whole.name is None
    ehr = inventory.lookup("10.20.5.10")
    assert ehr == PhiHost(ipaddress.ip_network("10.20.5.0/24"), "ehr", ("ehr", "tier-1"))
    assert inventory.lookup("10.20.5.200") is None  # the exclusion is more specific than the /24
    assert inventory.lookup("10.20.99.8") is None  # guest range
    kiosk = inventory.lookup("10.20.99.7")  # a /32 inside the guest range is more specific again
    assert kiosk is not None and kiosk.name == "kiosk"
    assert inventory.is_phi_host("2001:db8:1:1::5")
    assert not inventory.is_phi_host("2001:db8:1:ff::5")
    assert not inventory.is_phi_host("10.21.0.1")
    assert len(inventory) == 4
    assert inventory.exclusions[0] == ipaddress.ip_network("10.20.99.0/24")


def test_exclusion_wins_at_equal_prefix_length() -> None:
    inventory = AssetInventory.from_config(["10.0.0.0/24"], "s", exclude=["10.0.0.0/24"])
    assert not inventory.is_phi_host("10.0.0.1")


def test_exclusions_apply_to_the_default_too() -> None:
    inventory = AssetInventory.from_config(None, "s", exclude=["192.168.50.0/24"])
    assert inventory.is_phi_host("192.168.49.1")
    assert not inventory.is_phi_host("192.168.50.1")


def test_lookups_are_cached_per_address_string() -> None:
    inventory = AssetInventory.from_config(["10.0.0.0/8"], "s")
    first = inventory.lookup("10.1.1.1")
    assert inventory.lookup("10.1.1.1") is first
    assert inventory._lookup_cached.cache_info().hits == 1


@pytest.mark.parametrize(
    ("entries", "exclude", "key", "message"),
    [
        ("10.0.0.0/8", None, "phi_hosts", "expected a list of addresses or CIDRs, found '10.0.0.0/8'"),
        ([], None, "phi_hosts", "expected at least one address or CIDR"),
        (["10.0.0.5/8"], None, "phi_hosts[0]", "host bits set (did you mean '10.0.0.0/8'?)"),
        (["ehr.local"], None, "phi_hosts[0]", "host names are not accepted"),
        ([None], None, "phi_hosts[0]", "found nothing (null)"),
        ([{"cidr": "10.0.0.0/8", "owner": "x"}], None, "phi_hosts[0].owner", "unknown key"),
        ([{"name": "x"}], None, "phi_hosts[0].cidr", "required key missing"),
        ([{"cidr": 10}], None, "phi_hosts[0].cidr", "found 10 (int)"),
        ([{"cidr": "10.0.0.0/8", "name": ""}], None, "phi_hosts[0].name", "expected a non-empty string"),
        ([{"cidr": "10.0.0.0/8", "tags": "ehr"}], None, "phi_hosts[0].tags", "expected a list of tags"),
        ([{"cidr": "10.0.0.0/8", "tags": ["ok", "not ok"]}], None, "phi_hosts[0].tags[1]", "expected a tag"),
        (["10.0.0.0/8", "10.0.0.0/8"], None, "phi_hosts[1]", "already listed at phi_hosts[0]"),
        (["10.0.0.0/8", {"cidr": "10.0.0.0/8"}], None, "phi_hosts[1].cidr", "already listed at phi_hosts[0]"),
        (["10.0.0.0/8"], "10.1.0.0/16", "phi_hosts_exclude", "expected a list"),
        (["10.0.0.0/8"], ["10.1.0.0/16", "10.1.0.1/16"], "phi_hosts_exclude[1]", "host bits set"),
        (["10.0.0.0/8"], ["10.1.0.0/16", "10.1.0.0/16"], "phi_hosts_exclude[1]", "already listed"),
    ],
)
def test_inventory_errors(entries: object, exclude: object, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        AssetInventory.from_config(entries, "site.yaml", exclude)  # type: ignore[arg-type]
    assert (raised.value.source, raised.value.key) == ("site.yaml", key)
    assert message in raised.value.problem


ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["10.0.0.1", "10.255.255.255", "172.16.0.0", "192.168.0.1", "fd00::1"]),
)
NETWORKS = st.builds(
    lambda address, length: ipaddress.ip_network(f"{address}/{min(length, address.max_prefixlen)}", strict=False),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(0, 128),
)


def _reference(
    ip: str,
    included: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    excluded: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # the inventory treats ::ffff:a.b.c.d as the IPv4 address
    best = max((net for net in included if address in net), key=lambda net: net.prefixlen, default=None)
    if best is None:
        return None
    if any(address in net and net.prefixlen >= best.prefixlen for net in excluded):
        return None
    return best


@settings(max_examples=300, deadline=None)
@given(
    included=st.lists(NETWORKS, min_size=1, max_size=12, unique=True),
    excluded=st.lists(NETWORKS, max_size=6, unique=True),
    probes=st.lists(ADDRESSES, min_size=1, max_size=20),
    inside=st.data(),
)
def test_lookup_matches_a_brute_force_longest_prefix(included, excluded, probes, inside) -> None:  # type: ignore[no-untyped-def]
    inventory = AssetInventory.from_config([str(net) for net in included], "p", [str(net) for net in excluded])
    # Also probe addresses inside the configured networks, where the interesting cases are.
    network = inside.draw(st.sampled_from(included))
    offset = inside.draw(st.integers(0, network.num_addresses - 1))
    for ip in [*probes, str(network.network_address + offset)]:
        found = inventory.lookup(ip)
        assert (found.network if found else None) == _reference(ip, included, excluded)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.integers(),
            st.none(),
            st.dictionaries(st.text(max_size=6), st.text(max_size=20) | st.lists(st.text(max_size=6), max_size=3), max_size=3),
        ),
        max_size=5,
    ),
    probe=st.text(max_size=50),
)
def test_inventory_input_raises_only_config_error(entries: list[object], probe: str) -> None:
    try:
        inventory = AssetInventory.from_config(entries, "fuzz.yaml")
    except ConfigError as error:
        assert error.source == "fuzz.yaml"
    else:
        assert isinstance(inventory.is_phi_host(probe), bool)


# --- BAA registry --------------------------------------------------------------------------------


def _registry(catalog: VendorCatalog, entries: list[object]) -> BaaRegistry:
    return BaaRegistry.from_config(entries, catalog, "site.yaml")


def test_covers_by_vendor_name_or_id_any_case(catalog: VendorCatalog) -> None:
    registry = _registry(catalog, [{"vendor": "SEGMENT", "scope": "portal"}, {"vendor": "fullstory"}])
    segment, fullstory, mixpanel = catalog.get("segment"), catalog.get("FullStory"), catalog.get("mixpanel")
    entry = registry.covers(segment, "api.segment.io")
    assert entry is not None and entry.label == "Segment" and entry.scope == "portal" and entry.vendor is segment
    assert registry.covers(segment, "cdn.example.org") is entry  # vendor identity alone is enough
    assert registry.covers(fullstory, "rs.fullstory.com") is not None
    assert registry.covers(mixpanel, "api.mixpanel.com") is None
    assert registry.covers(None, "api.segment.io") is None  # no domains listed: host alone does not match


def test_covers_by_domain_and_subdomain(catalog: VendorCatalog) -> None:
    registry = _registry(catalog, [{"domains": ["Analytics.Example-Vendor.com."], "scope": "reminders"}])
    assert registry.covers(None, "analytics.example-vendor.com") is not None
    assert registry.covers(None, "eu.analytics.example-vendor.com") is not None
    assert registry.covers(None, "example-vendor.com") is None
    assert registry.covers(None, "analytics.example-vendor.com.evil.net") is None
    assert registry.covers(None, "xanalytics.example-vendor.com") is None
    entry = next(iter(registry))
    assert entry.label == "analytics.example-vendor.com" and entry.vendor is None


def test_dates_bound_the_agreement_inclusively(catalog: VendorCatalog) -> None:
    registry = _registry(catalog, [{"vendor": "Segment", "signed": dt.date(2025, 3, 1), "expires": "2026-02-28"}])
    segment = catalog.get("segment")
    assert registry.covers(segment, "api.segment.io", on=dt.date(2025, 2, 28)) is None  # not yet signed
    assert registry.covers(segment, "api.segment.io", on=dt.date(2025, 3, 1)) is not None
    assert registry.covers(segment, "api.segment.io", on=dt.date(2026, 2, 28)) is not None
    assert registry.covers(segment, "api.segment.io", on=dt.date(2026, 3, 1)) is None  # expired


def test_a_renewal_covers_after_the_old_agreement_expires(catalog: VendorCatalog) -> None:
    registry = _registry(
        catalog,
        [
            {"vendor": "segment", "signed": "2023-01-01", "expires": "2024-12-31", "scope": "old"},
            {"vendor": "segment", "signed": "2025-01-01", "scope": "renewed"},
        ],
    )
    segment = catalog.get("segment")
    assert registry.covers(segment, "api.segment.io", on=dt.date(2024, 6, 1)).scope == "old"  # type: ignore[union-attr]
    assert registry.covers(segment, "api.segment.io", on=dt.date(2030, 6, 1)).scope == "renewed"  # type: ignore[union-attr]
    assert registry.covers(segment, "api.segment.io", on=dt.date(2022, 6, 1)) is None


def test_default_day_is_today(catalog: VendorCatalog) -> None:
    today = dt.datetime.now(dt.UTC).date()
    segment = catalog.get("segment")
    current = _registry(
        catalog, [{"vendor": "segment", "signed": today - dt.timedelta(days=1), "expires": today + dt.timedelta(days=1)}]
    )
    lapsed = _registry(catalog, [{"vendor": "segment", "expires": today - dt.timedelta(days=1)}])
    assert current.covers(segment, "api.segment.io") is not None
    assert lapsed.covers(segment, "api.segment.io") is None


def test_no_agreements(catalog: VendorCatalog) -> None:
    registry = BaaRegistry.from_config(None, catalog, "site.yaml")
    assert len(registry) == 0
    assert registry.covers(catalog.get("segment"), "api.segment.io") is None


@pytest.mark.parametrize(
    ("entries", "key", "message"),
    [
        ({"vendor": "segment"}, "baa", "expected a list of agreements"),
        (["segment"], "baa[0]", "expected a mapping with vendor"),
        ([{"vendor": "Segmnt"}], "baa[0].vendor", "unknown vendor 'Segmnt' (did you mean 'Segment'"),
        ([{"vendor": "Google Analytic"}], "baa[0].vendor", "did you mean 'Google Analytics'"),
        ([{"vendor": 5}], "baa[0].vendor", "expected a vendor name or id from the catalog, found 5 (int)"),
        ([{"vendor": "segment", "contract": "x"}], "baa[0].contract", "unknown key"),
        ([{"vendor": "segment", "domains": "segment.io"}], "baa[0].domains", "expected a list of domains"),
        (
            [{"vendor": "segment", "domains": ["segment.io", 3]}],
            "baa[0].domains[1]",
            "expected a domain such as example.com, found 3 (int)",
        ),
        ([{"domains": ["co.uk"]}], "baa[0].domains[0]", "public suffix"),
        ([{"scope": "all"}], "baa[0]", "expected a vendor, domains, or both"),
        ([{"vendor": "segment", "scope": 3}], "baa[0].scope", "expected text"),
        ([{"vendor": "segment", "signed": "March 2025"}], "baa[0].signed", "expected a date (YYYY-MM-DD), found 'March 2025'"),
        ([{"vendor": "segment", "expires": 1.5}], "baa[0].expires", "expected a date (YYYY-MM-DD), found 1.5 (float)"),
        (
            [{"vendor": "segment", "signed": "2025-06-01", "expires": "2025-01-01"}],
            "baa[0].expires",
            "on or after signed (2025-06-01)",
        ),
    ],
)
def test_registry_errors(catalog: VendorCatalog, entries: object, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        BaaRegistry.from_config(entries, catalog, "site.yaml")  # type: ignore[arg-type]
    assert (raised.value.source, raised.value.key) == ("site.yaml", key)
    assert message in raised.value.problem


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(
        st.one_of(
            st.text(max_size=10),
            st.dictionaries(
                st.sampled_from(["vendor", "domains", "scope", "signed", "expires", "other"]),
                st.one_of(st.none(), st.text(max_size=20), st.integers(), st.dates(), st.lists(st.text(max_size=20), max_size=3)),
                max_size=5,
            ),
        ),
        max_size=4,
    ),
    host=st.text(max_size=40),
    day=st.dates(),
)
def test_registry_input_raises_only_config_error(catalog: VendorCatalog, entries: list[object], host: str, day: dt.date) -> None:
    try:
        registry = BaaRegistry.from_config(entries, catalog, "fuzz.yaml")
    except ConfigError as error:
        assert error.source == "fuzz.yaml"
    else:
        entry = registry.covers(catalog.get("segment"), host, on=day)
        assert entry is None or entry.in_effect(day)
