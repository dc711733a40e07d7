"""HTTP/1.x requests from the client->server byte stream (RFC 9112), sans-IO.

The caller reassembles TCP and feeds the client's bytes in order; complete requests come out with
their de-chunked, decompressed body (bounded by body_cap). Any RFC 9110 token is a method (WebDAV
verbs, QUERY, custom verbs), and an HTTP/0.9 simple request (``GET /path`` and a line end) counts
with version "0.9". Anything that is not an HTTP/1.x request stream ends parsing (``failed``) and
counts ``http.parse_errors``, except after CONNECT or an Upgrade request, where the tunnel may
legitimately carry other protocols: there parsing goes on while the bytes still look like requests
(a proxied plaintext request) and stops quietly otherwise, leaving the tunnel's first bytes in
``tunnel_start`` (a ClientHello through a proxy, WebSocket frames).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from sensor.records import Counters, frozen_record, positional_constructor

try:  # a request head's lines in one compiled call (sensor/_fast/http.c); parse_head_py is the reference
    from sensor._fast import http_head as _http_head
except ImportError:  # built without a C compiler
    _http_head = None
try:  # a whole plain request in one compiled call (sensor/_fast/http.c); whole_request_py is the reference
    from sensor._fast import http_request as _http_request
except ImportError:
    _http_request = None

try:
    import brotli as _brotli

    # Only versions whose decompressor can bound its output are safe against bombs.
    _brotli.Decompressor().process(b"", output_buffer_limit=1)
except (ImportError, TypeError):
    _brotli = None
_BrotliError: type[Exception] = _brotli.error if _brotli is not None else zlib.error

METHODS: frozenset[bytes] = frozenset({
    b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
    # WebDAV / CalDAV, common on intranet document and calendar servers.
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"REPORT", b"SEARCH",
    b"MKCALENDAR",
})
_MAX_METHOD = max(map(len, METHODS))
_METHOD_PREFIXES = frozenset(method[:end] for method in METHODS for end in range(1, len(method) + 1))
MAX_TOKEN_METHOD = 32  # longer "methods" are taken for something else than HTTP

_BLANK_LINES = re.compile(rb"[\r\n]+")
_LINE_END_BYTES = frozenset(b"\r\n")
_HEAD_END = re.compile(rb"\n\r?\n")
_REQUEST_LINE_CAP_FACTOR = 4  # a request line may take this many header caps: a long URL still shows whole
_SKIMMED = (b"host", b"content-length", b"content-type", b"content-encoding", b"transfer-encoding")
_SKIMMED_LINE = re.compile(rb"(?im)^(" + b"|".join(_SKIMMED) + rb")[ \t]*:[^\n]*")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(rb"HTTP/(1\.[0-9])")
# The start of a request line with any method token, or as much of one as has arrived.
_METHOD_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1," + str(MAX_TOKEN_METHOD).encode() + b"}"
_REQUEST_START = re.compile(_METHOD_TOKEN + rb"(?: |\Z)")
# A whole request line: token method, target without controls or spaces, HTTP/1.x.
_REQUEST_LINE = re.compile(_METHOD_TOKEN + rb" [^\x00-\x20\x7f]+ HTTP/1\.[0-9]\r?\n")
# HTTP/0.9's simple request: a known method, a path, the line end; no version, no headers.
_SIMPLE_REQUEST = re.compile(rb"([A-Z]{3,10}) (/[^\x00-\x20\x7f]*)\r?\n")
_MAX_SIMPLE_METHOD = 10  # the longest method _SIMPLE_REQUEST takes
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,18}")
_MAX_CHUNK_LINE = 4096  # size plus extensions
_MAX_RATIO = 200  # decoded bytes per compressed byte beyond which a body counts as a bomb
# Bytes to wait for when telling a withheld 100-continue body from the next request line.
_MAX_REQUEST_LINE_PROBE = 8192


def looks_like_request(prefix: bytes | bytearray) -> bool:
    """True if prefix starts with a known method and a space, or, when shorter, could still do so."""
    head = bytes(prefix[:_MAX_METHOD + 1])
    space = head.find(b" ")
    if space >= 0:
        return head[:space] in METHODS
    return head in _METHOD_PREFIXES


def opens_request(line: bytes) -> bool:
    """Whether `line` (a stream's first line, with its line end) is a request line of any method.

    Stricter than `looks_like_request`, for streams on which nothing else was recognised: an
    unknown method needs a target and an HTTP/1.x version, an HTTP/0.9 line a known method and a
    target starting with "/".
    """
    if _REQUEST_LINE.fullmatch(line) is not None:
        return True
    simple = _SIMPLE_REQUEST.fullmatch(line)
    return simple is not None and simple.group(1) in METHODS


@frozen_record
class ParsedRequest:
    method: str
    target: str  # exactly as sent
    version: str  # "1.0" / "1.1", "0.9" for a simple request
    headers: tuple[tuple[str, str], ...]
    host: str | None  # Host header without port, lower-cased; IPv6 literal without brackets
    body: bytes  # de-chunked and content-decoded, at most body_cap bytes
    body_bytes: int  # body length as transferred: before content decoding, chunk framing excluded
    body_truncated: bool  # body incomplete, longer than the cap, or decoding stopped by a bound
    offset: int  # stream offset of the request line


_new_parsed = positional_constructor(ParsedRequest)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _host_without_port(value: str) -> str | None:
    value = value.strip()
    if value.startswith("["):
        literal, bracket, _port = value[1:].partition("]")
        host = literal if bracket else ""
    else:
        name, colon, port = value.rpartition(":")
        host = name if colon and (port.isdigit() or not port) else value
    return host.lower() or None


class _BodyDecoder:
    """Collects one body: raw bytes up to the cap, and a bounded streaming content decoder."""

    def __init__(self, coding: str | None, cap: int) -> None:
        self.cap = cap
        self.wire_bytes = 0
        self.raw = bytearray()
        self.decoded = bytearray()
        self.truncated = False
        self.decode_failed = False
        self._compressed_in = 0
        self._tail = b""  # zlib input held back by the output bound
        self._is_deflate = coding == "deflate"
        self._is_brotli = coding == "br" and _brotli is not None
        self._decoder: Any = None
        if coding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header, detected
        elif self._is_deflate:
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
        elif self._is_brotli:
            self._decoder = _brotli.Decompressor()
        self.decoding = self._decoder is not None

    def feed(self, chunk: bytes) -> None:
        self.wire_bytes += len(chunk)
        room = self.cap - len(self.raw)
        if room > 0:
            self.raw += chunk[:room]
        if self._decoder is not None:
            self._decode(chunk)

    def _decode(self, chunk: bytes) -> None:
        self._compressed_in += len(chunk)
        room = self.cap - len(self.decoded)
        if room <= 0:  # a zero bound would mean "unbounded" to both decompressors
            self._stop_decoding()
            return
        try:
            if self._is_brotli:
                output = self._decoder.process(chunk, output_buffer_limit=room)
                finished = self._decoder.is_finished()
            else:
                output = self._decoder.decompress(self._tail + chunk, room)
                self._tail = self._decoder.unconsumed_tail
                finished = self._decoder.eof
        except (zlib.error, _BrotliError):
            self._decode_error()
            return
        self.decoded += output[:room]
        consumed = self._compressed_in - len(self._tail)
        if (len(output) >= room and not finished) or len(self.decoded) > _MAX_RATIO * consumed:
            self._stop_decoding()  # at the cap, or expanding like a bomb: keep what we have

    def _stop_decoding(self) -> None:
        self.truncated = True
        self._decoder = None

    def _decode_error(self) -> None:
        # Many clients send "deflate" as a raw stream without the zlib header: retry once that way,
        # possible while every compressed byte so far is still in raw.
        if self._is_deflate and not self.decoded and self._compressed_in == len(self.raw):
            self._is_deflate = False
            self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
            self._compressed_in, self._tail = 0, b""
            self._decode(bytes(self.raw))
            return
        self.decode_failed = True
        self._decoder = None

    def result(self) -> tuple[bytes, bool]:
        """The body to report and whether it is incomplete; undecodable bodies are reported raw."""
        if self.decoding and not self.decode_failed:
            return bytes(self.decoded), self.truncated
        return bytes(self.raw), self.wire_bytes > len(self.raw)


class _State(Enum):
    HEAD = auto()
    HEAD_OVERFLOW = auto()  # a head over the cap: kept what fit, skimming the rest for Host
    BODY_LENGTH = auto()
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_DATA_END = auto()
    TRAILERS = auto()
    DONE = auto()


HTTP_HEAD = _State.HEAD  # a parser's state at a request's start (the compiled decode looks for it)


@dataclass(slots=True)
class _Message:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str | None
    offset: int
    body: _BodyDecoder
    awaiting_continue: bool  # Expect: 100-continue and no body byte seen yet
    opens_tunnel: bool  # CONNECT or Upgrade: what follows may be another protocol
    remaining: int = 0


class _Invalid(Exception):
    """Internal: the stream is not (or no longer) a valid HTTP/1.x request stream."""


# The header fields the parser itself reads (framing, tunnels, the host).
_FRAMING_FIELDS = frozenset({
    "host", "content-length", "transfer-encoding", "content-encoding", "connection", "upgrade", "expect",
})
# The framing fields a whole plain request (whole_request_py) has none of.
_NOT_PLAIN_FIELDS = frozenset({"transfer-encoding", "content-encoding", "upgrade", "expect"})
_NO_BODY = _BodyDecoder(None, 0)  # the body of a request without one: never fed, shared


def parse_head_py(head: bytes) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    """(method, target, version, headers) of a request head (its lines, without the blank line).

    Raises _Invalid for a malformed request or header line; the reference of the compiled
    http_head, which declines (None) what this raises on and obs-folded lines.
    """
    lines = head.split(b"\n")
    method, target, version = HttpRequestStream._parse_request_line(lines[0])
    return method, target, version, HttpRequestStream._parse_headers(lines[1:])


def whole_request_py(data: bytes, start: int, header_cap: int, body_cap: int) -> tuple[Any, ...] | None:
    """The request at data[start:] as a fresh HttpRequestStream(body_cap, header_cap) parses it, when
    it is whole there and plain: an HTTP/1.x head within header_cap (no blank line before it), no
    Transfer-Encoding, Content-Encoding, Upgrade or Expect field, not CONNECT, at most one
    Content-Length and its body all there. (method, target, version, headers, host, body,
    body_bytes, body_truncated, where it ends), or None: the reference of the compiled
    http_request, which may decline more (an unusual Host, a repeated Content-Length)."""
    if start >= len(data) or data[start] in _LINE_END_BYTES:
        return None
    end = _HEAD_END.search(data, start)
    if end is None or end.end() - start > header_cap:
        return None
    try:
        method, target, version, headers = parse_head_py(data[start:end.start()])
    except _Invalid:
        return None
    names = [name.lower() for name, _ in headers]
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    if method == "CONNECT" or len(lengths) > 1 or not _NOT_PLAIN_FIELDS.isdisjoint(names):
        return None
    if lengths and _DIGITS.fullmatch(lengths[0]) is None:
        return None
    length = int(lengths[0]) if lengths else 0
    if end.end() + length > len(data):
        return None
    host = next((_host_without_port(value) for name, value in headers if name.lower() == "host"), None)
    kept = min(length, max(0, body_cap))
    return (method, target, version, headers, host, data[end.end():end.end() + kept], length, length > kept,
            end.end() + length)


def whole_requests_py(data: bytes, header_cap: int, body_cap: int) -> bool:
    """Does `data` hold whole plain requests only (whole_request_py), one after another to its end?"""
    start = 0
    while start < len(data):
        found = whole_request_py(data, start, header_cap, body_cap)
        if found is None:
            return False
        start = found[8]
    return True


class HttpRequestStream:
    """Incremental parser for the client side of one HTTP/1.x connection (pipelining included)."""

    __slots__ = ("body_cap", "header_cap", "counters", "_buf", "_pos", "_base", "_scan_from", "_state", "_message",
                 "_failed", "_in_tunnel", "_ready", "tunnel", "tunnel_start", "_overflow", "_head_cut")

    def __init__(self, body_cap: int = 65536, header_cap: int = 65536, counters: Counters | None = None) -> None:
        self.body_cap = max(0, body_cap)
        self.header_cap = max(1, header_cap)
        self.counters = counters if counters is not None else Counters()
        self._buf = bytearray()
        self._pos = 0  # parse position inside _buf
        self._base = 0  # stream offset of _buf[0]
        self._scan_from = 0  # where the search for a blank line resumes, so slow drips stay linear
        self._state = _State.HEAD
        self._message: _Message | None = None
        self._failed = False
        self._in_tunnel = False
        self._ready: list[ParsedRequest] = []
        # After CONNECT or Upgrade: ("connect", authority) or (upgrade protocol, target)
        self.tunnel: tuple[str, str] | None = None
        self.tunnel_start: bytes | None = None  # the tunnel's first bytes, once they are not HTTP
        self._overflow: tuple[bytes, int, dict[bytes, bytes]] | None = None  # kept head, offset, skimmed lines
        self._head_cut = False

    @property
    def failed(self) -> bool:
        """The stream is not HTTP, is desynchronised, or a tunnel left HTTP: stop feeding."""
        return self._failed

    def at_request_start(self) -> bool:
        """Waiting for a request's first byte, nothing buffered (where the compiled http_request takes
        whole requests)."""
        return (not self._failed and self._state is _State.HEAD and self._message is None and not self._buf
                and not self._ready)

    def feed(self, data: bytes) -> list[ParsedRequest]:
        if self._failed or self._state is _State.DONE or not data:
            return []
        if _http_request is not None and not self._buf and self._state is _State.HEAD:
            # at a request's start: the whole plain requests in one compiled call each
            ready = self._ready
            start = 0
            while True:
                found = _http_request(data, start, self.header_cap, self.body_cap)
                if found is None:
                    break
                ready.append(_new_parsed(*found[:8], self._base + start))
                start = found[8]
                if start == len(data):
                    self._base += start
                    self._scan_from = 0
                    self._ready = []
                    return ready
            if start:
                data = data[start:]
                self._base += start
                self._scan_from = 0
        self._buf += data
        try:
            while self._step():
                pass
        except _Invalid:
            self._fail()
        if self._pos:
            del self._buf[:self._pos]
            self._base += self._pos
            self._scan_from = max(0, self._scan_from - self._pos)
            self._pos = 0
        ready, self._ready = self._ready, []
        return ready

    def finish(self) -> list[ParsedRequest]:
        """End of stream: a request still waiting for body bytes comes out with body_truncated=True."""
        if self._message is not None and not self._failed:
            if self._state is _State.BODY_LENGTH:  # e.g. an undecided 100-continue body
                self._message.body.feed(bytes(self._buf[self._pos:self._pos + self._message.remaining]))
            self._emit(truncated=True)
        self._state = _State.DONE
        self._buf.clear()
        self._pos = 0
        ready, self._ready = self._ready, []
        return ready

    def _fail(self) -> None:
        if self._in_tunnel and self._message is None:  # the tunnel's own protocol starts here
            self.tunnel_start = bytes(self._buf[self._pos:])
        if self._message is not None:
            self._emit(truncated=True)  # the head was valid: its partial body is still evidence
        if not self._in_tunnel:
            self.counters.add("http.parse_errors")
        self._failed = True
        self._pos = len(self._buf)

    def _step(self) -> bool:
        """Advance by one unit (a head, a body piece, a chunk line); False when more bytes are needed."""
        state = self._state
        if state is _State.HEAD:
            return self._parse_head()
        if state is _State.HEAD_OVERFLOW:
            return self._skim_head()
        message = self._message
        assert message is not None
        if message.awaiting_continue:
            withheld = self._next_is_request_line()
            if withheld is None:
                return False
            message.awaiting_continue = False
            if withheld:  # the server refused with a final status: no body, the next request follows
                self._emit(truncated=False)
                return True
        if state is _State.BODY_LENGTH:
            return self._take_body(message, then=None)
        if state is _State.CHUNK_SIZE:
            return self._parse_chunk_size(message)
        if state is _State.CHUNK_DATA:
            return self._take_body(message, then=_State.CHUNK_DATA_END)
        if state is _State.CHUNK_DATA_END:
            return self._parse_chunk_end()
        return self._parse_trailers()

    def _parse_head(self) -> bool:
        if self._pos >= len(self._buf):
            return False
        if self._buf[self._pos] in _LINE_END_BYTES:
            self._pos = _BLANK_LINES.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos >= len(self._buf):
                return False
        # a method token and a space, or as much of them as has arrived
        if _REQUEST_START.match(self._buf, self._pos, self._pos + MAX_TOKEN_METHOD + 1) is None:
            raise _Invalid("not a request line")
        if self._simple_request():
            return True
        end = _HEAD_END.search(self._buf, max(self._pos, self._scan_from))
        if end is None or end.end() - self._pos > self.header_cap:
            if len(self._buf) - self._pos > self.header_cap and self._start_overflow():
                return True
            self._scan_from = max(self._pos, len(self._buf) - 2)
            return False
        head = bytes(self._buf[self._pos:end.start()])
        offset = self._base + self._pos
        self._pos = self._scan_from = end.end()
        self._start_message(head, offset)
        return True

    def _simple_request(self) -> bool:
        """An HTTP/0.9 request line at the parse position: emitted at once (it has no headers)."""
        newline = self._buf.find(b"\n", self._pos, self._pos + _MAX_REQUEST_LINE_PROBE)
        if newline < 0:
            return False
        # The target has no spaces: one after the longest method and its space rules the line out
        # (an HTTP/1.x line's version), found from the end without scanning the target.
        if self._buf.rfind(b" ", self._pos + _MAX_SIMPLE_METHOD + 1, newline) >= 0:
            return False
        simple = _SIMPLE_REQUEST.fullmatch(self._buf, self._pos, newline + 1)
        if simple is None or simple.group(1) not in METHODS:
            return False
        self._message = _Message(
            method=simple.group(1).decode("ascii"), target=_text(simple.group(2)), version="0.9", headers=(),
            host=None, offset=self._base + self._pos, body=_NO_BODY, awaiting_continue=False,
            opens_tunnel=False,
        )
        self._pos = self._scan_from = newline + 1
        self._emit(truncated=False)
        return True

    def _start_overflow(self) -> bool:
        """A head longer than the cap is not dropped (padding would hide any request): the request
        line (up to _REQUEST_LINE_CAP) and the whole header lines that fit in the cap after it are
        kept, the rest is skimmed for Host and framing, and the request comes out flagged
        truncated. False while a long request line is still arriving."""
        line_cap = _REQUEST_LINE_CAP_FACTOR * self.header_cap
        line_end = self._buf.find(b"\n", self._pos, self._pos + line_cap)
        if line_end == -1 and len(self._buf) - self._pos < line_cap:
            return False
        self.counters.add("http.head_truncated")
        offset = self._base + self._pos
        if line_end == -1:  # the request line alone is over its cap: its target is cut, the version assumed
            kept = bytes(self._buf[self._pos:self._pos + line_cap]).split(b"\r", 1)[0] + b" HTTP/1.1"
            self._pos += line_cap
        else:
            kept = bytes(self._buf[self._pos:line_end])
            more = bytes(self._buf[line_end + 1:max(line_end + 1, self._pos + self.header_cap)])
            cut = more.rfind(b"\n")
            if cut > 0:
                kept += b"\n" + more[:cut]
            self._pos = line_end + 1 + cut if cut > 0 else line_end  # on the last kept line's newline
        self._overflow = (kept, offset, {})
        self._state = _State.HEAD_OVERFLOW
        return True

    def _skim_head(self) -> bool:
        """Past the cap: look for the end of the head and the header lines the detectors and the
        framing need (Host, Content-*, Transfer-Encoding), holding about a line at a time."""
        assert self._overflow is not None
        kept, offset, found = self._overflow
        end = _HEAD_END.search(self._buf, self._pos)
        stop = end.start() + 1 if end is not None else self._buf.rfind(b"\n") + 1
        if stop > self._pos:
            for line in _SKIMMED_LINE.finditer(self._buf, self._pos, stop):
                name = line.group(1).lower()
                if name not in found and len(found) < len(_SKIMMED):
                    found[name] = line.group(0)[:1024].rstrip(b"\r\n")
        if end is None:
            # keep the last newline (a blank line may follow) and the line in progress, unless it
            # is already too long to be one worth keeping
            self._pos = max(stop - 1, self._pos, len(self._buf) - 1024)
            return False
        self._pos = self._scan_from = end.end()
        self._overflow = None
        present = {line.group(1).lower() for line in _SKIMMED_LINE.finditer(b"\n" + kept)}
        kept += b"".join(b"\r\n" + line for name, line in found.items() if name not in present)
        self._head_cut = True
        self._start_message(kept, offset)
        return True

    def _start_message(self, head: bytes, offset: int) -> None:
        parsed = _http_head(head) if _http_head is not None else None
        method, target, version, headers = parsed if parsed is not None else parse_head_py(head)
        # One pass over the fields: the first Host and the framing and tunnel fields (a repeated
        # field's first occurrence wins; the list fields gather every occurrence).
        host = None
        have_host = False
        found: dict[str, str] = {}
        transfer_codings: list[str] = []
        lengths: list[str] = []
        for name, value in headers:
            name = name.lower()
            if name in _FRAMING_FIELDS:
                if name == "transfer-encoding":
                    # List fields may carry empty elements (", chunked,"), which recipients ignore.
                    transfer_codings += [c.strip().lower() for c in value.split(",") if c.strip()]
                elif name == "content-length":
                    lengths.append(value)
                elif name == "host":
                    if not have_host:
                        host, have_host = _host_without_port(value), True
                elif name not in found:
                    found[name] = value
        # One compression layer is decoded, whether sent as a content coding or a transfer coding
        # before chunked; stacked layers are left as sent.
        encoding = found.get("content-encoding")
        codings = ([c.strip().lower() for c in encoding.split(",") if c.strip() and c.strip().lower() != "identity"]
                   if encoding else []) + transfer_codings[:-1]
        upgrade = "upgrade" in found and "upgrade" in found.get("connection", "").lower()
        expect = found.get("expect")
        message = _Message(
            method, target, version, headers, host, offset, _NO_BODY,
            expect is not None and expect.strip().lower() == "100-continue", method == "CONNECT" or upgrade,
        )
        self._message = message  # set before framing checks, so a failure still reports the valid head
        content_length = self._content_length(lengths) if lengths else 0
        if transfer_codings:
            # In a request, a transfer coding that does not end in chunked leaves the length unknown.
            if transfer_codings[-1] != "chunked":
                raise _Invalid("request transfer coding does not end with chunked")
            message.body = _BodyDecoder(codings[0] if len(codings) == 1 else None, self.body_cap)
            self._state = _State.CHUNK_SIZE
        elif content_length:
            message.body = _BodyDecoder(codings[0] if len(codings) == 1 else None, self.body_cap)
            message.remaining = content_length
            self._state = _State.BODY_LENGTH
        else:
            self._emit(truncated=False)

    @staticmethod
    def _parse_request_line(line: bytes) -> tuple[str, str, str]:
        line = line.rstrip(b"\r \t")
        method, space, rest = line.partition(b" ")
        raw_target, space2, version = rest.rpartition(b" ")
        if not space or not space2 or len(method) > MAX_TOKEN_METHOD or _TOKEN.fullmatch(method) is None:
            raise _Invalid("malformed request line")
        raw_target = raw_target.strip(b" ")
        version_match = _VERSION.fullmatch(version)
        if not raw_target or version_match is None or _CONTROL.search(raw_target):
            raise _Invalid("malformed request line")
        return method.decode("ascii"), _text(raw_target), version_match.group(1).decode("ascii")

    @staticmethod
    def _parse_headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
        headers: list[tuple[str, str]] = []
        for line in lines:
            line = line.removesuffix(b"\r")
            if line[:1] in (b" ", b"\t"):
                if not headers:
                    raise _Invalid("continuation line before any header")
                # obs-fold: the continuation joins the previous value with one space.
                continuation = _text(line.strip(b" \t"))
                folded_name, folded_value = headers[-1]
                headers[-1] = (folded_name, f"{folded_value} {continuation}".strip())
                continue
            name, colon, value = line.partition(b":")
            if not colon or _TOKEN.fullmatch(name) is None:
                raise _Invalid("malformed header line")
            headers.append((name.decode("ascii"), _text(value.strip(b" \t"))))
        return tuple(headers)

    @staticmethod
    def _content_length(values: list[str]) -> int:
        lengths = {part.strip() for value in values for part in value.split(",")}
        if not lengths:
            return 0
        if len(lengths) != 1:
            raise _Invalid("conflicting Content-Length values")
        (length,) = lengths
        if _DIGITS.fullmatch(length) is None:
            raise _Invalid("invalid Content-Length")
        return int(length)

    def _next_is_request_line(self) -> bool | None:
        """After Expect: 100-continue: True if a request line follows instead of the body, None if undecided."""
        start = self._pos
        if start >= len(self._buf):
            return None
        if not looks_like_request(self._buf[start:start + _MAX_METHOD + 1]):  # known methods: bodies are free text
            return False
        newline = self._buf.find(b"\n", start, start + _MAX_REQUEST_LINE_PROBE)
        if newline < 0:
            return None if len(self._buf) - start < _MAX_REQUEST_LINE_PROBE else False
        try:
            self._parse_request_line(bytes(self._buf[start:newline]))
        except _Invalid:
            return False
        return True

    def _take_body(self, message: _Message, then: _State | None) -> bool:
        available = len(self._buf) - self._pos
        if available <= 0:
            return False
        take = min(available, message.remaining)
        message.body.feed(bytes(self._buf[self._pos:self._pos + take]))
        self._pos += take
        message.remaining -= take
        if message.remaining:
            return False
        if then is None:
            self._emit(truncated=False)
        else:
            self._state = then
        return True

    def _parse_chunk_size(self, message: _Message) -> bool:
        newline = self._buf.find(b"\n", self._pos, self._pos + _MAX_CHUNK_LINE + 1)
        if newline < 0:
            if len(self._buf) - self._pos > _MAX_CHUNK_LINE:
                raise _Invalid("chunk size line too long")
            return False
        line = bytes(self._buf[self._pos:newline]).rstrip(b"\r")
        size_text = line.partition(b";")[0].strip(b" \t")  # chunk extensions are ignored
        if _CHUNK_SIZE.fullmatch(size_text) is None:
            raise _Invalid("invalid chunk size")
        self._pos = newline + 1
        message.remaining = int(size_text, 16)
        if message.remaining:
            self._state = _State.CHUNK_DATA
        else:
            self._state = _State.TRAILERS
            self._scan_from = self._pos
        return True

    def _parse_chunk_end(self) -> bool:
        ending = bytes(self._buf[self._pos:self._pos + 2])
        if ending == b"\r\n" or ending[:1] == b"\n":
            self._pos += 2 if ending == b"\r\n" else 1
            self._state = _State.CHUNK_SIZE
            return True
        if ending == b"\r" or not ending:
            return False
        raise _Invalid("chunk data not followed by a line end")

    def _parse_trailers(self) -> bool:
        first = bytes(self._buf[self._pos:self._pos + 2])
        if first == b"\r\n" or first[:1] == b"\n":  # no trailer fields
            self._pos += 2 if first == b"\r\n" else 1
            self._emit(truncated=False)
            return True
        if first in (b"", b"\r"):
            return False
        end = _HEAD_END.search(self._buf, max(self._pos, self._scan_from))
        if end is None:
            if len(self._buf) - self._pos > self.header_cap:
                raise _Invalid("trailer section larger than the cap")
            self._scan_from = max(self._pos, len(self._buf) - 2)
            return False
        self._parse_headers(bytes(self._buf[self._pos:end.start()]).split(b"\n"))  # validates only
        self._pos = end.end()
        self._emit(truncated=False)
        return True

    def _emit(self, truncated: bool) -> None:
        message = self._message
        assert message is not None
        body, body_truncated = message.body.result()
        if message.body.decode_failed:
            self.counters.add("http.decode_errors")
        self._ready.append(_new_parsed(
            message.method, message.target, message.version, message.headers, message.host, body,
            message.body.wire_bytes, body_truncated or truncated or self._head_cut, message.offset,
        ))
        self._head_cut = False
        if message.opens_tunnel:
            self._in_tunnel = True
            upgrade = next((value for name, value in message.headers if name.lower() == "upgrade"), "")
            kind = "connect" if message.method == "CONNECT" else upgrade.split(",")[0].strip().lower() or "upgrade"
            self.tunnel = (kind, message.target)
        self._message = None
        self._state = _State.HEAD
        self._scan_from = self._pos


class WebSocketFrames:
    """The application bytes a client sends in WebSocket frames (RFC 6455 5.2), unmasked, in order.

    Text, binary and continuation frames carry the tunnelled stream; control frames are skipped.
    A frame longer than `max_frame` ends the decoding (``failed``): only a stream's start matters.
    """

    def __init__(self, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self.failed = False
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        buf = self._buf
        buf += data
        out = bytearray()
        while len(buf) >= 2:
            opcode, masked, length, pos = buf[0] & 0x0F, buf[1] & 0x80, buf[1] & 0x7F, 2
            if length >= 126:
                pos = 4 if length == 126 else 10
                if len(buf) < pos:
                    break
                length = int.from_bytes(buf[2:pos], "big")
            if length > self.max_frame or opcode in (3, 4, 5, 6, 7) or opcode > 10:
                self.failed = True
                break
            end = pos + (4 if masked else 0) + length
            if len(buf) < end:
                break
            payload = bytes(buf[end - length:end])
            if masked and length:
                key = (bytes(buf[pos:pos + 4]) * (length // 4 + 1))[:length]
                payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
            if opcode <= 2:
                out += payload
            del buf[:end]
        return bytes(out)
