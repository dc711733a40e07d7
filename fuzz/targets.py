"""Fuzz targets: each takes one input (bytes) and raises only on a real fault.

A parser that raises, a compiled entry point that disagrees with its Python reference, or a
reassembler that loses bytes is a crash. Run them with atheris (fuzz/run.py) or replay a corpus.
"""
from __future__ import annotations

import os
import random
import struct
import tempfile
from collections.abc import Callable

from sensor.capture import pcap as pcap_module
from sensor.capture.pcap import CaptureFile
from sensor.decode import dns, packet, quic, tls
from sensor.decode.flows import SEQ_MOD, FlowTable
from sensor.decode.http import HttpRequestStream
from sensor.output import ecs
from sensor.phi import DECODERS, decode_tracker, peel, redact, redact_url, request_fields, scan_fields, scan_tracker
from sensor.records import Counters, Flow

_TMP = tempfile.mkdtemp(prefix="phi-fuzz-")


class Input:
    """Cuts one fuzz input into the typed pieces a target needs (the FuzzedDataProvider idea,
    without depending on atheris, so a corpus replays under plain Python)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def int(self, limit: int) -> int:
        raw = self.bytes(4)
        return int.from_bytes(raw.ljust(4, b"\0"), "big") % max(limit, 1)

    def bytes(self, size: int) -> bytes:
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out

    def text(self, size: int) -> str:
        return self.bytes(size).decode("utf-8", "replace")

    def rest(self) -> bytes:
        return self.bytes(len(self.data))


def capture_reader(data: bytes) -> None:
    """The capture reader on any file (pcap, pcapng, gzip): never raises; the compiled record loop
    reads what the Python one reads."""
    path = os.path.join(_TMP, "capture")
    with open(path, "wb") as out:
        out.write(data)
    compiled = CaptureFile(path)
    got = list(compiled.packets())
    if compiled.format == "pcap" and pcap_module._pcap_records is not None:
        saved, pcap_module._pcap_records = pcap_module._pcap_records, None
        try:
            reference = CaptureFile(path)
            expected = list(reference.packets())
        finally:
            pcap_module._pcap_records = saved
        assert got == expected, "compiled pcap record loop differs"
        assert (compiled.errors, compiled.empty_records, compiled.late_records) == (
            reference.errors, reference.empty_records, reference.late_records)


_LINKTYPES = (1, 101, 113, 276, 0, 12, 228, 229)


def packet_decode(data: bytes) -> None:
    """decode_frame (C) equals PacketDecoder.decode_py wherever the C path answers."""
    source = Input(data)
    linktype = _LINKTYPES[source.int(len(_LINKTYPES))]
    frame = source.rest()
    reference = packet.PacketDecoder(Counters()).decode_py(0.0, linktype, frame)
    if packet._decode_fast is not None:
        fast = packet._decode_fast(linktype, frame)
        assert fast is None or fast == reference, "compiled frame decode differs"
    packet.PacketDecoder(Counters()).decode(0.0, linktype, frame)


def dns_message(data: bytes) -> None:
    try:
        reference = dns.parse_message_py(data)
    except dns.DnsError:
        reference = None
    if dns._parse_dns_fast is not None:
        fast = dns._parse_dns_fast(data)
        assert fast is None or fast == reference, "compiled DNS parser differs"
    dns.split_tcp_messages(data)
    dns.looks_like_dns(data)


def tls_hello(data: bytes) -> None:
    reference = tls.parse_client_hello_message_py(data)
    assert tls.parse_client_hello_message(data) == reference, "compiled ClientHello parser differs"
    tls.parse_stream(data)


def quic_initial(data: bytes) -> None:
    tracker = quic.QuicClientHelloTracker(counters=Counters())
    source = Input(data)
    for _ in range(1 + source.int(3)):
        datagram = source.bytes(1 + source.int(1500))
        quic.is_quic_initial(datagram)
        tracker.feed(("a", "b", 1, 2), datagram, ("b", "a", 2, 1))


def http_stream(data: bytes) -> None:
    source = Input(data)
    stream = HttpRequestStream(body_cap=1 + source.int(4096), header_cap=1 + source.int(4096), counters=Counters())
    body = source.rest()
    step = 1 + (len(body) % 97)
    for i in range(0, len(body), step):
        for request in stream.feed(body[i : i + step]):
            assert isinstance(request.target, str)
    stream.finish()


def phi_layers(data: bytes) -> None:
    source = Input(data)
    target = source.text(200)
    header = source.text(100)
    content_type = ("application/json", "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=b")[source.int(4)]
    body = source.rest()
    fields = request_fields(target, [("Referer", header), ("Content-Type", content_type)], body)
    findings = scan_fields(fields, 0.0)
    peel(body)
    for item in fields[:50]:
        redact(item.value, findings)
    redact_url(target, findings)


def trackers(data: bytes) -> None:
    source = Input(data)
    names = sorted(DECODERS)
    decoder = names[source.int(len(names))]
    method = ("GET", "POST")[source.int(2)]
    target = source.text(300)
    body = source.rest()
    payload = decode_tracker(decoder, method, target, [("Content-Type", "application/json")], body)
    if payload is not None:
        scan_tracker(payload)


def flows_reassembly(data: bytes) -> None:
    """Any arrival order, with repeats and overlaps, delivers the stream exactly (no caps hit)."""
    source = Input(data)
    stream = bytes(range(256)) * (1 + source.int(8))
    isn = source.int(SEQ_MOD)
    pieces = []
    pos = 0
    while pos < len(stream):
        size = 1 + source.int(300)
        start = max(0, pos - source.int(4))  # some overlap the previous piece
        pieces.append((start, stream[start : pos + size]))
        pos += size
    rnd = random.Random(source.rest())
    pieces += rnd.sample(pieces, k=min(len(pieces), 3))
    rnd.shuffle(pieces)
    got = []

    class Sink:
        def feed(self, ts: float, chunk: bytes) -> bool:
            got.append(chunk)
            return True

        def gap(self) -> bool:
            raise AssertionError("a gap without any cap reached")

        def finish(self, ts: float) -> None:
            pass

    table = FlowTable(Counters(), lambda key, first: Sink())
    key = (b"a", b"b", 1, 2)
    table.syn(key, 0.0, isn)
    for start, chunk in pieces:
        table.segment(key, 1.0, (isn + 1 + start) % SEQ_MOD, chunk)
    table.finish()
    assert b"".join(got) == stream, "reassembly lost or reordered bytes"


def flow_table(data: bytes) -> None:
    """Any sequence of SYNs, segments, FINs and sweeps over a few connections, with small caps:
    nothing raises, and the table's accounting of held bytes and segments returns to zero."""
    source = Input(data)
    table = FlowTable(
        Counters(), lambda key, first: _Collector() if first[:1] in (b"G", b"\x16") else None,
        max_streams=1 + source.int(4), stream_buffer_cap=1 + source.int(2000), max_stream_segments=1 + source.int(20),
        max_half_open=1 + source.int(4), max_held_bytes=1 + source.int(4000), max_held_segments=1 + source.int(40),
        max_unanchored=1 + source.int(4), max_finished=1 + source.int(4), idle_timeout=1 + source.int(30),
    )
    ts = 0.0
    while source.pos < len(source.data):
        op, key = source.int(8), (b"k", b"s", source.int(5), 80)
        ts += source.int(5)
        seq = source.int(3000)
        if op == 0:
            table.syn(key, ts, seq)
        elif op == 1:
            table.end(key, ts)
        elif op == 2:
            table.sweep(ts)
        else:
            table.segment(key, ts, seq, source.bytes(source.int(300)))
        assert table.held_bytes >= 0 and table.held_segments >= 0
        assert sum(len(held) for held in table.unanchored.values()) <= table.held_segments
    table.finish()
    assert table.held_bytes == 0 and table.held_segments == 0, (table.held_bytes, table.held_segments)


class _Collector:
    def feed(self, ts: float, chunk: bytes) -> bool:
        return len(chunk) < 250

    def gap(self) -> bool:
        return True

    def finish(self, ts: float) -> None:
        pass


def ecs_compiled(data: bytes) -> None:
    """community_id and the event envelope (C) equal their Python references."""
    source = Input(data)
    v6 = source.int(2)
    size = 16 if v6 else 4
    import ipaddress

    src = str(ipaddress.ip_address(source.bytes(size).ljust(size, b"\0")))
    dst = str(ipaddress.ip_address(source.bytes(size).ljust(size, b"\0")))
    flow = Flow(src, source.int(65536), dst, source.int(65536), ("tcp", "udp")[source.int(2)])
    seed = source.int(65536)
    assert ecs.community_id(flow, seed) == ecs.community_id_py(flow, seed)
    raw = source.bytes(8).ljust(8, b"\0")
    ts = struct.unpack("<d", raw)[0]
    if not (0 <= ts < 4e9):
        ts = float(int.from_bytes(raw[:4], "little"))
    if ecs._envelope_fast is not None:
        builder = ecs.EventBuilder("sensor", lambda host: host)
        dataset = ecs.EVENT_DATASETS["dns"]
        compiled = ecs._envelope_fast(
            ts, dataset, flow, "dns", builder.observer, ecs.ECS_VERSION, ecs.MODULE, builder._data_streams[dataset]
        )
        assert compiled == builder._envelope_py(ts, "dns", flow), "compiled envelope differs"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "capture": capture_reader,
    "packet": packet_decode,
    "dns": dns_message,
    "tls": tls_hello,
    "quic": quic_initial,
    "http": http_stream,
    "phi": phi_layers,
    "trackers": trackers,
    "flows": flows_reassembly,
    "flowtable": flow_table,
    "ecs": ecs_compiled,
}


def seeds(name: str) -> list[bytes]:
    """A few valid inputs per target, so a short run starts from the interesting shapes."""
    from pathlib import Path

    pcaps = Path(__file__).resolve().parents[1] / "pcaps"
    demo = (pcaps / "demo.pcap").read_bytes() if (pcaps / "demo.pcap").exists() else b""
    frames = [frame for _, _, frame in CaptureFile(pcaps / "demo.pcap").packets()] if demo else []
    if name == "capture":
        return [demo[:4096], demo[:60000]]
    if name == "packet":
        return [b"\0\0\0\0" + frame for frame in frames[:20]]
    if name == "http":
        return [b"\0" * 8 + b"GET /tr?id=1&dl=x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"]
    if name == "phi":
        return [b"/c?glucose=487+mg%2FdL" + b"\0" * 180 + b"https://p/x?q=diabetes" + b"\0" * 80 + b"\0\0\0\1"
                + b"a=1&ssn=078-05-1120"]
    return [b"\0" * 64, bytes(range(256))]


def replay(name: str, data: bytes) -> None:
    TARGETS[name](data)


__all__ = ["TARGETS", "Input", "replay", "seeds"]
