"""The BPF prefilter must never change what replay finds, only how fast it finds it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.capture.bpf import default_filter
from sensor.capture.pcap import CaptureFile
from sensor.capture.prefilter import Prefilter, capture_linktype, should_prefilter, start_early

from conftest import CORPUS, PCAPS, REPO

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
    events = lambda docs: sorted(json.dumps({k: d[k] for k in ("source", "destination", "network")}, sort_keys=True)
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
