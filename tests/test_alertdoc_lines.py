"""Alert documents written as JSON lines at the end of a replay: the compiled writer of documents on
lookups and hellos (AlertBuilder.json_line) against its reference AlertBuilder.line_py (orjson's
line of the document), the summary's values against those it reads of the document, and the
pipeline's line path against the document path."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.app.summary import AlertTally
from sensor.detect.base import Alert
from sensor.detect.engine import Destination
from sensor.detect.rules import ALL_RULES
from sensor.enrich.assets import PhiHost
from sensor.enrich.observation import Observation
from sensor.enrich.vendors import Vendor, registered_domain
from sensor.output import ecs
from sensor.phi.recognizers import Finding
from sensor.phi.trackers import TrackerPayload
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, TlsHello, TunnelledFlow


def _mostly(usual: list, unusual: list) -> st.SearchStrategy:
    """One of `usual` nine times in ten, else one of `unusual` (what a document leaves out or
    escapes: the cases the compiled writer declines or must write as orjson does)."""
    return st.sampled_from(usual * (9 * max(1, len(unusual)) // max(1, len(usual)) + 1) + unusual)


_NAMES = ["a.example", "tracker.example.com", "b.example"]
_TEXT = _mostly(_NAMES + ["PHI host 10.1.2.3 (lab) looked up a.example (Vendor; no BAA on file)"],
                ["", "x", "\u00e9t\u00e9.example", 'q"uote', "back\\slash", "tab\there", "ctl\x01", "123-45-6789",
                 "call 555-123-4567", "mrn 12345678", "a@b.example", "\U0001f600"])
_HOSTS = _mostly(_NAMES, ["", "\u00fcber.example", 'q"h.example'])
_TIMES = st.floats(min_value=-1e10, max_value=4e11, allow_nan=False) | st.sampled_from(
    [1705330800.1834884, 1705330800.0, -0.0, 253402300800.0]) | st.integers(min_value=0, max_value=2**31)
_FLOWS = st.builds(
    lambda ends, sport, dport, transport: Flow(ends[0], sport, ends[1], dport, transport),
    st.sampled_from([("10.1.2.3", "198.51.100.7"), ("fd00::2", "2001:db8::1"), ("192.0.2.1", "10.0.0.53")]),
    st.integers(min_value=0, max_value=65535),
    st.integers(min_value=0, max_value=65535),
    _mostly(["tcp", "udp"], [""]),
)
_ANSWERS = st.builds(DnsAnswer, _TEXT, _mostly(["A", "AAAA", "CNAME"], [""]),
                     _mostly(["192.0.2.9", "2001:db8::9", "cname.example"], ["", "0a0b"]),
                     _mostly([60, 0], [None]))
_DNS = st.builds(DnsQuery, _TIMES, _FLOWS, st.integers(min_value=0, max_value=65535), _TEXT,
                 _mostly(["A", "AAAA", "HTTPS"], [""]), st.booleans(),
                 _mostly(["NOERROR", "NXDOMAIN"], ["", None]), st.lists(_ANSWERS, max_size=4).map(tuple))
_HELLOS = st.builds(TlsHello, _TIMES, _FLOWS, st.sampled_from(["tls", "quic"]), _TEXT | st.none(),
                    st.lists(_mostly(["h2", "http/1.1", "h3"], [""]), max_size=3).map(tuple), st.booleans(),
                    _mostly(["1.3", "1.2"], ["", None]))
# a tunnel as decode records it: (phi_egress.tunnel, outer VLAN, inner VLAN); its fields may be empty
_TUNNELS = st.tuples(
    st.dictionaries(st.sampled_from(["type", "source_ip", "destination_ip", "id"]),
                    _mostly(["gre", "vxlan", "172.31.5.10", 20], ["", None, 0, 'q"'])),
    st.none() | st.integers(min_value=0, max_value=4095), st.none() | st.integers(min_value=0, max_value=4095),
)
_TUNNEL_FLOWS = st.builds(
    lambda flow, tunnel: TunnelledFlow(flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port, flow.transport, tunnel),
    _FLOWS, _TUNNELS,
)
_TUNNELLED = st.one_of(
    st.builds(TlsHello, _TIMES, _TUNNEL_FLOWS, st.sampled_from(["tls", "quic"]), _TEXT | st.none(),
              st.lists(_mostly(["h2", "http/1.1"], [""]), max_size=2).map(tuple), st.booleans(),
              _mostly(["1.3"], ["", None])),
    st.builds(DnsQuery, _TIMES, _TUNNEL_FLOWS, st.integers(min_value=0, max_value=65535), _TEXT,
              _mostly(["A", "HTTPS"], [""]), st.booleans(), _mostly(["NOERROR"], ["", None]),
              st.lists(_ANSWERS, max_size=2).map(tuple)),
)
_REQUESTS = st.builds(
    HttpRequest, _TIMES, _FLOWS | _TUNNEL_FLOWS, _mostly(["GET", "POST"], [""]),
    _mostly(["/collect?ssn=123-45-6789&q=diabetes", "/p", "http://a.example/x?y=1"], ["", "*", "a.example:443"]),
    _mostly(["1.1"], ["", "1.0"]),
    st.lists(st.tuples(st.sampled_from(["Referer", "content-type", "User-Agent"]), _TEXT), max_size=3).map(tuple),
    _HOSTS | st.just("192.0.2.1") | st.none(), st.just(b""), st.integers(min_value=0, max_value=10**6),
)
# what a rule found in a request (a document shows their types, categories and evidence)
_FINDINGS = st.lists(st.builds(Finding, _mostly(["ssn", "condition"], [""]), _mostly(["identifier", "condition"], [""]),
                               st.just(0.9), st.sampled_from(["query.ssn", "body.url", "header.referer"]),
                               st.integers(0, 20), st.integers(0, 40), _mostly(["123-45-6789", "diabetes"], [""])),
                     max_size=3)
_TRACKERS = st.none() | st.builds(
    TrackerPayload, _mostly(["meta", "ga4"], [""]), _TEXT | st.none(), st.just(()),
    _mostly(["https://clinic.example/visit?dob=1961-04-02&q=diabetes", "https://a.example/"], ["", None]),
    _mostly(["https://b.example/?ssn=123-45-6789"], ["", None]), st.none(), st.just(()),
)
_VENDORS = st.none() | st.builds(
    lambda name, owner, stance, source: Vendor("v", name, owner, "analytics", (), (), (), {}, stance, "", source),
    st.sampled_from(["Vendor", ""]), st.sampled_from(["Owner", ""]), st.sampled_from(["no", "unknown", ""]),
    st.sampled_from(["https://v.example/baa", ""]),
)
_PHI_HOSTS = st.none() | st.builds(PhiHost, st.just(ipaddress.ip_network("10.0.0.0/8")),
                                    st.sampled_from(["lab", "", None]), st.sampled_from([(), ("ehr",), ("",)]))
_DESTINATIONS = st.none() | st.lists(
    st.builds(Destination, _HOSTS, st.integers(min_value=0, max_value=10**12), _TIMES, _TIMES, st.booleans()),
    max_size=4,
)


@st.composite
def _alerts(draw):
    record = draw(st.one_of(_DNS, _HELLOS, _HELLOS, _TUNNELLED, _REQUESTS))
    obs = Observation(record, draw(_mostly(["dns", "tls", "quic", "dns-attribution", "http"], [""])), draw(_PHI_HOSTS),
                      draw(_HOSTS | st.none()), draw(_VENDORS), None, False, draw(_mostly(["none", "on-file"], [""])),
                      None, draw(_TRACKERS) if type(record) is HttpRequest else None)
    rule = draw(st.sampled_from([rule.INFO for rule in ALL_RULES]))
    findings = draw(_FINDINGS) if type(record) is HttpRequest else []
    alert = Alert(rule, draw(_mostly(["low", "medium", "high", "critical"], [""])), obs, draw(_TEXT),
                  draw(_mostly(["vendor-id", "a.example"], [""])), findings)
    first = draw(_TIMES)
    last = draw(st.just(first) | _TIMES)
    return (alert, draw(st.integers(min_value=1, max_value=10**6)), first, last,
            draw(_mostly(["8722962d393d4f44a7d42106106e902731a41768"], [""])), draw(_DESTINATIONS))


def _builder(observer: str = "sensor", unredacted: bool = False) -> ecs.AlertBuilder:
    return ecs.AlertBuilder(ecs.EventBuilder(observer, registered_domain, redact_urls=not unredacted),
                            unredacted=unredacted)


_BUILDERS = {
    (observer, unredacted): _builder(observer, unredacted) for observer in ("sensor", "") for unredacted in (False, True)
}


@given(_alerts(), st.sampled_from(sorted(_BUILDERS)))
@settings(max_examples=600, deadline=None)
def test_compiled_alert_line_equals_the_reference(args: tuple, which: tuple) -> None:
    builder = _BUILDERS[which]
    try:
        expected = builder.line_py(*args)
    except Exception as error:  # what the reference cannot build, json_line does not write either
        with pytest.raises(type(error)):
            builder.json_line(*args)
        return
    line, counted = builder.json_line(*args)
    assert line == expected
    doc = orjson.loads(expected)
    for updatable in (0, 100):  # a replay's tally, and live's
        by_document, by_values = AlertTally(updatable=updatable), AlertTally(updatable=updatable)
        if type(counted) is dict:
            assert orjson.dumps(counted) == expected[:-1]
            add, added = by_values.add, (counted,)
        else:
            add, added = by_values.add_values, counted
        try:
            by_document.add(doc)
        except KeyError:  # a document without a BAA status: the summary cannot count it either way
            with pytest.raises(KeyError):
                add(*added)
            return
        add(*added)
        assert by_values.table() == by_document.table()
        assert (by_values.highest, len(by_values)) == (by_document.highest, len(by_document))


def _hello(name: str = "tracker.example.com", **changes) -> TlsHello:
    fields = {"ts": 1705330800.25, "flow": Flow("10.1.2.3", 50000, "192.0.2.1", 443, "tcp"), "protocol": "tls",
              "server_name": name, "alpn": ("h2",), "ech": False, "version": "1.3"} | changes
    return TlsHello(**fields)


def _alert(record, destination: str | None = "tracker.example.com") -> Alert:
    vendor = Vendor("v", "Vendor", "Owner", "analytics", (), (), (), {}, "no", "", "https://v.example/baa")
    obs = Observation(record, "tls", PhiHost(ipaddress.ip_network("10.0.0.0/8"), "lab", ("ehr",)), destination,
                      vendor, None, False, "none")
    return Alert(ALL_RULES[0].INFO, "medium", obs, "PHI host 10.1.2.3 (lab) opened TLS to tracker.example.com", "v")


def test_alert_line_is_written_by_compiled_code_for_a_plain_hello() -> None:
    if ecs._alert_line_fast is None:
        pytest.skip("compiled extension not built")
    builder = _builder()
    destinations = [Destination("tracker.example.com", 3, 1705330800.25, 1705330801.5, False),
                    Destination("other.example", 1, 1705330801.0, 1705330801.0, False)]
    args = (_alert(_hello()), 4, 1705330800.25, 1705330801.5, "ab" * 20, destinations)
    line, counted = builder.json_line(*args)
    assert type(counted) is tuple  # no document was built
    assert line == builder.line_py(*args)
    doc = orjson.loads(line)
    assert doc["related"]["hosts"] == ["tracker.example.com", "other.example"]
    assert doc["phi_egress"]["summary"].endswith("; also other.example")
    assert [entry["count"] for entry in doc["phi_egress"]["destinations"]] == [3, 1]


@pytest.mark.parametrize("record", [
    _hello(alpn=("h2", "")),  # an empty ALPN name: the document leaves it out
    _hello(flow=Flow("10.1.2.3", 50000, "192.0.2.1", 443, "")),  # an empty transport, left out
    DnsQuery(1705330800.25, Flow("10.1.2.3", 5353, "10.0.0.53", 53, "udp"), 7, "tracker.example.com", "A", True, None),
])
def test_what_the_compiled_writer_declines_the_python_builder_writes(record) -> None:
    builder = _builder()
    args = (_alert(record), 1, 1705330800.25, 1705330800.25, "cd" * 20, None)
    line, counted = builder.json_line(*args)
    assert type(counted) is dict
    assert line == builder.line_py(*args) == orjson.dumps(counted, option=orjson.OPT_APPEND_NEWLINE)


@pytest.mark.parametrize("record", [
    _hello(flow=TunnelledFlow("10.1.2.3", 50000, "192.0.2.1", 443, "tcp",
                              ({"type": "vxlan", "source_ip": "172.31.5.10", "id": 20}, 7, 99))),
    _hello(flow=TunnelledFlow("10.1.2.3", 50000, "192.0.2.1", 443, "tcp", ({"type": "", "id": None}, None, None))),
    DnsQuery(1705330800.25, TunnelledFlow("10.1.2.3", 5353, "10.0.0.53", 53, "udp", ({"type": "gre"}, None, 3)), 7,
             "tracker.example.com", "A", True, "NOERROR"),
    DnsQuery(1705330800.25, TunnelledFlow("10.1.2.3", 5353, "10.0.0.53", 53, "udp", ({"id": ""}, None, None)), 7,
             "tracker.example.com", "A", False, None),
])
def test_alerts_on_tunnelled_flows_are_written_by_compiled_code(record) -> None:
    """The tunnel's VLANs end `network`; its own fields, pruned, lead phi_egress (a lookup's, whose
    event has none of its own, before the message, where the event put it)."""
    if ecs._alert_line_fast is None:
        pytest.skip("compiled extension not built")
    builder = _builder()
    args = (_alert(record), 2, 1705330800.25, 1705330800.5, "cd" * 20, None)
    line, counted = builder.json_line(*args)
    assert type(counted) is tuple
    assert line == builder.line_py(*args)
    doc = orjson.loads(line)
    vlans = record.flow.tunnel[1:]
    assert ("vlan" in doc["network"], "inner" in doc["network"]) == tuple(vlan is not None for vlan in vlans)
    pruned = {key: value for key, value in record.flow.tunnel[0].items() if value not in ("", None)}
    assert doc["phi_egress"].get("tunnel") == (pruned or None)


def _request(target: str = "/collect?ssn=123-45-6789&q=diabetes", **changes) -> HttpRequest:
    fields = {"ts": 1705330800.25, "flow": Flow("10.1.2.3", 50000, "192.0.2.1", 80, "tcp"), "method": "POST",
              "target": target, "version": "1.1",
              "headers": (("Referer", "https://clinic.example/visit?ssn=123-45-6789"), ("Content-Type", "text/plain"),
                          ("User-Agent", "agent/1.0 member id 12345678")),
              "host": "tracker.example.com", "body_bytes": 120} | changes
    return HttpRequest(**fields)


_TRACKER_RULE = next(rule.INFO for rule in ALL_RULES if rule.INFO.id == "phi-in-tracker-payload")


@pytest.mark.parametrize("findings, tracker, rule, target", [
    ([], None, ALL_RULES[0].INFO, "/collect?ssn=123-45-6789&q=diabetes"),
    ([Finding("ssn", "identifier", 0.9, "query.ssn", 15, 26, "123-45-6789")], None, ALL_RULES[0].INFO,
     "/collect?ssn=123-45-6789&q=diabetes"),
    ([Finding("condition", "condition", 0.8, "body.url", 0, 8, "diabetes")],
     TrackerPayload("meta", "PageView diabetes", (), "https://clinic.example/diabetes?dob=1961-04-02",
                    "https://b.example/", None, ()), _TRACKER_RULE, "/tr?ev=PageView&dl=diabetes"),
    # a finding that is the whole path: the masked target has none (the masked event's path stays)
    ([Finding("condition", "condition", 0.8, "path", 0, 9, "/diabetes")], None, ALL_RULES[0].INFO, "/diabetes"),
])
@pytest.mark.parametrize("flow", [
    Flow("10.1.2.3", 50000, "192.0.2.1", 80, "tcp"),
    TunnelledFlow("10.1.2.3", 50000, "192.0.2.1", 80, "tcp", ({"type": "vxlan", "id": 20}, 7, None)),
])
@pytest.mark.parametrize("unredacted", [False, True])
def test_alerts_on_requests_are_written_by_compiled_code(findings, tracker, rule, target, unredacted, flow) -> None:
    """The request's own fields, masked as the document masks them; the findings' types, evidence
    and a tracker payload after the BAA (a tunnel's fields first)."""
    if ecs._alert_line_fast is None:
        pytest.skip("compiled extension not built")
    builder = _builder(unredacted=unredacted)
    obs = Observation(_request(target, flow=flow), "http", PhiHost(ipaddress.ip_network("10.0.0.0/8"), "lab", ("ehr",)),
                      "tracker.example.com", None, None, False, "none", None, tracker)
    alert = Alert(rule, "high", obs, "PHI host 10.1.2.3 (lab) sent diabetes to tracker.example.com", "v", findings)
    args = (alert, 3, 1705330800.25, 1705330801.5, "ef" * 20, None)
    line, counted = builder.json_line(*args)
    assert type(counted) is tuple
    assert line == builder.line_py(*args)
    doc = orjson.loads(line)
    assert ("tracker" in doc["phi_egress"]) == (tracker is not None)
    assert ("evidence" in doc["phi_egress"]) == bool(findings)
    if not unredacted:
        assert b"123-45-6789" not in line and b"diabetes?dob" not in line


_STORY = Path(__file__).parent.parent / "pcaps"


@pytest.mark.parametrize("capture", sorted(_STORY.glob("*.pcap"))[:6], ids=lambda path: path.name)
def test_a_replay_writes_the_same_alerts_as_documents_and_as_lines(capture: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of a replay through the line path, and through documents (a severity floor on the
    output takes documents): the same alerts."""
    from sensor.cli import main

    lines, documents = tmp_path / "lines.jsonl", tmp_path / "documents.jsonl"
    assert main(["replay", str(capture), "--emit", "alerts", "--workers", "1", "--output", str(lines), "--quiet"]) in (0, 1)
    from sensor import pipeline

    monkeypatch.setattr(pipeline.Pipeline, "finish", _finish_by_documents)
    assert main(["replay", str(capture), "--emit", "alerts", "--workers", "1", "--output", str(documents),
                 "--quiet"]) in (0, 1)
    assert sorted(lines.read_bytes().splitlines()) == sorted(documents.read_bytes().splitlines())
    assert lines.read_bytes() or capture.name == "clean-network.pcap"


def _finish_by_documents(self) -> None:
    """Pipeline.finish as it was before the line path: every final document shipped as a dict."""
    import sys

    self.decoder.finish()
    self.drain()
    if self.detector is not None:
        self._ship(self.detector.final_documents())
    layers = sys.modules.get("sensor.phi.layers")
    if layers is not None:
        for name, count in layers.take_capped().items():
            self.counters.add(f"phi.capped.{name}", count)


def test_the_compiled_writer_takes_wrong_arguments_without_crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each argument of a call the builder makes replaced by a value of another type: an
    exception or a decline (None), never a crash; the right arguments still give the line."""
    fast = ecs._alert_line_fast
    if fast is None:
        pytest.skip("compiled extension not built")
    calls: list[tuple] = []
    monkeypatch.setattr(ecs, "_alert_line_fast", lambda *args: calls.append(args) or fast(*args))
    destinations = [Destination("tracker.example.com", 3, 1705330800.25, 1705330801.5, True)]
    for record in (_hello(), DnsQuery(1705330800.25, Flow("10.1.2.3", 5353, "10.0.0.53", 53, "udp"), 7,
                                      "tracker.example.com", "A", True, "NOERROR",
                                      (DnsAnswer("tracker.example.com", "A", "192.0.2.9", 60),))):
        _builder().json_line(_alert(record), 2, 1705330800.25, 1705330801.5, "ab" * 20, destinations)
    assert len(calls) == 2
    wrong = [None, 0, -1, 2**70, 1.5, float("nan"), "", "x\x00\"", b"", b"x", (), ("x",), [], [object()], {}, object(),
             True, [Destination("", 1, 1.0, 1.0, False)], [Destination("h", 1, 1, 1.0, False)]]
    expected = (TypeError, AttributeError, ValueError, OverflowError, RuntimeError, orjson.JSONEncodeError)
    for args in calls:
        assert isinstance(fast(*args), bytes)
        for at in range(len(args)):
            for value in wrong:
                try:
                    line = fast(*args[:at], value, *args[at + 1:])
                except expected:
                    continue
                assert line is None or isinstance(line, bytes)
        for count in range(len(args)):
            with pytest.raises(TypeError):
                fast(*args[:count])
