"""Configuration: the example file, the defaults, and one precise error per kind of mistake."""
from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import DEFAULT_SOURCE, RuleTuning, load_config, parse_config, parse_yaml
from sensor.enrich.vendors import VendorCatalog
from sensor.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "config" / "sensor.example.yaml"


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def test_example_file_loads_with_typed_fields(catalog: VendorCatalog) -> None:
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert config.sensor.name == "gw-1"
    assert config.decode.http_body_cap == 65536
    assert config.decode.tcp_stream_cap == 262144
    assert config.decode.max_flows == 200000
    assert config.decode.flow_idle_timeout == 120.0
    assert config.decode.dns_timeout == 5.0
    assert config.outputs == [{"type": "jsonl", "path": "-"}]
    assert config.redaction.unredacted is False
    assert config.rule("unreviewed-vendor").enabled is False
    assert config.rule("tracker-egress-no-baa").throttle_seconds == 3600
    assert config.rule("plaintext-phi").severity == "critical"
    assert config.rule("phi-in-tracker-payload") == RuleTuning()
    config.check_rule_ids(["tracker-egress-no-baa", "phi-in-tracker-payload", "plaintext-phi", "unreviewed-vendor"])

    ehr = config.assets.lookup("10.30.1.5")
    assert ehr is not None and ehr.name == "ehr-db" and ehr.tags == ("ehr", "database")
    assert config.assets.is_phi_host("10.20.7.7")
    assert not config.assets.is_phi_host("10.20.99.7")  # guest Wi-Fi carved out
    assert not config.assets.is_phi_host("192.168.1.10")  # an explicit list replaces the default
    assert config.assets.is_phi_host("fd12:3456:789a::10")

    policy = config.build_policy(catalog)
    segment = catalog.get("segment")
    assert policy.catalog is catalog
    agreement = policy.baa.covers(segment, "api.segment.io", on=dt.date(2026, 1, 1))
    assert agreement is not None and agreement.signed == dt.date(2023, 3, 1)
    assert policy.baa.covers(None, "x.analytics.example-health-vendor.com", on=dt.date(2026, 1, 1)) is not None
    assert policy.baa.covers(catalog.get("mixpanel"), "api.mixpanel.com", on=dt.date(2026, 1, 1)) is None
    assert policy.is_allowed("static.example-cdn.com")
    assert policy.is_allowed("EXAMPLE-CDN.com.")
    assert not policy.is_allowed("example-cdn.com.evil.net")


def test_no_config_gives_the_documented_defaults(catalog: VendorCatalog) -> None:
    config = load_config(None)
    assert config.source == DEFAULT_SOURCE
    assert config.sensor.name
    assert config.phi_hosts is None
    assert config.baa == [] and config.allow == [] and config.rules == {}
    assert config.outputs == [{"type": "jsonl", "path": "-"}]
    assert config.redaction.unredacted is False
    assert config.decode.max_flows == 200000
    assert config.rule("anything").model_dump() == RuleTuning().model_dump()  # every setting: the rule's own
    assert config.assets.is_phi_host("10.1.2.3")
    assert config.assets.is_phi_host("fd00::1")
    assert not config.assets.is_phi_host("8.8.8.8")
    policy = config.build_policy(catalog)
    assert len(policy.baa) == 0
    assert not policy.is_allowed("www.facebook.com")


def test_empty_file_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    config = load_config(path)
    assert config.source == str(path)
    assert config.model_dump(exclude={"sensor"}) == load_config(None).model_dump(exclude={"sensor"})


def test_partial_sections_keep_other_defaults() -> None:
    config = parse_config("decode: {max_flows: 5000}\nsensor: {name: edge-7}\n", "s.yaml")
    assert config.decode.max_flows == 5000
    assert config.decode.http_body_cap == 65536
    assert config.sensor.name == "edge-7"


def test_quoted_iso_dates_and_phi_host_forms() -> None:
    config = parse_config(
        "baa: [{vendor: segment, signed: '2025-01-02'}]\n"
        "phi_hosts: [10.0.0.0/8, 2001:db8::/32, 192.0.2.7, {cidr: 10.9.0.0/16, name: lab}]\n",
        "s.yaml",
    )
    assert config.baa[0].signed == dt.date(2025, 1, 2)
    assert [host.network for host in config.assets.hosts] == [
        ipaddress.ip_network(cidr) for cidr in ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32", "10.9.0.0/16")
    ]
    lab = config.assets.lookup("10.9.1.1")
    assert lab is not None and lab.name == "lab"


ERRORS = [
    # unknown keys, with hints
    ("phi_host: [10.0.0.0/8]", "phi_host", "unknown key (did you mean 'phi_hosts'?)"),
    ("outputz: []", "outputz", "unknown key (did you mean 'outputs'?)"),
    ("zzz: 1", "zzz", "unknown key (expected one of: sensor, phi_hosts"),
    ("decode: {http_body_capp: 5}", "decode.http_body_capp", "unknown key (did you mean 'http_body_cap'?)"),
    ("rules: {plaintext-phi: {enable: false}}", "rules.plaintext-phi.enable", "unknown key (did you mean 'enabled'?)"),
    ("phi_hosts: [{cidr: 10.0.0.0/8, tag: [x]}]", "phi_hosts[0].tag", "unknown key (did you mean 'tags'?)"),
    ("baa: [{vendor: segment, expiry: 2026-01-01}]", "baa[0].expiry", "unknown key (did you mean 'expires'?)"),
    # types and ranges
    ("decode: {max_flows: lots}", "decode.max_flows", "expected an integer, found 'lots'"),
    ("decode: {max_flows: '5000'}", "decode.max_flows", "expected an integer, found '5000'"),
    ("decode: {max_flows: 0}", "decode.max_flows", "expected a number at least 1, found 0 (int)"),
    ("decode: {max_flows: 20000000}", "decode.max_flows", "expected a number at most 10000000, found 20000000 (int)"),
    ("decode: {flow_idle_timeout: 0}", "decode.flow_idle_timeout", "expected a number greater than 0, found 0 (int)"),
    ("decode: {tcp_stream_cap: 1.5}", "decode.tcp_stream_cap", "expected an integer, found 1.5 (float)"),
    ("decode: [1, 2]", "decode", "expected a mapping, found a list"),
    ("sensor: {name: ''}", "sensor.name", "expected a non-empty string, found ''"),
    ("sensor: {name: 7}", "sensor.name", "expected a string, found 7 (int)"),
    ("redaction: {unredacted: 'yes'}", "redaction.unredacted", "expected true or false, found 'yes'"),
    (
        "rules: {plaintext-phi: {severity: urgent}}",
        "rules.plaintext-phi.severity",
        "expected one of 'low', 'medium', 'high' or 'critical', found 'urgent'",
    ),
    (
        "rules: {plaintext-phi: {throttle_seconds: -5}}",
        "rules.plaintext-phi.throttle_seconds",
        "expected a number at least 0, found -5 (int)",
    ),
    (
        "rules: {Plaintext_PHI: {}}",
        "rules.Plaintext_PHI",
        "expected a rule id such as tracker-egress-no-baa, found 'Plaintext_PHI'",
    ),
    ("rules: [plaintext-phi]", "rules", "expected a mapping, found a list"),
    ("outputs: [{path: out.jsonl}]", "outputs[0]", "expected a 'type' key naming the sink"),
    ("outputs: [jsonl]", "outputs[0]", "expected a mapping with a 'type' key naming the sink"),
    ("allow: [co.uk]", "allow[0]", "found the public suffix 'co.uk'"),
    ("allow: ['not a domain']", "allow[0]", "expected a domain such as example.com, found 'not a domain'"),
    ("allow: example.com", "allow", "expected a list, found 'example.com'"),
    # addresses
    ("phi_hosts: [10.0.0.1/8]", "phi_hosts[0].cidr", "found '10.0.0.1/8' with host bits set (did you mean '10.0.0.0/8'?)"),
    ("phi_hosts: [10.0.0.0/8, 10.300.0.0/16]", "phi_hosts[1].cidr", "expected an IP address or CIDR, found '10.300.0.0/16'"),
    ("phi_hosts: [ehr.hospital.local]", "phi_hosts[0].cidr", "host names are not accepted"),
    ("phi_hosts: [42]", "phi_hosts[0]", "expected an address, a CIDR or a mapping with cidr, name, tags; found 42 (int)"),
    ("phi_hosts: [{name: ehr}]", "phi_hosts[0].cidr", "required key missing"),
    ("phi_hosts: []", "phi_hosts", "expected at least one address or CIDR"),
    ("phi_hosts: [10.0.0.0/8, 10.0.0.0/8]", "phi_hosts[1].cidr", "'10.0.0.0/8' is already listed at phi_hosts[0]"),
    ("phi_hosts_exclude: [guest-wifi]", "phi_hosts_exclude[0]", "expected an IP address or CIDR, found 'guest-wifi'"),
    # agreements (shape)
    ("baa: [{vendor: segment, signed: '2025-13-01'}]", "baa[0].signed", "expected a date (YYYY-MM-DD), found '2025-13-01'"),
    ("baa: [{vendor: segment, signed: 20250101}]", "baa[0].signed", "expected a date (YYYY-MM-DD), found 20250101 (int)"),
    ("baa: [{vendor: segment, domains: segment.io}]", "baa[0].domains", "expected a list, found 'segment.io'"),
    # the file itself
    ("- a\n- b\n", "", "expected a mapping of settings at the top level, found a list"),
    ("just text", "", "expected a mapping of settings at the top level, found 'just text'"),
    ("decode:\n  max_flows: [1\n", "line 3, column 1", "invalid YAML"),
    ("allow: [a.com]\nallow: [b.com]\n", "line 2, column 1", "duplicate key 'allow'"),
    ("x: &anchor {a: 1}\ny: *anchor\n", "line 2, column 4", "aliases (*name) are not supported"),
    ("x: 1\ny: *anchor\n", "line 2, column 4", "aliases (*name) are not supported"),  # and no anchor
    ("baa: [{vendor: segment, signed: 2025-02-30}]", "line 1, column 33", "impossible date '2025-02-30'"),
    ("run: !!python/object/apply:os.system [id]", "line 1, column 6", "could not determine a constructor"),
]


@pytest.mark.parametrize(("text", "key", "message"), ERRORS)
def test_errors_name_file_key_and_problem(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "sensor.yaml")
    error = raised.value
    assert (error.source, error.key) == ("sensor.yaml", key)
    assert message in error.problem
    assert str(error).startswith(f"sensor.yaml: {key}: " if key else "sensor.yaml: ")


def test_only_the_first_problem_is_reported_with_a_count() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config("decode: {max_flows: x, http_body_cap: y}\nredaction: {unredacted: 3}\n", "s.yaml")
    assert raised.value.key == "decode.http_body_cap"
    assert raised.value.problem.endswith("(and 2 more problems)")


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("baa: [{vendor: Segmnt}]", "baa[0].vendor", "unknown vendor 'Segmnt' (did you mean 'Segment'"),
        ("baa: [{vendor: qqqqqqqqqq}]", "baa[0].vendor", "see signatures/vendors/"),
        ("baa: [{vendor: segment}, {vendor: Hotjr}]", "baa[1].vendor", "did you mean 'Hotjar'"),
        (
            "baa: [{vendor: segment, signed: 2025-06-01, expires: 2025-05-31}]",
            "baa[0].expires",
            "on or after signed (2025-06-01), found 2025-05-31",
        ),
        ("baa: [{scope: everything}]", "baa[0]", "expected a vendor, domains, or both"),
        ("baa: [{domains: [com]}]", "baa[0].domains[0]", "expected a domain such as example.com, found 'com'"),
        ("baa: [{domains: [co.uk]}]", "baa[0].domains[0]", "public suffix"),
    ],
)
def test_errors_that_need_the_catalog_come_from_build_policy(catalog: VendorCatalog, text: str, key: str, message: str) -> None:
    config = parse_config(text, "sensor.yaml")
    with pytest.raises(ConfigError) as raised:
        config.build_policy(catalog)
    assert (raised.value.source, raised.value.key) == ("sensor.yaml", key)
    assert message in raised.value.problem


def test_unknown_rule_ids_are_rejected_against_the_rule_engine() -> None:
    config = parse_config("rules: {tracker-egress-nobaa: {enabled: false}}", "s.yaml")
    with pytest.raises(ConfigError) as raised:
        config.check_rule_ids(["tracker-egress-no-baa", "plaintext-phi"])
    assert raised.value.key == "rules.tracker-egress-nobaa"
    assert raised.value.problem == "unknown rule (did you mean 'tracker-egress-no-baa'?)"


def test_missing_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "absent.yaml")
    assert (raised.value.source, raised.value.problem) == (str(tmp_path / "absent.yaml"), "configuration file not found")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1024 * 1024 + 10))
    with pytest.raises(ConfigError, match="at most 1048576 bytes"):
        load_config(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"sensor: {name: \xc3\x28}\n")
    with pytest.raises(ConfigError, match="expected UTF-8 text, found an invalid byte at offset 15"):
        load_config(binary)


def test_parse_yaml_keeps_plain_documents() -> None:
    assert parse_yaml(b"\xef\xbb\xbfa: [1, 2]\nb: 2024-02-29\n", "x") == {"a": [1, 2], "b": dt.date(2024, 2, 29)}
    assert parse_yaml("<<: {a: 1}\nb: 2\n", "x") == {"a": 1, "b": 2}


# --- properties ----------------------------------------------------------------------------------

EXAMPLE_BYTES = EXAMPLE.read_bytes()


@st.composite
def mutated_example(draw: st.DrawFn) -> bytes:
    data = bytearray(EXAMPLE_BYTES)
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert":
            data[position:position] = draw(st.sampled_from([b"[", b"{", b":", b"-", b"\n  ", b"'", b"*", b"&a ", b"!!", b"0"]))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 30))]
        else:
            data[position] ^= draw(st.integers(1, 255))
    return bytes(data)


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20) | st.dates(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:
        return True


SECTIONS = st.dictionaries(
    st.sampled_from(
        ["sensor", "phi_hosts", "phi_hosts_exclude", "baa", "allow", "rules", "decode", "outputs", "redaction", "extra"]
    ),
    YAML_VALUES,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=1500), mutated_example()))
def test_config_parser_raises_only_config_error(data: bytes) -> None:
    try:
        config = parse_config(data, "fuzz.yaml")
    except ConfigError as error:
        assert error.source == "fuzz.yaml"
    else:
        assert config.source == "fuzz.yaml"


@settings(max_examples=300, deadline=None)
@given(document=SECTIONS)
def test_structured_nonsense_raises_only_config_error(catalog: VendorCatalog, document: dict[str, object]) -> None:
    text = yaml.dump(document, Dumper=_PlainDumper)
    try:
        parse_config(text, "fuzz.yaml").build_policy(catalog)
    except ConfigError as error:
        assert error.source == "fuzz.yaml"
        assert error.key == "" or error.key.split(".")[0].split("[")[0] in document


def test_the_defaults_without_a_file_are_the_schemas() -> None:
    """load_config(None) answers without the schema; its values must be the schema's defaults."""
    from sensor.config import DefaultConfig
    from sensor.config_schema import SensorConfig

    light, full = load_config(None), SensorConfig()
    assert isinstance(light, DefaultConfig)
    assert light.sensor.name == full.sensor.name
    assert light.redaction.unredacted is full.redaction.unredacted is False
    assert light.decode.model_dump() == full.decode.model_dump()
    assert light.outputs == full.outputs
    assert light.rules == dict(full.rules) == {}
    assert light.source == full.source == DEFAULT_SOURCE
    light.check_rule_ids(["tracker-egress-no-baa"])
    assert light.rule("tracker-egress-no-baa").model_dump() == RuleTuning().model_dump()
    assert light.phi_hosts is None and light.assets is not None  # from the schema, loaded on demand
    catalog = VendorCatalog.load()
    policy, schema_policy = light.build_policy(catalog), full.build_policy(catalog)
    assert policy.assets.hosts == schema_policy.assets.hosts and not policy.assets.exclusions
    assert list(policy.baa) == list(schema_policy.baa) == [] and policy.allow == schema_policy.allow == frozenset()


def test_a_plain_replay_loads_neither_pydantic_nor_yaml_nor_the_spool() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from sensor.cli import main\n"
        "assert main(['replay', 'pcaps/demo.pcap', '--emit', 'events', '--output', '-', '--quiet']) == 0\n"
        "print(sorted(m for m in ('pydantic', 'yaml', 'sensor.config_schema', 'sensor.output.specs',"
        " 'sensor.output.spool', 'sqlite3', 'sensor.detect.rules') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
