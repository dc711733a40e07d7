"""Frames in, records out: the whole decode stage behind one sans-IO object.

Replay and live capture both feed `TrafficDecoder.feed(ts, linktype, frame)` and drain
`TrafficDecoder.records`. Protocols are recognised by content (TLS and HTTP on any port), DNS by
port 53, QUIC by its Initial long header. Nothing here does I/O or reads a clock: time is the
capture's.
"""
from __future__ import annotations

from dataclasses import dataclass

from sensor.decode import dns, http, quic, tls
from sensor.decode.flows import FlowTable, StreamConsumer
from sensor.decode.packet import TCP, UDP, Decoded, PacketDecoder, addr_text
from sensor.records import (
    Counters,
    Flow,
    HttpRequest,
    Record,
    TlsHello,
    positional_constructor,
)

_SYN, _FIN, _RST, _ACK = 0x02, 0x01, 0x04, 0x10
_DNS_PORT = 53
_HELLO_CAP = 65_536 + 5 * 16  # a ClientHello handshake message over however many records


@dataclass(frozen=True, slots=True)
class DecodeSettings:
    http_body_cap: int = 65_536
    tcp_stream_cap: int = 262_144
    max_flows: int = 200_000
    flow_idle_timeout: float = 120.0
    dns_timeout: float = 5.0


_new_flow = positional_constructor(Flow)
_new_hello = positional_constructor(TlsHello)


def make_flow(src: bytes, sport: int, dst: bytes, dport: int, transport: str) -> Flow:
    return _new_flow(addr_text(src), sport, addr_text(dst), dport, transport)


class _BufferedConsumer:
    """A stream consumer that parses from a growing buffer of the stream's bytes."""

    __slots__ = ("decoder", "key", "buf")

    def __init__(self, decoder: TrafficDecoder, key: tuple) -> None:
        self.decoder = decoder
        self.key = key
        self.buf = b""

    def flow(self) -> Flow:
        src, dst, sport, dport = self.key
        return make_flow(src, sport, dst, dport, "tcp")


class _TlsHelloConsumer(_BufferedConsumer):
    __slots__ = ()

    def feed(self, ts: float, data: bytes) -> bool:
        self.buf += data
        status, hello = tls.parse_stream(self.buf)
        if status is tls.TlsStatus.NEED_MORE:
            if len(self.buf) <= _HELLO_CAP:
                return True
            self.decoder.counters.add("tls.hello_too_large")
            return False
        if hello is not None:
            self.decoder.emit_hello(ts, self.flow(), "tls", hello)
        else:
            self.decoder.counters.add("tls.parse_errors")
        return False

    def gap(self) -> bool:
        self.decoder.counters.add("tls.hello_gaps")
        return False

    def finish(self, ts: float) -> None:
        if self.buf:
            self.decoder.counters.add("tls.hello_incomplete")


class _HttpConsumer:
    __slots__ = ("decoder", "key", "parser", "flow")

    def __init__(self, decoder: TrafficDecoder, key: tuple) -> None:
        self.decoder = decoder
        self.key = key
        self.parser = http.HttpRequestStream(body_cap=decoder.settings.http_body_cap, counters=decoder.counters)
        self.flow: Flow | None = None

    def feed(self, ts: float, data: bytes) -> bool:
        self._emit(ts, self.parser.feed(data))
        return not self.parser.failed

    def gap(self) -> bool:
        self.decoder.counters.add("http.gaps")
        return False

    def finish(self, ts: float) -> None:
        self._emit(ts, self.parser.finish())

    def _emit(self, ts: float, requests: list[http.ParsedRequest]) -> None:
        if not requests:
            return
        if self.flow is None:
            src, dst, sport, dport = self.key
            self.flow = make_flow(src, sport, dst, dport, "tcp")
        for req in requests:
            self.decoder.records.append(
                HttpRequest(
                    ts=ts,
                    flow=self.flow,
                    method=req.method,
                    target=req.target,
                    version=req.version,
                    headers=req.headers,
                    host=req.host,
                    body=req.body,
                    body_bytes=req.body_bytes,
                    body_truncated=req.body_truncated,
                )
            )
            self.decoder.counters.add("records.http")


class _DnsTcpConsumer(_BufferedConsumer):
    __slots__ = ()

    def feed(self, ts: float, data: bytes) -> bool:
        self.buf += data
        messages, used = dns.split_tcp_messages(self.buf)
        self.buf = self.buf[used:]
        if messages:
            flow = self.flow()
            for message in messages:
                self.decoder.dns_message(ts, flow, message)
        return len(self.buf) <= self.decoder.settings.tcp_stream_cap

    def gap(self) -> bool:
        self.buf = b""  # the length prefixes are lost; a later message boundary cannot be found
        return False

    def finish(self, ts: float) -> None:
        if self.buf:
            self.decoder.counters.add("dns.tcp_incomplete")


class TrafficDecoder:
    def __init__(self, counters: Counters | None = None, settings: DecodeSettings | None = None) -> None:
        self.counters = counters if counters is not None else Counters()
        self.settings = settings or DecodeSettings()
        self.records: list[Record] = []
        self.packets = PacketDecoder(self.counters)
        self.flows = FlowTable(
            self.counters,
            self._classify,
            max_streams=self.settings.max_flows,
            stream_buffer_cap=self.settings.tcp_stream_cap,
            idle_timeout=self.settings.flow_idle_timeout,
        )
        self.dns = dns.DnsTransactions(timeout=self.settings.dns_timeout, counters=self.counters)
        self.quic = quic.QuicClientHelloTracker(counters=self.counters)
        self._next_dns_expiry = 0.0

    # -- input ---------------------------------------------------------------------------
    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        decoded = self.packets.decode(ts, linktype, frame)
        if decoded is not None:
            self.feed_decoded(ts, decoded)

    def feed_decoded(self, ts: float, decoded: Decoded) -> None:
        """The rest of `feed`, for a caller that already ran the L2-L4 decode (replay's splitter)."""
        proto, src, dst, sport, dport, flags, seq, payload = decoded
        if proto == TCP:
            key = (src, dst, sport, dport)
            if flags & (_SYN | _FIN | _RST):
                if flags & _SYN:
                    self.flows.syn(key, ts, seq)
                    if payload:  # TCP Fast Open carries the first request in the SYN
                        self.flows.segment(key, ts, (seq + 1) & 0xFFFFFFFF, payload)
                    return
                if payload:
                    self.flows.segment(key, ts, seq, payload)
                self.flows.end(key, ts)
            elif payload:
                stream = self.flows.streams.get(key)
                if stream is None or not stream.done:
                    self.flows.segment(key, ts, seq, payload)
                else:
                    stream.last_ts = ts
            self.flows.sweep(ts)
        elif proto == UDP:
            if sport == _DNS_PORT or dport == _DNS_PORT:
                self.dns_message(ts, make_flow(src, sport, dst, dport, "udp"), payload)
            elif payload and payload[0] & 0xC0 == 0xC0 and quic.is_quic_initial(payload):
                hello = self.quic.feed((src, dst, sport, dport), payload, (dst, src, dport, sport))
                if hello is not None:
                    self.emit_hello(ts, make_flow(src, sport, dst, dport, "udp"), "quic", hello)
        if ts >= self._next_dns_expiry:
            self._next_dns_expiry = ts + 1.0
            self._add_dns_records(self.dns.expire(ts))

    def finish(self) -> None:
        self.flows.finish()
        self._add_dns_records(self.dns.flush())

    # -- helpers for the stream consumers --------------------------------------------------
    def _classify(self, key: tuple, first: bytes) -> StreamConsumer | None:
        if key[2] == _DNS_PORT or key[3] == _DNS_PORT:
            return _DnsTcpConsumer(self, key)
        if tls.looks_like_client_hello(first):
            return _TlsHelloConsumer(self, key)
        if http.looks_like_request(first):
            return _HttpConsumer(self, key)
        return None

    def dns_message(self, ts: float, flow: Flow, payload: bytes) -> None:
        try:
            message = dns.parse_message(payload)
        except dns.DnsError:
            self.counters.add("dns.parse_errors")
            return
        self.counters.add("dns.messages")
        self._add_dns_records(self.dns.on_message(ts, flow, message))

    def _add_dns_records(self, records: list) -> None:
        if records:
            self.records.extend(records)
            self.counters.add("records.dns", len(records))

    def emit_hello(self, ts: float, flow: Flow, protocol: str, hello: tls.ClientHello) -> None:
        self.records.append(_new_hello(ts, flow, protocol, hello.server_name, hello.alpn, hello.ech, hello.version))
        self.counters.add("records.quic" if protocol == "quic" else "records.tls")
