"""The compiled request-head parser (http_head) against its Python reference (parse_head_py)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode import http

fast = pytest.mark.skipif(http._http_head is None, reason="the compiled fast path is not built")


def _reference(head: bytes) -> tuple | None:
    try:
        return http.parse_head_py(head)
    except http._Invalid:
        return None


def _agrees(head: bytes) -> bool:
    """The compiled parser gives the reference's answer, or declines; True when it answered."""
    taken = http._http_head(head)
    if taken is None:
        return False
    assert taken == _reference(head)
    return True


ORDINARY = [
    b"GET /images/60118.jpg HTTP/1.1\r\nHost: cdn.example.com:8080\r\nUser-Agent: Mozilla/5.0 (X11)\r\nAccept: */*",
    b"POST /collect?v=1&tid=UA-1 HTTP/1.0\r\nHost: www.example.org\r\nContent-Length: 12\r\n"
    b"Content-Type: application/x-www-form-urlencoded",
    b"GET / HTTP/1.1",
    b"GET / HTTP/1.1\nHost: a\nX-Empty:\nX-Spaced: \t value \t",
    b"PROPFIND /dav/ HTTP/1.1\r\nDepth: 1\r\nHost: files.example",
    b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900",
    b"GET   /two-spaces   HTTP/1.1\r\nHost: x",  # the target is stripped of the extra spaces
    "GET /caf\u00e9?q=\u00fc HTTP/1.1\r\nReferer: https://b\u00fccher.example/\r\nHost: x".encode(),
    b"GET /latin\xe9 HTTP/1.1\r\nX-Latin: caf\xe9\r\nHost: x",  # not UTF-8: read as Latin-1
    b"GET /a\tb HTTP/1.1\r\nHost: x",  # a tab in the target is allowed
    b"GET / HTTP/1.1\r\nX-Raw: a\r\r\nHost: x",  # only one CR is the line end
]

DECLINED = [
    b"",
    b"GET",
    b"GET /",
    b"GET / HTTP/2.0",
    b"GET / HTTP/1.1x",
    b"G@T / HTTP/1.1",
    b"GET \x01 HTTP/1.1",
    b" / HTTP/1.1",
    b"GET  HTTP/1.1",
    b"GET / HTTP/1.1\r\nHost x",
    b"GET / HTTP/1.1\r\nHost : x",
    b"GET / HTTP/1.1\r\n: x",
    b"GET / HTTP/1.1\r\nX-A: a\r\n folded",  # obs-fold: the reference joins it
    b"GET / HTTP/1.1\r\nX-A: a\r\n\tfolded",
    b"GET / HTTP/1.1\r\n\r\nHost: x",
    b"A" * 33 + b" / HTTP/1.1",
]


@fast
def test_ordinary_heads_are_taken_and_equal() -> None:
    for head in ORDINARY:
        assert _agrees(head), head
    method, target, version, headers = http._http_head(ORDINARY[0])
    assert (method, target, version) == ("GET", "/images/60118.jpg", "1.1")
    assert headers[0] == ("Host", "cdn.example.com:8080")
    assert http._http_head(ORDINARY[8])[1] == "/latin\u00e9"


@fast
def test_what_the_reference_rejects_or_folds_is_declined() -> None:
    for head in DECLINED:
        assert http._http_head(head) is None, head
    assert http.parse_head_py(b"GET / HTTP/1.1\r\nX-A: a\r\n folded")[3] == (("X-A", "a folded"),)


_line_bytes = st.sampled_from([b"GET", b"POST", b" ", b"  ", b"/", b"/p?q=1", b"HTTP/1.1", b"HTTP/1.0", b"\r", b"\t",
                               b":", b"Host", b"X-A", b"value", b"\xc3\xa9", b"\xe9", b"\x00", b"\x7f", b"@", b"*"])


@fast
@settings(max_examples=400)
@given(st.lists(st.lists(_line_bytes, max_size=8).map(b"".join), min_size=1, max_size=6).map(b"\n".join))
def test_agrees_on_generated_heads(head: bytes) -> None:
    _agrees(head)
    _agrees(b"GET /x HTTP/1.1\r\n" + head)


@fast
@given(st.binary(max_size=300))
def test_agrees_on_any_bytes(tail: bytes) -> None:
    _agrees(tail)
    _agrees(b"GET /x HTTP/1.1\r\nHost: a\r\n" + tail)


def test_stream_results_do_not_depend_on_the_compiled_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = (b"POST /a HTTP/1.1\r\nHost: A.example:80\r\nContent-Length: 3\r\nContent-Encoding: identity\r\n\r\nabc"
              b"GET /b HTTP/1.1\r\nHost: b\r\nX-F: a\r\n b\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"
              b"GET /c HTTP/1.1\r\nHost: [::1]:8\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok")
    compiled = http.HttpRequestStream().feed(stream)
    monkeypatch.setattr(http, "_http_head", None)
    python = http.HttpRequestStream().feed(stream)
    assert compiled == python
    assert [(r.method, r.target, r.host, r.body) for r in python] == [
        ("POST", "/a", "a.example", b"abc"), ("GET", "/b", "b", b"z"), ("GET", "/c", "::1", b"ok")]
    assert python[1].headers[1] == ("X-F", "a b")
