"""Vendor catalog: the bundled signatures, host and endpoint matching, and vendor file validation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.enrich.vendors import (
    BAA_STANCES,
    CATEGORIES,
    DECODERS,
    SHARED_DOMAINS,
    Vendor,
    VendorCatalog,
    domain_suffixes,
    registered_domain,
    vendor_from_yaml,
)
from sensor.errors import ConfigError
from sensor.paths import VENDORS_DIR

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


# --- the bundled catalog -------------------------------------------------------------------------

BRIEF_VENDORS = [
    "meta-pixel", "meta-conversions-api", "google-analytics", "google-tag-manager", "google-ads",
    "google-campaign-manager", "microsoft-uet", "microsoft-clarity", "x-pixel", "linkedin-insight",
    "tiktok-pixel", "snap-pixel", "pinterest-tag", "reddit-pixel", "mixpanel", "segment", "amplitude",
    "heap", "hotjar", "fullstory", "quantum-metric", "logrocket", "smartlook", "mouseflow",
    "inspectlet", "lucky-orange", "adobe-analytics", "adobe-experience-platform",
    "adobe-audience-manager", "yandex-metrica", "criteo", "taboola", "outbrain", "the-trade-desk",
    "amazon-ads", "comscore", "hubspot", "salesforce-marketing-cloud", "pardot", "braze",
    "firebase-analytics", "appsflyer", "adjust", "branch", "kochava", "singular",
    "new-relic-browser", "datadog-rum", "sentry", "matomo-cloud", "piwik-pro", "rudderstack",
    "mparticle", "tealium", "quantcast", "nextdoor-pixel", "xandr",
]


def test_bundled_catalog_covers_the_vendor_families(catalog: VendorCatalog) -> None:
    ids = {vendor.id for vendor in catalog}
    assert len(catalog) >= 60
    assert not set(BRIEF_VENDORS) - ids
    assert {vendor.category for vendor in catalog} == CATEGORIES
    assert ids == {path.stem for path in VENDORS_DIR.glob("*.yaml")}


def test_every_vendor_is_well_formed(catalog: VendorCatalog) -> None:
    for vendor in catalog:
        assert vendor.domains or vendor.hosts, vendor.id
        assert not set(vendor.domains) & SHARED_DOMAINS, vendor.id
        assert vendor.baa_stance in BAA_STANCES
        assert vendor.baa_summary
        if vendor.baa_stance != "unknown":
            assert vendor.baa_source.startswith("https://"), vendor.id
        for endpoint in vendor.endpoints:
            assert endpoint.decoder in DECODERS
            assert endpoint.path.pattern.startswith("^")


def test_get_by_name_or_id_ignores_case(catalog: VendorCatalog) -> None:
    pixel = catalog.get("meta-pixel")
    assert pixel is not None and pixel.name == "Meta Pixel"
    assert catalog.get("META PIXEL") is pixel
    assert catalog.get("  meta pixel ") is pixel
    assert catalog.get("Meta Pixels") is None
    assert catalog.suggest("Segmnt")[0] == "Segment"
    assert catalog.suggest("qqqqqqqq") == []


def test_baa_stances_recorded_from_their_sources(catalog: VendorCatalog) -> None:
    def stance(vendor_id: str) -> str:
        vendor = catalog.get(vendor_id)
        assert vendor is not None
        return vendor.baa_stance

    assert stance("meta-pixel") == "no"
    assert stance("google-analytics") == "no"
    assert stance("microsoft-clarity") == "terms-prohibit-phi"
    assert stance("segment") == "yes-enterprise"
    assert stance("fullstory") == "yes"
    assert stance("taboola") == "unknown"


@pytest.mark.parametrize(
    ("host", "vendor_id"),
    [
        ("www.facebook.com", "meta-pixel"),
        ("connect.facebook.net", "meta-pixel"),
        ("WWW.Facebook.COM.", "meta-pixel"),
        ("graph.facebook.com", "meta-conversions-api"),
        ("www.google-analytics.com", "google-analytics"),
        ("region1.google-analytics.com", "google-analytics"),
        ("analytics.google.com", "google-analytics"),
        ("stats.g.doubleclick.net", "google-analytics"),
        ("googleads.g.doubleclick.net", "google-ads"),
        ("www.googleadservices.com", "google-ads"),
        ("fls.doubleclick.net", "google-campaign-manager"),
        ("www.googletagmanager.com", "google-tag-manager"),
        ("app-measurement.com", "firebase-analytics"),
        ("firebaselogging-pa.googleapis.com", "firebase-analytics"),
        ("bat.bing.com", "microsoft-uet"),
        ("www.clarity.ms", "microsoft-clarity"),
        ("ib.adnxs.com", "xandr"),
        ("analytics.twitter.com", "x-pixel"),
        ("static.ads-twitter.com", "x-pixel"),
        ("px.ads.linkedin.com", "linkedin-insight"),
        ("snap.licdn.com", "linkedin-insight"),
        ("analytics.tiktok.com", "tiktok-pixel"),
        ("tr.snapchat.com", "snap-pixel"),
        ("ct.pinterest.com", "pinterest-tag"),
        ("api-js.mixpanel.com", "mixpanel"),
        ("api.segment.io", "segment"),
        ("eu1.api.segmentapis.com", "segment"),
        ("api2.amplitude.com", "amplitude"),
        ("script.hotjar.com", "hotjar"),
        ("rs.fullstory.com", "fullstory"),
        ("abc.sc.omtrdc.net", "adobe-analytics"),
        ("edge.adobedc.net", "adobe-experience-platform"),
        ("dpm.demdex.net", "adobe-audience-manager"),
        ("mc.yandex.ru", "yandex-metrica"),
        ("sb.scorecardresearch.com", "comscore"),
        ("sdk.iad-01.braze.com", "braze"),
        ("inapps.appsflyer.com", "appsflyer"),
        ("acme.app.link", "branch"),
        ("bam.nr-data.net", "new-relic-browser"),
        ("browser-intake-datadoghq.com", "datadog-rum"),
        ("o4504.ingest.us.sentry.io", "sentry"),
        ("acme.matomo.cloud", "matomo-cloud"),
        ("acme.containers.piwik.pro", "piwik-pro"),
        ("collect.tealiumiq.com", "tealium"),
    ],
)
def test_match_host(catalog: VendorCatalog, host: str, vendor_id: str) -> None:
    vendor = catalog.match_host(host)
    assert vendor is not None and vendor.id == vendor_id


@pytest.mark.parametrize(
    "host",
    [
        # first-party services that share a registered domain with a tracker
        "www.google.com", "google.com", "mail.google.com", "fonts.googleapis.com", "www.gstatic.com",
        "www.bing.com", "www.microsoft.com", "login.microsoftonline.com", "www.linkedin.com",
        "twitter.com", "t.co", "facebook.com", "www.tiktok.com", "www.reddit.com", "sentry.io",
        "mc.yandex.net", "www.hubspot.com",
        # shared infrastructure
        "bucket.s3.amazonaws.com", "d111111abcdef8.cloudfront.net", "a1.akamaihd.net",
        # not names at all
        "", ".", "localhost", "192.168.1.1", "com", "co.uk",
    ],
)
def test_first_party_and_infrastructure_hosts_are_not_vendors(catalog: VendorCatalog, host: str) -> None:
    assert catalog.match_host(host) is None


def test_no_name_seen_in_the_corpus_is_attributed_to_a_tracker(catalog: VendorCatalog, corpus: Path) -> None:
    names: set[str] = set()
    for line in (corpus / "expected.jsonl").read_text().splitlines():
        capture = json.loads(line)
        names.update(capture.get("dns_queries", []))
        names.update(capture.get("sni", []))
        names.update(request["host"] for request in capture.get("http", []) if request.get("host"))
    assert {"www.google.com", "dns.google", "raw.githubusercontent.com", "example.com"} <= names
    assert {name: catalog.match_host(name) for name in names} == dict.fromkeys(names)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.google.com", "google.com"),
        ("textsecure-service-ca.whispersystems.org", "whispersystems.org"),
        ("catenacyber.Fr", "catenacyber.fr"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("acme.app.link", "app.link"),
        ("co.uk", ""),
        ("192.168.1.21", ""),
        ("2001:db8::1", ""),
        ("[2001:db8::1]", ""),
        ("localhost", ""),
        ("printer.corp", ""),  # no listed suffix: no registered domain
        ("user.github.io", "github.io"),  # private suffixes do not split a domain among its users
        ("a.b.blogspot.com", "blogspot.com"),
        ("www.ck", "www.ck"),  # the exception rule !www.ck under the wildcard *.ck
        ("a.b.ck", "a.b.ck"),
        ("www.bücher.de", "bücher.de"),
        ("www.xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("shop.example.com.", "example.com"),
        ("a..b.example.com", "example.com"),
        ("", ""),
    ],
)
def test_registered_domain_uses_the_bundled_suffix_list(catalog: VendorCatalog, host: str, expected: str) -> None:
    assert catalog.registered_domain(host) == expected


@pytest.mark.parametrize(
    ("host", "path", "vendor_id", "decoder"),
    [
        ("www.facebook.com", "/tr/", "meta-pixel", "meta-pixel"),
        ("www.facebook.com", "/tr?id=123&ev=PageView&dl=https%3A%2F%2Fportal.example.org", "meta-pixel", "meta-pixel"),
        ("graph.facebook.com", "/v19.0/1234567890/events", "meta-conversions-api", "generic"),
        ("region1.google-analytics.com", "/g/collect?v=2&tid=G-ABC", "google-analytics", "ga4"),
        ("metrics.hospital.example", "/g/collect", "google-analytics", "ga4"),
        ("www.google-analytics.com", "/collect", "google-analytics", "ua"),
        ("www.google-analytics.com", "/j/collect", "google-analytics", "ua"),
        ("www.google-analytics.com", "/mp/collect", "google-analytics", "generic"),
        ("www.google.com", "/pagead/conversion/123/", "google-ads", "generic"),
        ("www.google.com", "/ccm/collect", "google-ads", "generic"),
        ("ad.doubleclick.net", "/activityi;src=1;type=x;cat=y", "google-campaign-manager", "generic"),
        ("bat.bing.com", "/action/0", "microsoft-uet", "bing-uet"),
        ("t.co", "/1/i/adsct", "x-pixel", "twitter"),
        ("px.ads.linkedin.com", "/collect", "linkedin-insight", "linkedin"),
        ("analytics.tiktok.com", "/api/v2/pixel", "tiktok-pixel", "tiktok"),
        ("tr.snapchat.com", "/p", "snap-pixel", "snap"),
        ("ct.pinterest.com", "/v3/", "pinterest-tag", "pinterest"),
        ("api.mixpanel.com", "/track", "mixpanel", "mixpanel"),
        ("api-js.mixpanel.com", "/engage/", "mixpanel", "mixpanel"),
        ("api.segment.io", "/v1/batch", "segment", "segment"),
        ("api2.amplitude.com", "/2/httpapi", "amplitude", "amplitude"),
        ("metrics.hospital.example", "/b/ss/rsid/1/JS-2.22.0", "adobe-analytics", "generic"),
        ("sb.scorecardresearch.com", "/b2", "comscore", "generic"),
        ("o1.ingest.us.sentry.io", "/api/42/envelope/", "sentry", "generic"),
    ],
)
def test_match_endpoint(catalog: VendorCatalog, host: str, path: str, vendor_id: str, decoder: str) -> None:
    match = catalog.match_endpoint(host, path)
    assert match is not None
    vendor, endpoint = match
    assert (vendor.id, endpoint.decoder) == (vendor_id, decoder)


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("www.facebook.com", "/login.php"),
        ("www.google.com", "/search?q=pagead/conversion"),
        ("www.google.com", "/"),
        ("sb.scorecardresearch.com", "/beacon.js"),
        ("api.segment.io", "/v2/track"),
        ("portal.hospital.example", "/collect"),
        ("metrics.hospital.example", "/g/collectx"),
    ],
)
def test_no_endpoint_for_other_paths(catalog: VendorCatalog, host: str, path: str) -> None:
    assert catalog.match_endpoint(host, path) is None


def test_path_gated_endpoint_does_not_claim_the_host(catalog: VendorCatalog) -> None:
    assert catalog.match_endpoint("www.google.com", "/pagead/conversion/1/") is not None
    assert catalog.match_host("www.google.com") is None
    assert catalog.match_endpoint("t.co", "/1/i/adsct") is not None
    assert catalog.match_host("t.co") is None


@pytest.mark.parametrize(
    ("vendor_id", "parameter", "role"),
    [
        ("meta-pixel", "dl", "page_url"),
        ("meta-pixel", "rl", "referrer"),
        ("meta-pixel", "ev", "event"),
        ("meta-pixel", "cd[content_name]", "custom"),
        ("meta-pixel", "ud[em]", "identifiers"),
        ("meta-pixel", "cd", None),
        ("meta-pixel", "xdl", None),
        ("google-analytics", "ep.condition", "custom"),
        ("google-analytics", "cd12", "custom"),
        ("google-analytics", "cdx", None),
        ("google-analytics", "cid", "identifiers"),
        ("adobe-analytics", "v12", "custom"),
        ("adobe-analytics", "vid", "identifiers"),
        ("segment", "traits.email", "identifiers"),
        ("segment", "properties.medication", "custom"),
        ("amplitude", "events[3].event_type", "event"),
        ("mixpanel", "properties.$current_url", "page_url"),
        ("heap", "anything", None),
    ],
)
def test_payload_roles(catalog: VendorCatalog, vendor_id: str, parameter: str, role: str | None) -> None:
    vendor = catalog.get(vendor_id)
    assert vendor is not None
    assert vendor.role_of(parameter) == role


def test_loading_and_matching_open_no_socket_and_write_no_cache(tmp_path: Path) -> None:
    # A fresh interpreter, so the suffix list is loaded while the network is blocked.
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from sensor.enrich.vendors import VendorCatalog

        catalog = VendorCatalog.load()
        assert catalog.match_host("region1.google-analytics.com").id == "google-analytics"
        assert catalog.match_host("www.google.com") is None
        assert catalog.registered_domain("a.b.example.co.uk") == "example.co.uk"
        assert catalog.match_endpoint("cdn.example.org", "/g/collect")[1].decoder == "ga4"
        print("ok")
        """
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TLDEXTRACT_CACHE": str(tmp_path / "tld"),
    }
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert list(tmp_path.iterdir()) == []


# --- validation ----------------------------------------------------------------------------------

VALID = textwrap.dedent(
    """\
    name: Acme Analytics
    id: acme
    owner: Acme Inc.
    category: analytics
    domains: [acme-analytics.com]
    hosts: [beacon.acme.net]
    endpoints:
      - {host: '*.acme-analytics.com', path: '^/collect$', decoder: generic}
    payload:
      page_url: [u]
      custom: ['p.*']
    baa:
      stance: unknown
      summary: "No public statement."
    """
)


def test_valid_vendor_file_parses() -> None:
    vendor = vendor_from_yaml(VALID.encode(), "acme.yaml", expected_id="acme")
    assert isinstance(vendor, Vendor)
    assert vendor.domains == ("acme-analytics.com",)
    assert vendor.hosts == ("beacon.acme.net",)
    assert vendor.endpoints[0].path.search("/collect")
    assert vendor.baa_source == ""
    assert vendor.role_of("p.diagnosis") == "custom"


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("domains:", "domain:", "domain", "did you mean 'domains'"),
        ("id: acme", "id: acme2", "id", "expected 'acme' (the file name)"),
        ("id: acme", "id: Acme_Co", "id", "lower-case slug"),
        ("name: Acme Analytics\n", "", "name", "the key is missing"),
        ("category: analytics", "category: analytic", "category", "did you mean 'analytics'"),
        ("domains: [acme-analytics.com]", "domains: [google.com]", "domains[0]", "first-party or infrastructure"),
        ("domains: [acme-analytics.com]", "domains: [co.uk]", "domains[0]", "public suffix"),
        ("domains: [acme-analytics.com]", "domains: ['acme analytics.com']", "domains[0]", "expected a host name"),
        ("domains: [acme-analytics.com]", "domains: [acme-analytics.com, ACME-analytics.com]", "domains[1]", "listed twice"),
        ("domains: [acme-analytics.com]", "domains: acme-analytics.com", "domains", "expected a list"),
        ("domains: [acme-analytics.com]\nhosts: [beacon.acme.net]", "domains: []", "domains", "at least one entry"),
        ("path: '^/collect$'", "path: '^/(collect'", "endpoints[0].path", "invalid regular expression"),
        ("path: '^/collect$'", "path: '/collect'", "endpoints[0].path", "anchored with ^"),
        ("decoder: generic", "decoder: ga5", "endpoints[0].decoder", "did you mean 'ga4'"),
        ("host: '*.acme-analytics.com'", "host: 'https://acme-analytics.com/'", "endpoints[0].host", "expected a host"),
        ("host: '*.acme-analytics.com', ", "", "endpoints[0].host", "the key is missing"),
        ("decoder: generic}", "decoder: generic, method: POST}", "endpoints[0].method", "unknown key"),
        ("page_url: [u]", "url: [u]", "payload.url", "unknown key"),
        ("custom: ['p.*']", "custom: [3]", "payload.custom[0]", "expected a non-empty string"),
        ("stance: unknown", "stance: no", "baa.stance", "write 'no' in quotes"),
        ("stance: unknown", "stance: yes", "baa.stance", "write 'yes' in quotes"),
        ("stance: unknown", "stance: maybe", "baa.stance", "expected one of"),
        ("stance: unknown", "stance: 'no'", "baa.source", "expected a non-empty string"),
        (
            'summary: "No public statement."',
            "summary: x\n  source: http://acme.example/terms\n  stance2: y",
            "baa.stance2",
            "unknown key",
        ),
        ('baa:\n  stance: unknown\n  summary: "No public statement."\n', "", "baa", "expected a mapping"),
    ],
)
def test_vendor_file_errors_name_the_key(old: str, new: str, key: str, message: str) -> None:
    assert old in VALID
    with pytest.raises(ConfigError) as raised:
        vendor_from_yaml(VALID.replace(old, new).encode(), "acme.yaml", expected_id="acme")
    assert raised.value.source == "acme.yaml"
    assert raised.value.key == key
    assert message in raised.value.problem


def test_insecure_source_url_is_refused() -> None:
    text = VALID.replace('summary: "No public statement."', 'summary: "Signs BAAs."\n  source: http://acme.example/baa').replace(
        "stance: unknown", "stance: 'yes'"
    )
    with pytest.raises(ConfigError) as raised:
        vendor_from_yaml(text.encode(), "acme.yaml", expected_id="acme")
    assert (raised.value.key, raised.value.problem) == ("baa.source", "expected an https:// URL, found 'http://acme.example/baa'")


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        (b"name: [unclosed\n", "line 2, column 1", "invalid YAML"),
        (b"name: a\nname: b\n", "line 2, column 1", "duplicate key 'name'"),
        (b"- just\n- a list\n", "", "expected a mapping, found a list"),
        (b"", "", "expected a mapping, found nothing"),
        (b"name: \xff\xfe\n", "", "expected UTF-8 text"),
        (b"#" * 300_000, "", "larger than"),
    ],
)
def test_unreadable_vendor_files(data: bytes, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        vendor_from_yaml(data, "acme.yaml", expected_id="acme")
    assert raised.value.key == key
    assert message in raised.value.problem


def _write(directory: Path, vendor_id: str, text: str) -> None:
    (directory / f"{vendor_id}.yaml").write_text(text.replace("id: acme", f"id: {vendor_id}"))


def test_two_vendors_cannot_claim_the_same_domain(tmp_path: Path) -> None:
    _write(tmp_path, "acme", VALID)
    _write(tmp_path, "bravo", VALID.replace("Acme Analytics", "Bravo").replace("beacon.acme.net", "beacon.bravo.net"))
    with pytest.raises(ConfigError) as raised:
        VendorCatalog.load(tmp_path)
    assert raised.value.source.endswith("bravo.yaml")
    assert raised.value.key == "domains[0]"
    assert raised.value.problem == "'acme-analytics.com' is already claimed by vendor 'acme'"


def test_vendor_names_are_unique_ignoring_case(tmp_path: Path) -> None:
    _write(tmp_path, "acme", VALID)
    _write(
        tmp_path,
        "bravo",
        VALID.replace("Acme Analytics", "ACME analytics")
        .replace("acme-analytics.com", "bravo.com")
        .replace("beacon.acme.net", "beacon.bravo.net"),
    )
    with pytest.raises(ConfigError) as raised:
        VendorCatalog.load(tmp_path)
    assert (raised.value.key, raised.value.problem) == ("name", "'acme analytics' is already used by vendor 'acme'")


def test_small_catalog_from_a_directory(tmp_path: Path) -> None:
    _write(tmp_path, "acme", VALID)
    (tmp_path / "notes.txt").write_text("ignored: not a vendor file")
    catalog = VendorCatalog.load(tmp_path)
    assert [vendor.id for vendor in catalog] == ["acme"]
    vendor = catalog.match_host("eu.acme-analytics.com")
    assert vendor is not None and vendor.id == "acme"
    assert catalog.match_host("acme.example") is None
    assert catalog.match_endpoint("eu.acme-analytics.com", "/collect?x=1") == (vendor, vendor.endpoints[0])


def test_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no vendor files"):
        VendorCatalog.load(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        VendorCatalog.load(tmp_path / "absent")


# --- properties ----------------------------------------------------------------------------------

REAL_FILE = (VENDORS_DIR / "google-analytics.yaml").read_bytes()


@st.composite
def mutated_vendor_file(draw: st.DrawFn) -> bytes:
    data = bytearray(REAL_FILE)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or not data:
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 40))]
        else:
            data[min(position, len(data) - 1)] ^= draw(st.integers(1, 255))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2000), mutated_vendor_file()))
def test_vendor_parser_raises_only_config_error(data: bytes) -> None:
    try:
        vendor = vendor_from_yaml(data, "fuzz.yaml", expected_id="google-analytics")
    except ConfigError as error:
        assert error.source == "fuzz.yaml"
    else:
        assert vendor.id == "google-analytics"


@settings(max_examples=300, deadline=None)
@given(host=st.text(max_size=300), path=st.text(max_size=300))
def test_matching_arbitrary_text_never_raises(catalog: VendorCatalog, host: str, path: str) -> None:
    assert catalog.match_host(host) is None or isinstance(catalog.match_host(host), Vendor)
    match = catalog.match_endpoint(host, path)
    assert match is None or match[1] in match[0].endpoints
    assert isinstance(catalog.registered_domain(host), str)


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), label=LABEL)
def test_any_subdomain_of_a_vendor_domain_belongs_to_a_vendor(catalog: VendorCatalog, data: st.DataObject, label: str) -> None:
    owned = sorted((domain, vendor.id) for vendor in catalog for domain in vendor.domains)
    domain, vendor_id = data.draw(st.sampled_from(owned))
    host = f"{label}.{domain}"
    claimed_more_narrowly = any(
        host == name or host.endswith("." + name)
        for vendor in catalog
        for name in vendor.domains + vendor.hosts
        if name.endswith("." + domain)
    )
    found = catalog.match_host(host)
    assert found is not None
    assert found.id == vendor_id or claimed_more_narrowly
    assert registered_domain(host) != ""


def test_the_public_suffix_rules_are_the_librarys_own_icann_rules() -> None:
    from publicsuffixlist import PublicSuffixList

    from sensor.enrich.vendors import _public_suffixes

    reference = PublicSuffixList(only_icann=True, accept_unknown=False)
    ours = _public_suffixes()
    assert ours._publicsuffix == reference._publicsuffix and ours._maxlabel == reference._maxlabel
    for name in ("www.example.co.uk", "a.b.xn--p1ai", "xn--80ak6aa92e.xn--p1ai", "foo.github.io", "localhost", "x.ck"):
        assert ours.privatesuffix(name) == reference.privatesuffix(name)


def _suffix_rules() -> list[str]:
    from sensor.enrich.vendors import icann_rules

    return sorted(set(icann_rules()))


@settings(max_examples=400, deadline=None)
@given(
    rule=st.sampled_from(_suffix_rules()),
    prefix=st.lists(
        st.sampled_from(["www", "a", "b-2", "xn--80ak6aa92e", "foo", "_dmarc", "\u043f\u0440\u0438\u043c\u0435\u0440"]),
        max_size=3,
    ),
)
def test_registered_domains_from_the_ascii_rules_are_the_whole_lists(rule: str, prefix: list[str]) -> None:
    """Names in ASCII without an internationalized label are decided by the ASCII rules alone:
    the same answer as the whole ICANN list (and the library's own) for names under every rule."""
    from publicsuffixlist import PublicSuffixList

    from sensor.enrich.vendors import _public_suffixes, registered_domain

    name = ".".join([*prefix, rule.lstrip("!").replace("*", "x")])
    reference = PublicSuffixList(only_icann=True, accept_unknown=False)
    assert registered_domain(name) == (reference.privatesuffix(name) or "") == (_public_suffixes().privatesuffix(name) or "")


@settings(max_examples=300)
@given(st.text(alphabet="ab.", max_size=12) | st.sampled_from(["", ".", "a", "a.b", "a..b", ".a.b", "a.b.", "x.y.z.w"]))
def test_domain_suffixes_are_the_host_then_each_parent_of_two_labels_or_more(host: str) -> None:
    labels = host.split(".")
    assert list(domain_suffixes(host)) == [host] + [".".join(labels[start:]) for start in range(1, len(labels) - 1)]
