"""The compiled whole-request parse (http_request) against its reference (whole_request_py), and
HttpRequestStream with it against the stream without it, fed the same bytes in any pieces."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode import http
from sensor.records import Counters

fast = pytest.mark.skipif(http._http_request is None, reason="the compiled fast path is not built")

HOSTS = ["a.example", "a.example", "A.Example:8080", "[::1]:80", "[::1]", "[::1", "h:", "h:x", "h:80:90", "", "caf\u00e9.example",
         "a b", "x\x0bA"]
FIELDS = [
    ("User-Agent", "curl/8.5.0"), ("Accept", "*/*"), ("Content-Type", "application/json"), ("Accept", "*/*"),
    ("User-Agent", "curl/8.5.0"), ("Cookie", "a=b"),
    ("Connection", "keep-alive"), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
    ("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip"), ("Content-Encoding", "identity"),
    ("Expect", "100-continue"), ("X-Empty", ""), ("content-length", "0"),
]
LENGTHS = ["0", "3", "12", "3", "12", "007", "", "1,1", "abc", " 5", "99999999999999999999"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request, mostly well formed, with the framing fields that change how it is parsed."""
    method = draw(st.sampled_from(["GET"] * 4 + ["POST"] * 3 + ["PUT", "CONNECT", "get", "M-SEARCH", "G@T"]))
    target = draw(st.sampled_from(["/", "/a?b=c", "/", "/caf\u00e9", "*", "a.example:443", "/x\x01"]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 4 + ["HTTP/1.0", "HTTP/2.0"]))
    end = draw(st.sampled_from(["\r\n", "\n"]))
    lines = [f"{method} {target} {version}"]
    for host in draw(st.lists(st.sampled_from(HOSTS), max_size=2)):
        lines.append(f"{draw(st.sampled_from(['Host', 'HOST', 'host']))}: {host}")
    lines += [f"{name}: {value}" for name, value in draw(st.lists(st.sampled_from(FIELDS), max_size=3))]
    lengths = draw(st.lists(st.sampled_from(LENGTHS), max_size=2))
    lines += [f"Content-Length: {value}" for value in lengths]
    if draw(st.integers(0, 9)) == 0 and len(lines) > 1:
        lines.insert(2, " folded")
    head = end.join(lines) + end + end
    body_size = int(lengths[0]) if lengths and lengths[0].isdigit() and len(lengths[0]) < 4 else 0
    body = draw(st.binary(min_size=body_size, max_size=body_size)) if draw(st.booleans()) else b"x" * body_size
    lead = draw(st.sampled_from([b"", b"", b"", b"\r\n"]))
    return lead + head.encode() + body


streams = st.lists(requests(), min_size=1, max_size=4).map(b"".join)


@fast
@settings(max_examples=400, deadline=None)
@given(streams, st.integers(0, 200), st.sampled_from([1, 16, 200, 65536]), st.sampled_from([0, 5, 65536]))
def test_compiled_request_is_the_reference(data: bytes, start: int, header_cap: int, body_cap: int) -> None:
    taken = http._http_request(data, start, header_cap, body_cap)
    if taken is not None:
        assert taken == http.whole_request_py(data, start, header_cap, body_cap)


@fast
def test_plain_requests_are_taken_whole() -> None:
    data = (b"GET /a HTTP/1.1\r\nHost: Tracker.Example:8080\r\nAccept: */*\r\n\r\n"
            b"POST /c HTTP/1.0\nHost: [::1]:80\nContent-Length: 4\n\nbodyGET")
    first = http._http_request(data, 0, 65536, 2)
    assert first == ("GET", "/a", "1.1", (("Host", "Tracker.Example:8080"), ("Accept", "*/*")), "tracker.example",
                     b"", 0, False, data.index(b"POST"))
    second = http._http_request(data, first[8], 65536, 2)
    assert second == ("POST", "/c", "1.0", (("Host", "[::1]:80"), ("Content-Length", "4")), "::1", b"bo", 4, True,
                      len(data) - 3)
    assert second == http.whole_request_py(data, first[8], 65536, 2)
    assert http._http_request(data, second[8], 65536, 2) is None  # a request line still arriving


def _without_compiled(call, *args):  # type: ignore[no-untyped-def]
    compiled, http._http_request = http._http_request, None
    try:
        return call(*args)
    finally:
        http._http_request = compiled


def _state(stream: http.HttpRequestStream) -> tuple:
    return (stream.failed, stream.tunnel, stream.tunnel_start, bytes(stream._buf), stream._pos, stream._base,
            stream._scan_from, stream._state, stream._message is None, stream._head_cut)


@fast
@settings(max_examples=400, deadline=None)
@given(streams, st.lists(st.integers(1, 400), max_size=6), st.sampled_from([16, 200, 65536]),
       st.sampled_from([0, 5, 65536]))
def test_stream_with_the_compiled_parse_is_the_stream_without(data: bytes, cuts: list[int], header_cap: int,
                                                              body_cap: int) -> None:
    pieces, at = [], 0
    for cut in cuts:
        pieces.append(data[at:at + cut])
        at += cut
    pieces.append(data[at:])
    compiled = http.HttpRequestStream(body_cap, header_cap, Counters())
    reference = http.HttpRequestStream(body_cap, header_cap, Counters())
    for piece in pieces:
        got = compiled.feed(piece)
        wanted = _without_compiled(reference.feed, piece)
        assert got == wanted
        assert _state(compiled) == _state(reference)
    assert compiled.finish() == _without_compiled(reference.finish)
    assert compiled.counters.values == reference.counters.values


@fast
def test_the_stream_takes_whole_requests_in_the_compiled_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment of two whole requests never reaches the Python head parser."""
    monkeypatch.setattr(http.HttpRequestStream, "_parse_head", None)
    stream = http.HttpRequestStream()
    got = stream.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /p HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi")
    assert [(r.method, r.host, r.body, r.offset) for r in got] == [("GET", "a", b"", 0), ("POST", "b", b"hi", 27)]
