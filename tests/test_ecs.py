"""ECS helpers shared by every event: the Community ID flow hash."""
from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.output import ecs
from sensor.output.ecs import community_id, community_id_py
from sensor.records import DnsAnswer, DnsQuery, Flow, TlsHello


@pytest.mark.parametrize("seed, expected", [(0, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="), (1, "1:3V71V58M3Ksw/yuFALMcW0LAHvc=")])
def test_community_id_matches_the_specification_vectors(seed: int, expected: str) -> None:
    """The TCP vectors of the Community ID specification, in both directions."""
    forward = Flow("128.232.110.120", 34855, "66.35.250.204", 80, "tcp")
    backward = Flow("66.35.250.204", 80, "128.232.110.120", 34855, "tcp")
    for hash_of in (community_id, community_id_py):
        assert hash_of(forward, seed) == hash_of(backward, seed) == expected


ADDRESS_PAIRS = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
).map(lambda pair: (str(pair[0]), str(pair[1])))
PORT = st.integers(0, 65535)


@pytest.mark.skipif(ecs._community_id_fast is None, reason="the compiled fast path is not built")
@settings(max_examples=300)
@given(ADDRESS_PAIRS, PORT, PORT, st.sampled_from(["tcp", "udp"]), st.integers(0, 65535))
def test_compiled_community_id_equals_the_reference(
    addresses: tuple[str, str], sport: int, dport: int, transport: str, seed: int
) -> None:
    flow = Flow(addresses[0], sport, addresses[1], dport, transport)
    assert community_id(flow, seed) == community_id_py(flow, seed)
    same_endpoints = Flow(addresses[0], sport, addresses[0], dport, transport)
    assert community_id(same_endpoints, seed) == community_id_py(same_endpoints, seed)


def test_event_url_redaction_is_the_same_cached_or_not() -> None:
    target = "/search?q=metformin+for+diabetes&page=2"
    referrer = "https://portal.example-hospital.org/mychart/results?mrn=12345678"
    first = ecs._redacted_event_urls("GET", target, referrer)
    assert first == ecs._redacted_event_urls("GET", target, referrer) == ecs._redacted_request_urls("GET", target, referrer)
    assert "metformin" not in first[0] and "12345678" not in (first[1] or "")
    long_target = "/p?" + "&".join(f"k{i}=v{i}" for i in range(400)) + "&q=metformin"
    assert len(long_target) > ecs._CACHED_URL_CHARS
    assert ecs._redacted_event_urls("GET", long_target, None) == ecs._redacted_request_urls("GET", long_target, None)
    assert "metformin" not in ecs._redacted_event_urls("GET", long_target, None)[0]


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e20, max_value=1e20, allow_nan=False))
def test_iso_time_names_any_capture_time(ts: float) -> None:
    """A capture can claim any 64-bit time: the event gets the nearest instant ECS can carry."""
    from datetime import datetime, timezone

    text = ecs.iso_time(ts)
    assert len(text) == 27 and text.endswith("Z")
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    if -62135596800 <= ts < 253402300799:
        assert abs(parsed.timestamp() - ts) <= 1e-6 + abs(ts) * 1e-15
    else:
        assert parsed.year in (1, 9999)


def test_iso_time_pads_early_years() -> None:
    assert ecs.iso_time(-59011459200) == "0100-01-01T00:00:00.000000Z"
    assert ecs.iso_time(1705329000.5) == "2024-01-15T14:30:00.500000Z"


# The compiled envelope ------------------------------------------------------------------------
compiled_envelope = pytest.mark.skipif(ecs._envelope_fast is None, reason="the compiled fast path is not built")
CAPTURE_TIMES = st.one_of(
    st.floats(min_value=-1e13, max_value=1e13, allow_nan=False),  # either side of years 1 and 9999
    st.integers(-62135596801, 253402300800).map(float),  # whole seconds, the clamp edges included
    st.floats(min_value=0, max_value=4e9, allow_nan=False),  # what captures hold
)


@compiled_envelope
@settings(max_examples=500, deadline=None)
@given(CAPTURE_TIMES, ADDRESS_PAIRS, PORT, PORT, st.sampled_from(["tcp", "udp"]), st.sampled_from(["dns", "tls", "quic", "http"]))
def test_compiled_envelope_equals_the_reference(
    ts: float, addresses: tuple[str, str], sport: int, dport: int, transport: str, protocol: str
) -> None:
    builder = ecs.EventBuilder("sensor-1", lambda host: host)
    flow = Flow(addresses[0], sport, addresses[1], dport, transport)
    dataset = ecs.EVENT_DATASETS[protocol]
    compiled = ecs._envelope_fast(
        ts, dataset, flow, protocol, builder.observer, ecs.ECS_VERSION, ecs.MODULE, ecs.data_stream(dataset)
    )
    reference = builder._envelope_py(ts, protocol, flow)
    assert compiled == reference
    assert list(compiled) == list(reference)  # the same key order, so the same JSON
    assert compiled["@timestamp"] == ecs.iso_time(ts)
    assert compiled["event"]["dataset"] == compiled["data_stream"]["dataset"] == f"phi_sensor.{protocol}"
    assert builder._envelope(ts, protocol, flow) == reference


@compiled_envelope
def test_compiled_envelope_leaves_odd_flows_to_the_reference() -> None:
    builder = ecs.EventBuilder("sensor-1", lambda host: host)
    odd = [
        Flow("10.0.0.1", 70000, "10.0.0.2", 80, "tcp"),  # a port beyond 16 bits
        Flow("10.0.0.1", -1, "10.0.0.2", 80, "tcp"),
        Flow("not an address", 1, "10.0.0.2", 80, "tcp"),
        Flow("10.0.0.1", True, "10.0.0.2", 80, "tcp"),  # not an int as decode makes them
        Flow("10.0.0.1", 1, "10.0.0.2", 80, "sctp"),  # Community ID of an unknown transport: protocol 0
    ]
    stream = ecs.data_stream("phi_sensor.tls")
    for flow in odd[:-1]:
        assert (
            ecs._envelope_fast(1.0, "phi_sensor.tls", flow, "tls", builder.observer, ecs.ECS_VERSION, ecs.MODULE, stream) is None
        )
    for flow in odd:
        try:
            reference = builder._envelope_py(1.0, "tls", flow)
        except (OSError, ValueError, struct.error):
            continue  # the reference cannot hash it either: nothing to compare
        assert builder._envelope(1.0, "tls", flow) == reference
    for ts in (float("inf"), float("-inf"), float("nan")):
        assert (
            ecs._envelope_fast(ts, "phi_sensor.tls", odd[-1], "tls", builder.observer, ecs.ECS_VERSION, ecs.MODULE, stream)
            is None
        )


# Events as JSON lines written without a dict ---------------------------------------------------
compiled_lines = pytest.mark.skipif(ecs._dns_line_fast is None, reason="the compiled fast path is not built")
TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),  # the usual case
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),  # any character a str from bytes can hold
    st.sampled_from(['quote"d', "back\\slash", "tab\there", "nul\x00", "é.example", "del\x7f"]),
)
FLOWS = st.builds(
    lambda pair, sport, dport, transport: Flow(pair[0], sport, pair[1], dport, transport),
    ADDRESS_PAIRS, PORT, PORT, st.sampled_from(["tcp", "udp"]),
)
ANSWERS = st.lists(
    st.builds(
        DnsAnswer,
        TEXT,
        st.sampled_from(["A", "AAAA", "CNAME", "HTTPS", "TXT"]),
        st.one_of(st.ip_addresses().map(str), TEXT),
        st.integers(0, 2**32 - 1),
    ),
    max_size=5,
)
DNS_RECORDS = st.builds(
    DnsQuery,
    CAPTURE_TIMES,
    FLOWS,
    st.integers(0, 65535),
    TEXT,
    st.sampled_from(["A", "AAAA", "HTTPS", "TYPE65280"]),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(["NOERROR", "NXDOMAIN", "RCODE3841"])),
    ANSWERS.map(tuple),
)
TLS_RECORDS = st.builds(
    TlsHello,
    CAPTURE_TIMES,
    FLOWS,
    st.sampled_from(["tls", "quic"]),
    st.one_of(st.none(), st.just(""), TEXT, st.sampled_from(["cloudflare-ech.com", "www.example-hospital.org"])),
    st.lists(TEXT, max_size=3).map(tuple),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(["1.3", "1.2"])),
)


def _registered_from_text(host: str) -> str:
    return host.rpartition(".")[2] if host.count(".") == 1 else ""


@compiled_lines
@settings(max_examples=400, deadline=None)
@given(st.one_of(DNS_RECORDS, TLS_RECORDS))
def test_event_lines_are_what_orjson_makes_of_the_documents(record: DnsQuery | TlsHello) -> None:
    builder = ecs.EventBuilder("sensor-1", _registered_from_text)
    assert builder.json_line(record) == orjson.dumps(builder(record), option=orjson.OPT_APPEND_NEWLINE)


@compiled_lines
def test_event_lines_resolved_addresses_are_listed_once() -> None:
    flow = Flow("10.0.0.5", 53000, "192.0.2.53", 53, "udp")
    answers = tuple(DnsAnswer("a.example", kind, data, 60) for kind, data in [
        ("A", "192.0.2.53"), ("A", "198.51.100.7"), ("AAAA", "2001:db8::7"), ("A", "198.51.100.7"), ("CNAME", "b.example"),
    ])
    record = DnsQuery(1.5, flow, 1, "a.example", "A", True, "NOERROR", answers)
    builder = ecs.EventBuilder("sensor-1", lambda host: "example")
    line = builder.json_line(record)
    assert line == orjson.dumps(builder(record), option=orjson.OPT_APPEND_NEWLINE)
    assert orjson.loads(line)["related"]["ip"] == ["10.0.0.5", "192.0.2.53", "198.51.100.7", "2001:db8::7"]


class _ComputedAnswer:
    """An answer whose fields are made afresh on each access (a duck-typed record)."""

    name = "a.example"
    ttl = 30

    @property
    def type(self) -> str:
        return "".join(["A"])  # noqa: FLY002 - a new string at each access is the point

    @property
    def data(self) -> str:
        return ".".join(["192", "0", "2", "77"])  # noqa: FLY002 - a new string at each access


@compiled_lines
def test_event_lines_take_answers_whose_fields_are_computed() -> None:
    flow = Flow("10.0.0.5", 53000, "192.0.2.53", 53, "udp")
    record = DnsQuery(1.5, flow, 1, "a.example", "A", True, "NOERROR", (_ComputedAnswer(), _ComputedAnswer()))
    builder = ecs.EventBuilder("sensor-1", lambda host: "")
    for _ in range(200):  # a freed value would show as garbage or a crash (and under ASan)
        assert builder.json_line(record) == orjson.dumps(builder(record), option=orjson.OPT_APPEND_NEWLINE)


@compiled_lines
def test_event_lines_leave_what_decode_does_not_make_to_the_dict_builder() -> None:
    """Odd flows and times, many answers, integers beyond 64 bits: the same line, or the same error."""
    builder = ecs.EventBuilder("sensor-1", lambda host: "")
    odd_flow = Flow("10.0.0.1", 70000, "10.0.0.2", 53, "udp")
    many = tuple(DnsAnswer("a.example", "A", f"192.0.2.{i}", 1) for i in range(100))
    records = [
        DnsQuery(1.0, odd_flow, 1, "a.example", "A"),
        DnsQuery(7, Flow("10.0.0.1", 1, "10.0.0.2", 53, "udp"), 1, "a.example", "A"),  # an int time
        DnsQuery(1.0, Flow("10.0.0.1", 1, "10.0.0.2", 53, "udp"), 1, "a.example", "A", True, "NOERROR", many),
        TlsHello(1.0, odd_flow, "tls", "a.example"),
        TlsHello(1.0, Flow("10.0.0.1", 1, "10.0.0.2", 443, "tcp"), "tls", "a.example", ["h2"]),  # type: ignore[arg-type]
    ]
    records.append(DnsQuery(1.0, Flow("10.0.0.1", 1, "10.0.0.2", 53, "udp"), 2**70, "a.example", "A"))
    for record in records:
        try:
            expected: bytes | type[Exception] = orjson.dumps(builder(record), option=orjson.OPT_APPEND_NEWLINE)
        except (TypeError, struct.error) as exc:  # not a document the dict builder can make either
            expected = type(exc)
        if isinstance(expected, bytes):
            assert builder.json_line(record) == expected
        else:
            with pytest.raises(expected):
                builder.json_line(record)
