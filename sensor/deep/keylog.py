"""HTTPS and HTTP/3 requests decrypted with a TLS key log (SSLKEYLOGFILE format), through
tshark driven by pyshark, as HTTP request records.

tshark does the TLS 1.2/1.3 and QUIC decryption (`tls.keylog_file`), the TCP reassembly, HTTP/1.1
(de-chunked, content-decoded bodies) and HTTP/2 (HPACK). tshark 4.0 leaves HTTP/3 header blocks
undecoded: they are decoded here with QPACK (pylsqpack, the decoder aioquic uses), static table
and literals; a block that needs the dynamic table is counted as unreadable. HTTP/2 and HTTP/3
bodies are put together from their DATA frames and decoded by their Content-Encoding here.

The ordinary fast path still reads the capture itself (DNS, TLS and QUIC hellos, plaintext HTTP);
this adds only the decrypted requests.
"""
from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.decode.http import _BodyDecoder
from sensor.deep import HttpsRequest
from sensor.errors import EXIT_USAGE, SensorError
from sensor.records import Counters, Flow

INSTALL_HINT = "--keylog needs tshark and pyshark: apt-get install tshark && pip install pyshark"
DISPLAY_FILTER = "http.request || http2 || quic"


class KeylogUnavailable(SensorError):
    exit_code = EXIT_USAGE


def check_keylog(keylog: Path) -> None:
    """One clear line, exit 2, when deep decryption cannot run: tshark or pyshark missing, or an
    unreadable key log."""
    if importlib.util.find_spec("pyshark") is None or shutil.which("tshark") is None:
        raise KeylogUnavailable(INSTALL_HINT)
    try:
        with keylog.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise KeylogUnavailable(f"--keylog {keylog}: cannot read: {exc.strerror or exc}") from None


@dataclass(slots=True)
class _QuicConnection:
    flow: Flow
    server_name: str | None
    streams: dict[int, dict[int, bytes]] = field(default_factory=dict)  # client stream -> offset -> data
    first_seen: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Stream:
    """One HTTP/2 or HTTP/3 request in the making."""

    ts: float
    flow: Flow
    version: str
    server_name: str | None = None  # the SNI of its connection
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    wire_bytes: int = 0
    done: bool = False


def decrypted_requests(capture: Path, keylog: Path, body_cap: int = 65536,
                       counters: Counters | None = None) -> tuple[list[HttpsRequest], str | None]:
    """The requests the key log decrypts in `capture`, oldest first; and a problem line or None."""
    import pyshark

    counters = counters if counters is not None else Counters()
    reader = _Reader(body_cap, counters)
    cap = pyshark.FileCapture(str(capture), override_prefs={"tls.keylog_file": str(keylog.resolve())},
                              display_filter=DISPLAY_FILTER, use_json=True, keep_packets=False)
    problem = None
    try:
        for packet in cap:
            try:
                reader.packet(packet)
            except (AttributeError, KeyError, TypeError, ValueError):
                counters.add("keylog.packets.unreadable")
    except Exception as exc:  # noqa: BLE001 - tshark failing on the file is the file's problem
        problem = f"tshark could not read it with the key log: {type(exc).__name__}: {exc}"
    finally:
        cap.close()
    records = reader.finish()
    counters.add("keylog.requests", len(records))
    return records, problem


class _Reader:
    def __init__(self, body_cap: int, counters: Counters) -> None:
        self.body_cap = body_cap
        self.counters = counters
        self.records: list[HttpsRequest] = []
        self.clients: dict[tuple[str, str], tuple[str, int]] = {}  # (transport, stream/connection) -> client end
        self.names: dict[tuple[str, str], str] = {}  # QUIC connection -> SNI
        self.streams: dict[tuple[str, str, str], _Stream] = {}
        self.quic: dict[tuple[str, str], _QuicConnection] = {}

    # -- packets ------------------------------------------------------------------------------
    def packet(self, packet) -> None:
        layers = {layer.layer_name: layer for layer in packet.layers}
        ip = layers.get("ip") or layers.get("ipv6")
        transport = "tcp" if "tcp" in layers else "udp" if "udp" in layers else None
        if ip is None or transport is None:
            return
        src, dst = str(ip.src), str(ip.dst)
        tl = layers[transport]
        sport, dport = int(tl.srcport), int(tl.dstport)
        ts = float(packet.sniff_timestamp)
        if "http" in layers and "http2" not in layers:
            for fields in _each(layers["http"]):
                self._http1(ts, Flow(src, sport, dst, dport, "tcp"), fields)
        if "http2" in layers:
            flow = Flow(src, sport, dst, dport, "tcp")  # a request's sender is its client
            for fields in _each(layers["http2"]):
                self._http2(ts, ("tcp", f"{tl.stream}/{src}/{sport}"), flow, fields)
        if "quic" in layers:
            # Chromium's ClientHello spans several Initial packets: its SNI may sit in a tls layer
            sni = next((value for layer in packet.layers for fields in _each(layer)
                        for value in _find(fields, "tls.handshake.extensions_server_name")), None)
            for quic in _each(layers["quic"]):  # coalesced QUIC packets
                key = ("udp", str(next(_find(quic, "quic.connection.number"), "0")))
                if str(next(_find(quic, "quic.long.packet_type"), "")) == "0":
                    self.clients.setdefault(key, (src, sport))  # the first Initial comes from the client
                if sni:
                    self.names.setdefault(key, str(sni))
                flow = self._flow(key, src, sport, dst, dport, "udp")
                self._quic_frames(ts, key, flow, quic, src == flow.src_ip and sport == flow.src_port)

    def _flow(self, key: tuple[str, str], src: str, sport: int, dst: str, dport: int, transport: str) -> Flow:
        client = self.clients.get(key)
        if client is None:  # the start was not captured: the client is the side with the higher port
            client = self.clients[key] = (src, sport) if sport > dport else (dst, dport)
        if client == (src, sport):
            return Flow(src, sport, dst, dport, transport)
        return Flow(dst, dport, src, sport, transport)

    # -- HTTP/1.1 -----------------------------------------------------------------------------
    def _http1(self, ts: float, flow: Flow, fields: dict) -> None:
        method = next(_find(fields, "http.request.method"), None)
        if method is None:
            return
        headers = []
        for line in _find(fields, "http.request.line"):
            name, colon, value = str(line).rstrip("\r\n").partition(":")
            if colon:
                headers.append((name.strip(), value.strip()))
        body = _text_bytes(next(_find(fields, "http.file_data"), ""))
        declared = next(_find(fields, "http.content_length_header"), None)
        version = str(next(_find(fields, "http.request.version"), "HTTP/1.1")).removeprefix("HTTP/")
        host = _host(next(_find(fields, "http.host"), None))
        self._emit(ts, flow, str(method), str(next(_find(fields, "http.request.uri"), "/")), version,
                   tuple(headers), host, body[: self.body_cap], int(declared) if str(declared).isdigit() else len(body),
                   len(body) > self.body_cap)
        self.counters.add("keylog.http1")

    # -- HTTP/2 -------------------------------------------------------------------------------
    def _http2(self, ts: float, key: tuple[str, str], flow: Flow, fields: dict) -> None:
        """HEADERS frames carrying :method open a request (so its sender is the client); DATA frames
        of the same sender and stream add to its body; END_STREAM completes it."""
        for frame in _find(fields, "http2.stream"):
            if not isinstance(frame, dict):
                continue
            kind, stream_id = str(frame.get("http2.type", "")), str(frame.get("http2.streamid", "0"))
            end = str(next(_find(frame, "http2.flags.end_stream"), "0")) == "1"
            skey = (*key, stream_id)
            stream = self.streams.get(skey)
            if kind == "1":  # HEADERS (a second HEADERS on a request stream is its trailers)
                headers = [(str(h["http2.header.name"]), str(h.get("http2.header.value", "")))
                           for h in _find(frame, "http2.header") if isinstance(h, dict) and "http2.header.name" in h]
                if any(name == ":method" for name, _ in headers):
                    stream = self.streams[skey] = _Stream(ts, flow, "2")
                if stream is None:
                    continue  # a response
                stream.headers.extend(headers)
            elif kind == "0" and stream is not None:  # DATA
                chunk = _hex_bytes(frame.get("http2.data.data", ""))
                stream.wire_bytes += len(chunk)
                if len(stream.data) < self.body_cap * 4:
                    stream.data += chunk
            else:
                continue
            if end and stream is not None:
                self._complete(self.streams.pop(skey))
                self.counters.add("keylog.http2")

    # -- HTTP/3 -------------------------------------------------------------------------------
    def _quic_frames(self, ts: float, key: tuple[str, str], flow: Flow, quic: dict, from_client: bool) -> None:
        """Keep the STREAM frames the client sent, and the server's unidirectional streams (its
        SETTINGS say how large the QPACK table is), by stream and offset; read at the end."""
        connection = self.quic.setdefault(key, _QuicConnection(flow, self.names.get(key)))
        for frame in _find(quic, "quic.frame"):
            if not isinstance(frame, dict) or "quic.stream.stream_id" not in frame:
                continue
            stream_id = int(frame["quic.stream.stream_id"])
            if from_client == bool(stream_id & 1):  # client streams are even, server streams odd
                continue
            if not from_client and stream_id % 4 != 3:
                continue
            data = _hex_bytes(frame.get("quic.stream_data", ""))
            offset = int(frame.get("quic.stream.offset", 0) or 0)
            parts = connection.streams.setdefault(stream_id, {})
            if sum(len(chunk) for chunk in parts.values()) < self.body_cap * 4:
                parts.setdefault(offset, data)
            connection.first_seen.setdefault(stream_id, ts)

    def _http3_requests(self, connection: _QuicConnection) -> None:
        """HTTP/3 requests of one QUIC connection: the encoder stream fills the QPACK dynamic
        table first, then each request stream's HEADERS and DATA frames are read."""
        streams = {sid: _contiguous(parts) for sid, parts in sorted(connection.streams.items())}
        capacity, blocked = _server_qpack_settings(streams)
        if not capacity:  # the server's SETTINGS were not captured: encoders use all the table they may
            capacity = max((_encoder_capacity(data) for sid, data in streams.items() if sid % 4 == 2), default=0)
        decoder = _qpack_decoder(capacity, max(blocked, 100))
        for stream_id, data in streams.items():
            if stream_id % 4 == 2:  # client unidirectional: its type first
                kind, offset = _varint(data, 0)
                if kind == 0x02 and decoder is not None and offset is not None:
                    try:
                        decoder.feed_encoder(data[offset:])
                    except Exception:  # noqa: BLE001 - a damaged encoder stream: its blocks fail below
                        self.counters.add("keylog.http3.encoder_unreadable")
        for stream_id, data in streams.items():
            if stream_id % 4 != 0:
                continue
            stream = _Stream(connection.first_seen.get(stream_id, 0.0), connection.flow, "3", connection.server_name)
            for kind, payload in _h3_frames(data):
                if kind == 0x01:
                    headers = _qpack_headers(decoder, stream_id, payload)
                    if headers is None:
                        self.counters.add("keylog.http3.headers_unreadable")
                        break
                    stream.headers.extend(headers)
                elif kind == 0x00 and stream.headers:
                    stream.wire_bytes += len(payload)
                    stream.data += payload
            if stream.headers:
                self._complete(stream)
                self.counters.add("keylog.http3")

    # -- records ------------------------------------------------------------------------------
    def _complete(self, stream: _Stream) -> None:
        stream.done = True
        pseudo = {n: v for n, v in stream.headers if n.startswith(":")}
        headers = tuple((n, v) for n, v in stream.headers if not n.startswith(":"))
        coding = next((v.strip().lower() for n, v in headers if n.lower() == "content-encoding"), None)
        raw = bytes(stream.data)
        if coding:
            decoder = _BodyDecoder(coding, self.body_cap)
            decoder.feed(raw)
            body, truncated = decoder.result()
        else:
            body, truncated = raw[: self.body_cap], len(raw) > self.body_cap
        host = _host(pseudo.get(":authority") or next((v for n, v in headers if n.lower() == "host"), None))
        host = host or _host(stream.server_name)
        self._emit(stream.ts, stream.flow, pseudo.get(":method", "GET"), pseudo.get(":path", "/"), stream.version,
                   headers, host, body, stream.wire_bytes, truncated)

    def _emit(self, ts, flow, method, target, version, headers, host, body, wire_bytes, truncated) -> None:
        self.records.append(HttpsRequest(ts, flow, method.upper(), target, version, headers, host, body, wire_bytes,
                                         truncated))

    def finish(self) -> list[HttpsRequest]:
        for connection in self.quic.values():
            self._http3_requests(connection)
        for stream in self.streams.values():  # requests whose end was not captured: what was seen
            if stream.headers and not stream.done:
                self._complete(stream)
                self.counters.add("keylog.requests.incomplete")
        self.streams.clear()
        return sorted(self.records, key=lambda r: r.ts)


def _each(layer) -> Iterator[dict]:
    """The fields of a layer and of the layers of the same protocol in the same packet (several TLS
    records in a segment, coalesced QUIC packets), which pyshark keeps as `duplicate_layers`."""
    for item in (layer, *getattr(layer, "duplicate_layers", ())):
        if isinstance(item._all_fields, dict):
            yield item._all_fields


def _find(obj: Any, key: str) -> Iterator[Any]:
    """Every value of `key` anywhere in tshark's JSON tree (repeated fields come as lists)."""
    if isinstance(obj, dict):
        for name, value in obj.items():
            if name == key:
                yield from value if isinstance(value, list) else (value,)
            elif isinstance(value, dict | list):
                yield from _find(value, key)
    elif isinstance(obj, list):
        for item in obj:
            yield from _find(item, key)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def _hex_bytes(value: Any) -> bytes:
    try:
        return bytes.fromhex(str(value).replace(":", ""))
    except ValueError:
        return b""


def _text_bytes(value: Any) -> bytes:
    """tshark writes a body as text, or as colon-separated hex when it is not printable."""
    text = str(value)
    if len(text) >= 5 and text[2] == ":" and all(c in "0123456789abcdef:" for c in text[:48]):
        decoded = _hex_bytes(text)
        if decoded:
            return decoded
    return text.encode("utf-8", "replace")


def _host(value: Any) -> str | None:
    if not value:
        return None
    text = str(value).strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0] or None
    name, colon, port = text.rpartition(":")
    return (name if colon and port.isdigit() else text) or None


def _contiguous(parts: dict[int, bytes]) -> bytes:
    """A stream's bytes from offset 0 up to the first gap (retransmissions overlap harmlessly)."""
    out = bytearray()
    for offset in sorted(parts):
        if offset > len(out):
            break
        out += parts[offset][len(out) - offset:]
    return bytes(out)


def _varint(data: bytes, offset: int) -> tuple[int, int | None]:
    """A QUIC variable-length integer at `offset`: (value, offset after it), or (0, None) when cut."""
    if offset >= len(data):
        return 0, None
    size = 1 << (data[offset] >> 6)
    if offset + size > len(data):
        return 0, None
    value = data[offset] & 0x3F
    for byte in data[offset + 1: offset + size]:
        value = (value << 8) | byte
    return value, offset + size


def _h3_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each whole HTTP/3 frame of a request stream."""
    offset: int | None = 0
    while offset is not None and offset < len(data):
        kind, offset = _varint(data, offset)
        if offset is None:
            return
        length, offset = _varint(data, offset)
        if offset is None or offset + length > len(data):
            return
        yield kind, data[offset: offset + length]
        offset += length


def _server_qpack_settings(streams: dict[int, bytes]) -> tuple[int, int]:
    """(QPACK_MAX_TABLE_CAPACITY, QPACK_BLOCKED_STREAMS) from the server's control stream SETTINGS:
    the client's encoder works within them, and header blocks encode their insert count by them."""
    capacity = blocked = 0
    for stream_id, data in streams.items():
        if stream_id % 4 != 3:
            continue
        kind, offset = _varint(data, 0)
        if kind != 0x00 or offset is None:  # not the control stream
            continue
        for frame_type, payload in _h3_frames(data[offset:]):
            if frame_type != 0x04:
                continue
            position: int | None = 0
            while position is not None and position < len(payload):
                name, position = _varint(payload, position)
                if position is None:
                    break
                value, position = _varint(payload, position)
                if name == 0x01:
                    capacity = value
                elif name == 0x07:
                    blocked = value
        break
    return capacity, blocked


def _encoder_capacity(data: bytes) -> int:
    """The table capacity a QPACK encoder stream sets first (Set Dynamic Table Capacity), else 0."""
    kind, offset = _varint(data, 0)
    if kind != 0x02 or offset is None or offset >= len(data) or data[offset] & 0xE0 != 0x20:
        return 0
    value, shift = data[offset] & 0x1F, 0
    if value < 0x1F:
        return value
    for byte in data[offset + 1: offset + 9]:  # a prefix integer (RFC 7541 5.1) with a 5-bit prefix
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value
    return 0


def _qpack_decoder(capacity: int, blocked: int) -> Any:
    try:
        import pylsqpack
    except ImportError:
        return None
    return pylsqpack.Decoder(capacity, blocked)


def _qpack_headers(decoder: Any, stream_id: int, block: bytes) -> list[tuple[str, str]] | None:
    if decoder is None:
        return None
    try:
        _, headers = decoder.feed_header(stream_id, block)
    except Exception:  # noqa: BLE001 - blocked on a dynamic table entry never seen, or a damaged block
        return None
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
