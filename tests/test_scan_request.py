"""The compiled scan of a request (sensor/_fast/phi.c scan_request) finds what scan_http_py finds.

Each side runs from empty caches (parts, peeled values, URL findings), and is compared on its
findings, on what it remembers for url_findings and query_fields, and on the caps it counts; a request it does not
take (a CONNECT, a target not in origin form, a header name beyond ASCII) it declines before
peeling anything.
"""
from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.phi import layers, recognizers

fast = pytest.importorskip("sensor._fast", reason="compiled extension not built")
if getattr(fast, "__file__", None) is None:
    pytest.skip("compiled extension not built", allow_module_level=True)


def _forget() -> None:
    layers._PARTS.clear()
    layers._PEELED.clear()
    layers._QUERY_FIELDS.clear()
    recognizers._URL_FINDINGS.clear()


def _scan(scan: Any, *request: Any) -> tuple[Any, ...]:
    _forget()
    before = dict(layers.CAPPED)
    found = scan(*request)
    after = dict(layers.CAPPED)
    capped = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    # (what a tracker decoder reads again: the query strings' fields)
    return found, list(recognizers._URL_FINDINGS.items()), dict(layers._QUERY_FIELDS), {key: n for key, n in capped.items() if n}


def _same(method: str, target: str, headers: Any, body: bytes, content_type: str | None) -> list[Any]:
    expected = _scan(recognizers.scan_http_py, method, target, headers, body, content_type)
    got = _scan(fast.scan_request, method, target, headers, body, content_type)
    assert got == expected
    # again with the parts and findings the first scan remembered
    assert fast.scan_request(method, target, headers, body, content_type) == expected[0]
    return expected[0]


_WORDS = ["diabetes", "metformin", "hiv", "appointments", "mrn", "dob", "q", "id", "x" * 300]
_PIECE = st.tuples(st.sampled_from(["q", "dl", "mrn", "dob", "ev", "tid", "", "a%20b"]),
                   st.sampled_from(["123", "1980-02-03", "G-12345", "https%3A%2F%2Fh.org%2Fconditions%2Fhiv",
                                    "type 2 diabetes", "", "%ZZ", "a+b", "é"]) | st.text(max_size=8))
_QUERY = st.lists(_PIECE, max_size=5).map(lambda pieces: "&".join(f"{k}={v}" for k, v in pieces))
_TARGET = st.builds(lambda path, query, fragment: path + (f"?{query}" if query is not None else "") + fragment,
                    st.sampled_from(["/", "/collect", "/conditions/diabetes", "/a%2Fb", "/mychart/Visit"]),
                    st.none() | _QUERY, st.sampled_from(["", "#top", "#x?y"]))
_NAMES = st.sampled_from(["Host", "host", "Referer", "REFERER", "Content-Type", "content-type", "Accept", "X-Id"])
_VALUES = st.sampled_from(["tracker.example", " h.example:8080 ", "https://www.example-hospital.org/conditions/hiv?q=1",
                           "application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
                           "", "*/*"]) | st.text(max_size=10)
_BODY = st.sampled_from([
    b"",
    json.dumps({"event": "search", "q": "metformin 500 mg", "url": "https%3A%2F%2Fh.org%2Fconditions%2Fhiv"}).encode(),
    b"mrn=123456&dob=1980-02-03&condition=diabetes",
    b"data=" + base64.b64encode(json.dumps({"dx": "hiv", "dob": "1980-02-03"}).encode()),
    gzip.compress(b'{"medication": "insulin"}'),
    b"--b\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nasthma\r\n--b--\r\n",
    b"x" * 9000,
    b"k=" + b"v" * 300_000,
]) | st.binary(max_size=40)


@settings(max_examples=500, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "get", "PUT"]), target=_TARGET,
       headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=5).map(tuple), body=_BODY,
       content_type=st.none() | st.sampled_from(["application/json", "text/plain"]))
def test_scan_request_finds_what_scan_http_py_finds(method: str, target: str, headers: tuple, body: bytes,
                                                     content_type: str | None) -> None:
    _same(method, target, headers, body, content_type)


def test_a_request_near_the_limits_is_peeled_on_in_one_peeler() -> None:
    """A part over the size bound, and parts after it, peeled as one request (no URL findings kept)."""
    headers = (("Host", "h.example"), ("Content-Type", "application/x-www-form-urlencoded"),
               ("Referer", "https://www.example-hospital.org/conditions/hiv"))
    found = _same("POST", "/collect?dx=diabetes", headers, b"dob=1980-02-03&k=" + b"v" * 300_000, None)
    assert {finding.type for finding in found} >= {"condition"}
    _forget()
    fast.scan_request("POST", "/collect?dx=diabetes", headers, b"dob=1980-02-03&k=" + b"v" * 300_000, None)
    assert not recognizers._URL_FINDINGS  # a limit decided: the page parts are not what they give alone


def test_a_page_request_is_remembered_for_url_findings() -> None:
    headers = (("Referer", ""), ("Referer", "https://h.org/conditions/hiv"))
    found = _same("GET", "/p?q=diabetes", headers, b"", None)
    # the target's and the first Referer's (empty: then no Referer names the key)
    page = tuple(finding for finding in found if finding.path != "header.referer")
    assert page and len(page) < len(found) and recognizers._URL_FINDINGS == {("GET", "/p?q=diabetes", None): page}


@pytest.mark.parametrize(("method", "target", "headers"), [
    ("CONNECT", "/x", ()),
    ("connect", "/x", ()),
    ("GËT", "/x", ()),
    ("GET", "http://h.example/conditions/hiv", ()),
    ("GET", "", ()),
    ("GET", "/x", (("Hóst", "h"),)),
    ("GET", "/x", [["Host", "h"]]),
])
def test_scan_request_declines_what_it_does_not_take(method: str, target: str, headers: Any) -> None:
    _forget()
    assert fast.scan_request(method, target, headers, b"", None) is None
    assert not layers._PARTS and not recognizers._URL_FINDINGS  # nothing peeled
    # scan_http then answers in Python
    assert recognizers.scan_http(method, target, headers, b"", None) == recognizers.scan_http_py(
        method, target, headers, b"", None)


def test_url_findings_are_remembered_in_the_order_used_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled scan keeps url_findings' memo as _remember_url_findings does."""
    def run(scan: Any) -> list[Any]:
        _forget()
        for target in ("/a?q=1", "/b?q=2", "/a?q=1", "/c?q=3", "/d?q=4", "/b?q=2"):
            scan("GET", target, (), b"", None)
        return list(recognizers._URL_FINDINGS)

    monkeypatch.setattr(recognizers, "_MAX_URL_FINDINGS", 3)
    expected = run(recognizers.scan_http_py)
    assert expected == [("GET", t, None) for t in ("/c?q=3", "/d?q=4", "/b?q=2")]
    recognizers._bind_scan_request()
    try:
        assert run(fast.scan_request) == expected
    finally:
        monkeypatch.undo()
        recognizers._bind_scan_request()
