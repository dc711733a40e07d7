"""The alerts replay's loop over a batch: the compiled replay_alerts makes the calls its reference
files.alerts_batch_py makes, in the same order with the same arguments, and hands on what they raise.
And the compiled decode's addresses and their texts: one object per recent address."""
from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import CollectingSink
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.app.replay import files
from sensor.app.replay.files import alerts_batch_py, replay_file
from sensor.config import parse_config
from sensor.decode.packet import PacketDecoder
from sensor.detect.engine import DetectionEngine
from sensor.enrich.vendors import VendorCatalog, registered_domain
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.pipeline import Pipeline
from sensor.records import Counters

try:
    from sensor._fast import decode_frame, dns_datagram
except ImportError:  # built without a C compiler: every test here is skipped
    decode_frame = dns_datagram = None

pytestmark = pytest.mark.skipif(files._replay_alerts is None, reason="compiled extension not built")
PCAPS = Path(__file__).resolve().parent.parent / "pcaps"
CONFIG = "sensor: {name: t}\nphi_hosts: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]\n"

# per packet: decode's answer (None, (), a non-empty tuple), the records feed_found or decode leaves,
# and per record whether on_record answers alerts
_answers = st.sampled_from([None, (), ("hello",), (6, b"a", b"b", 1, 2, 0x18, 0, b"x")])
_packet = st.tuples(_answers, st.lists(st.booleans(), max_size=3), st.booleans())


class _Decoder:
    """The decoder's part the loop sees (`records`), with a log of every call made on the loop's side."""

    def __init__(self, script: list[tuple[Any, list[bool], bool]], fail_at: int | None) -> None:
        self.records: list[Any] = []
        self.script, self.fail_at, self.log = script, fail_at, []  # type: ignore[var-annotated]
        self.at = 0

    def decode(self, linktype: int, frame: bytes, ts: float) -> Any:
        self.log.append(("decode", linktype, frame, ts))
        answer, records, by_feed = self.script[self.at]
        self.at += 1
        if self.at - 1 == self.fail_at:
            raise ValueError("decode failed")
        made = [(self.at, n, alert) for n, alert in enumerate(records)]
        if not by_feed:  # the compiled steps append records themselves
            self.records.extend(made)
        else:
            self.pending = made
        return answer

    def feed_found(self, ts: float, linktype: int, frame: bytes, found: Any) -> None:
        self.log.append(("feed_found", ts, linktype, frame, found))
        self.records.extend(getattr(self, "pending", []))

    def on_record(self, record: Any) -> list[dict[str, Any]]:
        self.log.append(("on_record", record))
        return [{"alert": record}] if record[2] else []

    def ship(self, alerts: list[dict[str, Any]]) -> None:
        self.log.append(("ship", alerts))


def _run(loop: Any, script: list, fail_at: int | None) -> tuple[list, list, str | None]:
    decoder = _Decoder(script, fail_at)
    batch = [(float(n) / 7, 1, bytes([n % 256])) for n in range(len(script))]
    error = None
    try:
        loop(batch, decoder.decode, decoder.feed_found, decoder, decoder.on_record, decoder.ship)
    except ValueError as exc:
        error = str(exc)
    return decoder.log, decoder.records, error


@settings(max_examples=300, deadline=None)
@given(st.lists(_packet, max_size=12), st.one_of(st.none(), st.integers(0, 12)))
def test_compiled_loop_makes_the_reference_calls(script: list, fail_at: int | None) -> None:
    compiled = _run(files._replay_alerts, script, fail_at)
    assert compiled == _run(alerts_batch_py, script, fail_at)
    if fail_at is None or fail_at >= len(script):
        assert compiled[1] == []  # every record the loop saw was taken from the decoder


@pytest.mark.parametrize("capture", ["demo.pcap", "ga4-quic.pcap", "chrome-split-hello.pcap", "meta-pixel-portal.pcap"])
def test_a_replay_raises_the_reference_loops_alerts(monkeypatch: pytest.MonkeyPatch, capture: str) -> None:
    def alerts(loop: Any) -> list[dict]:
        monkeypatch.setattr(files, "alerts_batch", loop)
        sink = CollectingSink()
        engine = DetectionEngine(parse_config(CONFIG, "t").build_policy(VendorCatalog.load()),
                                 AlertBuilder(EventBuilder("t", registered_domain)), immediate=True)
        pipeline = Pipeline(sinks=[sink], detector=engine)
        assert pipeline.detection_only() is not None
        replay_file(pipeline, PCAPS / capture, prefilter="never")
        pipeline.finish()
        return sink.docs

    compiled = alerts(files._replay_alerts)
    assert compiled and compiled == alerts(alerts_batch_py)


def _udp_frame(src: bytes, dst: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, 443, 12, 0) + b"data"
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0) + src + dst
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


@given(st.lists(st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)), min_size=1, max_size=40))
def test_an_address_seen_again_is_the_same_object(pairs: list[tuple[bytes, bytes]]) -> None:
    """The compiled decode hands out one bytes object per recent address (cheap flow-table keys), of the
    frame's value always, as the Python decoder reads it. (Two addresses may share a place in the table
    of recent ones, so the object is the same only for an address seen again with none between.)"""
    for src, dst in pairs:
        frame = _udp_frame(src, dst)
        first, again = decode_frame(1, frame), decode_frame(1, frame)
        assert first == again == PacketDecoder(Counters()).decode_py(0.0, 1, frame)
        assert (first[1], first[2]) == (src, dst)
        alone, alone_again = decode_frame(1, _udp_frame(src, src)), decode_frame(1, _udp_frame(src, src))
        assert alone[1] is alone[2] is alone_again[1] is alone_again[2]


def _dns_query_frame(src: bytes, dst: bytes) -> bytes:
    message = struct.pack("!HH4H", 7, 0x0100, 1, 0, 0, 0) + b"\x01a\x07example\x00\x00\x01\x00\x01"
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(message), 0) + message
    if len(src) == 4:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0) + src + dst
        return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp
    ip = struct.pack("!IHBB", 0x60000000, len(udp), 17, 64) + src + dst
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + udp


@given(st.lists(st.sampled_from([4, 16]).flatmap(lambda n: st.tuples(st.binary(min_size=n, max_size=n),
                                                                      st.binary(min_size=n, max_size=n))),
                min_size=1, max_size=40))
def test_an_address_text_seen_again_is_the_same_object(pairs: list[tuple[bytes, bytes]]) -> None:
    """Address texts too: inet_ntop's text, one str per recent address, IPv4 and IPv6 apart."""
    for src, dst in pairs:
        family = socket.AF_INET if len(src) == 4 else socket.AF_INET6
        first, again = dns_datagram(1, _dns_query_frame(src, dst)), dns_datagram(1, _dns_query_frame(src, dst))
        assert (first[0], first[2]) == (again[0], again[2]) == (socket.inet_ntop(family, src), socket.inet_ntop(family, dst))
        alone, alone_again = dns_datagram(1, _dns_query_frame(dst, dst)), dns_datagram(1, _dns_query_frame(dst, dst))
        assert alone[0] is alone[2] is alone_again[0] is alone_again[2]
