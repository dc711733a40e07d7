"""`--emit all` without a call per event: EventBuilder.json_lines writes a list of records' events
in one block (the compiled event_lines, lines_py its reference), and the replay hands each batch's
events to every output in one `send_lines`, its alerts still after their record's event."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import CollectingSink
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from test_eventsfast_lines import DNS, FLOWS, HTTP, TIMES, TLS, UPGRADED, _registered
from test_tunnels import OUTER_A, OUTER_B, eth, story_frames, write_pcap

from sensor.app.replay.files import replay_file
from sensor.app.replay.split import _SpillSink
from sensor.enrich.vendors import registered_domain
from sensor.output import ecs
from sensor.output.jsonl import JsonlSink
from sensor.pipeline import Pipeline
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, LocalNameQuery, TlsHello, TunnelledFlow

PCAPS = Path(__file__).resolve().parent.parent / "pcaps"
compiled = pytest.mark.skipif(ecs._event_lines_fast is None, reason="the compiled fast path is not built")

# what the compiled writers decline, json_line's: the root's name, long answer lists, a local name query
DECLINED = st.one_of(
    st.builds(DnsQuery, TIMES, FLOWS, st.integers(0, 65535), st.just(""), st.just("A"), st.booleans(), st.none(), st.just(())),
    st.builds(
        DnsQuery, TIMES, FLOWS, st.integers(0, 65535), st.just("many.example.org"), st.just("A"), st.just(True),
        st.just("NOERROR"), st.just(tuple(DnsAnswer("many.example.org", "A", f"10.0.0.{i}", 60) for i in range(70))),
    ),
    st.builds(
        LocalNameQuery, TIMES, FLOWS, st.integers(0, 65535), st.just("printer.local"), st.just("A"), st.booleans(),
        st.none(), st.just(()), protocol=st.just("mdns"),
    ),
    st.builds(TlsHello, TIMES, FLOWS, st.just("smtp"), st.just("mail.example.org"), st.just(()), st.booleans(), st.none()),
)
RECORDS = st.lists(st.one_of(DNS, TLS, UPGRADED, HTTP, DECLINED), max_size=12)


@compiled
@settings(max_examples=400, deadline=None)
@given(RECORDS, st.booleans())
def test_a_block_of_events_is_their_lines_one_after_another(records: list, redact: bool) -> None:
    builder = ecs.EventBuilder("sensor-1", _registered, redact_urls=redact)
    block = builder.json_lines(records)
    assert block == builder.lines_py(records) == b"".join(map(builder.json_line, records))
    assert block.count(b"\n") == len(records)
    assert [orjson.loads(line) for line in block.splitlines()] == [orjson.loads(builder.line_py(r)) for r in records]


def test_the_reference_is_the_documents() -> None:
    flow = Flow("10.0.0.1", 5353, "10.0.0.2", 53, "udp")
    records = [DnsQuery(1.5, flow, 7, "a.example.org", "A", False, None, ())] * 3
    builder = ecs.EventBuilder("sensor-1", _registered)
    assert builder.lines_py(records) == b"".join(orjson.dumps(builder(r), option=orjson.OPT_APPEND_NEWLINE) for r in records)
    assert builder.lines_py([]) == builder.json_lines([]) == b""


@compiled
def test_the_compiled_block_passes_on_what_the_callbacks_raise() -> None:
    def broken(name: str) -> str:
        raise LookupError(name)

    builder = ecs.EventBuilder("sensor-1", broken)
    record = DnsQuery(1.0, Flow("10.0.0.1", 1, "10.0.0.2", 53, "udp"), 1, "a.example", "A", False, None, ())
    with pytest.raises(LookupError):
        builder.json_lines([record])
    with pytest.raises(TypeError):
        ecs._event_lines_fast((record,), DnsQuery, TlsHello, Flow, str, str, {}, builder.json_line, Flow, str, Flow, str)


@compiled
def test_an_ech_cover_name_is_no_destination_in_the_block() -> None:
    hello = TlsHello(2.0, Flow("10.0.0.1", 40000, "10.0.0.9", 443, "tcp"), "tls", "cloudflare-ech.com", ("h2",), True, "1.3")
    builder = ecs.EventBuilder("sensor-1", registered_domain)
    line = builder.json_lines([hello])
    assert line == builder.line_py(hello)
    assert "domain" not in orjson.loads(line)["destination"]


@compiled
@pytest.mark.parametrize("vlans", [(None, None), (100, None), (None, 7), (100, 7)])
def test_http_and_tunnelled_events_are_written_in_the_block(vlans: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP events, and a tunnelled flow's DNS, TLS and HTTP events with their tunnel's parts, are
    written in compiled code, not by json_line."""
    tunnel = ({"type": "vxlan", "vni": 42}, *vlans)
    flow = TunnelledFlow("10.0.0.1", 40000, "10.0.0.9", 443, "tcp", tunnel)
    records = [
        TlsHello(2.0, flow, "tls", "portal.example.org", ("h2",), False, "1.3"),
        HttpRequest(2.2, flow, "GET", "/a?mrn=12345678", "1.1", (("User-Agent", "x/1"), ("Referer", "http://r.example/")),
                    "portal.example.org", b"", 0),
        HttpRequest(2.3, Flow("10.0.0.1", 40001, "10.0.0.9", 80, "tcp"), "CONNECT", "h.example:443", "1.1", (), "10.0.0.9",
                    b"", 0),
        DnsQuery(2.5, TunnelledFlow("10.0.0.1", 5353, "10.0.0.2", 53, "udp", tunnel), 9, "a.example.org", "A", True,
                 "NOERROR", (DnsAnswer("a.example.org", "A", "10.1.1.1", 60),)),
    ]
    builder = ecs.EventBuilder("sensor-1", registered_domain)
    expected = builder.lines_py(records)

    def no_fallback(record: object) -> bytes:
        raise AssertionError("json_line was called")

    monkeypatch.setattr(builder, "json_line", no_fallback)
    assert builder.json_lines(records) == expected
    assert expected.count(b'"tunnel":{"type":"vxlan","vni":42}') == 3


def test_the_outputs_take_blocks_of_lines_and_count_them(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "out.jsonl")
    sink.send_lines(b'{"a":1}\n{"b":2}\n', 2)
    sink.send_lines(b'{"c":3}\n')
    sink.close()
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"a":1}\n{"b":2}\n{"c":3}\n'
    assert sink.stats()["sent"] == 3
    with open(tmp_path / "spill", "w+b") as stream:
        spill = _SpillSink(stream)
        spill.send_lines(b'{"a":1}\n', 1)
        spill.flush()
        stream.seek(0)
        assert stream.read() == b'{"a":1}\n'


class _EveryOther:
    """Alerts on every second record, so blocks of events are cut by alerts."""

    def __init__(self) -> None:
        self.seen = 0

    def on_record(self, record: object) -> list[dict]:
        self.seen += 1
        return [{"rule": {"id": "test"}, "n": self.seen}] if self.seen % 2 == 0 else []

    def finish(self) -> list[dict]:
        return []


def test_event_blocks_only_where_every_output_takes_lines(tmp_path: Path) -> None:
    plain = JsonlSink(tmp_path / "a.jsonl")
    pipeline = Pipeline(sinks=[plain], event_builder=ecs.EventBuilder("s", registered_domain))
    blocks = pipeline.event_blocks()
    assert blocks is not None and blocks[1] == [plain.send_lines] and blocks[2] is None
    pipeline.detector = _EveryOther()
    assert pipeline.event_blocks()[2] == pipeline.detector.on_record  # type: ignore[index]
    for sinks in ([plain, CollectingSink()], [JsonlSink(tmp_path / "b.jsonl", min_severity="high")], []):
        pipeline.sinks = sinks
        assert pipeline.event_blocks() is None
    pipeline.sinks = [plain]
    pipeline.event_builder = lambda record: {}
    assert pipeline.event_blocks() is None


def _half_tunnelled(path: Path) -> Path:
    """demo.pcap's packets inside VXLAN, beside clean-network.pcap's as they are."""
    wrapped = [
        (ts, bytes(eth() / IP(src=OUTER_A, dst=OUTER_B) / UDP(sport=49152, dport=4789) / VXLAN(vni=42) / Ether(frame)))
        for ts, frame in story_frames(PCAPS / "demo.pcap")
    ]
    write_pcap(path, 1, sorted(wrapped + story_frames(PCAPS / "clean-network.pcap"), key=lambda item: item[0]))
    return path


@pytest.mark.parametrize("capture", ["half-tunnelled", "demo.pcap", "chrome-split-hello.pcap"])
def test_a_replay_by_blocks_writes_what_drain_writes_in_its_order(tmp_path: Path, capture: str) -> None:
    path = _half_tunnelled(tmp_path / "half.pcap") if capture == "half-tunnelled" else PCAPS / capture
    by_blocks, by_docs = JsonlSink(tmp_path / "blocks.jsonl"), CollectingSink()
    for sink, detector in ((by_blocks, _EveryOther()), (by_docs, _EveryOther())):
        pipeline = Pipeline(sinks=[sink], event_builder=ecs.EventBuilder("sensor-1", registered_domain), detector=detector)
        assert (pipeline.event_blocks() is not None) == (sink is by_blocks)
        replay_file(pipeline, path, prefilter="never")
        pipeline.finish()
        sink.flush()
    written = (tmp_path / "blocks.jsonl").read_bytes()
    assert written == b"".join(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE) for doc in by_docs.docs)
    assert by_blocks.stats()["sent"] == written.count(b"\n") == len(by_docs.docs) > 0
    if capture == "half-tunnelled":
        assert b'"tunnel":' in written and written.count(b"\n") > written.count(b'"tunnel":') > 0


# -- the Community ID: SHA-1 by the CPU's SHA extensions beside the one written out -----------------

ADDRESS_PAIRS = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)), st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6))
).map(lambda pair: (str(pair[0]), str(pair[1])))


@compiled
@settings(max_examples=500, deadline=None)
@given(ADDRESS_PAIRS, st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 255), st.integers(0, 65535))
def test_both_sha1_paths_give_the_reference_community_id(
    addresses: tuple[str, str], sport: int, dport: int, proto: int, seed: int
) -> None:
    from sensor._fast import community_id as compiled_id

    src, dst = addresses
    by_extensions = compiled_id(src, sport, dst, dport, proto, seed)
    assert by_extensions == compiled_id(src, sport, dst, dport, proto, seed, True)
    transport = {6: "tcp", 17: "udp"}.get(proto)
    if transport is not None:
        assert by_extensions == ecs.community_id_py(Flow(src, sport, dst, dport, transport), seed)


@compiled
@pytest.mark.parametrize(
    "address", ["1.2.3.4", "0.0.0.0", "255.255.255.255", "10.0.0.01", "256.1.1.1", "1.2.3", "1.2.3.4.5", "1..2.3",
                "1.2.3.4 ", "+1.2.3.4", "1.2.3.1000", "00.1.2.3"],
)
def test_addresses_decode_would_not_write_are_what_inet_pton_makes_of_them(address: str) -> None:
    """The hand-written IPv4 parse takes decode's form only; anything else goes to inet_pton."""
    import socket

    from sensor._fast import community_id as compiled_id

    try:
        socket.inet_pton(socket.AF_INET, address)
    except OSError:
        assert compiled_id(address, 1, "10.0.0.1", 2, 6, 0) is None
    else:
        expected = ecs.community_id_py(Flow(address, 1, "10.0.0.1", 2, "tcp"))
        assert compiled_id(address, 1, "10.0.0.1", 2, 6, 0) == compiled_id(address, 1, "10.0.0.1", 2, 6, 0, True) == expected


# -- fields read straight from a record's slots ---------------------------------------------------


@compiled
def test_fields_follow_a_class_changed_after_its_slots_were_read() -> None:
    """The compiled writers read a record class's slots directly once they know them; a class
    whose attribute changes afterwards is looked up again (its version tag), as Python reads it."""

    class Renamed(DnsQuery):
        __slots__ = ()

    record = Renamed(1.0, Flow("10.0.0.1", 1000, "10.0.0.2", 53, "udp"), 1, "a.example.org", "A", False, None, ())
    builder = ecs.EventBuilder("sensor-1", _registered)
    prefix = builder._line_prefix("dns")
    assert ecs._dns_line_fast(record, None, prefix) == builder.line_py(record)
    Renamed.name = property(lambda self: "renamed.example.org")  # type: ignore[assignment,misc]
    assert record.name == "renamed.example.org"
    assert ecs._dns_line_fast(record, None, prefix) == builder.line_py(record)
    assert b'"name":"renamed.example.org"' in ecs._dns_line_fast(record, None, prefix)
    del Renamed.name  # the slot again
    assert ecs._dns_line_fast(record, None, prefix) == builder.line_py(record)
    assert b'"name":"a.example.org"' in ecs._dns_line_fast(record, None, prefix)


@compiled
def test_many_record_classes_take_turns_in_the_slot_table() -> None:
    """More classes than the table keeps: each still reads its own fields."""
    builder = ecs.EventBuilder("sensor-1", _registered)
    prefix = builder._line_prefix("dns")
    for round_ in range(3):
        for number in range(20):
            cls = type(f"Query{number}", (DnsQuery,), {"__slots__": ()})
            record = cls(1.0, Flow("10.0.0.1", number, "10.0.0.2", 53, "udp"), number, f"n{number}.example", "A", False, None, ())
            line = ecs._dns_line_fast(record, _registered(record.name) or None, prefix)
            assert line == builder.line_py(record), (round_, number)


@compiled
@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-7e10, max_value=3e11, allow_nan=False), st.lists(st.floats(0, 0.999999999), max_size=6))
def test_times_of_the_same_second_are_written_from_the_one_kept(second: float, fractions: list[float]) -> None:
    """The compiled time writer keeps the last second's date and time; times within it, and the
    seconds either side, are the reference's."""
    whole = float(int(second))
    for ts in [whole + fraction for fraction in fractions] + [whole - 0.5, whole + 1.25, whole + 0.999999]:
        assert ecs._iso_time_fast(ts) == ecs.iso_time_py(ts), ts  # type: ignore[misc]
