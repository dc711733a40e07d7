"""The BPF prefilter must never change what replay finds, only how fast it finds it."""
from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CORPUS, PCAPS, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sensor.app.replay.plan as plan_module
import sensor.capture.prefilter as prefilter_module
from sensor.app.replay.plan import should_prefilter, start_early
from sensor.capture.bpf import default_filter
from sensor.capture.pcap import CaptureFile
from sensor.capture.prefilter import CompiledPrefilter, Prefilter, capture_linktype, is_plain_pcap, open_prefilter
from sensor.capture.workers import SHARED_ANSWER, route_of_py

REPO_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"

needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")

def events(path: Path, prefilter: str) -> set[tuple]:
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", str(path), "--emit", "events", "--quiet", "--prefilter", prefilter],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    found = set()
    for line in proc.stdout.splitlines():
        doc = json.loads(line)
        found.add((
            doc["event"]["dataset"],
            doc["source"]["ip"], doc["destination"]["ip"],
            doc.get("dns", {}).get("question", {}).get("name"),
            doc.get("tls", {}).get("client", {}).get("server_name"),
            doc.get("url", {}).get("original"),
            doc.get("http", {}).get("request", {}).get("body", {}).get("bytes"),
        ))
    return found


@needs_tcpdump
@pytest.mark.parametrize("linktype", [0, 1, 101, 108, 113, 228, 229, 276])
def test_filter_compiles_for_every_supported_link_type(linktype: int) -> None:
    proc = subprocess.run(["tcpdump", "-y", {0: "NULL", 1: "EN10MB", 101: "RAW", 108: "LOOP", 113: "LINUX_SLL",
                                             228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2"}[linktype],
                           "-d", default_filter(linktype)], capture_output=True, text=True)
    if "not supported" in proc.stderr or "invalid data link type" in proc.stderr:
        pytest.skip(f"this tcpdump cannot compile for link type {linktype}")
    assert proc.returncode == 0, proc.stderr


def test_vlan_nesting_only_on_ethernet() -> None:
    assert "vlan" in default_filter(1)
    assert "vlan" not in default_filter(101)


def captures() -> list[Path]:
    found = sorted(p for p in CORPUS.glob("*.pcap")) + sorted(PCAPS.glob("*.pcap"))
    return [p for p in found if capture_linktype(p) is not None]


@needs_tcpdump
@pytest.mark.parametrize("path", captures(), ids=lambda p: p.name)
def test_prefiltered_replay_finds_exactly_what_full_replay_finds(path: Path) -> None:
    assert should_prefilter(path, "always")
    assert events(path, "always") == events(path, "never")


def test_auto_mode_leaves_small_files_and_pcapng_to_python(tmp_path: Path) -> None:
    pcapng = CORPUS / "community-id-ipv6__input.pcapng"
    if pcapng.exists():
        assert not should_prefilter(pcapng, "always")
    small = next(iter(captures()), None)
    if small is not None:
        assert not should_prefilter(small, "auto")
        assert not should_prefilter(small, "never")


def run(path: Path, *args: str) -> tuple[int, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", str(path), "--quiet", *args],
        capture_output=True, text=True, timeout=120,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def alert_keys(docs: list[dict]) -> set[tuple]:
    return {(d["rule"]["id"], d["source"]["ip"], d["phi_egress"]["severity"], d["phi_egress"]["count"]) for d in docs}


@needs_tcpdump
@pytest.mark.parametrize("path", sorted(PCAPS.glob("*.pcap")), ids=lambda p: p.name)
def test_two_workers_find_what_one_finds(path: Path) -> None:
    """Each worker takes half of the clients; together they must see exactly what one process sees."""
    config = str(REPO_CONFIG)
    code_one, one = run(path, "--emit", "all", "--config", config, "--workers", "1", "--prefilter", "never")
    code_two, two = run(path, "--emit", "all", "--config", config, "--workers", "2", "--prefilter", "always")
    assert code_one == code_two == 0

    def events(docs: list[dict]) -> list[str]:
        return sorted(json.dumps({k: d[k] for k in ("source", "destination", "network")}, sort_keys=True)
                      for d in docs if d["event"]["kind"] == "event")

    assert events(one) == events(two)
    assert alert_keys([d for d in one if d["event"]["kind"] == "alert"]) == alert_keys(
        [d for d in two if d["event"]["kind"] == "alert"])


@needs_tcpdump
def test_two_workers_merge_counters_and_failures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", str(PCAPS / "demo.pcap"), "--workers", "2", "--prefilter", "always",
         "--stats", "--quiet", "--emit", "events"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    stats = dict(line.split() for line in proc.stderr.splitlines()[1:])
    assert stats["replay.workers"] == "2"
    assert int(stats["records.dns"]) + int(stats["records.http"]) + int(stats.get("records.tls", 0)) == len(
        proc.stdout.splitlines())


@needs_tcpdump
def test_gzip_capture_goes_through_the_prefilter(tmp_path: Path) -> None:
    import gzip

    packed = tmp_path / "demo.pcap.gz"
    packed.write_bytes(gzip.compress((PCAPS / "demo.pcap").read_bytes()))
    assert should_prefilter(packed, "always")
    assert events(packed, "always") == events(PCAPS / "demo.pcap", "never")


@needs_tcpdump
def test_a_link_type_libpcap_cannot_filter_is_read_whole_without_the_compiled_selector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tcpdump refuses a filter on NFLOG captures: without the compiled selector such a file is
    read whole, never handed to tcpdump (which would fail the replay)."""
    nflog = tmp_path / "nflog.pcap"
    nflog.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 239))
    monkeypatch.setattr(plan_module, "compiled_reads", lambda path: False)
    assert not should_prefilter(nflog, "always")
    ethernet = tmp_path / "ethernet.pcap"
    ethernet.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    assert should_prefilter(ethernet, "always")


def _filtered_bytes(path: Path) -> bytes:
    runner = Prefilter(path)
    data = runner.stdout.read()
    assert runner.close() is None
    return data


@needs_tcpdump
@pytest.mark.parametrize("limit", [1, 4096, 1 << 30])
def test_prefetch_hands_over_the_same_bytes_in_order(limit: int) -> None:
    """Whether the reader thread drained all of tcpdump's output, some, or one chunk, the
    stream holds exactly what tcpdump wrote, and read(n) returns exactly n bytes."""
    path = PCAPS / "demo.pcap"
    expected = _filtered_bytes(path)
    runner = Prefilter(path)
    runner.prefetch(limit)
    stream = runner.stdout
    header = stream.read(24)
    assert len(header) == 24
    parts = [header]
    while chunk := stream.read1(1000):
        assert len(chunk) <= 1000
        parts.append(chunk)
    assert runner.close() is None
    assert b"".join(parts) == expected


@needs_tcpdump
def test_prefetched_stream_decodes_like_the_file(tmp_path: Path) -> None:
    path = PCAPS / "demo.pcap"
    runner = Prefilter(path)
    runner.prefetch()
    frames = list(CaptureFile(path, stream=runner.stdout).packets())
    assert runner.close() is None
    filtered = tmp_path / "filtered.pcap"
    filtered.write_bytes(_filtered_bytes(path))
    assert frames == list(CaptureFile(filtered).packets())


@needs_tcpdump
def test_a_prefetching_prefilter_closed_early_ends_cleanly() -> None:
    runner = Prefilter(PCAPS / "demo.pcap")
    runner.prefetch(4096)
    runner.stdout.read(24)
    runner.close()  # a complaint about the broken pipe is allowed; hanging or raising is not
    assert runner.process.poll() is not None


@needs_tcpdump
def test_start_early_only_when_replay_would_prefilter(tmp_path: Path) -> None:
    demo = PCAPS / "demo.pcap"
    assert start_early([demo], "auto", "1") is None  # small file: no prefilter
    assert start_early([demo], "never", "2") is None
    assert start_early([tmp_path / "missing.pcap"], "always", "1") is None
    started = start_early([demo], "always", "1")
    assert started is not None and started.path == demo
    assert list(CaptureFile(demo, stream=started.stdout).packets())
    assert started.close() is None


# -- the compiled selector -------------------------------------------------------------------------

needs_selector = pytest.mark.skipif(prefilter_module._select_pcap is None, reason="compiled extension not built")


def _frames(stream_or_path: Path | bytes) -> list[bytes]:
    if isinstance(stream_or_path, Path):
        return [frame for _, _, frame in CaptureFile(stream_or_path).packets()]
    return [frame for _, _, frame in CaptureFile("selected", stream=io.BytesIO(stream_or_path)).packets()]


def _compiled_bytes(path: Path) -> tuple[bytes, str | None]:
    selector = CompiledPrefilter(path)
    data = selector.stdout.read(1 << 40)
    return data, selector.close()


def plain_captures() -> list[Path]:
    return [path for path in captures() if is_plain_pcap(path)]


@needs_tcpdump
@needs_selector
@pytest.mark.parametrize("path", plain_captures(), ids=lambda p: p.name)
def test_compiled_selector_keeps_what_tcpdump_keeps(path: Path) -> None:
    selected, complaint = _compiled_bytes(path)
    assert complaint is None
    assert _frames(selected) == _frames(_filtered_bytes(path))
    assert selected[:24] == path.read_bytes()[:24]  # the file's own header: its timestamp resolution


def _ip_frame(draw: st.DrawFn) -> bytes:
    """An IPv4 or IPv6 packet with TCP, UDP or another protocol, lengths consistent, payloads that
    open (or nearly open) what the filter looks for."""
    ports = st.sampled_from([53, 80, 137, 443, 1000, 3128, 5353, 5355, 8080, 40000, 65535]) | st.integers(0, 65535)
    sport, dport = draw(ports), draw(ports)
    prefix = draw(st.sampled_from([
        b"", b"\x16\x03\x01\x02\x00\x01", b"\x16\x03\x03\x00\x10\x02", b"\x17\x03\x03", b"\x15\x03", b"\x14\x03",
        b"GET ", b"POST", b"PUT ", b"HEAD", b"OPTI", b"GE", b"\xc0\x00\x00\x00\x01", b"\xd0\x6b\x33\x43\xcf",
        b"\xc0\x00\x00\x00\x02",
        # DNS headers: a response with a question and an answer (shared by the split), one
        # without answers, a query
        b"\x12\x34\x81\x80\x00\x01\x00\x01", b"\x12\x34\x81\x80\x00\x01\x00\x00", b"\x12\x34\x01\x00\x00\x01\x00\x00",
    ]))
    size = draw(st.sampled_from([0, 1, 3, 5, 6, 20, 998, 999, 1000, 1001, 1400]))
    payload = (prefix + bytes(max(0, size - len(prefix))))[: max(size, len(prefix) if size else 0)]
    proto = draw(st.sampled_from([6, 6, 17, 17, 1, 0, 44]))
    if proto == 6:
        doff = draw(st.sampled_from([5, 8]))
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff << 4, draw(st.integers(0, 255)), 0, 0, 0)
        l4 += bytes((doff - 5) * 4) + payload
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = payload
    if draw(st.booleans()):
        fragment = draw(st.sampled_from([0, 0, 0, 0x2000, 0x0001, 0x4000]))
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, fragment, 64, proto, 0, bytes(4), bytes(4))
        return header + l4
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, bytes(16), bytes(16)) + l4


@st.composite
def generated_frames(draw: st.DrawFn) -> tuple[int, list[bytes]]:
    linktype = draw(st.sampled_from([1, 1, 1, 101, 113]))
    frames = []
    for _ in range(draw(st.integers(1, 60))):
        packet = _ip_frame(draw)
        version = packet[0] >> 4
        ethertype = 0x0800 if version == 4 else 0x86DD
        if draw(st.integers(0, 9)) == 0:
            ethertype = 0x0806  # not IP
        if linktype == 1:
            tags = b"".join(struct.pack("!HH", draw(st.sampled_from([0x8100, 0x88A8])), 7)
                            for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))))
            frame = bytes(12) + tags + struct.pack("!H", ethertype) + packet
            frame += bytes(max(0, 60 - len(frame)))  # Ethernet padding, which BPF reads as payload
        elif linktype == 113:
            frame = bytes(14) + struct.pack("!H", ethertype) + packet
        else:
            frame = packet
        frames.append(frame)
    return linktype, frames


def _write_pcap(path: Path, linktype: int, frames: list[bytes]) -> None:
    records = b"".join(struct.pack("<IIII", 1, index, len(frame), len(frame)) + frame
                       for index, frame in enumerate(frames))
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype) + records)


@needs_tcpdump
@needs_selector
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generated_frames())
def test_compiled_selector_agrees_with_bpf_on_generated_frames(tmp_path: Path, sample: tuple[int, list[bytes]]) -> None:
    """Whole packets (nothing cut by a snap length): the compiled selection is the BPF one."""
    linktype, frames = sample
    path = tmp_path / "generated.pcap"
    _write_pcap(path, linktype, frames)
    selected, complaint = _compiled_bytes(path)
    assert complaint is None
    assert _frames(selected) == _frames(_filtered_bytes(path))


@needs_selector
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000), linktype=st.sampled_from([0, 1, 101, 108, 113, 147, 228, 229, 276]))
def test_compiled_selector_survives_any_bytes(tmp_path: Path, data: bytes, linktype: int) -> None:
    """Random bytes after a valid header: no crash, and what is kept is whole records of the file, in order."""
    path = tmp_path / "random.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype) + data)
    selected, complaint = _compiled_bytes(path)
    expected = CaptureFile(path)
    all_frames = [frame for _, _, frame in expected.packets()]
    kept = _frames(selected)
    it = iter(all_frames)
    assert all(any(frame == candidate for candidate in it) for frame in kept)  # a subsequence
    assert (complaint is None) == (not expected.errors)


@needs_selector
def test_compiled_selector_describes_faults_as_the_reader_does(tmp_path: Path) -> None:
    demo = (PCAPS / "demo.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(demo[:-7])
    _, complaint = _compiled_bytes(cut)
    reader = CaptureFile(cut)
    list(reader.packets())
    assert complaint is not None and reader.errors == [f"{cut}: {complaint}"]
    offsets = [offset for offset, _ in pcap_records(demo)]
    corrupt = bytearray(demo)
    struct.pack_into("<I", corrupt, offsets[5] + 8, 0x7FFFFFFF)
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(bytes(corrupt))
    selected, complaint = _compiled_bytes(bad)
    assert complaint == f"corrupt record at byte {offsets[5]} (length {0x7FFFFFFF}); rest of file skipped"
    assert len(_frames(selected)) <= 5


def pcap_records(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every record of a little-endian microsecond pcap."""
    records, pos = [], 24
    while pos + 16 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos + 8)
        records.append((pos, length))
        pos += 16 + length
    return records


@needs_selector
def test_compiled_selector_keeps_nanosecond_timestamps(tmp_path: Path) -> None:
    demo = (PCAPS / "demo.pcap").read_bytes()
    nano = bytearray(demo)
    nano[:4] = b"\x4d\x3c\xb2\xa1"
    for index, (offset, _) in enumerate(pcap_records(demo)):
        struct.pack_into("<I", nano, offset + 4, 123_456_789 - index)
    path = tmp_path / "nano.pcap"
    path.write_bytes(bytes(nano))
    selector = CompiledPrefilter(path)
    stamps = [ts for ts, _, _ in CaptureFile(path, stream=selector.stdout).packets()]
    assert selector.close() is None
    everything = {frame: ts for ts, _, frame in CaptureFile(path).packets()}
    assert stamps and all(abs(ts - round(ts, 9)) < 1e-12 for ts in stamps)
    assert {round(ts, 9) for ts in stamps} <= {round(ts, 9) for ts in everything.values()}


@needs_selector
def test_prefilter_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    demo = PCAPS / "demo.pcap"
    chosen = open_prefilter(demo)
    assert isinstance(chosen, CompiledPrefilter)
    chosen.stdout.read(24)
    assert chosen.close() is None  # closed early: the thread stops, nothing hangs
    packed = tmp_path / "demo.pcap.gz"
    packed.write_bytes(gzip.compress(demo.read_bytes()))
    monkeypatch.setattr(plan_module, "tcpdump_path", lambda: None)
    assert should_prefilter(demo, "always")  # no tcpdump needed for a plain pcap file
    assert not should_prefilter(packed, "always")  # gzip needs tcpdump


@needs_selector
def test_compiled_selector_reads_records_larger_than_its_block(tmp_path: Path) -> None:
    """Records up to the reader's limit pass whole, also when the file ends inside one (a link
    type the filter does not know passes every record: the decoder reports it)."""
    from sensor.capture.pcap import MAX_FRAME

    frames = [bytes([index]) * size for index, size in enumerate([100, MAX_FRAME, 3000, 700_000, 10])]
    path = tmp_path / "jumbo.pcap"
    _write_pcap(path, 147, frames)
    selected, complaint = _compiled_bytes(path)
    assert complaint is None and _frames(selected) == frames
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(path.read_bytes()[: 24 + 16 + len(frames[0]) + 16 + 5000])
    selected, complaint = _compiled_bytes(cut)
    assert _frames(selected) == frames[:1]
    reader = CaptureFile(cut)
    list(reader.packets())
    assert reader.errors == [f"{cut}: {complaint}"]


def _python_split(linktype: int, frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Each frame in its worker's stream, and a shared DNS answer in the other's too."""
    expected: tuple[list[bytes], list[bytes]] = ([], [])
    for frame in frames:
        route = route_of_py(linktype, frame)
        expected[route & 1].append(frame)
        if route & SHARED_ANSWER:
            expected[(route & 1) ^ 1].append(frame)
    return expected


def _split_streams(path: Path) -> tuple[list[bytes], list[bytes]]:
    selector = CompiledPrefilter(path, split=True)
    streams = []
    for worker in (0, 1):
        selector._worker = worker  # read both streams of one selection
        streams.append(_frames(selector.stdout.read(1 << 40)))
    assert selector.close() is None
    return streams[0], streams[1]


@needs_selector
@pytest.mark.parametrize("path", plain_captures(), ids=lambda p: p.name)
def test_split_selection_gives_each_worker_its_clients(path: Path) -> None:
    everything, complaint = _compiled_bytes(path)
    assert complaint is None
    linktype = capture_linktype(path)
    assert _split_streams(path) == _python_split(linktype, _frames(everything))


@needs_selector
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generated_frames())
def test_split_selection_agrees_with_the_python_split_on_generated_frames(
    tmp_path: Path, sample: tuple[int, list[bytes]]
) -> None:
    linktype, frames = sample
    path = tmp_path / "generated.pcap"
    _write_pcap(path, linktype, frames)
    everything, _ = _compiled_bytes(path)
    assert _split_streams(path) == _python_split(linktype, _frames(everything))


def _many_packets_capture(path: Path, copies: int) -> None:
    """demo.pcap's packets, many times over, from many client addresses: a selection that takes a while."""
    base = [frame for _, _, frame in CaptureFile(PCAPS / "demo.pcap").packets()]
    frames = []
    for copy in range(copies):
        for frame in base:
            data = bytearray(frame)
            if len(data) > 34 and data[12:14] == b"\x08\x00":  # vary the IPv4 addresses' last bytes
                data[29] = data[33] = copy % 251
            frames.append(bytes(data))
    _write_pcap(path, 1, frames)


@needs_selector
@pytest.mark.parametrize("delay", [0.0, 0.002, 0.02, 0.5])
def test_fork_mid_selection_loses_and_repeats_nothing(tmp_path: Path, delay: float) -> None:
    """Whenever the fork falls, the child's stream and the parent's are exactly the two halves."""
    import hashlib
    import os
    import time

    path = tmp_path / "many.pcap"
    _many_packets_capture(path, 400)
    first, second = _split_streams(path)
    selector = CompiledPrefilter(path, split=True)
    time.sleep(delay)
    read_end, write_end = os.pipe()
    pid = selector.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            selector.continue_as(1, in_child=True)
            frames = _frames(selector.stdout.read(1 << 40))
            digest = hashlib.sha256(b"".join(hashlib.sha256(frame).digest() for frame in frames)).hexdigest()
            os.write(write_end, f"{len(frames)} {digest}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    selector.continue_as(0, in_child=False)
    mine = _frames(selector.stdout.read(1 << 40))
    assert selector.close() is None
    with os.fdopen(read_end, "rb") as pipe:
        count, digest = pipe.read().decode().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert mine == first
    expected = hashlib.sha256(b"".join(hashlib.sha256(frame).digest() for frame in second)).hexdigest()
    assert (int(count), digest) == (len(second), expected)
    assert first and second


def test_child_lines_shipped_while_it_runs_arrive_once_and_in_order(tmp_path: Path) -> None:
    """The parent ships the second worker's spill as it grows: lines cut by a flush wait for their end."""
    import os
    import tempfile
    import time

    import orjson

    from sensor.app.replay.split import SplitReplay
    from sensor.output.jsonl import JsonlSink
    from sensor.pipeline import Pipeline

    out = tmp_path / "out.jsonl"
    sink = JsonlSink(out)
    runner = SplitReplay(Pipeline(sinks=[sink]), [sink], lambda *a: [])
    lines = [orjson.dumps({"n": index, "pad": "x" * (index % 700)}) + b"\n" for index in range(3000)]
    spill, trailer = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        try:
            data = b"".join(lines)
            for start in range(0, len(data), 7919):  # writes that end mid-line, with pauses
                spill.write(data[start : start + 7919])
                spill.flush()
                if start % 79190 == 0:
                    time.sleep(0.002)
            tally = {"rows": [["e1", ["high", "plaintext-phi", "10.0.0.1", "-", "none", "condition"], 2]], "highest": 3}
            trailer.write(orjson.dumps({"counters": {"records.dns": 3000}, "alerts": tally}))
            trailer.flush()
        finally:
            os._exit(0)
    runner._collect_child(pid, spill, trailer)
    sink.close()
    assert out.read_bytes() == b"".join(lines)
    assert sink.stats()["sent"] == 3000
    assert runner.pipeline.counters.get("records.dns") == 3000
    assert runner.pipeline.alerts.rows == {"e1": (("high", "plaintext-phi", "10.0.0.1", "-", "none", "condition"), 2)}
    assert runner.pipeline.alerts.highest == 3


@needs_selector
def test_resync_finds_a_record_boundary(tmp_path: Path) -> None:
    import os

    path = tmp_path / "many.pcap"
    _many_packets_capture(path, 60)
    data = path.read_bytes()
    boundaries = {offset for offset, _ in pcap_records(data)}
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(24, len(data) // 2, len(data) // 37):
            found = prefilter_module._pcap_resync(fd, start, False)
            assert found in boundaries and found >= start
        assert prefilter_module._pcap_resync(fd, len(data) - 100, False) == -1  # too little left to tell
    finally:
        os.close(fd)


def _selected(path: Path, split: bool, hurried: bool = False) -> tuple[bytes, ...]:
    selector = _hurried(path, split) if hurried else CompiledPrefilter(path, split=split)
    streams = []
    for worker in ((0, 1) if split else (0,)):
        selector._worker = worker
        streams.append(selector.stdout.read(1 << 40))
    complaint = selector.close()
    return (*streams, complaint)


def _hurried(path: Path, split: bool) -> CompiledPrefilter:
    """A selector whose second thread starts before the first one reads a record (the first
    thread's calls wait for it), as on a large file when the sensor has started up early."""
    gate = threading.Event()
    real = prefilter_module._select_pcap

    def first_thread_waits(fd: int, offset: int, *rest: object) -> object:
        if rest[-1] != -1:  # the first thread's calls: bounded; the second thread's are not
            gate.wait(10)
        return real(fd, offset, *rest)

    prefilter_module._select_pcap = first_thread_waits
    try:
        selector = CompiledPrefilter(path, split=split)
        selector.hurry()
    finally:
        prefilter_module._select_pcap = real
        gate.set()
    return selector


@pytest.fixture
def small_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second thread for any file, the first thread's calls a few records each."""
    monkeypatch.setattr(prefilter_module, "TAIL_MIN_BYTES", 0)
    monkeypatch.setattr(prefilter_module, "HEAD_SPAN", 4096)


@needs_selector
@pytest.mark.usefixtures("small_spans")
@pytest.mark.parametrize("cut", [False, True])
@pytest.mark.parametrize("guess", ["found", "inside a record", "past the end"])
@pytest.mark.parametrize("held", [1, 1 << 30])
def test_second_thread_selection_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: bool, guess: str, held: int
) -> None:
    """Whether the guessed boundary is right or wrong, and however much the second thread may
    hold, the streams (and a cut file's complaint) are those of one thread alone."""
    path = tmp_path / "many.pcap"
    _many_packets_capture(path, 150)
    if cut:
        path.write_bytes(path.read_bytes()[:-5])
    expected = {split: _selected(path, split) for split in (False, True)}
    monkeypatch.setattr(prefilter_module, "TAIL_MAX_KEPT", held)
    real = prefilter_module._pcap_resync
    shift = {"found": 0, "inside a record": 3, "past the end": 1 << 40}[guess]
    monkeypatch.setattr(prefilter_module, "_pcap_resync", lambda fd, offset, big: real(fd, offset, big) + shift)
    for split in (False, True):
        assert _selected(path, split, hurried=True) == expected[split]


@needs_selector
@pytest.mark.usefixtures("small_spans")
def test_second_thread_takes_the_second_half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "many.pcap"
    _many_packets_capture(path, 150)
    expected = _selected(path, False)
    started: list = []

    class RecordedTail(prefilter_module._Tail):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            started.append(self)

    monkeypatch.setattr(prefilter_module, "_Tail", RecordedTail)
    selector = _hurried(path, False)
    [tail] = started
    assert 24 + 2 * 4096 < tail.start < path.stat().st_size
    assert (selector.stdout.read(1 << 40), selector.close()) == expected
    assert tail.kept and tail.state == prefilter_module._END  # its part was selected by it, then taken
    assert selector._tail is None


def _counting_source(chunks: int, size: int) -> tuple[Callable[[], tuple[tuple[bytes], None] | None], list[int]]:
    """A source of `chunks` chunks of `size` bytes, and the list of those produced so far."""
    produced: list[int] = []

    def source() -> tuple[tuple[bytes], None] | None:
        if len(produced) == chunks:
            return None
        produced.append(size)
        return (bytes([len(produced) % 256]) * size,), None

    return source, produced


def test_the_start_ups_read_ahead_is_given_back_once_the_decoder_has_taken_it(monkeypatch) -> None:
    """Once, when the queue is down to the steady limit (a long replay's allocator would keep
    the freed read-ahead's pages otherwise); never for a run whose selection ends first."""
    queued_then: list[int] = []
    monkeypatch.setattr(prefilter_module, "release_free_heap", lambda: queued_then.append(prefetcher._queued))
    source, _ = _counting_source(100, 1000)
    prefetcher = prefilter_module._Prefetcher(source, 10_000, steady_limit=3_000)
    prefetcher.wait_for_end(5.0)
    stream = prefetcher.reader(0)
    while prefetcher._queued > 5_000:
        stream.read(1000)
    assert queued_then == []  # the backlog is still there
    assert len(stream.read(1 << 30)) == 100 * 1000 - 5_000
    prefetcher.wait()
    assert len(queued_then) == 1 and queued_then[0] < 3_000 + 1000  # (the chunk just queued)
    queued_then.clear()
    source, _ = _counting_source(5, 1000)  # all of it selected before the decoder reads
    prefetcher = prefilter_module._Prefetcher(source, 10_000, steady_limit=3_000)
    prefetcher.wait_for_end(5.0)
    assert len(prefetcher.reader(0).read(1 << 30)) == 5_000
    prefetcher.wait()
    assert queued_then == []


def test_a_long_replay_gives_the_freed_heap_back_again_and_again(monkeypatch) -> None:
    """In the steady state, once per TRIM_EVERY_BYTES selected: the chunks the decoder took and
    freed since leave pages the allocator would keep for the rest of the run."""
    trims: list[int] = []
    monkeypatch.setattr(prefilter_module, "TRIM_EVERY_BYTES", 20_000)
    monkeypatch.setattr(prefilter_module, "release_free_heap", lambda: trims.append(len(produced)))
    source, produced = _counting_source(100, 1000)
    prefetcher = prefilter_module._Prefetcher(source, 10_000, steady_limit=3_000)
    prefetcher.wait_for_end(5.0)
    assert len(prefetcher.reader(0).read(1 << 30)) == 100 * 1000
    prefetcher.wait()
    assert len(trims) >= 4  # the first once the read-ahead is taken, then every 20 chunks or so
    assert all(later - earlier >= 20 for earlier, later in zip(trims[1:], trims[2:]))


def test_freed_heap_is_given_back_without_error() -> None:
    prefilter_module.release_free_heap()  # glibc's malloc_trim here; nothing where there is none


def test_prefetch_holds_less_once_the_decoder_reads() -> None:
    """Up to the start-up limit ahead until a reader takes, then only the steady limit: a long
    replay holds no more than a short one."""
    source, produced = _counting_source(100, 1000)
    prefetcher = prefilter_module._Prefetcher(source, 10_000, steady_limit=3_000)
    prefetcher.wait_for_end(5.0)  # returns once the queue is full: the thread waits for a reader
    assert prefetcher._queued == 10_000 and len(produced) in (10, 11)
    stream = prefetcher.reader(0)
    assert len(stream.read(1000)) == 1000
    taken = 1000
    while prefetcher._queued > 3_000:  # the start-up backlog drains; the thread does not refill it
        taken += len(stream.read(1000))
    assert len(produced) <= 12
    rest = stream.read(1 << 30)
    assert taken + len(rest) == 100 * 1000
    prefetcher.wait()
