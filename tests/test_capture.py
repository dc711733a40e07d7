"""Capture reader: pcap variants, pcapng, gzip, and every way a file can be broken."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sensor.capture.pcap as pcap_module
from sensor.capture.pcap import CaptureFile
from sensor.errors import CaptureError

FRAMES = [bytes([i]) * (60 + i) for i in range(5)]
TIMES = [(1700000000 + i * 5000, 123456 + i) for i in range(5)]  # over an hour apart


def write_pcap(
    path: Path, endian: str = "<", nano: bool = False, linktype: int = 1, frames=FRAMES, times=TIMES
) -> None:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for (sec, frac), frame in zip(times, frames):
        out += struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame
    path.write_bytes(out)


def pcapng_block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def write_pcapng_two_interfaces(path: Path) -> None:
    shb = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_eth = pcapng_block(1, struct.pack("<HHI", 1, 0, 65535))
    tsresol_ns = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    idb_raw = pcapng_block(1, struct.pack("<HHI", 101, 0, 65535) + tsresol_ns)

    def epb(iface: int, ts: int, frame: bytes) -> bytes:
        return pcapng_block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame)

    path.write_bytes(
        shb + idb_eth + idb_raw
        + epb(0, 1_700_000_000_000_000, FRAMES[0])
        + epb(1, 1_700_000_000_500_000_000, FRAMES[1])
        + pcapng_block(0x0BAD, b"custom block")  # unknown block types are skipped
        + epb(0, 1_700_000_001_000_000, FRAMES[2])
    )


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_precisions(tmp_path: Path, endian: str, nano: bool) -> None:
    path = tmp_path / "x.pcap"
    write_pcap(path, endian, nano)
    capture = CaptureFile(path)
    packets = list(capture.packets())
    assert [frame for _, _, frame in packets] == FRAMES
    scale = 1e-9 if nano else 1e-6
    assert [ts for ts, _, _ in packets] == pytest.approx([s + f * scale for s, f in TIMES])
    assert {lt for _, lt, _ in packets} == {1}
    assert capture.errors == []


def test_pcapng_interfaces_with_different_link_types_and_resolutions(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    write_pcapng_two_interfaces(path)
    capture = CaptureFile(path)
    packets = list(capture.packets())
    assert [(lt, frame) for _, lt, frame in packets] == [(1, FRAMES[0]), (101, FRAMES[1]), (1, FRAMES[2])]
    assert packets[0][0] == pytest.approx(1_700_000_000.0)
    assert packets[1][0] == pytest.approx(1_700_000_000.5)
    assert capture.linktypes == {1, 101}
    assert capture.errors == []


def test_gzip_compressed_capture(tmp_path: Path) -> None:
    plain = tmp_path / "x.pcap"
    write_pcap(plain)
    packed = tmp_path / "x.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert [f for _, _, f in CaptureFile(packed).packets()] == FRAMES


def test_truncated_pcap_keeps_what_was_read_and_says_where(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    write_pcap(path)
    path.write_bytes(path.read_bytes()[:-10])
    capture = CaptureFile(path)
    assert [f for _, _, f in capture.packets()] == FRAMES[:-1]
    assert len(capture.errors) == 1 and "truncated" in capture.errors[0] and "cut.pcap" in capture.errors[0]


def test_corrupt_record_length_stops_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    write_pcap(path)
    data = bytearray(path.read_bytes())
    second = 24 + 16 + len(FRAMES[0])
    data[second + 8 : second + 12] = struct.pack("<I", 0x7FFFFFFF)
    path.write_bytes(bytes(data))
    capture = CaptureFile(path)
    assert [f for _, _, f in capture.packets()] == FRAMES[:1]
    assert capture.errors and "corrupt record" in capture.errors[0]


def test_pcapng_bad_block_length_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcapng"
    write_pcapng_two_interfaces(path)
    data = bytearray(path.read_bytes())
    data += struct.pack("<III", 6, 7, 0)  # length not a multiple of 4
    path.write_bytes(bytes(data))
    capture = CaptureFile(path)
    assert len(list(capture.packets())) == 3
    assert capture.errors and "corrupt block" in capture.errors[0]


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"hello world, not a capture", "not a capture file"), (b"\x1f\x8bnot gzip", "gzip")],
)
def test_not_a_capture(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=message):
        CaptureFile(path).check()


def test_missing_file() -> None:
    with pytest.raises(CaptureError, match="cannot open"):
        CaptureFile("/nonexistent/x.pcap").check()


def test_every_corpus_capture_matches_dpkt_packet_count(corpus: Path) -> None:
    for path in sorted(corpus.glob("*.pcap*")):
        with open(path, "rb") as fh:
            reader = dpkt.pcapng.Reader(fh) if path.suffix == ".pcapng" else dpkt.pcap.Reader(fh)
            expected = [bytes(buf) for _, buf in reader]
        capture = CaptureFile(path)
        got = [frame for _, _, frame in capture.packets()]
        assert got == expected, path.name
        assert capture.errors == [], path.name


@settings(max_examples=200)
@given(st.binary(max_size=2000), st.sampled_from(["pcap", "pcapng"]))
def test_random_bytes_after_a_valid_header_never_raise(tmp_path_factory, tail: bytes, kind: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"x.{kind}"
    if kind == "pcap":
        write_pcap(path, frames=FRAMES[:1])
    else:
        write_pcapng_two_interfaces(path)
    path.write_bytes(path.read_bytes() + tail)
    capture = CaptureFile(path)
    for _ts, _lt, frame in capture.packets():
        assert isinstance(frame, bytes)


def _read(path: Path) -> tuple[list, list[str], int, int]:
    capture = CaptureFile(path)
    return list(capture.packets()), capture.errors, capture.empty_records, capture.late_records


@pytest.mark.skipif(pcap_module._pcap_records is None, reason="compiled extension not built")
@settings(max_examples=120, deadline=None)
@given(
    endian=st.sampled_from(["<", ">"]), nano=st.booleans(),
    frames=st.lists(st.binary(max_size=300), max_size=len(TIMES)), shuffle=st.randoms(),
    damage=st.sampled_from(["none", "cut", "corrupt"]), where=st.integers(0, 10_000),
)
def test_compiled_record_loop_reads_what_the_python_loop_reads(
    tmp_path_factory, endian: str, nano: bool, frames: list[bytes], damage: str, where: int, shuffle
) -> None:
    path = tmp_path_factory.mktemp("loop") / "capture.pcap"
    times = list(TIMES)
    shuffle.shuffle(times)  # time running back by hours is counted by both loops alike
    write_pcap(path, endian=endian, nano=nano, frames=frames, times=times)
    data = bytearray(path.read_bytes())
    if damage == "cut" and len(data) > 24:
        del data[24 + where % (len(data) - 24):]
    elif damage == "corrupt" and frames:
        offset = 24
        for frame in frames[: where % len(frames)]:
            offset += 16 + len(frame)
        struct.pack_into(endian + "I", data, offset + 8, 0x7FFFFFF0)
    path.write_bytes(bytes(data))
    compiled = _read(path)
    original, pcap_module._pcap_records = pcap_module._pcap_records, None
    try:
        reference = _read(path)
    finally:
        pcap_module._pcap_records = original
    assert compiled == reference
