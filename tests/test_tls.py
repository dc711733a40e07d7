"""TLS ClientHello decoding: real captures (stream reassembled here), crafted hellos, fuzzing."""
from __future__ import annotations

import json
import struct
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode import tls
from sensor.decode.tls import (
    ClientHello,
    TlsStatus,
    looks_like_client_hello,
    parse_client_hello_message,
    parse_stream,
)

TLS_CAPTURES = [
    "tls__tls-client-hello-frag-01__dump_mtu300.pcap",  # ClientHello over several TCP segments
    "tls__tls13-draft28__tls13_draft28.pcap",
    "community-id-ipv6__input.pcap",
    "bug-2646-01__input.pcap",
    "tls-duplicate-hello__input.pcap",  # BSD loopback link type
    "tls-alpn-log-detect-02__input.pcap",  # raw IP link type, GREASE
    "ja4-tls__input.pcap",  # no SNI at all
]

GREASE = 0x2A2A
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


# -- a test-only ClientHello builder -----------------------------------------------------------------


def extension(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def sni_extension(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    return extension(0, struct.pack("!H", len(entry)) + entry)


def alpn_extension(names: Sequence[bytes]) -> bytes:
    body = b"".join(bytes((len(name),)) + name for name in names)
    return extension(16, struct.pack("!H", len(body)) + body)


def versions_extension(versions: Sequence[int]) -> bytes:
    body = b"".join(struct.pack("!H", version) for version in versions)
    return extension(43, bytes((len(body),)) + body)


def hello_message(extensions: bytes | None, legacy_version: int = 0x0303, session_id: bytes = bytes(32)) -> bytes:
    """A ClientHello handshake message; `extensions=None` leaves the extensions block out."""
    body = struct.pack("!H", legacy_version) + bytes(range(32))
    body += bytes((len(session_id),)) + session_id
    body += struct.pack("!H", 6) + b"\x13\x01\x13\x02\xc0\x2f" + b"\x01\x00"
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(message: bytes, sizes: Sequence[int] = (), record_version: int = 0x0301) -> bytes:
    """Frame `message` in TLS handshake records whose fragments have the given sizes (rest last)."""
    out = []
    pos = 0
    for size in [*sizes, len(message)]:
        fragment = message[pos : pos + size]
        if fragment:
            out.append(struct.pack("!BHH", 0x16, record_version, len(fragment)) + fragment)
        pos += len(fragment)
    return b"".join(out)


def chrome_like_hello(server_name: bytes = b"www.Example.com") -> bytes:
    extensions = (
        extension(GREASE, b"")
        + sni_extension(server_name)
        + extension(23, b"")
        + alpn_extension([b"h2", b"http/1.1"])
        + versions_extension([0x5A5A, 0x0304, 0x0303])
        + extension(0x4469, b"\x00\x03\x02h2")
        + extension(0x1A1A, b"\x00")
    )
    return hello_message(extensions)


# -- capture helpers ----------------------------------------------------------------------------------


def _tcp_segments(path: Path) -> Iterator[tuple[tuple[bytes, bytes, int, int], int, bytes]]:
    with path.open("rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        linktype = reader.datalink()
        for _, frame in reader:
            if linktype == dpkt.pcap.DLT_EN10MB:
                ip = dpkt.ethernet.Ethernet(frame).data
            elif linktype == dpkt.pcap.DLT_NULL:
                ip = dpkt.loopback.Loopback(frame).data
            else:  # raw IP
                ip = dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, dpkt.tcp.TCP):
                tcp = ip.data
                if tcp.data:
                    yield (bytes(ip.src), bytes(ip.dst), tcp.sport, tcp.dport), tcp.seq, bytes(tcp.data)


def _client_streams(path: Path) -> list[list[bytes]]:
    """Each TCP direction that opens with a ClientHello, as its segments in sequence order."""
    by_direction: dict[tuple, dict[int, bytes]] = defaultdict(dict)
    for key, seq, data in _tcp_segments(path):
        by_direction[key].setdefault(seq, data)  # retransmissions keep the first copy
    streams = []
    for segments in by_direction.values():
        ordered = [segments[seq] for seq in sorted(segments)]
        if looks_like_client_hello(ordered[0]):
            streams.append(ordered)
    return streams


def _capture(corpus: Path, name: str) -> Path:
    path = corpus / name
    if not path.is_file():
        pytest.skip(f"{name} not in the corpus")
    return path


def _expected_sni(corpus: Path, name: str) -> list[str]:
    for line in (corpus / "expected.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["pcap"] == name:
            return entry["sni"]
    raise AssertionError(f"{name} missing from expected.jsonl")


# -- real captures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TLS_CAPTURES)
def test_captures_yield_expected_server_names(corpus: Path, name: str) -> None:
    streams = _client_streams(_capture(corpus, name))
    assert streams
    results = [parse_stream(b"".join(segments)) for segments in streams]
    assert all(status is TlsStatus.DONE and hello is not None for status, hello in results)
    names = {hello.server_name for _, hello in results if hello is not None and hello.server_name}
    assert names == set(_expected_sni(corpus, name))


def test_hello_split_over_segments_needs_every_segment(corpus: Path) -> None:
    (segments,) = _client_streams(_capture(corpus, "tls__tls-client-hello-frag-01__dump_mtu300.pcap"))
    stream = b""
    statuses = []
    for segment in segments:
        stream += segment
        statuses.append(parse_stream(stream))
        if statuses[-1][0] is TlsStatus.DONE:
            break
    assert len(statuses) >= 2
    assert all(status is TlsStatus.NEED_MORE and hello is None for status, hello in statuses[:-1])
    status, hello = statuses[-1]
    assert status is TlsStatus.DONE and hello is not None
    assert hello.server_name == "www.google.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.version == "1.2"


@pytest.mark.parametrize(
    ("name", "alpn", "version"),
    [
        ("tls-alpn-log-detect-02__input.pcap", ("h2", "http/1.1"), "1.3"),  # GREASE in supported_versions
        ("tls__tls13-draft28__tls13_draft28.pcap", (), "1.3"),  # offers draft 28 (0x7f1c) only
        ("bug-2646-01__input.pcap", (), "1.2"),
        ("ja4-tls__input.pcap", ("spdy/3.1", "http/1.1"), "1.2"),
    ],
)
def test_capture_alpn_and_version(corpus: Path, name: str, alpn: tuple[str, ...], version: str) -> None:
    streams = _client_streams(_capture(corpus, name))
    hellos = [parse_stream(b"".join(segments))[1] for segments in streams]
    assert {(hello.alpn, hello.version) for hello in hellos if hello is not None} == {(alpn, version)}


def test_grease_extension_types_are_kept_in_order(corpus: Path) -> None:
    (segments,) = _client_streams(_capture(corpus, "tls-alpn-log-detect-02__input.pcap"))
    hello = parse_stream(b"".join(segments))[1]
    assert hello is not None
    assert hello.extensions[:2] == (0x1A1A, 0) and hello.extensions[-2:] == (0xFAFA, 21)


# -- crafted hellos -----------------------------------------------------------------------------------


def test_chrome_like_hello_in_one_record() -> None:
    status, hello = parse_stream(records(chrome_like_hello()))
    assert status is TlsStatus.DONE
    assert hello == ClientHello(
        server_name="www.example.com",  # lower-cased
        alpn=("h2", "http/1.1"),
        ech=False,
        version="1.3",
        extensions=(GREASE, 0, 23, 16, 43, 0x4469, 0x1A1A),
    )


@pytest.mark.parametrize("sizes", [(60, 60), (2, 1), (4, 100), (1, 1, 1, 1, 1)])
def test_hello_fragmented_over_records(sizes: tuple[int, ...]) -> None:
    message = chrome_like_hello()
    stream = records(message, sizes)
    assert len(stream) >= len(message) + 3 * 5  # three or more record headers
    assert parse_stream(stream) == parse_stream(records(message))
    assert parse_client_hello_message(message) == parse_stream(stream)[1]


def test_every_prefix_of_a_fragmented_hello_needs_more() -> None:
    stream = records(chrome_like_hello(), (50, 3))
    for cut in range(len(stream)):
        assert parse_stream(stream[:cut]) == (TlsStatus.NEED_MORE, None), cut
    assert parse_stream(stream)[0] is TlsStatus.DONE


def test_bytes_after_the_hello_do_not_matter() -> None:
    stream = records(chrome_like_hello(), (120,))
    assert parse_stream(stream + b"\x14\x03\x03\x00\x01\x01" + b"\x17" * 50) == parse_stream(stream)


def test_ech_hello_reports_the_outer_name() -> None:
    ech_payload = b"\x00" + struct.pack("!HH", 1, 1) + b"\x07" + b"\x00\x20" + bytes(32) + b"\x00\x40" + bytes(64)
    extensions = sni_extension(b"cover.example-cdn.net") + extension(0xFE0D, ech_payload) + versions_extension([0x0304])
    status, hello = parse_stream(records(hello_message(extensions)))
    assert status is TlsStatus.DONE and hello is not None
    assert hello.ech is True
    assert hello.server_name == "cover.example-cdn.net"
    assert hello.extensions == (0, 0xFE0D, 43)


@pytest.mark.parametrize(
    ("legacy_version", "versions", "expected"),
    [
        (0x0303, None, "1.2"),
        (0x0302, None, "1.1"),
        (0x0301, None, "1.0"),
        (0x0300, None, None),
        (0x0303, [0x0303, 0x0302], "1.2"),
        (0x0303, [0x7F17], "1.3"),
        (0x0303, [0x0304], "1.3"),
    ],
)
def test_version(legacy_version: int, versions: list[int] | None, expected: str | None) -> None:
    extensions = sni_extension(b"v.example")
    if versions is not None:
        extensions += versions_extension(versions)
    hello = parse_client_hello_message(hello_message(extensions, legacy_version=legacy_version))
    assert hello is not None and hello.version == expected


def test_hello_without_extensions() -> None:
    status, hello = parse_stream(records(hello_message(None, legacy_version=0x0301)))
    assert (status, hello) == (TlsStatus.DONE, ClientHello(None, (), False, "1.0", ()))


def test_sni_without_a_host_name_entry() -> None:
    other_type_entry = b"\x01\x00\x03abc"
    extensions = extension(0, struct.pack("!H", len(other_type_entry)) + other_type_entry)
    hello = parse_client_hello_message(hello_message(extensions))
    assert hello is not None and hello.server_name is None and hello.extensions == (0,)


def test_non_ascii_sni_stays_visible() -> None:
    hello = parse_client_hello_message(hello_message(sni_extension("Bücher.example".encode())))
    assert hello is not None and hello.server_name == "bücher.example"
    hello = parse_client_hello_message(hello_message(sni_extension(b"bad\xffname")))
    assert hello is not None and hello.server_name == "bad\\xffname"


def test_damage_after_a_readable_sni_keeps_the_hello() -> None:
    broken_alpn = extension(16, b"\x00\x09\x02h2")  # list length runs past the extension
    extensions = sni_extension(b"kept.example") + broken_alpn + versions_extension([0x0304])
    hello = parse_client_hello_message(hello_message(extensions))
    assert hello is not None
    assert (hello.server_name, hello.alpn, hello.version) == ("kept.example", (), "1.3")

    truncated_block = sni_extension(b"kept.example") + struct.pack("!HH", 16, 500) + b"\x00\x03"
    status, hello = parse_stream(records(hello_message(truncated_block)))
    assert status is TlsStatus.DONE and hello is not None and hello.server_name == "kept.example"


def test_damage_without_a_readable_sni_is_not_tls() -> None:
    broken_sni = extension(0, b"\x00\x20\x00\x00\x05short")
    assert parse_stream(records(hello_message(broken_sni))) == (TlsStatus.NOT_TLS, None)
    truncated_block = extension(23, b"") + struct.pack("!HH", 0, 500) + b"\x00"
    assert parse_stream(records(hello_message(truncated_block))) == (TlsStatus.NOT_TLS, None)


def _with_handshake_header(message: bytes, handshake_type: int, length: int | None = None) -> bytes:
    body_length = len(message) - 4 if length is None else length
    return bytes((handshake_type,)) + body_length.to_bytes(3, "big") + message[4:]


@pytest.mark.parametrize(
    "stream",
    [
        b"\x17\x03\x03\x00\x20" + bytes(32),  # application data
        records(_with_handshake_header(chrome_like_hello(), 2)),  # ServerHello
        records(_with_handshake_header(chrome_like_hello(), 1, 70_000))[:400],  # over the 64 KiB cap
        records(_with_handshake_header(chrome_like_hello(), 1, 20)),  # too short for a ClientHello
        records(hello_message(None, legacy_version=0x0203)),
        records(hello_message(None, session_id=bytes(33))),
        b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(37),  # SSLv2-compatible hello
        b"\x16\x03\x01\x00\x00" + records(chrome_like_hello()),  # empty handshake record
        b"\x16\x03\x01\x50\x00\x01",  # record longer than TLS allows
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ],
    ids=[
        "appdata", "server-hello", "over-cap", "too-short", "legacy-2.3", "long-session-id",
        "sslv2", "empty-record", "huge-record", "http",
    ],
)
def test_not_tls(stream: bytes) -> None:
    assert parse_stream(stream) == (TlsStatus.NOT_TLS, None)


def test_partial_bytes_that_rule_out_a_hello_are_rejected_early() -> None:
    assert parse_stream(b"\x16\x03\x01\x02\x00\x02\x00") == (TlsStatus.NOT_TLS, None)  # handshake type 2
    assert parse_stream(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x02") == (TlsStatus.NOT_TLS, None)  # version 2.x
    assert parse_stream(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03") == (TlsStatus.NEED_MORE, None)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"", False),
        (b"\x16", True),
        (b"\x16\x03", True),
        (b"\x16\x03\x01", True),
        (b"\x16\x03\x01\x02", True),
        (b"\x16\x03\x01\x02\x00", True),
        (b"\x16\x03\x04\x02\x00\x01", True),
        (b"\x16\x03\x00\x02\x00\x01\x00", True),
        (b"\x17", False),
        (b"\x16\x02", False),
        (b"\x16\x03\x05", False),
        (b"\x16\x03\x01\x00\x00", False),
        (b"\x16\x03\x01\xff\xff", False),
        (b"\x16\x03\x01\x02\x00\x02", False),
        (b"GET / HTTP/1.1\r\n", False),
        (b"\x80\x2e\x01\x03\x01", False),
    ],
)
def test_looks_like_client_hello(prefix: bytes, expected: bool) -> None:
    assert looks_like_client_hello(prefix) is expected


def test_message_parser_needs_the_whole_message() -> None:
    message = chrome_like_hello()
    assert parse_client_hello_message(message) is not None
    assert parse_client_hello_message(message + b"\x0b\x00\x00\x00") == parse_client_hello_message(message)
    for cut in (0, 3, 4, 40, len(message) - 1):
        assert parse_client_hello_message(message[:cut]) is None


# -- fuzzing ------------------------------------------------------------------------------------------


def _check_stream(stream: bytes) -> None:
    started = time.perf_counter()
    status, hello = parse_stream(stream)
    assert time.perf_counter() - started < 0.5
    assert isinstance(status, TlsStatus)
    assert (status is TlsStatus.DONE) == isinstance(hello, ClientHello)


def _check_message(message: bytes) -> None:
    hello = parse_client_hello_message(message)
    assert hello is None or isinstance(hello, ClientHello)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check_stream(data)
    _check_message(data)
    looks_like_client_hello(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1000), st.lists(st.integers(1, 300), max_size=5))
def test_random_bytes_in_handshake_records_never_raise(body: bytes, sizes: list[int]) -> None:
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    _check_stream(records(message, sizes))
    _check_message(message)


_base_hellos = st.sampled_from([chrome_like_hello(), hello_message(None), records(chrome_like_hello(), (7, 90))])


@settings(max_examples=300, deadline=None)
@given(
    _base_hellos,
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=6),
    st.integers(0, 300),
    st.binary(max_size=8),
)
def test_mutated_hellos_never_raise(base: bytes, flips: list[tuple[int, int]], cut: int, insert: bytes) -> None:
    mutated = bytearray(base)
    for position, xor in flips:
        mutated[position % len(mutated)] ^= xor
    at = cut % (len(mutated) + 1)
    spliced = bytes(mutated[:at]) + insert + bytes(mutated[at:])
    for candidate in (bytes(mutated), spliced, bytes(mutated[: len(mutated) - cut])):
        _check_stream(candidate)
        _check_stream(records(candidate))
        _check_message(candidate)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_mutated_capture_hello_never_raises(noise: bytes) -> None:
    segments = _client_streams(_capture(CORPUS, "community-id-ipv6__input.pcap"))[0]
    stream = bytearray(b"".join(segments))
    for i in range(0, len(noise) - 1, 2):
        stream[noise[i] * 4 % len(stream)] ^= noise[i + 1]
    _check_stream(bytes(stream))


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_label, min_size=1, max_size=5).map(".".join),
    st.lists(st.binary(min_size=1, max_size=12), max_size=4),
    st.booleans(),
    st.lists(st.integers(1, 400), max_size=6),
)
def test_built_hellos_round_trip(name: str, alpn: list[bytes], ech: bool, sizes: list[int]) -> None:
    extensions = extension(0x0A0A, b"") + sni_extension(name.encode())
    if alpn:
        extensions += alpn_extension(alpn)
    if ech:
        extensions += extension(0xFE0D, bytes(40))
    status, hello = parse_stream(records(hello_message(extensions), sizes))
    assert status is TlsStatus.DONE and hello is not None
    assert hello.server_name == name
    assert hello.alpn == tuple(a.decode("ascii", "backslashreplace") for a in alpn)
    assert hello.ech is ech
    assert hello.version == "1.2"


# -- compiled fast path: whatever hello it decodes, it decodes exactly as the Python reference ---------

fast = pytest.mark.skipif(tls._parse_hello_fast is None, reason="the compiled fast path is not built")


def _fast_agrees(message: bytes) -> bool:
    taken = tls._parse_hello_fast(message)
    reference = tls.parse_client_hello_message_py(message)
    if taken is None:
        return False
    assert reference is not None, message.hex()
    assert tls.parse_client_hello_message(message) == reference, message.hex()
    return True


@fast
def test_fast_path_takes_ordinary_hellos() -> None:
    ech_hello = hello_message(sni_extension(b"cover.example") + extension(0xFE0D, bytes(40)))
    for message in (chrome_like_hello(), hello_message(None), hello_message(b""), ech_hello,
                    hello_message(sni_extension(b"") + alpn_extension([])),
                    hello_message(versions_extension([0x7F17]), legacy_version=0x0301)):
        assert _fast_agrees(message)


@fast
def test_fast_path_declines_damage_and_non_ascii_names() -> None:
    for message in (hello_message(sni_extension("bücher.example".encode())),
                    hello_message(sni_extension(b"a.example") + b"\x00\x10\x00"),
                    hello_message(alpn_extension([b"h\xff"]))):
        assert tls._parse_hello_fast(message) is None
        assert tls.parse_client_hello_message(message) == tls.parse_client_hello_message_py(message)


@fast
def test_fast_path_agrees_on_capture_hellos(corpus: Path) -> None:
    taken = 0
    for name in TLS_CAPTURES:
        for segments in _client_streams(_capture(corpus, name)):
            stream = b"".join(segments)
            if len(stream) > 9 and stream[0] == 0x16:
                length = int.from_bytes(stream[6:9], "big")
                taken += _fast_agrees(stream[5 : 9 + length])
    assert taken


@fast
@settings(max_examples=300, deadline=None)
@given(_base_hellos, st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=6), st.integers(0, 300))
def test_fast_path_agrees_on_mutated_hellos(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    mutated = bytearray(base if base[0] == 1 else chrome_like_hello())
    for position, xor in flips:
        mutated[position % len(mutated)] ^= xor
    _fast_agrees(bytes(mutated))
    _fast_agrees(bytes(mutated[: len(mutated) - cut]))


@fast
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 16, 43, 0xFE0D, 23, 0x0A0A]), st.binary(max_size=30)), max_size=6))
def test_fast_path_agrees_on_generated_extensions(extensions: list[tuple[int, bytes]]) -> None:
    _fast_agrees(hello_message(b"".join(extension(kind, data) for kind, data in extensions)))


# -- the record layer: hello_message and its Python reference -------------------------------------------

record_fast = pytest.mark.skipif(tls._hello_message_fast is None, reason="the compiled fast path is not built")


@record_fast
@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(1, 400), max_size=5), st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=3),
       st.integers(0, 700), st.sampled_from([0x0301, 0x0303, 0x0304, 0x0305, 0x0203]))
def test_the_compiled_record_walk_equals_the_python_one(
    sizes: list[int], flips: list[tuple[int, int]], cut: int, record_version: int
) -> None:
    stream = bytearray(records(chrome_like_hello(), sizes, record_version))
    for position, value in flips:
        stream[position % len(stream)] = value
    data = bytes(stream[:cut]) if cut < len(stream) else bytes(stream)
    assert tls._hello_message_fast(data) == tls.hello_message_py(data)


@record_fast
def test_the_compiled_record_walk_applies_the_python_bounds() -> None:
    """Record lengths and hello sizes at and just past the limits the Python code sets."""
    for length in (tls._MAX_RECORD, tls._MAX_RECORD + 1):
        stream = struct.pack("!BHH", 0x16, 0x0301, length) + b"\x01\x00\x01\x00\x03" + bytes(length)
        assert tls._hello_message_fast(stream) == tls.hello_message_py(stream)
    for size in (tls.MAX_HELLO, tls.MAX_HELLO + 1, tls._MIN_HELLO_BODY, tls._MIN_HELLO_BODY - 1):
        stream = struct.pack("!BHH", 0x16, 0x0301, 9) + b"\x01" + size.to_bytes(3, "big") + b"\x03\x03" + bytes(3)
        assert tls._hello_message_fast(stream) == tls.hello_message_py(stream)
    assert tls.hello_message_py(records(chrome_like_hello()))[0] == tls._DONE
