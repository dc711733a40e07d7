"""HAR 1.2 exports (browser DevTools, Playwright, mitmproxy, Charles) as HTTP request records.

What exporters record, and how it is used here:
- `request.method`, `request.url`, `request.headers` (Chromium and Playwright list HTTP/2
  pseudo-headers such as `:authority`; they name the host and are not kept as headers),
  `request.httpVersion` ("HTTP/1.1", "HTTP/2.0", "h2", "h3"), `startedDateTime`.
- `serverIPAddress` (Chromium, Firefox, Playwright, mitmproxy; IPv6 sometimes in brackets) is
  the destination address; without it (or when its address family is not the PHI host's) the
  destination is 0.0.0.0 (or ::) and the URL's host names it.
- `request.postData.text` is the body. Exporters differ: most write the text as sent; some
  write base64 with `encoding: "base64"` (binary bodies); some write the body already
  decompressed while the `Content-Encoding` header still says gzip; some save a binary body as
  text, losing its bytes (U+FFFD replacement characters). Each case is handled and counted.
  `params` alone (no text) is rebuilt as a form body.
- A HAR has no client address: the caller says which PHI host it stands for.
- `connection` (Chromium: the socket id) becomes the source port when it is a number.
- Entries that never reached the network are left out: `_fromCache` (Chromium), and a Chromium
  `response._error` such as net::ERR_BLOCKED_BY_CLIENT (an ad blocker stopped it).

Parsing never raises on bad input: a file that is no HAR at all gives a problem line; a bad
entry is counted and skipped.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import orjson

from sensor.decode.http import _BodyDecoder
from sensor.deep import DecryptedHttpRequest, HttpsRequest
from sensor.records import Counters, Flow

UNKNOWN_SERVER = "0.0.0.0"
_SCHEMES = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_CODINGS = frozenset({"gzip", "x-gzip", "deflate", "br"})
_NOT_SENT_ERRORS = frozenset({
    "net::ERR_BLOCKED_BY_CLIENT", "net::ERR_BLOCKED_BY_ADMINISTRATOR", "net::ERR_NAME_NOT_RESOLVED",
    "net::ERR_CONNECTION_REFUSED", "net::ERR_INTERNET_DISCONNECTED", "net::ERR_ADDRESS_UNREACHABLE",
})
_VERSIONS = {"http/1.0": "1.0", "http/1.1": "1.1", "http/2": "2", "http/2.0": "2", "h2": "2", "h2c": "2",
             "http/3": "3", "http/3.0": "3", "h3": "3"}


def parse_har(data: bytes, source_ip: str, body_cap: int = 65536,
              counters: Counters | None = None) -> tuple[list[DecryptedHttpRequest], str | None]:
    """The requests of a HAR document, oldest first, from `source_ip`; and a problem line (the
    file is not a HAR) or None."""
    counters = counters if counters is not None else Counters()
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return [], f"not a HAR file (invalid JSON: {exc})"
    log = document.get("log") if isinstance(document, dict) else None
    entries = log.get("entries") if isinstance(log, dict) else None
    if not isinstance(entries, list):
        return [], "not a HAR file (no log.entries list)"
    records: list[DecryptedHttpRequest] = []
    last_ts = 0.0
    for entry in entries:
        counters.add("har.entries")
        record = _entry_record(entry, source_ip, body_cap, counters, last_ts)
        if record is None:
            continue
        last_ts = record.ts
        records.append(record)
        counters.add("har.requests")
    records.sort(key=lambda r: r.ts)
    return records, None


def _entry_record(entry: Any, source_ip: str, body_cap: int, counters: Counters,
                  last_ts: float) -> DecryptedHttpRequest | None:
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        counters.add("har.entries.invalid")
        return None
    try:
        url = urlsplit(request["url"])
        port = url.port
    except ValueError:
        counters.add("har.entries.invalid")
        return None
    scheme = url.scheme.lower()
    if scheme not in _SCHEMES or not url.hostname:
        counters.add("har.entries.skipped")  # data:, blob:, extension and about: URLs never leave the browser
        return None
    if entry.get("_fromCache") or _never_sent(entry.get("response")):
        counters.add("har.entries.not_sent")  # answered from the browser's cache, or stopped before it left
        return None
    headers, authority = _headers(request.get("headers"))
    host = _host(authority) or url.hostname.lower()
    version = _VERSIONS.get(str(request.get("httpVersion") or "").strip().lower(), "1.1")
    ts = _timestamp(entry.get("startedDateTime"))
    if ts is None:
        counters.add("har.timestamps.invalid")
        ts = last_ts
    flow = Flow(source_ip, _source_port(entry.get("connection")), _server_ip(entry, source_ip),
                port or _SCHEMES[scheme], "udp" if version == "3" else "tcp")
    body, wire_bytes, truncated = _body(request.get("postData"), headers, request.get("bodySize"), body_cap, counters)
    target = url.path or "/"
    if url.query:
        target += "?" + url.query
    kind = HttpsRequest if scheme in ("https", "wss") else DecryptedHttpRequest
    return kind(ts, flow, str(request.get("method") or "GET").upper(), target, version, headers,
                                host, body, wire_bytes, truncated)


def _never_sent(response: Any) -> bool:
    """Chromium's HAR keeps requests that never reached the network, with an `_error` saying why
    (an ad blocker, a name that did not resolve, a refused connection)."""
    error = response.get("_error") if isinstance(response, dict) else None
    return isinstance(error, str) and error.strip() in _NOT_SENT_ERRORS


def _headers(raw: Any) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """The request headers without HTTP/2 pseudo-headers, and the authority (`:authority` or Host)."""
    headers: list[tuple[str, str]] = []
    authority = None
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, dict):
            continue
        name, value = item.get("name"), item.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        if name.startswith(":"):
            if name == ":authority":
                authority = value
            continue
        if name.lower() == "host" and authority is None:
            authority = value
        headers.append((name, value))
    return tuple(headers), authority


def _host(authority: str | None) -> str | None:
    if not authority:
        return None
    try:
        return urlsplit("//" + authority.strip()).hostname
    except ValueError:
        return None


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # HAR requires an offset; read a missing one as UTC
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _server_ip(entry: dict, source_ip: str) -> str:
    """The server's address when the exporter kept it and it has the source's address family (a
    flow, and its Community ID, joins two addresses of one family); else the unspecified one."""
    v6 = ":" in source_ip
    value = entry.get("serverIPAddress")
    if isinstance(value, str):
        try:
            address = ipaddress.ip_address(value.strip().strip("[]"))
        except ValueError:
            address = None
        if address is not None and (address.version == 6) == v6:
            return str(address)
    return "::" if v6 else UNKNOWN_SERVER


def _source_port(value: Any) -> int:
    text = str(value).strip() if isinstance(value, int | str) else ""
    return int(text) if text.isdigit() and int(text) < 65536 else 0


def _body(post: Any, headers: Iterable[tuple[str, str]], body_size: Any, cap: int,
          counters: Counters) -> tuple[bytes, int, bool]:
    """(body as the server would decode it, size on the wire, truncated at the cap)."""
    declared = body_size if isinstance(body_size, int) and body_size > 0 else 0
    if not isinstance(post, dict):
        if declared:
            counters.add("har.bodies.missing")  # the exporter left a body out (large, or a file upload)
        return b"", declared, False
    text = post.get("text")
    encoding = str(post.get("encoding") or post.get("_encoding") or "").lower()
    if not isinstance(text, str) or (not text and post.get("params")):
        params = post.get("params")
        if isinstance(params, list) and params:
            counters.add("har.bodies.params")
            raw = "&".join(f"{p.get('name', '')}={p.get('value', '')}" for p in params if isinstance(p, dict)).encode()
            return raw[:cap], declared or len(raw), len(raw) > cap
        if declared:
            counters.add("har.bodies.missing")
        return b"", declared, False
    if encoding == "base64":
        try:
            raw = base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError):
            counters.add("har.bodies.unreadable")
            return b"", declared, False
        counters.add("har.bodies.base64")
    else:
        raw = text.encode("utf-8", "replace")
        counters.add("har.bodies.text")
    coding = next((v.strip().lower() for k, v in headers if k.lower() == "content-encoding"), "")
    wire = declared or len(raw)
    if coding in _CODINGS:
        decoder = _BodyDecoder(coding, cap)
        decoder.feed(raw)
        decoded, truncated = decoder.result()
        if not decoder.decode_failed and decoded:
            return decoded, wire, truncated
        if encoding == "base64" or "\ufffd" in text:
            counters.add("har.bodies.unreadable")  # compressed bytes, damaged or saved as text
            return b"", wire, False
        counters.add("har.bodies.already_decoded")  # the exporter decompressed it; the header stayed
    elif encoding != "base64" and "\ufffd" in text:
        counters.add("har.bodies.lossy")  # binary saved as text: what stayed readable is still scanned
    return raw[:cap], wire, len(raw) > cap
