"""HTTP/1.x request decoding: real captures, framing and body edge cases, bounds, fuzzing."""
from __future__ import annotations

import gzip
import re
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import dpkt
import pytest
from conftest import CORPUS, corpus_expectation, corpus_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.decode.http import METHODS, HttpRequestStream, ParsedRequest, looks_like_request
from sensor.records import Counters

HTTP_CAPTURES = [
    "http-chunked__input.pcap",
    "http-post-file__input.pcap",
    "http-urldecode-body__input.pcap",
    "http-ipv6__input.pcap",
    "http-connect__http-connect-fragmented__input.pcap",
    "decode-sll2-02__input.pcap",
    "output-multi-eve__input.pcap",
    "websocket-ping__input.pcap",
    "filestore-filecontainer-http__filecontainer-http.pcap",
    "datasets-04-http-dns__input.pcap",
    "bug-814__input.pcap",
]
LINKTYPE_RAW = 101
LINKTYPE_SLL2 = 276


def _network_layer(linktype: int, frame: bytes) -> dpkt.Packet | None:
    if linktype == dpkt.pcap.DLT_EN10MB:
        return dpkt.ethernet.Ethernet(frame).data  # dpkt strips 802.1Q tags
    if linktype in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
        return dpkt.loopback.Loopback(frame).data
    if linktype == dpkt.pcap.DLT_LINUX_SLL:
        return dpkt.sll.SLL(frame).data
    if linktype == LINKTYPE_SLL2:
        return dpkt.sll2.SLL2(frame).data
    if linktype in (dpkt.pcap.DLT_RAW, LINKTYPE_RAW):
        return dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
    raise AssertionError(f"unexpected link type {linktype}")


def _client_segments(path: Path) -> Iterator[list[bytes]]:
    """TCP payload segments per direction, ordered by sequence number (a naive reassembly)."""
    by_direction: dict[tuple, dict[int, bytes]] = {}
    with path.open("rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        for _ts, frame in reader:
            layer = _network_layer(reader.datalink(), frame)
            if not isinstance(layer, (dpkt.ip.IP, dpkt.ip6.IP6)) or not isinstance(layer.data, dpkt.tcp.TCP):
                continue
            family = socket.AF_INET if isinstance(layer, dpkt.ip.IP) else socket.AF_INET6
            segment = layer.data
            if segment.data:
                key = (socket.inet_ntop(family, layer.src), segment.sport,
                       socket.inet_ntop(family, layer.dst), segment.dport)
                by_direction.setdefault(key, {}).setdefault(segment.seq, bytes(segment.data))
    for by_seq in by_direction.values():
        yield [by_seq[seq] for seq in sorted(by_seq)]


def _requests_in(path: Path, counters: Counters | None = None) -> list[ParsedRequest]:
    requests: list[ParsedRequest] = []
    for segments in _client_segments(path):
        if not looks_like_request(segments[0]):
            continue  # server side
        stream = HttpRequestStream(counters=counters)
        for segment in segments:
            requests += stream.feed(segment)
        requests += stream.finish()
    return requests


def _feed_all(data: bytes, pieces: int | None = None, **options: int) -> tuple[list[ParsedRequest], HttpRequestStream]:
    stream = HttpRequestStream(**options)
    if pieces is None:
        out = stream.feed(data)
    else:
        out = []
        for start in range(0, len(data), pieces):
            out += stream.feed(data[start:start + pieces])
    return out + stream.finish(), stream


def _header(request: ParsedRequest, name: str) -> str | None:
    return next((value for key, value in request.headers if key.lower() == name.lower()), None)


def _content_length(request: ParsedRequest) -> int | None:
    value = _header(request, "Content-Length")
    return None if value is None else int(value)


# Real captures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", HTTP_CAPTURES)
def test_requests_matchcorpus_expectation(capture: str) -> None:
    counters = Counters()
    requests = _requests_in(corpus_file(capture), counters)
    ours = sorted(((r.host, r.method, r.target, _content_length(r)) for r in requests), key=repr)
    # tshark keeps the brackets of an IPv6 literal; ours are removed.
    expected = sorted(
        (((e["host"] or "").strip("[]").lower() or None, e["method"], e["uri"], e.get("content_length"))
         for e in corpus_expectation(capture)["http"]), key=repr)
    assert ours == expected
    assert counters.get("http.parse_errors") == 0
    for request in requests:
        length = _header(request, "Content-Length")
        if length and not _header(request, "Transfer-Encoding"):
            assert request.body_bytes == len(request.body) == int(length)
            assert not request.body_truncated


def test_post_bodies_from_a_realcorpus_file() -> None:
    requests = _requests_in(corpus_file("http-post-file__input.pcap"))
    assert requests[0].body == b'{"login_id":"toto","password":"tototo"}'
    assert requests[0].version == "1.1" and requests[0].offset == 0
    assert b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE" in requests[2].body
    [stream] = [b"".join(s) for s in _client_segments(corpus_file("http-post-file__input.pcap"))
                if looks_like_request(s[0])]
    assert [r.offset for r in requests] == [stream.find(b"POST /api/v4/users/login "),
                                            stream.find(b"POST /api/v4/uploads "),
                                            stream.find(b"POST /api/v4/uploads/")]


def test_urlencoded_body_from_a_realcorpus_file() -> None:
    [request] = _requests_in(corpus_file("http-urldecode-body__input.pcap"))
    assert request.method == "POST" and request.body_bytes == 20 and len(request.body) == 20
    assert _header(request, "Content-Type") == "application/x-www-form-urlencoded"


def test_connect_tunnel_carries_a_split_plaintext_request() -> None:
    [segments] = [s for s in _client_segments(corpus_file("http-connect__http-connect-fragmented__input.pcap"))
                  if s[0].startswith(b"CONNECT")]
    assert b"GE" in segments  # the capture really splits the tunnelled request line
    counters = Counters()
    stream = HttpRequestStream(counters=counters)
    requests = [request for segment in segments for request in stream.feed(segment)]
    assert [(r.method, r.target, r.host) for r in requests] == [("CONNECT", "abc:443", None), ("GET", "/", None)]
    assert requests[1].offset == 52 and not stream.failed


def test_websocket_frames_after_upgrade_stop_quietly() -> None:
    counters = Counters()
    requests = _requests_in(corpus_file("websocket-ping__input.pcap"), counters)
    assert [_header(r, "Upgrade") for r in requests] == ["websocket"]
    assert counters.get("http.parse_errors") == 0


def test_chunked_head_request_waits_for_its_body_then_finishes_truncated() -> None:
    # The capture sends "Content-Length: 0" and "Transfer-Encoding: ,\tchunked," (a smuggling probe):
    # chunked wins, and no chunk ever arrives.
    [segments] = [s for s in _client_segments(corpus_file("http-chunked__input.pcap")) if looks_like_request(s[0])]
    stream = HttpRequestStream()
    assert [request for segment in segments for request in stream.feed(segment)] == []
    [request] = stream.finish()
    assert request.method == "HEAD" and request.body_truncated and request.body_bytes == 0


# Framing ---------------------------------------------------------------------------------------


def test_pipelined_requests_and_offsets() -> None:
    first = b"GET /a?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n"
    second = b"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
    third = b"\r\nHEAD /c HTTP/1.0\r\n\r\n"  # a stray CRLF between requests is allowed
    requests, stream = _feed_all(first + second + third)
    assert [(r.method, r.target, r.version, r.host, r.body) for r in requests] == [
        ("GET", "/a?x=1", "1.1", "example.com", b""),
        ("POST", "/b", "1.1", "example.com", b"hello"),
        ("HEAD", "/c", "1.0", None, b""),
    ]
    assert [r.offset for r in requests] == [0, len(first), len(first) + len(second) + 2]
    assert not stream.failed


def test_request_split_at_every_byte_gives_the_same_requests() -> None:
    data = (b"POST /submit HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;ext=1\r\nabcd\r\n0\r\nX-Trailer: 1\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    whole, _ = _feed_all(data)
    assert _feed_all(data, pieces=1)[0] == whole
    assert [r.body for r in whole] == [b"abcd", b""]


def test_chunked_body_with_extensions_trailers_and_lf_endings() -> None:
    data = (b"PUT /x HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n"
            b"5 ; name=value\nhello\n6\n world\n0\nTrailer-A: 1\nTrailer-B: 2\n\n")
    [request], stream = _feed_all(data)
    assert request.body == b"hello world" and request.body_bytes == 11 and not request.body_truncated
    assert not stream.failed


def test_obs_fold_and_host_forms() -> None:
    data = (b"GET / HTTP/1.1\r\nHost: [2001:DB8::1]:443\r\nX-Long: first\r\n \t second\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost:  portal.Example.org \r\n\r\n"
            b"GET http://other.example/ HTTP/1.1\r\n\r\n")
    requests, _ = _feed_all(data)
    assert _header(requests[0], "X-Long") == "first second"
    assert [r.host for r in requests] == ["2001:db8::1", "portal.example.org", None]
    assert requests[2].target == "http://other.example/"


def test_non_utf8_header_bytes_are_kept_as_latin1() -> None:
    [request], _ = _feed_all(b"GET /caf\xc3\xa9 HTTP/1.1\r\nX-Name: M\xfcller\r\n\r\n")
    assert request.target == "/café" and _header(request, "X-Name") == "Müller"


def test_get_without_length_headers_has_no_body() -> None:
    requests, stream = _feed_all(b"GET / HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n\r\n")
    assert [(r.target, r.body_bytes) for r in requests] == [("/", 0), ("/two", 0)] and not stream.failed


def test_expect_continue_with_body() -> None:
    stream = HttpRequestStream()
    assert stream.feed(b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n") == []
    [request] = stream.feed(b"abc")
    assert request.body == b"abc" and not request.body_truncated


def test_expect_continue_refused_then_next_request() -> None:
    stream = HttpRequestStream()
    assert stream.feed(b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 300\r\n\r\n") == []
    assert stream.feed(b"GE") == []  # could still be the body or the next request line
    requests = stream.feed(b"T /next HTTP/1.1\r\n\r\n")
    assert [(r.method, r.target, r.body) for r in requests] == [("POST", "/u", b""), ("GET", "/next", b"")]
    assert not stream.failed


def test_finish_emits_incomplete_body_and_drops_incomplete_head() -> None:
    stream = HttpRequestStream()
    assert stream.feed(b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc") == []
    [request] = stream.finish()
    assert (request.body, request.body_bytes, request.body_truncated) == (b"abc", 3, True)
    assert stream.feed(b"GET / HTTP/1.1\r\n\r\n") == []  # finished streams stay finished
    partial = HttpRequestStream()
    assert partial.feed(b"GET / HTTP/1.1\r\nHost: h\r\n") == [] and partial.finish() == []


def test_body_beyond_cap_is_counted_not_kept_and_parsing_continues() -> None:
    body = bytes(range(256)) * 400
    data = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"GET /after HTTP/1.1\r\n\r\n"
    requests, _ = _feed_all(data, pieces=1000, body_cap=1000)
    assert requests[0].body == body[:1000] and requests[0].body_bytes == len(body) and requests[0].body_truncated
    assert requests[1].target == "/after"


# Content decoding ------------------------------------------------------------------------------

PAYLOAD = b'{"patient":"Jane Doe","dx":"E11.9","glucose":"182 mg/dL"}' * 4


def _post(body: bytes, coding: str) -> bytes:
    head = b"POST /c HTTP/1.1\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n" % (coding.encode(), len(body))
    return head + body


@pytest.mark.parametrize("coding, compress", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data, wbits=-15)),  # raw deflate, as many clients send it
])
def test_compressed_bodies_are_decoded(coding: str, compress: Callable[[bytes], bytes]) -> None:
    wire = compress(PAYLOAD)
    [request], _ = _feed_all(_post(wire, coding), pieces=7)
    assert request.body == PAYLOAD and request.body_bytes == len(wire) and not request.body_truncated


def test_brotli_body_when_available() -> None:
    brotli = pytest.importorskip("brotli")
    wire = brotli.compress(PAYLOAD)
    [request], _ = _feed_all(_post(wire, "br"))
    assert request.body == PAYLOAD


def test_gzip_as_transfer_coding_before_chunked() -> None:
    wire = gzip.compress(PAYLOAD)
    data = (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n%x\r\n" % len(wire)) + wire + b"\r\n0\r\n\r\n"
    [request], _ = _feed_all(data)
    assert request.body == PAYLOAD


def test_corrupt_compressed_body_is_reported_raw() -> None:
    counters = Counters()
    stream = HttpRequestStream(counters=counters)
    [request] = stream.feed(_post(b"\x1f\x8bnot really gzip", "gzip"))
    assert request.body == b"\x1f\x8bnot really gzip" and counters.get("http.decode_errors") == 1


def test_unknown_coding_is_kept_as_sent() -> None:
    [request], _ = _feed_all(_post(b"zzzz", "compress"))
    assert request.body == b"zzzz" and not request.body_truncated


def test_decompression_bomb_stops_at_the_cap_quickly() -> None:
    bomb = gzip.compress(b"\0" * 20_000_000, compresslevel=9)
    started = time.perf_counter()
    [request], _ = _feed_all(_post(bomb, "gzip"), pieces=4096, body_cap=65536)
    assert time.perf_counter() - started < 1.0
    assert len(request.body) == 65536 and request.body_truncated and request.body_bytes == len(bomb)


def test_decompression_ratio_cap_with_a_large_body_cap() -> None:
    bomb = gzip.compress(b"A" * 5_000_000, compresslevel=9)
    [request], _ = _feed_all(_post(bomb, "gzip"), pieces=1024, body_cap=10_000_000)
    assert request.body_truncated
    assert 0 < len(request.body) <= 200 * len(bomb) and set(request.body) == {ord("A")}


def test_zero_body_cap_keeps_nothing() -> None:
    [request], _ = _feed_all(_post(gzip.compress(PAYLOAD), "gzip"), body_cap=0)
    assert request.body == b"" and request.body_truncated


# Not HTTP, or no longer HTTP -------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET / HTTP/2\r\n\r\n",
    b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
    b"GET / HTTP/1.1\r\n continuation first\r\n\r\n",
    b"GET /a\x01b HTTP/1.1\r\n\r\n",
])
def test_non_http_streams_fail_and_count(data: bytes) -> None:
    counters = Counters()
    stream = HttpRequestStream(counters=counters)
    assert stream.feed(data) == []
    assert stream.failed and counters.get("http.parse_errors") == 1
    assert stream.feed(b"GET / HTTP/1.1\r\n\r\n") == [] and stream.finish() == []


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 0x10\r\n",
    b"Transfer-Encoding: gzip\r\n",
])
def test_invalid_framing_fails_but_reports_the_valid_head(framing: bytes) -> None:
    counters = Counters()
    stream = HttpRequestStream(counters=counters)
    [request] = stream.feed(b"POST /f HTTP/1.1\r\n" + framing + b"\r\nhello")
    assert request.target == "/f" and request.body_truncated
    assert stream.failed and counters.get("http.parse_errors") == 1


def test_bad_chunk_size_fails() -> None:
    counters = Counters()
    stream = HttpRequestStream(counters=counters)
    [request] = stream.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
    assert request.body == b"abc" and request.body_truncated and stream.failed


def test_identical_repeated_content_length_is_accepted() -> None:
    [request], stream = _feed_all(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc")
    assert request.body == b"abc" and not stream.failed


def test_head_larger_than_the_cap_keeps_what_fits_and_is_flagged() -> None:
    counters = Counters()
    stream = HttpRequestStream(header_cap=1024, counters=counters)
    assert stream.feed(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 2000) == []
    assert not stream.failed and counters.get("http.head_truncated") == 1
    (request,) = stream.feed(b"\r\nHost: example.org\r\n\r\n")
    assert (request.method, request.target, request.host, request.body_truncated) == ("GET", "/", "example.org", True)


def test_tls_after_connect_stops_quietly() -> None:
    counters = Counters()
    stream = HttpRequestStream(counters=counters)
    [request] = stream.feed(b"CONNECT api.vendor.example:443 HTTP/1.1\r\nHost: api.vendor.example:443\r\n\r\n")
    assert request.host == "api.vendor.example"
    assert stream.feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") == []
    assert stream.failed and counters.get("http.parse_errors") == 0


def test_looks_like_request() -> None:
    assert looks_like_request(b"GET / HTTP/1.1")
    assert looks_like_request(b"PROPFIND /dav HTTP/1.1")
    assert looks_like_request(b"GE") and looks_like_request(b"OPTIONS")
    assert not looks_like_request(b"")
    assert not looks_like_request(b"get / HTTP/1.1")
    assert not looks_like_request(b"GETS / HTTP/1.1")
    assert not looks_like_request(b"HTTP/1.1 200 OK")
    assert not looks_like_request(b"\x16\x03\x01")
    assert {b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"} <= METHODS


def test_many_small_requests_parse_fast() -> None:
    request = b"GET /collect?v=2&tid=G-XXXX&dl=https%3A%2F%2Fportal.example%2F HTTP/1.1\r\nHost: a.example\r\n\r\n"
    data = request * 5000
    started = time.perf_counter()
    requests, _ = _feed_all(data, pieces=1460)
    assert len(requests) == 5000
    assert time.perf_counter() - started < 2.0


def test_slow_drip_of_a_large_head_stays_linear() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(2000)) + b"\r\n"
    started = time.perf_counter()
    requests, _ = _feed_all(head, pieces=2, header_cap=1 << 20)
    assert len(requests) == 1 and len(requests[0].headers) == 2000
    assert time.perf_counter() - started < 2.0


# Property tests --------------------------------------------------------------------------------

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _corpus_streams() -> list[bytes]:
    found = []
    for capture in HTTP_CAPTURES:
        path = CORPUS / capture
        if path.is_file():
            found += [b"".join(s) for s in _client_segments(path) if looks_like_request(s[0])]
    return found or [b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"]


SEEDS = _corpus_streams()


def _feed_in_pieces(data: bytes, cuts: list[int], **options: int) -> tuple[list[ParsedRequest], HttpRequestStream]:
    stream = HttpRequestStream(**options)
    requests: list[ParsedRequest] = []
    previous = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        requests += stream.feed(data[previous:cut])
        previous = cut
    return requests + stream.finish(), stream


def _check_bounded(data: bytes, cuts: list[int]) -> None:
    started = time.perf_counter()
    requests, _ = _feed_in_pieces(data, cuts, body_cap=512, header_cap=2048)
    for request in requests:
        assert len(request.body) <= 512 and re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}", request.method)
    assert time.perf_counter() - started < 1.0


@FUZZ
@given(st.binary(max_size=800), st.lists(st.integers(0, 800), max_size=6))
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    _check_bounded(data, cuts)


@FUZZ
@given(st.sampled_from([b"POST / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
                        b"PUT /x HTTP/1.0\nContent-Encoding: gzip\nContent-Length: 40\n\n"]),
       st.binary(max_size=600), st.lists(st.integers(0, 800), max_size=6))
def test_random_bytes_after_a_request_line_never_raise(prefix: bytes, data: bytes, cuts: list[int]) -> None:
    _check_bounded(prefix + data, cuts)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       st.lists(st.integers(0, 10_000), max_size=6))
def test_mutated_real_streams_never_raise(seed: bytes, flips: list[tuple[int, int]], cuts: list[int]) -> None:
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    _check_bounded(bytes(data), cuts)


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@st.composite
def request_streams(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]))
        target = b"/" + draw(VALUE).encode()
        headers = b"".join(b"X-%s: %s\r\n" % (draw(TOKEN).encode(), draw(VALUE).encode())
                           for _ in range(draw(st.integers(0, 3))))
        body = draw(st.binary(max_size=200))
        framing = draw(st.sampled_from(["length", "chunked", "gzip", "none"]))
        if framing == "length":
            parts.append(b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                         % (method, target, headers, len(body), body))
        elif framing == "chunked":
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 50]), body[i:i + 50]) for i in range(0, len(body), 50))
            parts.append(b"%s %s HTTP/1.1\r\n%sTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n"
                         % (method, target, headers, chunks))
        elif framing == "gzip":
            wire = gzip.compress(body)
            parts.append(b"%s %s HTTP/1.1\r\n%sContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
                         % (method, target, headers, len(wire), wire))
        else:
            parts.append(b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, headers))
    return b"".join(parts)


@FUZZ
@given(request_streams(), st.lists(st.integers(0, 5000), max_size=10))
def test_any_split_of_valid_requests_gives_the_same_result(data: bytes, cuts: list[int]) -> None:
    whole, stream = _feed_in_pieces(data, [])
    assert not stream.failed and all(not r.body_truncated for r in whole)
    assert _feed_in_pieces(data, cuts)[0] == whole
    assert [r.offset for r in whole] == sorted(r.offset for r in whole)
    for request in whole:
        assert data.startswith(f"{request.method} {request.target} HTTP/1.1\r\n".encode(), request.offset)
