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

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.decode.http import _BodyDecoder
from sensor.deep import HttpsRequest
from sensor.errors import SensorError
from sensor.records import Counters, Flow

INSTALL_HINT = "--keylog needs tshark and pyshark: apt-get install tshark && pip install pyshark"
DISPLAY_FILTER = "http.request || http2 || http3 || tls.handshake.type == 1"


class KeylogUnavailable(SensorError):
    exit_code = 2


def check_keylog(keylog: Path) -> None:
    """One clear line, exit 2, when deep decryption cannot run: tshark or pyshark missing, or an
    unreadable key log."""
    try:
        import pyshark  # noqa: F401
    except ImportError:
        raise KeylogUnavailable(INSTALL_HINT) from None
    if shutil.which("tshark") is None:
        raise KeylogUnavailable(INSTALL_HINT)
    try:
        with keylog.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise KeylogUnavailable(f"--keylog {keylog}: cannot read: {exc.strerror or exc}") from None


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
        self._qpack: dict[str, Any] = {}

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
            self._http1(ts, Flow(src, sport, dst, dport, "tcp"), layers["http"]._all_fields)
        if "http2" in layers:
            key = ("tcp", str(tl.stream))
            fields = layers["http2"]._all_fields
            if any(True for _ in _find(fields, "http2.magic")):
                self.clients.setdefault(key, (src, sport))
            flow = self._flow(key, src, sport, dst, dport, "tcp")
            self._http2(ts, key, flow, src == flow.src_ip and sport == flow.src_port, fields)
        if "quic" in layers:
            quic = layers["quic"]._all_fields
            number = next(_find(quic, "quic.connection.number"), "0")
            key = ("udp", str(number))
            sni = next(_find(quic, "tls.handshake.extensions_server_name"), None)
            if sni:
                self.clients.setdefault(key, (src, sport))
                self.names.setdefault(key, str(sni))
            if "http3" in layers:
                flow = self._flow(key, src, sport, dst, dport, "udp")
                if src == flow.src_ip and sport == flow.src_port:
                    self._http3(ts, key, flow, quic, layers["http3"]._all_fields)

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
    def _http2(self, ts: float, key: tuple[str, str], flow: Flow, from_client: bool, fields: dict) -> None:
        if not from_client:
            return
        for frame in _find(fields, "http2.stream"):
            if not isinstance(frame, dict):
                continue
            kind, stream_id = str(frame.get("http2.type", "")), str(frame.get("http2.streamid", "0"))
            end = str(next(_find(frame, "http2.flags.end_stream"), "0")) == "1"
            skey = (*key, stream_id)
            if kind == "1":  # HEADERS (a second HEADERS on a stream is its trailers)
                stream = self.streams.get(skey)
                if stream is None or stream.done:
                    stream = self.streams[skey] = _Stream(ts, flow, "2")
                for header in _find(frame, "http2.header"):
                    if isinstance(header, dict) and "http2.header.name" in header:
                        stream.headers.append((str(header["http2.header.name"]),
                                               str(header.get("http2.header.value", ""))))
            elif kind == "0":  # DATA
                stream = self.streams.get(skey)
                if stream is None:
                    continue
                chunk = _hex_bytes(frame.get("http2.data.data", ""))
                stream.wire_bytes += len(chunk)
                if len(stream.data) < self.body_cap * 4:
                    stream.data += chunk
            else:
                continue
            if end and skey in self.streams:
                self._complete(self.streams.pop(skey))
                self.counters.add("keylog.http2")

    # -- HTTP/3 -------------------------------------------------------------------------------
    def _http3(self, ts: float, key: tuple[str, str], flow: Flow, quic: dict, fields: dict) -> None:
        stream_ids = [int(s) for s in _find(quic, "quic.stream.stream_id") if str(s).isdigit()]
        requests = [s for s in stream_ids if s % 4 == 0]  # client-initiated bidirectional: requests
        if not requests:
            return
        stream_id = requests[0]
        skey = (*key, str(stream_id))
        types = _as_list(fields.get("http3.frame_type"))
        payloads = _as_list(fields.get("http3.frame_payload"))
        for kind, payload in zip(types, payloads + [""] * (len(types) - len(payloads))):
            data = _hex_bytes(payload)
            if str(kind) == "1":  # HEADERS
                headers = self._qpack_headers(key, stream_id, data)
                if headers is None:
                    self.counters.add("keylog.http3.headers_unreadable")
                    continue
                stream = self.streams.get(skey)
                if stream is None or stream.done:
                    stream = self.streams[skey] = _Stream(ts, flow, "3", self.names.get(key))
                stream.headers.extend(headers)
            elif str(kind) == "0" and skey in self.streams:  # DATA
                stream = self.streams[skey]
                stream.wire_bytes += len(data)
                if len(stream.data) < self.body_cap * 4:
                    stream.data += data
        if _stream_fin(quic, stream_id) and skey in self.streams:
            self._complete(self.streams.pop(skey))
            self.counters.add("keylog.http3")

    def _qpack_headers(self, key: tuple[str, str], stream_id: int, block: bytes) -> list[tuple[str, str]] | None:
        try:
            import pylsqpack
        except ImportError:
            return None
        decoder = self._qpack.get(key[1])
        if decoder is None:
            decoder = self._qpack[key[1]] = pylsqpack.Decoder(4096, 16)
        try:
            _, headers = decoder.feed_header(stream_id, block)
        except Exception:  # noqa: BLE001 - blocked on the dynamic table, or a damaged block
            return None
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]

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
        for stream in self.streams.values():  # requests whose end was not captured: what was seen
            if stream.headers and not stream.done:
                self._complete(stream)
                self.counters.add("keylog.requests.incomplete")
        self.streams.clear()
        return sorted(self.records, key=lambda r: r.ts)


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


def _stream_fin(quic: dict, stream_id: int) -> bool:
    for frame in _find(quic, "quic.frame"):
        if isinstance(frame, dict) and str(frame.get("quic.stream.stream_id")) == str(stream_id):
            if str(next(_find(frame, "quic.stream.fin"), "0")) in ("1", "True", "true"):
                return True
    return False
