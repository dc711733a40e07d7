"""Frames in, records out: the whole decode stage behind one sans-IO object.

Replay and live capture both feed `TrafficDecoder.feed(ts, linktype, frame)` and drain
`TrafficDecoder.records`. Protocols are recognised by content (TLS and HTTP on any port), DNS by
port 53, the local-link name protocols in DNS's format by theirs (5353, 5355, 137), QUIC by its
Initial long header. A TCP stream that opens with something else is watched for its first bytes:
a ClientHello after a plaintext start (STARTTLS, a database's or RDP's negotiation) or an HTTP
request with a method not known up front; so are the bytes inside an HTTP CONNECT or WebSocket
tunnel. Nothing here does I/O or reads a clock: time is the capture's.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from sensor.capture.workers import SHARED_ANSWER, route_of_py
from sensor.decode import dns, http, quic, tls
from sensor.decode.flows import SEQ_MOD, FlowKey, FlowTable, StreamConsumer, TcpStream
from sensor.decode.packet import (
    ADDRESS_TEXTS,
    MAX_ADDRESS_TEXTS,
    MAX_TUNNEL_FLOWS,
    TCP,
    UDP,
    Decoded,
    PacketDecoder,
    addr_text,
)
from sensor.decode.settings import DecodeSettings
from sensor.enrich.dnscache import MAX_TTL, MIN_TTL, DnsCache
from sensor.records import (
    Counters,
    Flow,
    HttpRequest,
    Record,
    TlsHello,
    UpgradedHello,
    positional_constructor,
)

_SYN, _FIN, _RST, _ACK = 0x02, 0x01, 0x04, 0x10
_DNS_PORT = 53
_TLS_HANDSHAKE = 0x16  # the content type of the record a ClientHello comes in
_HELLO_CAP = 65_536 + 5 * 16  # a ClientHello handshake message over however many records
# Plaintext client bytes watched for an upgrade to TLS: STARTTLS exchanges, an XMPP stream's
# opening, LDAP's and the databases' requests all fit well within.
_PREAMBLE_CAP = 16_384
_MAX_REQUEST_LINE = 8192  # an HTTP request line with an unknown method must end within this
_KEEP = 512  # plaintext kept from a watched stream's start and from before a hello, to name the protocol
# Streams not worth watching, from their first bytes: the server's side of TLS (any record but a
# ClientHello), HTTP responses, SSH.
_NOT_UPGRADING = re.compile(rb"[\x14-\x17]\x03|HTTP/|SSH-")
_LOCAL_NAME_PORTS = dns.LOCAL_NAME_PORTS



try:  # a frame to its DNS datagram or its decode tuple in one compiled call (sensor/_fast/packet.c),
    # learning another replay worker's DNS answers at once where sharing: shared_decode_py is the reference
    from sensor._fast import share_decoder as _share_decoder
except ImportError:  # built without a C compiler
    _share_decoder = None
try:  # a SYN and a first ClientHello (whole, or split over in-order segments) taken in the same
    # compiled call as the decode (sensor/_fast/handshake.c): TrafficDecoder.handshake_py is the reference
    from sensor._fast import bind_handshakes as _bind_handshakes
    from sensor._fast import handshake_decoder as _handshake_decoder
except ImportError:
    _handshake_decoder = None
else:
    _bind_handshakes(TlsHello, Flow, tls.LEGACY_VERSIONS)
try:  # a mirror tunnel's packet, counted and remembered, in one compiled call (sensor/_fast/packet.c):
    # TrafficDecoder.declined_py is the reference, and the path of what it leaves
    from sensor._fast import mirrored_found as _mirrored_found
except ImportError:
    _mirrored_found = None
try:  # a frame the compiled decode declined taken by the steps around mirrored_found in the same compiled
    # call (sensor/_fast/packet.c): TrafficDecoder.declined_step_py is the reference
    from sensor._fast import declined_decoder as _declined_decoder
except ImportError:
    _declined_decoder = None
try:  # a DNS message parsed in one compiled call (parse_message without its call)
    from sensor._fast import parse_dns as _parse_dns
except ImportError:
    _parse_dns = None
try:  # a DNS datagram's message counted, paired, learned from in the same compiled call as the decode
    # (sensor/_fast/dns.c): feed's branch for a datagram is the reference, and the path of what it declines
    from sensor._fast import dns_step_decoder as _dns_step_decoder
except ImportError:
    _dns_step_decoder = None

# learn_dns(ts, message, counted): a DNS response seen at `ts`, for the attribution cache
LearnDns = Callable[[float, "dns.DnsMessage", bool], None]
_new_flow = positional_constructor(Flow)
_new_hello = positional_constructor(TlsHello)
_new_request = positional_constructor(HttpRequest)


def make_flow(src: bytes, sport: int, dst: bytes, dport: int, transport: str) -> Flow:
    texts = ADDRESS_TEXTS
    return _new_flow(texts.get(src) or addr_text(src), sport, texts.get(dst) or addr_text(dst), dport, transport)


class _BufferedConsumer:
    """A stream consumer that parses from a growing buffer of the stream's bytes."""

    __slots__ = ("decoder", "key", "buf")

    def __init__(self, decoder: TrafficDecoder, key: FlowKey) -> None:
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
    __slots__ = ("decoder", "key", "parser", "flow", "tunnel")

    def __init__(self, decoder: TrafficDecoder, key: FlowKey) -> None:
        self.decoder = decoder
        self.key = key
        self.parser = http.HttpRequestStream(body_cap=decoder.settings.http_body_cap, counters=decoder.counters)
        self.flow: Flow | None = None
        self.tunnel: _UpgradeWatcher | None = None  # what follows CONNECT or an Upgrade, once not HTTP

    def feed(self, ts: float, data: bytes) -> bool:
        if self.tunnel is not None:
            return self.tunnel.feed(ts, data)
        parser = self.parser
        requests = parser.feed(data)
        if requests:
            self._emit(ts, requests)
        if not parser.failed:
            return True
        if parser.tunnel is None or not parser.tunnel_start:
            return False
        kind, target = parser.tunnel
        frames = http.WebSocketFrames() if kind == "websocket" else None
        self.tunnel = _UpgradeWatcher(self.decoder, self.key, "http-connect" if kind == "connect" else kind,
                                      target, frames)
        return self.tunnel.feed(ts, parser.tunnel_start)

    def gap(self) -> bool:
        self.decoder.counters.add("http.gaps")
        return False

    def finish(self, ts: float) -> None:
        if self.tunnel is not None:
            self.tunnel.finish(ts)
        requests = self.parser.finish()
        if requests:
            self._emit(ts, requests)

    def _emit(self, ts: float, requests: list[http.ParsedRequest]) -> None:
        if self.flow is None:  # make_flow, without the call
            src, dst, sport, dport = self.key
            texts = ADDRESS_TEXTS
            self.flow = _new_flow(texts.get(src) or addr_text(src), sport, texts.get(dst) or addr_text(dst), dport, "tcp")
        for req in requests:
            self.decoder.records.append(_new_request(ts, self.flow, req.method, req.target, req.version, req.headers,
                                                     req.host, req.body, req.body_bytes, req.body_truncated))
            counts = self.decoder._counts
            counts["records.http"] = counts.get("records.http", 0) + 1


class _UpgradeWatcher(_BufferedConsumer):
    """A stream that opened with neither a ClientHello nor a known HTTP method, or the inside of a
    proxy tunnel: looked at for a ClientHello anywhere in its first _PREAMBLE_CAP bytes, and, on
    the first line, for an HTTP request line with any method.

    Memory stays small however many streams are watched: only the stream's first _KEEP bytes and
    its last _KEEP before where the search resumes are held (the upgrade command that names the
    protocol comes right before the hello)."""

    __slots__ = ("scan", "http", "label", "target", "frames", "line_checked", "head", "dropped")

    def __init__(self, decoder: TrafficDecoder, key: FlowKey, label: str | None = None, target: str | None = None,
                 frames: http.WebSocketFrames | None = None) -> None:
        super().__init__(decoder, key)
        self.scan = 0  # where in buf the search for a record header resumes
        self.http: _HttpConsumer | None = None
        self.label = label  # known when inside a tunnel; else named from the plaintext once a hello is found
        self.target = target
        self.frames = frames  # a WebSocket tunnel: its frames are unwrapped first
        self.line_checked = label is not None
        self.head = b""  # the stream's first _KEEP bytes, once buf no longer starts there
        self.dropped = 0  # stream bytes cut from the front of buf

    def feed(self, ts: float, data: bytes) -> bool:
        if self.http is not None:
            return self.http.feed(ts, data)
        if self.frames is not None:
            data = self.frames.feed(data)
            if self.frames.failed:
                return False
        buf = self.buf = self.buf + data
        if not self.line_checked:
            start = len(buf) - len(buf.lstrip(b"\r\n"))  # empty lines before a request are allowed (RFC 9112 2.2)
            newline = buf.find(b"\n", start, start + _MAX_REQUEST_LINE)
            if newline >= 0 or len(buf) - start >= _MAX_REQUEST_LINE:
                self.line_checked = True
                if newline >= 0 and http.opens_request(buf[start:newline + 1]):
                    self.http, self.buf = _HttpConsumer(self.decoder, self.key), b""
                    return self.http.feed(ts, buf)
        status, hello, at = tls.find_client_hello(buf, self.scan)
        if hello is not None:
            preamble = buf[:at] if not self.dropped else self.head + b"\n" + buf[:at]
            self.decoder.emit_upgraded_hello(ts, self.flow(), hello, self.label or tls.preamble_protocol(preamble),
                                             self.target)
            return False
        if status is tls.TlsStatus.NEED_MORE:
            self.scan = at
            return len(buf) - at <= _HELLO_CAP
        if self.dropped + len(buf) > _PREAMBLE_CAP:
            return False
        cut = at - _KEEP
        if cut > 0 and self.line_checked:  # the first line stays whole until it is judged
            if not self.dropped:
                self.head = buf[:_KEEP]
            self.buf, self.dropped = buf[cut:], self.dropped + cut
            at -= cut
        self.scan = at
        return True

    def gap(self) -> bool:
        return False

    def finish(self, ts: float) -> None:
        if self.http is not None:
            self.http.finish(ts)


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
        # the counters' own dict, for the counts made per packet or record: a call of Counters.add
        # costs more there than the count itself
        self._counts = self.counters.values
        self.settings = settings or DecodeSettings()
        self.records: list[Record] = []
        self.packets = PacketDecoder(self.counters, idle_timeout=self.settings.flow_idle_timeout)
        self.flows = FlowTable(
            self.counters,
            self._classify,
            max_streams=self.settings.max_flows,
            stream_buffer_cap=self.settings.tcp_stream_cap,
            idle_timeout=self.settings.flow_idle_timeout,
            watch=self._watch,
        )
        self.dns = dns.DnsTransactions(timeout=self.settings.dns_timeout, counters=self.counters)
        self._pair_dns = self.dns.pairing()  # compiled, for the common DNS datagrams
        self.local_names = dns.LocalNameTransactions(timeout=self.settings.dns_timeout)
        self.quic = quic.QuicClientHelloTracker(counters=self.counters, idle_timeout=self.settings.flow_idle_timeout)
        self._next_dns_expiry = 0.0
        self.learn_dns: LearnDns | None = None  # where DNS responses go as they are decoded
        # The other replay worker's DNS answers handed to this one (sensor.capture.workers) are
        # only learned from: by the compiled decode itself (`share` with a cache), else decoded
        # apart (`_side`, its own counters and TCP streams) or, a datagram already parsed, learned
        # at once. shared_frames and shared_bytes count them.
        self._side: TrafficDecoder | None = None
        self.shared_frames = 0
        self.shared_bytes = 0
        # With `share`: the route (sensor.capture.workers.route_of) of a frame and the route
        # of the other worker's answers, for frames that come without saying whose they are.
        self._route_of: Callable[[int, bytes], int] | None = None
        self._shared_route = -1
        # decode(linktype, frame, ts): the compiled decode_packet, which learns another worker's
        # answers into `share`'s cache itself (sensor/_fast/share.c share_decoder), and takes the
        # SYNs and first ClientHellos (_with_handshakes)
        self._stepped: Callable[[int, bytes, float], Any] | None = (
            self._with_steps(_share_decoder(-1, None, 0.0, 0.0)) if _share_decoder is not None else None)
        # the same steps around the Python decoder's answer for a frame the compiled decode declined
        # (a tunnelled packet): its SYN, hello or DNS datagram taken as a plain packet's
        self._tunnelled: Callable[[int, bytes, float], Any] | None = (
            self._with_steps(self._declined_decode()) if self._stepped is not None else None)
        # the decode `feed` calls: the stepped one, and the tunnelled steps for what it declines
        self._decode = self._with_declined(self._stepped)

    def _with_declined(self, decode: Callable[[int, bytes, float], Any] | None) -> Callable[[int, bytes, float], Any] | None:
        """`decode`, handing a frame it declines to the tunnelled steps in the same compiled call
        (declined_step_py), where compiled."""
        if decode is None or _declined_decoder is None or self._tunnelled is None:
            return decode
        declined: Callable[[int, bytes, float], Any] = _declined_decoder(decode, self._tunnelled, self._route_of,
                                                                         self._shared_route)
        return declined

    def declined_step_py(self, found: Any, linktype: int, frame: bytes, ts: float) -> Any:
        """The reference of the decode the compiled declined_decoder returns, given its bound decode's
        answer `found`: that answer unless None; for a frame it declined, None where the frame is
        another replay worker's (feed_found hands it to feed_shared), else the tunnelled steps'
        answer, () for their None (nothing decoded)."""
        if found is not None:
            return found
        if self._route_of is not None and self._route_of(linktype, frame) == self._shared_route:
            return None
        assert self._tunnelled is not None
        found = self._tunnelled(linktype, frame, ts)
        return () if found is None else found

    def _with_steps(self, decode: Callable[[int, bytes, float], Any]) -> Callable[[int, bytes, float], Any]:
        """`decode` with the handshakes (_with_handshakes), the DNS datagrams and the records of
        both (_with_records) taken in the same compiled call, where compiled."""
        return self._with_records(self._with_handshakes(decode))

    def _with_records(self, decode: Callable[[int, bytes, float], Any]) -> Callable[[int, bytes, float], Any]:
        """`decode` (the handshakes' decode), answering () for what feed_found would only append,
        count and sweep after, done in the compiled call: a DNS datagram's message (counted, paired
        into the records, learned by learn_dns: datagram_py) and a hello the handshakes took (its
        record appended, feed_found's first branch), where compiled. Another worker's answers and
        anything unusual come as they came."""
        if _dns_step_decoder is None or self._pair_dns is None:
            return decode
        pending, max_pending = self.dns.pairing_table()
        stepped: Callable[[int, bytes, float], Any] = _dns_step_decoder(
            decode, self, pending, max_pending, self._counts, self.dns.on_datagram_py, DnsCache.learn, MIN_TTL,
            MAX_TTL)
        return stepped

    def _with_handshakes(self, decode: Callable[[int, bytes, float], Any]) -> Callable[[int, bytes, float], Any]:
        """`decode`, answering () for a SYN it recorded in the flow table, (TlsHello,) for a first
        ClientHello it took and (None,) for a segment of a split one or for an HTTP connection's
        whole requests it took (handshake_py), where compiled."""
        if _handshake_decoder is None:
            return decode
        flows = self.flows
        handshakes: Callable[[int, bytes, float], Any] = _handshake_decoder(
            decode, flows.streams, flows.half_open, flows.finished, flows.unanchored, self._counts,
            flows.max_streams, flows.max_half_open, flows.max_finished, self, TcpStream, _TlsHelloConsumer, _HELLO_CAP,
            _HttpConsumer, http.HttpRequestStream, http.HTTP_HEAD, _new_request, ADDRESS_TEXTS, MAX_ADDRESS_TEXTS)
        return handshakes

    def share(self, worker: int, route_of: Callable[[int, bytes], int], cache: DnsCache | None = None) -> None:
        """Decode as replay worker `worker` (0 or 1) of a split that hands each worker the other's
        DNS answers too (the compiled selector's): those `route_of` gives the other worker, with
        SHARED_ANSWER, go to `feed_shared`, or straight into `cache` (the one `learn_dns` teaches)
        where the compiled decode takes them."""
        self._route_of, self._shared_route = route_of, (worker ^ 1) | SHARED_ANSWER
        if self._stepped is not None and cache is not None:
            shared = cache.shared_decoder(self._shared_route)
            if shared is not None:
                self._stepped = self._with_steps(shared)
        self._decode = self._with_declined(self._stepped)

    def feed_shared(self, ts: float, linktype: int, frame: bytes, decoded: Decoded | None = None) -> None:
        """Another replay worker's DNS answer, or its DNS server's side of a TCP connection: the
        answers teach `learn_dns`, uncounted; no record, counter or tunnel of it stays here."""
        self.shared_frames += 1
        self.shared_bytes += len(frame)
        side = self._side
        if side is None:
            side = self._side = TrafficDecoder(Counters(), self.settings)
            side.learn_dns = self._learn_uncounted
        if decoded is None:
            side.feed(ts, linktype, frame)
        else:
            side.feed_decoded(ts, decoded)
        side.records.clear()

    def _learn_uncounted(self, ts: float, message: dns.DnsMessage, counted: bool) -> None:
        if self.learn_dns is not None:
            self.learn_dns(ts, message, False)

    # -- input ---------------------------------------------------------------------------
    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        decode = self._decode
        if decode is None:
            decoded = self.packets.decode(ts, linktype, frame)
            if decoded is not None:
                self.feed_decoded(ts, decoded)
            return
        found = decode(linktype, frame, ts)
        if found or found is None:  # () a packet the compiled decode took whole (a SYN, a DNS datagram)
            self.feed_found(ts, linktype, frame, found)

    @property
    def compiled_decode(self) -> Callable[[int, bytes, float], Any] | None:
        """The compiled decode(linktype, frame, ts) `feed` calls first, where built: a caller that
        unrolls feed (the replay's loop) calls it, then feed_found for any answer but ()."""
        return self._decode

    def feed_found(self, ts: float, linktype: int, frame: bytes, found: Any) -> None:
        """The rest of `feed` after its compiled decode answered `found` (never ())."""
        if found is not None:
            size = len(found)
            if size < 5:  # (TlsHello,) or (None,) a ClientHello's segment it took: as feed_decoded
                # (the compiled step of _with_records does this branch; it is its reference)
                hello = found[0]
                if hello is not None:  # _add_tls_hello, without a call
                    self.records.append(hello)
                    counts = self._counts
                    counts["records.tls"] = counts.get("records.tls", 0) + 1
                if ts >= self.flows.next_sweep:
                    self.flows.sweep(ts)
                if ts >= self._next_dns_expiry:
                    self._expire_dns(ts)
                return
            if size != 5:
                if (found[3] == _DNS_PORT or found[4] == _DNS_PORT) and self._route_of is not None \
                        and self._route_of(linktype, frame) == self._shared_route:
                    self.feed_shared(ts, linktype, frame, found)
                    return
                self.feed_decoded(ts, found)
                return
            self.datagram_py(ts, linktype, frame, found)  # a DNS datagram the compiled step left
            return
        if self._route_of is not None and self._route_of(linktype, frame) == self._shared_route:
            self.feed_shared(ts, linktype, frame)  # a tunnelled one: its decapsulation not counted here
            return
        tunnelled = self._tunnelled
        if tunnelled is None:
            decoded = self.packets.decode_declined(ts, linktype, frame)
            if decoded is not None:
                self.feed_decoded(ts, decoded)
            return
        found = tunnelled(linktype, frame, ts)  # None: nothing decoded; (): taken whole
        if found:
            self.feed_found(ts, linktype, frame, found)

    def _declined_decode(self) -> Callable[[int, bytes, float], Any]:
        """declined_py, by the compiled mirrored_found for the packets of mirror tunnels where built."""
        if _mirrored_found is None:
            return self.declined_py
        return partial(_mirrored_found, self.packets, self.packets.counters.values, ADDRESS_TEXTS, self.declined_py,
                       MAX_TUNNEL_FLOWS, MAX_ADDRESS_TEXTS)

    def declined_py(self, linktype: int, frame: bytes, ts: float) -> Any:
        """The decode the compiled steps wrap for a frame the compiled decode declined: the Python
        decoder's packet (decode_declined: its tunnel counted and remembered), a DNS datagram in
        decode_packet's form (addresses as text, its message; one that does not parse as it came,
        for feed_decoded to count)."""
        decoded = self.packets.decode_declined(ts, linktype, frame)
        if decoded is None or decoded[0] != UDP or (decoded[3] != _DNS_PORT and decoded[4] != _DNS_PORT):
            return decoded
        message = _parse_dns(decoded[7]) if _parse_dns is not None else None
        if message is None:  # the compiled parser declined it: the Python one decides
            try:
                message = dns.parse_message_py(decoded[7])
            except dns.DnsError:
                return decoded
        texts, src, dst = ADDRESS_TEXTS, decoded[1], decoded[2]
        return texts.get(src) or addr_text(src), decoded[3], texts.get(dst) or addr_text(dst), decoded[4], message

    def datagram_py(self, ts: float, linktype: int, frame: bytes,
                    found: tuple[str, int, str, int, dns.DnsMessage | None]) -> None:
        """feed's branch for a DNS datagram, decode_packet's (src, sport, dst, dport, message): what
        feed_decoded does with it. The reference of the compiled dns_step_decoder's step, and the
        path of what it leaves (another worker's answers, all of it where it is not built)."""
        src, sport, dst, dport, message = found
        if message is None:  # another worker's answer, learned from by the compiled decode
            self.shared_frames += 1
            self.shared_bytes += len(frame)
            return
        if message.answers and message.is_response and self._route_of is not None \
                and self._route_of(linktype, frame) == self._shared_route:
            self.shared_frames += 1
            self.shared_bytes += len(frame)
            self._learn_uncounted(ts, message, False)
            return
        counts = self._counts
        counts["dns.messages"] = counts.get("dns.messages", 0) + 1
        pair = self._pair_dns
        added = pair(ts, src, sport, dst, dport, message, self.records) if pair is not None else None
        if added is None:
            added = self.dns.on_datagram_py(ts, src, sport, dst, dport, message, self.records)
        if added:
            counts["records.dns"] = counts.get("records.dns", 0) + added
        if message.answers and self.learn_dns is not None and message.is_response:
            self.learn_dns(ts, message, True)
        if ts >= self._next_dns_expiry:
            self._expire_dns(ts)

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
                if stream is None:
                    record = self._whole_hello(key, ts, seq, payload) if payload[0] == _TLS_HANDSHAKE else None
                    if record is None:
                        self.flows.segment(key, ts, seq, payload)
                    else:
                        self._add_tls_hello(record)
                elif not stream.done:
                    self.flows.segment(key, ts, seq, payload)
                else:
                    stream.last_ts = ts
            if ts >= self.flows.next_sweep:
                self.flows.sweep(ts)
        elif proto == UDP:
            if sport == _DNS_PORT or dport == _DNS_PORT:
                self.dns_message(ts, make_flow(src, sport, dst, dport, "udp"), payload)
            elif payload and payload[0] & 0xC0 == 0xC0 and quic.is_quic_initial(payload):
                hello = self.quic.feed((src, dst, sport, dport), payload, (dst, src, dport, sport), ts)
                if hello is not None:
                    self.emit_hello(ts, make_flow(src, sport, dst, dport, "udp"), "quic", hello)
            elif sport in _LOCAL_NAME_PORTS or dport in _LOCAL_NAME_PORTS:
                self.local_name_message(ts, make_flow(src, sport, dst, dport, "udp"), payload)
        if ts >= self._next_dns_expiry:
            self._expire_dns(ts)

    def _whole_hello(self, key: FlowKey, ts: float, seq: int, payload: bytes) -> TlsHello | None:
        """The common first segment after a SYN, a whole ClientHello: what `FlowTable.segment`
        does with it (through `_classify` and `_TlsHelloConsumer`) without building the consumer,
        but for its record, returned for the caller to add. None, having changed nothing, for
        anything else."""
        if len(payload) < 5 or 5 + ((payload[3] << 8) | payload[4]) > len(payload):
            return None  # its first record runs on in the next segment (a split hello)
        flows = self.flows
        syn = flows.half_open.get(key)
        if (syn is None or seq != syn & 0xFFFFFFFF or key[2] == _DNS_PORT or key[3] == _DNS_PORT
                or len(flows.streams) >= flows.max_streams or key in flows.finished):
            return None
        hello = tls.whole_client_hello(payload)
        if hello is None:
            return None
        del flows.half_open[key]
        flows.finish_key(key, ts)
        src, dst, sport, dport = key
        return _new_hello(ts, make_flow(src, sport, dst, dport, "tcp"), "tls", hello.server_name, hello.alpn,
                          hello.ech, hello.version)

    def _add_tls_hello(self, hello: TlsHello) -> None:
        self.records.append(hello)
        counts = self._counts
        counts["records.tls"] = counts.get("records.tls", 0) + 1

    def handshake_py(self, found: Any, ts: float) -> Any:
        """The reference of the compiled handshake_decoder's decode, given its bound decode's answer
        `found`: a SYN without payload recorded in the flow table as feed_decoded records it,
        answering (); a whole ClientHello in the first segment after its SYN taken as
        _whole_hello takes it, answering (its TlsHello,) for the caller to add; a datagram that starts with
        a QUIC Initial taken as feed_decoded takes it (a server's to a client the tracker knows only counted,
        QuicClientHelloTracker.skip_server; any other fed to the tracker, a ClientHello it completes
        emitted), answering (); a bare ACK, which feed_decoded only looks at the sweep and expiry for, (None,); the in-order
        segments of a ClientHello split over segments taken as FlowTable.segment and
        _TlsHelloConsumer take them (_split_hello_py); an in-order segment of whole plain requests, an
        HTTP connection's first after its SYN or one on a connection waiting for its next request,
        taken as FlowTable.segment takes it, answering (None,) with their records appended
        (_first_requests_py, _whole_requests_py). On DNS's port only a SYN or a bare ACK, and only without
        a replay worker's route (feed_found's test of another worker's packets). Anything else:
        `found`, nothing changed. (The compiled one may also answer `found` where a table is at its bound
        or the connection holds segments: feed_decoded then takes it.)"""
        if found is None or len(found) != 8:
            return found
        proto, src, dst, sport, dport, flags, seq, payload = found
        if sport == _DNS_PORT or dport == _DNS_PORT:
            # only a SYN or a bare ACK, where feed_found would not ask whether it is another replay worker's
            if proto != TCP or payload or not flags & _SYN and flags & (_FIN | _RST) or self._route_of is not None:
                return found
        if proto == TCP and not payload and not flags & (_SYN | _FIN | _RST):
            return (None,)  # a bare ACK: feed_decoded only looks at the sweep and the expiry, as feed_found for (None,)
        if proto == UDP:  # feed_decoded's QUIC branch, where its expiry of waiting queries is not due
            if not (payload and payload[0] & 0xC0 == 0xC0 and quic.is_quic_initial(payload)) or ts >= self._next_dns_expiry:
                return found
            key, reverse = (src, dst, sport, dport), (dst, src, dport, sport)
            if not self.quic.skip_server(key, reverse, ts):  # a server's datagram to a known client: counted only
                quic_hello = self.quic.feed(key, payload, reverse, ts)
                if quic_hello is not None:
                    self.emit_hello(ts, make_flow(src, sport, dst, dport, "udp"), "quic", quic_hello)
            return ()
        if proto != TCP:
            return found
        key = (src, dst, sport, dport)
        if flags & _SYN and not payload:
            self.flows.syn(key, ts, seq)
            return ()
        if flags & (_SYN | _FIN | _RST) or not payload:
            return found
        stream = self.flows.streams.get(key)
        if stream is not None:
            return self._split_hello_py(key, ts, seq, payload, stream) or self._whole_requests_py(
                key, ts, seq, payload, stream) or found
        if payload[0] != _TLS_HANDSHAKE:
            return self._first_requests_py(key, ts, seq, payload) or found
        hello = self._whole_hello(key, ts, seq, payload)
        return (hello,) if hello is not None else self._split_hello_py(key, ts, seq, payload, None) or found

    def _split_hello_py(self, key: FlowKey, ts: float, seq: int, payload: bytes,
                        stream: TcpStream | None) -> tuple[TlsHello | None] | None:
        """A segment of a ClientHello split over segments, in order, as FlowTable.segment delivers
        it to a _TlsHelloConsumer: the first after the SYN (`stream` None; the stream made as
        _first_segment makes it) and the next ones into `stream`, (None,) while the hello runs on
        within _HELLO_CAP; the one completing it, (its TlsHello,) with the stream dropped for the
        finished keys as FlowTable._drop drops it. None, having changed nothing, for anything else
        (out of order, a stream holding segments, a table at its bound, not a ClientHello)."""
        flows = self.flows
        if stream is None:
            syn = flows.half_open.get(key)
            if (syn is None or seq != syn & 0xFFFFFFFF or key in flows.finished or len(flows.streams) >= flows.max_streams
                    or not 6 <= len(payload) <= _HELLO_CAP or tls.parse_stream(payload)[0] is not tls.TlsStatus.NEED_MORE):
                return None
            del flows.half_open[key]
            consumer = _TlsHelloConsumer(self, key)
            consumer.buf = payload
            stream = flows.streams[key] = TcpStream(key, ts)
            stream.consumer, stream.next_seq, stream.pos = consumer, (seq + len(payload)) % SEQ_MOD, len(payload)
            return (None,)
        hello_consumer = stream.consumer
        if (type(stream) is not TcpStream or stream.done or stream.ooo is not None
                or type(hello_consumer) is not _TlsHelloConsumer or seq != stream.next_seq):
            return None
        buf = hello_consumer.buf + payload
        status, hello = tls.parse_stream(buf)
        if status is tls.TlsStatus.NEED_MORE:
            if len(buf) > _HELLO_CAP:
                return None
            stream.last_ts, stream.next_seq, stream.pos = ts, (seq + len(payload)) % SEQ_MOD, stream.pos + len(payload)
            hello_consumer.buf = buf
            return (None,)
        if hello is None or key in flows.finished or len(flows.finished) >= flows.max_finished:
            return None
        stream.last_ts, stream.done, stream.consumer = ts, True, None
        del flows.streams[key]
        flows.finished[key] = ts
        src, dst, sport, dport = key
        return (_new_hello(ts, make_flow(src, sport, dst, dport, "tcp"), "tls", hello.server_name, hello.alpn,
                           hello.ech, hello.version),)

    def _first_requests_py(self, key: FlowKey, ts: float, seq: int, payload: bytes) -> tuple[None] | None:
        """A connection's first bytes after its SYN, in order, that _classify gives an _HttpConsumer
        and that hold whole plain requests only: taken as FlowTable.segment takes them (the stream
        made, the requests' records appended), (None,). None, having changed nothing, for anything
        else."""
        flows = self.flows
        syn = flows.half_open.get(key)
        if syn is None or seq != syn & 0xFFFFFFFF or key in flows.finished or len(flows.streams) >= flows.max_streams:
            return None
        consumer = self._classify(key, payload)
        if type(consumer) is not _HttpConsumer or type(consumer.parser) is not http.HttpRequestStream \
                or not http.whole_requests_py(payload, consumer.parser.header_cap, consumer.parser.body_cap):
            return None
        flows.segment(key, ts, seq, payload)
        return (None,)

    def _whole_requests_py(self, key: FlowKey, ts: float, seq: int, payload: bytes,
                           stream: TcpStream) -> tuple[None] | None:
        """An in-order segment on an HTTP connection whose parser waits at a request's start with
        nothing buffered, holding whole plain requests only (whole_request_py to its end): taken as
        FlowTable.segment takes it, (None,). None, having changed nothing, for anything else."""
        consumer = stream.consumer
        if (type(stream) is not TcpStream or type(consumer) is not _HttpConsumer or stream.done
                or stream.ooo is not None or consumer.tunnel is not None or seq != stream.next_seq):
            return None
        parser = consumer.parser
        if (type(parser) is not http.HttpRequestStream or not parser.at_request_start()
                or not http.whole_requests_py(payload, parser.header_cap, parser.body_cap)):
            return None
        self.flows.segment(key, ts, seq, payload)
        return (None,)

    def _expire_dns(self, ts: float) -> None:
        """Unanswered queries past their timeout, looked for once a second of capture time."""
        self._next_dns_expiry = ts + 1.0
        self._add_dns_records(self.dns.expire(ts))
        self._add_dns_records(self.local_names.expire(ts))

    def finish(self) -> None:
        self.flows.finish()
        self._add_dns_records(self.dns.flush())
        self._add_dns_records(self.local_names.flush())

    # -- helpers for the stream consumers --------------------------------------------------
    def _classify(self, key: FlowKey, first: bytes) -> StreamConsumer | None:
        if key[2] == _DNS_PORT or key[3] == _DNS_PORT:
            return _DnsTcpConsumer(self, key)
        if first and first[0] == _TLS_HANDSHAKE and tls.looks_like_client_hello(first):  # its first test, without a call
            return _TlsHelloConsumer(self, key)
        if http.looks_like_request(first):
            return _HttpConsumer(self, key)
        return None

    def _watch(self, key: FlowKey, first: bytes) -> StreamConsumer | None:
        if _NOT_UPGRADING.match(first) is not None:
            return None
        self.counters.add("tcp.streams_watched")
        return _UpgradeWatcher(self, key)

    def local_name_message(self, ts: float, flow: Flow, payload: bytes) -> None:
        protocol = _LOCAL_NAME_PORTS.get(flow.src_port) or _LOCAL_NAME_PORTS[flow.dst_port]
        try:
            message = dns.parse_local_message(payload, protocol)
        except dns.DnsError:
            self.counters.add(f"{protocol}.parse_errors")
            return
        self.counters.add(f"{protocol}.messages")
        self._add_dns_records(self.local_names.on_message(ts, flow, message, protocol))

    def dns_message(self, ts: float, flow: Flow, payload: bytes) -> None:
        try:
            message = dns.parse_message(payload)
        except dns.DnsError:
            self.counters.add("dns.parse_errors")
            return
        counts = self._counts
        counts["dns.messages"] = counts.get("dns.messages", 0) + 1
        self._add_dns_records(self.dns.on_message(ts, flow, message))
        if message.answers and self.learn_dns is not None and message.is_response:
            self.learn_dns(ts, message, True)

    def _add_dns_records(self, records: Sequence[Record]) -> None:
        if records:
            self.records.extend(records)
            counts = self._counts
            counts["records.dns"] = counts.get("records.dns", 0) + len(records)

    def emit_upgraded_hello(self, ts: float, flow: Flow, hello: tls.ClientHello, preamble: str,
                            tunnel_target: str | None) -> None:
        self.records.append(UpgradedHello(ts, flow, "tls", hello.server_name, hello.alpn, hello.ech, hello.version,
                                          preamble, tunnel_target))
        self.counters.add("records.tls")
        self.counters.add("tls.upgraded")

    def emit_hello(self, ts: float, flow: Flow, protocol: str, hello: tls.ClientHello) -> None:
        self.records.append(_new_hello(ts, flow, protocol, hello.server_name, hello.alpn, hello.ech, hello.version))
        counts, name = self._counts, "records.quic" if protocol == "quic" else "records.tls"
        counts[name] = counts.get(name, 0) + 1


def decode_packet_py(linktype: int, frame: bytes) -> tuple[str, int, str, int, dns.DnsMessage] | Decoded | None:
    """The reference of the compiled decode_packet (which answers only where the compiled
    dns_datagram or decode_frame does): dns_datagram_py's answer, else PacketDecoder.decode_py's."""
    datagram = dns_datagram_py(linktype, frame)
    return datagram if datagram is not None else PacketDecoder(Counters()).decode_py(0.0, linktype, frame)


def shared_decode_py(shared_route: int, cache: DnsCache | None, linktype: int, frame: bytes,
                     ts: float) -> tuple[str, int, str, int, dns.DnsMessage | None] | Decoded | None:
    """The reference of the decode the compiled share_decoder(shared_route, cache, ...) returns:
    decode_packet_py's answer, except that a DNS datagram with answers to learn whose route is
    `shared_route` (another replay worker's) is learned by `cache` as TrafficDecoder.feed would
    have it learned, and comes with None for its message. (The compiled one may decline a
    datagram, learning nothing and answering as decode_packet: feed then learns it.)"""
    found = decode_packet_py(linktype, frame)
    if cache is None or found is None or len(found) != 5:
        return found
    src, sport, dst, dport, message = found
    if not (message.answers and message.is_response) or route_of_py(linktype, frame) != shared_route:
        return found
    cache.learn(ts, message, False)
    return src, sport, dst, dport, None


def dns_datagram_py(linktype: int, frame: bytes) -> tuple[str, int, str, int, dns.DnsMessage] | None:
    """A DNS datagram's addresses (text), ports and message, as `feed` takes them: the reference of
    the compiled dns_datagram, which answers only for frames the compiled decoder takes."""
    decoded = PacketDecoder(Counters()).decode_py(0.0, linktype, frame)
    if decoded is None or decoded[0] != UDP or _DNS_PORT not in (decoded[3], decoded[4]):
        return None
    try:
        message = dns.parse_message_py(decoded[7])
    except dns.DnsError:
        return None
    return addr_text(decoded[1]), decoded[3], addr_text(decoded[2]), decoded[4], message
