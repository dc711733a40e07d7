"""Event lines written without a dict (EventBuilder.json_line) are byte for byte what orjson makes of
the event's document (the reference): also for records of tunnelled flows, whose tunnel fields are
spliced into the compiled DNS and TLS lines, and for HTTP requests."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.output import ecs
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, TlsHello, TunnelledFlow, UpgradedHello

compiled_lines = pytest.mark.skipif(ecs._dns_line_fast is None, reason="the compiled fast path is not built")

TEXT = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
    st.sampled_from(['quote"d', "back\\slash", ',"related":{', '"community_id":"x"}', "é.example", "www.example.org"]),
)
ADDRESSES = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)), st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6))
).map(lambda pair: (str(pair[0]), str(pair[1])))
PORT = st.integers(0, 65535)
VLAN = st.one_of(st.none(), st.integers(0, 4095))
TUNNEL_INFO = st.dictionaries(
    st.sampled_from(["type", "vni", "outer_source_ip", "outer_destination_ip", "id", 'we"ird']),
    st.one_of(TEXT, st.integers(0, 2**24)),
    max_size=4,
)
TUNNELS = st.tuples(TUNNEL_INFO, VLAN, VLAN)


def _flow(addresses: tuple[str, str], sport: int, dport: int, transport: str, tunnel: tuple | None) -> Flow:
    if tunnel is None:
        return Flow(addresses[0], sport, addresses[1], dport, transport)
    return TunnelledFlow(addresses[0], sport, addresses[1], dport, transport, tunnel)


FLOWS = st.builds(_flow, ADDRESSES, PORT, PORT, st.sampled_from(["tcp", "udp"]), st.one_of(st.none(), TUNNELS))
TIMES = st.floats(min_value=0, max_value=4e9, allow_nan=False)
ANSWERS = st.lists(
    st.builds(
        DnsAnswer, TEXT, st.sampled_from(["A", "AAAA", "CNAME"]), st.one_of(st.ip_addresses().map(str), TEXT),
        st.integers(0, 2**31),
    ),
    max_size=3,
).map(tuple)
DNS = st.builds(
    DnsQuery, TIMES, FLOWS, PORT, TEXT, st.sampled_from(["A", "AAAA", "HTTPS"]), st.booleans(),
    st.one_of(st.none(), st.sampled_from(["NOERROR", "NXDOMAIN"])), ANSWERS,
)
TLS = st.builds(
    TlsHello, TIMES, FLOWS, st.sampled_from(["tls", "quic"]),
    st.one_of(st.none(), st.just(""), TEXT, st.just("cloudflare-ech.com")),
    st.lists(TEXT, max_size=2).map(tuple), st.booleans(), st.one_of(st.none(), st.sampled_from(["1.3", "1.2"])),
)
UPGRADED = st.builds(
    UpgradedHello, TIMES, FLOWS, st.just("tls"), TEXT, st.just(()), st.booleans(), st.just("1.3"),
    preamble=st.sampled_from(["smtp-starttls", "http-connect"]), tunnel_target=st.one_of(st.none(), TEXT),
)
HEADERS = st.lists(
    st.tuples(st.sampled_from(["Host", "Referer", "User-Agent", "Content-Type", "X-Other"]), TEXT), max_size=4
).map(tuple)
HTTP = st.builds(
    HttpRequest, TIMES, FLOWS, st.sampled_from(["GET", "POST", "CONNECT"]),
    st.one_of(
        TEXT, st.sampled_from(["/", "/a?b=c", "/x?mrn=12345678&q=metformin", "http://h.example/p?q=1", "*", "h.example:443"])
    ),
    st.sampled_from(["1.1", "1.0", ""]), HEADERS,
    st.one_of(st.none(), st.sampled_from(["h.example", "10.0.0.1", "2001:db8::1", "portal.example-hospital.org"])),
    st.binary(max_size=8), st.integers(0, 2**40),
)


def _registered(host: str) -> str:
    return host.rpartition(".")[2] if host.count(".") == 1 else ""


def _reference(builder: ecs.EventBuilder, record) -> bytes:
    return orjson.dumps(builder(record), option=orjson.OPT_APPEND_NEWLINE)


@settings(max_examples=600, deadline=None)
@given(st.one_of(DNS, TLS, UPGRADED, HTTP), st.booleans())
def test_every_event_line_is_what_orjson_makes_of_its_document(record, redact: bool) -> None:
    builder = ecs.EventBuilder("sensor-1", _registered, redact_urls=redact)
    assert builder.json_line(record) == _reference(builder, record)
    assert builder.json_line(record) == builder.line_py(record)  # and again, from the tunnel's cached parts


@compiled_lines
@pytest.mark.parametrize(("outer", "inner"), [(None, None), (100, None), (None, 7), (100, 7)])
def test_tunnelled_dns_and_tls_lines_carry_their_tunnel(outer: int | None, inner: int | None) -> None:
    tunnel = ({"type": "vxlan", "vni": 4242, "outer_source_ip": "198.51.100.1"}, outer, inner)
    builder = ecs.EventBuilder("sensor-1", _registered)
    flow = TunnelledFlow("10.0.0.5", 53000, "192.0.2.53", 53, "udp", tunnel)
    dns = DnsQuery(1.5, flow, 7, "a.example", "A", True, "NOERROR", (DnsAnswer("a.example", "A", "192.0.2.9", 60),))
    tls_flow = TunnelledFlow("10.0.0.5", 40000, "192.0.2.80", 443, "tcp", tunnel)
    tls = TlsHello(1.5, tls_flow, "tls", "a.example", ("h2",), False, "1.3")
    for record in (dns, tls):
        line = builder.json_line(record)
        assert line == _reference(builder, record)
        document = orjson.loads(line)
        assert document["phi_egress"]["tunnel"] == tunnel[0]
        assert document["network"].get("vlan") == (None if outer is None else {"id": str(outer)})
        assert document["network"].get("inner") == (None if inner is None else {"vlan": {"id": str(inner)}})
        assert list(document)[-1] == ("phi_egress" if record is dns else "related")


@compiled_lines
def test_a_tunnels_parts_are_its_own_when_another_takes_its_place() -> None:
    """The parts are kept by the tunnel value's id: a new value at a freed one's address is not
    given the old value's parts."""
    builder = ecs.EventBuilder("sensor-1", _registered)
    for vni in range(300):
        tunnel = ({"type": "vxlan", "vni": vni}, vni % 4095, None)
        record = TlsHello(1.0, TunnelledFlow("10.0.0.5", 40000, "192.0.2.80", 443, "tcp", tunnel), "quic", "a.example")
        assert orjson.loads(builder.json_line(record))["phi_egress"]["tunnel"]["vni"] == vni
        del tunnel, record


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["Referer", "referer", "REFERER", "User-Agent", "user-agent", "Content-Type", "X-Other"]),
                  st.sampled_from(["", "https://a.example/p", "text/html; charset=utf-8", " Application/JSON ", "curl/8.5"])),
        max_size=6,
    ).map(tuple)
)
def test_http_events_take_the_first_header_of_each_name_in_any_case(headers: tuple) -> None:
    """The one pass over the headers finds what HttpRequest.header finds."""
    record = HttpRequest(1.0, Flow("10.0.0.5", 40000, "192.0.2.80", 80, "tcp"), "GET", "/p?q=1", "1.1", headers, "a.example")
    document = ecs.EventBuilder("sensor-1", _registered, redact_urls=False)(record)
    request = document["http"]["request"]
    assert request.get("referrer") == (record.header("referer") or None)
    assert request.get("mime_type") == ((record.header("content-type") or "").split(";", 1)[0].strip().lower() or None)
    assert document.get("user_agent") == ({"original": record.header("user-agent")} if record.header("user-agent") else None)
