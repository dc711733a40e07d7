"""Live capture: the kernel filter, the ring and ancillary-data parsers, the stats event and
`phi-sensor status`, configuration reload; then the live sensor end to end on a veth pair whose
capture end sits in a network namespace (root only): the same alerts as a replay of the same
frames, with one worker and two, DNS attribution across workers, SIGHUP with a broken
configuration, SIGTERM, the interface going down and up, and running as an unprivileged user."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import pwd
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PCAPS, REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.app.live.reload import Reloader, build_detection
from sensor.app.live.stats import stats_document
from sensor.app.live.status import read_stats, status_main, summarize, write_stats_file
from sensor.app.live.system import drop_privileges, resolve_user
from sensor.app.replay.files import replay_file
from sensor.capture.bpf import default_filter
from sensor.capture.live import (
    PACKET_AUXDATA,
    SO_TIMESTAMPNS,
    SOL_PACKET,
    LiveCaptureError,
    compile_filter,
    frame_from_recvmsg,
    insert_vlan_tag,
    parse_block,
    parse_bpf_listing,
)
from sensor.capture.pcap import CaptureFile
from sensor.cli import _add_common, add_live_arguments, add_status_arguments
from sensor.errors import ConfigError

sys.path.insert(0, str(PCAPS))
import synth  # noqa: E402  (pcaps/ is not a package)
from synth import DnsRecord, Link, PcapWriter, TcpConversation, UdpFlow  # noqa: E402

EXAMPLE_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"
needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")


def live_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _add_common(parser)
    add_live_arguments(parser)
    return parser.parse_args(["-i", "lo", *argv])


# -- the kernel filter ------------------------------------------------------------------------------
@needs_tcpdump
def test_default_filter_compiles_within_the_kernel_limits() -> None:
    program = compile_filter(default_filter(1))
    assert 0 < program.length <= 4096
    assert len(program.instructions) == 8 * program.length
    code, _jt, _jf, _k = struct.unpack_from("=HBBI", program.instructions, 8 * (program.length - 1))
    assert code & 0x07 == 0x06  # the program ends in a return
    first = struct.unpack_from("=HBBI", program.instructions, 0)
    assert first == (0x28, 0, 0, 12)  # ldh [12]: the ethertype, untagged frames first


@needs_tcpdump
def test_bad_filter_expression_is_one_clear_line() -> None:
    with pytest.raises(LiveCaptureError) as caught:
        compile_filter("port and port")
    message = str(caught.value)
    assert message.startswith("capture filter:") and "\n" not in message
    assert caught.value.exit_code == 3


def test_bpf_listing_parsed() -> None:
    assert parse_bpf_listing("2\n40 0 0 12\n6 0 0 262144\n") == [(40, 0, 0, 12), (6, 0, 0, 262144)]


@pytest.mark.parametrize("listing", [
    "", "x", "0\n", "2\n40 0 0 12\n", "1\n40 0 0\n", "1\n6 1 0 0\n", "1\n70000 0 0 0\n", "1\n6 0 0 4294967296\n",
    "5000\n" + "6 0 0 0\n" * 5000, "1\n-6 0 0 0\n",
])
def test_bpf_listing_rejects_what_the_kernel_would(listing: str) -> None:
    with pytest.raises(ValueError):
        parse_bpf_listing(listing)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 \n-x", max_size=200))
def test_bpf_listing_raises_only_value_error(text: str) -> None:
    try:
        instructions = parse_bpf_listing(text)
    except ValueError:
        return
    for index, (_code, jt, jf, _k) in enumerate(instructions):
        assert index + 1 + max(jt, jf) <= len(instructions)


# -- the TPACKET_V3 ring -------------------------------------------------------------------------------
def make_block(frames: list[tuple[float, bytes, int | None]], size: int = 8192) -> bytes:
    """A retired TPACKET_V3 block laid out as the kernel writes it (tpacket3_hdr, 16-byte aligned)."""
    block = bytearray(size)
    struct.pack_into("<III", block, 8, 1, len(frames), 48)
    pos, mac = 48, 80
    for index, (ts, frame, tci) in enumerate(frames):
        step = (mac + len(frame) + 15) & ~15
        status = 0x1 | (0x10 if tci is not None else 0)
        sec, nsec = int(ts), round((ts - int(ts)) * 1e9)
        nxt = step if index < len(frames) - 1 else 0
        struct.pack_into("<IIIIIIHHIIH", block, pos, nxt, sec, nsec, len(frame), len(frame), status, mac, mac + 14,
                         0, tci or 0, 0)
        block[pos + mac:pos + mac + len(frame)] = frame
        pos += step
    return bytes(block)


def tagged_and_stripped(vlan: int) -> tuple[bytes, bytes]:
    """A VLAN-tagged DNS query frame, and the same frame as the kernel hands it over (tag removed)."""
    tagged = UdpFlow("10.20.1.50", 53000, "10.0.0.53", 53, link=Link(vlans=(vlan,))).packet(
        synth.dns_query(7, "example.org")).frame
    return tagged, tagged[:12] + tagged[16:]


def test_ring_block_frames_with_timestamps_and_vlan_tags_put_back() -> None:
    tagged, stripped = tagged_and_stripped(120)
    plain = UdpFlow("10.20.1.50", 53001, "10.0.0.53", 53).packet(synth.dns_query(8, "example.org")).frame
    block = make_block([(1700000000.25, plain, None), (1700000000.5, stripped, 120)])
    frames = parse_block(block, 0, len(block))
    assert [frame for _, frame in frames] == [plain, tagged]
    assert [ts for ts, _ in frames] == pytest.approx([1700000000.25, 1700000000.5])
    # On a link without Ethernet framing there is no tag to put back.
    assert [frame for _, frame in parse_block(block, 0, len(block), ethernet=False)] == [plain, stripped]


def test_ring_block_walk_stays_inside_the_block() -> None:
    frame = bytes(range(60))
    block = make_block([(1.0, frame, None)] * 3, size=1024)
    assert len(parse_block(block, 0, 1024)) == 3
    assert parse_block(block, 0, 200) == [(1.0, frame)]  # the second frame would cross the end
    assert parse_block(block, 0, 40) == []
    assert parse_block(block, 1000, 1024) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=4096), st.integers(0, 64))
def test_ring_block_parser_survives_random_blocks(data: bytes, start: int) -> None:
    for ts, frame in parse_block(data, start, len(data) - start):
        assert isinstance(ts, float) and len(frame) <= len(data) + 4


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8191), st.integers(0, 255)), min_size=1, max_size=24))
def test_ring_block_parser_survives_mutated_blocks(mutations: list[tuple[int, int]]) -> None:
    _tagged, stripped = tagged_and_stripped(5)
    block = bytearray(make_block([(2.0, stripped, 5), (3.0, stripped, None)] * 4))
    for offset, value in mutations:
        block[offset] = value
    started = time.perf_counter()
    frames = parse_block(bytes(block), 0, len(block))
    assert time.perf_counter() - started < 1.0
    assert all(len(frame) <= len(block) + 4 for _, frame in frames)


def test_recvmsg_ancillary_data_gives_time_and_tag() -> None:
    tagged, stripped = tagged_and_stripped(300)
    ancillary = [
        (socket.SOL_SOCKET, SO_TIMESTAMPNS, struct.pack("@qq", 1700000001, 500_000_000)),
        (SOL_PACKET, PACKET_AUXDATA, struct.pack("<IIIHHHH", 0x10, len(stripped), len(stripped), 0, 14, 300, 0x8100)),
    ]
    ts, frame = frame_from_recvmsg(stripped, ancillary, fallback_ts=5.0)
    assert ts == pytest.approx(1700000001.5) and frame == tagged
    assert frame_from_recvmsg(stripped, [], fallback_ts=5.0) == (5.0, stripped)
    assert insert_vlan_tag(b"short", 1) == b"short"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.lists(st.tuples(st.sampled_from([socket.SOL_SOCKET, SOL_PACKET, 0]),
                                                    st.sampled_from([SO_TIMESTAMPNS, PACKET_AUXDATA, 1]),
                                                    st.binary(max_size=40)), max_size=4))
def test_recvmsg_ancillary_parser_survives_anything(data: bytes, ancillary: list) -> None:
    ts, frame = frame_from_recvmsg(data, ancillary, fallback_ts=1.0)
    assert isinstance(ts, float) and len(frame) in (len(data), len(data) + 4)


# -- stats and status ----------------------------------------------------------------------------------
def snapshot(packets: int, drops: int, alerts: dict[str, int], up: bool = True) -> dict:
    counters = {"packets": packets, "bytes": packets * 100, "tcp.streams": 7, "records.tls": 3,
                "alerts.escalated": 2, "packets.truncated": 1}
    counters.update({f"alerts.{rule}": n for rule, n in alerts.items()})
    return {"counters": counters, "kernel": {"packets": packets + drops, "drops": drops}, "flows_active": 4,
            "interface_up": up, "interface_down_events": 1}


def test_stats_document_sums_workers_into_one_metric_event() -> None:
    doc = stats_document(
        [snapshot(1000, 5, {"plaintext-phi": 2}), snapshot(500, 0, {"plaintext-phi": 1, "tracker-egress-no-baa": 4},
                                                           up=False)],
        [{"name": "jsonl:/var/log/a.jsonl", "sent": 9}, {"name": "elasticsearch-1", "sent": 3, "spool_depth": 12}],
        observer="gw-1", interface="eth1", interval=60.0, uptime=600.0, period=60.0, previous=(300, 30_000),
        reloads=(1, 2), now=1700000000.0,
    )
    assert doc["event"]["kind"] == "metric" and doc["event"]["dataset"] == "phi_sensor.stats"
    assert doc["observer"]["ingress"]["interface"]["name"] == "eth1"
    stats = doc["phi_egress"]["stats"]
    assert stats["packets"] == 1500 and stats["packets_per_s"] == pytest.approx(20.0)
    assert stats["kernel"] == {"packets": 1505, "drops": 5}
    assert stats["alerts"] == {"total": 7, "by_rule": {"plaintext-phi": 3, "tracker-egress-no-baa": 4}}
    assert stats["flows"] == {"active": 8, "seen": 14} and stats["records"] == {"tls": 6}
    assert stats["interface_up"] is False and stats["interface_down_events"] == 1
    assert stats["sink_queue_depth"] == 12 and stats["reloads"] == {"ok": 1, "failed": 2}
    assert stats["workers"] == 2
    # Counter names become flat keys a search engine cannot mistake for object paths.
    assert all("." not in key for key in stats["counters"]) and stats["counters"]["packets_truncated"] == 2


def stats_file(tmp_path: Path, age: float, interval: float = 10.0) -> Path:
    doc = stats_document([snapshot(900, 0, {"plaintext-phi": 1})], [{"name": "stdout", "sent": 4}],
                         observer="gw-1", interface="eth1", interval=interval, uptime=4000.0, period=interval,
                         previous=(0, 0), reloads=(0, 0), now=time.time() - age)
    path = tmp_path / "stats.json"
    write_stats_file(path, doc)
    return path


def status(path: Path) -> int:
    parser = argparse.ArgumentParser()
    add_status_arguments(parser)
    return status_main(parser.parse_args(["--stats-file", str(path)]))


def test_status_fresh_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status(stats_file(tmp_path, age=5.0)) == 0
    out = capsys.readouterr().out
    assert "capturing on eth1 with 1 worker(s)" in out and "fresh" in out
    assert "alerts     1: plaintext-phi 1" in out and "0 dropped" in out
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # the temporary file was renamed


def test_status_stale_after_three_intervals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status(stats_file(tmp_path, age=31.0)) == 1
    assert "STALE" in capsys.readouterr().out


def test_status_missing_or_garbage_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status(tmp_path / "absent.json") == 1
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00{not json")
    assert read_stats(garbage) is None and status(garbage) == 1
    garbage.write_text('{"phi_egress": []}')
    assert read_stats(garbage) is None
    assert "no readable stats" in capsys.readouterr().err


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_stats_reader_returns_none_for_anything_but_a_stats_document(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        handle.write(data)
        handle.flush()
        doc = read_stats(Path(handle.name))
    assert doc is None or isinstance(doc["phi_egress"]["stats"], dict)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
stats_keys = st.sampled_from(["interface", "workers", "interval_s", "uptime_s", "interface_up", "packets",
                              "packets_per_s", "bytes", "kernel", "flows", "alerts", "sinks"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(stats_keys, json_values), st.one_of(json_values, st.just("2024-01-15T14:30:00.000000Z")),
       json_values)
def test_status_summary_survives_any_document(stats: dict, stamp, observer) -> None:
    lines, fresh = summarize({"@timestamp": stamp, "observer": observer, "phi_egress": {"stats": stats}}, time.time())
    assert lines and all(isinstance(line, str) for line in lines)
    assert fresh in (True, False)


# -- reload ----------------------------------------------------------------------------------------------
def test_reload_keeps_running_detection_when_the_new_files_are_bad(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "sensor.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text())
    args = live_args("--config", str(config))
    pipeline = build_detection(args).pipeline
    pipeline.sinks = []
    replay_file(pipeline, PCAPS / "demo.pcap")
    detector = pipeline.detector
    assert detector is not None and len(detector.dns_cache) > 0
    reloader = Reloader(args)

    config.write_text("phi_hosts: [10.20.0.0/16\n")  # unterminated flow sequence
    with caplog.at_level(logging.ERROR, logger="phi_sensor"):
        assert reloader.reload(pipeline) is False
    assert pipeline.detector is detector
    assert len(caplog.records) == 1 and str(config) in caplog.records[0].getMessage()
    assert "keeping the running configuration" in caplog.records[0].getMessage()

    config.write_text(EXAMPLE_CONFIG.read_text().replace("unreviewed-vendor: {enabled: false}",
                                                         "unreviewed-vendor: {enabled: true}"))
    caplog.clear()
    assert reloader.reload(pipeline) is True
    fresh = pipeline.detector
    assert fresh is not detector
    assert "unreviewed-vendor" in {rule.INFO.id for rule, _ in fresh.rules}
    assert "unreviewed-vendor" not in {rule.INFO.id for rule, _ in detector.rules}
    # Attribution and open throttle windows survive, and counting goes on in the same counters.
    assert fresh.dns_cache is detector.dns_cache and fresh.counters is pipeline.counters
    assert fresh._windows is detector._windows and len(fresh._windows) > 0
    assert (reloader.succeeded, reloader.failed) == (1, 1)


def test_reload_says_when_outputs_wait_for_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "sensor.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text())
    args = live_args("--config", str(config))
    pipeline = build_detection(args).pipeline
    reloader = Reloader(args)
    config.write_text(EXAMPLE_CONFIG.read_text().replace('{type: jsonl, path: "-"}',
                                                         f'{{type: jsonl, path: "{tmp_path / "a.jsonl"}"}}'))
    with caplog.at_level(logging.WARNING, logger="phi_sensor"):
        assert reloader.reload(pipeline) is True
    assert any("outputs changed" in record.getMessage() for record in caplog.records)


# -- privileges ------------------------------------------------------------------------------------------
def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no nobody user")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_drop_privileges_leaves_no_way_back() -> None:
    account = nobody()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which must never return into pytest
        try:
            os.close(read_end)
            drop_privileges(account)
            try:
                os.setuid(0)
                regained = True
            except PermissionError:
                regained = False
            caps = Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0]
            result = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                      "regained": regained, "caps": caps}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        result = json.loads(reader.read())
    os.waitpid(child, 0)
    assert result == {"uid": account.pw_uid, "euid": account.pw_uid, "gid": account.pw_gid, "groups": [],
                      "regained": False, "caps": "0000000000000000"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_unknown_user_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="no such user"):
        resolve_user("no-such-user-phi-sensor-test")


# -- end to end on a veth pair -----------------------------------------------------------------------------
live_only = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tcpdump") is None,
    reason="needs root, iproute2 and tcpdump",
)

SENSOR_MAIN = """
import argparse, logging, sys
from sensor.cli import _add_common
from sensor.cli import add_live_arguments
from sensor.app.live.service import live_main
logging.basicConfig(level=logging.INFO, format="phi-sensor: %(message)s", stream=sys.stderr)
parser = argparse.ArgumentParser()
_add_common(parser)
add_live_arguments(parser)
sys.exit(live_main(parser.parse_args(sys.argv[1:])))
"""


@dataclass
class VethLink:
    namespace: str
    sender: str  # host end: frames are written here
    capture: str  # namespace end: the sensor listens here


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def link() -> Iterator[VethLink]:
    tag = f"{os.getpid() % 100000}"
    veth = VethLink(f"phi-sensor-test-{tag}", f"phs{tag}h", f"phs{tag}c")
    try:
        ip("netns", "add", veth.namespace)
        ip("link", "add", veth.sender, "mtu", "9000", "type", "veth", "peer", "name", veth.capture, "mtu", "9000")
        ip("link", "set", veth.capture, "netns", veth.namespace)
        for netns, name in ((None, veth.sender), (veth.namespace, veth.capture)):
            prefix = ["ip", "netns", "exec", netns] if netns else []
            # No router solicitations or MLD reports: the only traffic is what a test sends.
            subprocess.run([*prefix, "sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"], check=True, timeout=20)
        ip("link", "set", veth.sender, "up")
        ip("-n", veth.namespace, "link", "set", veth.capture, "up")
    except (subprocess.CalledProcessError, OSError) as exc:
        subprocess.run(["ip", "netns", "del", veth.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", veth.sender], capture_output=True)
        pytest.skip(f"cannot create a network namespace with a veth pair: {exc}")
    try:
        yield veth
    finally:
        subprocess.run(["ip", "link", "del", veth.sender], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", veth.namespace], capture_output=True, timeout=20)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class LiveSensor:
    """`live` running in the namespace, writing JSON lines and stats to files."""

    def __init__(self, veth: VethLink, tmp: Path, *argv: str, config: Path = EXAMPLE_CONFIG) -> None:
        self.veth = veth
        self.output = tmp / "live.jsonl"
        self.stats_path = tmp / "stats.json"
        self.stderr_path = tmp / "stderr.txt"
        command = ["ip", "netns", "exec", veth.namespace, sys.executable, "-c", SENSOR_MAIN,
                   "-i", veth.capture, "--config", str(config), "--output", str(self.output),
                   "--stats-file", str(self.stats_path), "--stats-interval", "0.5", "--spool-dir", str(tmp / "spool"),
                   *argv]
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)
        wait_for(lambda: self.stats_path.exists() or self.process.poll() is not None, 20, "the sensor to start")
        assert self.process.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def documents(self) -> list[dict]:
        if not self.output.exists():
            return []
        return [json.loads(line) for line in self.output.read_text().splitlines() if line.strip()]

    def alert_keys(self) -> set[tuple]:
        return {alert_key(doc) for doc in self.documents() if doc["event"]["kind"] == "alert"}

    def stats(self) -> dict:
        doc = read_stats(self.stats_path)
        assert doc is not None
        return doc["phi_egress"]["stats"]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def sensors() -> Iterator[list[LiveSensor]]:
    started: list[LiveSensor] = []
    yield started
    for sensor in started:
        sensor.kill()


def alert_key(doc: dict) -> tuple:
    return doc["rule"]["id"], doc["source"]["ip"], doc["phi_egress"].get("vendor", {}).get("name")


def send(veth: VethLink, frames: list[bytes], gap: float = 0.0005) -> None:
    """Write each frame as it is, in order, onto the host end of the pair."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((veth.sender, 0))
        for frame in frames:
            sock.send(frame)
            time.sleep(gap)


def pcap_frames(path: Path) -> list[bytes]:
    return [frame for _ts, _linktype, frame in CaptureFile(path).packets()]


@functools.cache
def replay_alert_keys(path: Path, config: Path = EXAMPLE_CONFIG) -> frozenset[tuple]:
    proc = subprocess.run([sys.executable, "-m", "sensor", "replay", str(path), "--config", str(config), "--quiet"],
                          capture_output=True, text=True, timeout=120, check=True)
    return frozenset(alert_key(json.loads(line)) for line in proc.stdout.splitlines() if line.strip())


@live_only
@pytest.mark.parametrize("workers", [1, 2])
def test_live_alerts_match_replay(link: VethLink, tmp_path: Path, sensors: list[LiveSensor], workers: int) -> None:
    expected = replay_alert_keys(PCAPS / "demo.pcap")
    assert len(expected) == 6
    sensor = LiveSensor(link, tmp_path, "--workers", str(workers))
    sensors.append(sensor)
    send(link, pcap_frames(PCAPS / "demo.pcap"))
    wait_for(lambda: sensor.alert_keys() >= expected, 15, f"live alerts {sorted(expected)}")
    wait_for(lambda: sensor.stats()["packets"] >= 30, 5, "the stats file to count the packets")
    assert sensor.stop() == 0, sensor.stderr()
    assert sensor.alert_keys() == expected
    stats = sensor.stats()
    # The kernel filter passed 30 of the 99 frames; none was lost on the way to the pipeline.
    assert stats["workers"] == workers
    assert stats["kernel"]["packets"] == stats["packets"] == 30 and stats["kernel"]["drops"] == 0
    assert stats["alerts"]["by_rule"].keys() == {rule for rule, _, _ in expected}
    metrics = [doc for doc in sensor.documents() if doc["event"]["kind"] == "metric"]
    assert metrics and metrics[-1]["phi_egress"]["stats"]["packets"] == 30
    assert status(sensor.stats_path) == 0


def attribution_frames() -> list[bytes]:
    """A resolver (not a PHI host) learns eight addresses of api.mixpanel.com; then eight PHI hosts
    open TLS to them with no SNI: only DNS can name the destination, and fanout sends most of those
    connections to a worker that never saw the DNS answer."""
    rng = random.Random(7)
    addresses = [f"203.0.113.{101 + i}" for i in range(8)]
    dns = UdpFlow("10.0.0.53", 40000, "198.51.100.53", 53)
    answers = [DnsRecord("api.mixpanel.com", "A", address) for address in addresses]
    frames = [dns.packet(synth.dns_query(0x1234, "api.mixpanel.com")).frame,
              dns.packet(synth.dns_response(0x1234, "api.mixpanel.com", "A", answers), from_client=False).frame]
    for index, address in enumerate(addresses):
        conversation = TcpConversation(f"10.20.7.{10 + index}", 50000 + index, address, 443)
        frames += [packet.frame for packet in conversation.handshake()]
        frames += [packet.frame for packet in conversation.send(synth.client_hello_record(None, rng=rng))]
    return frames


@live_only
def test_dns_seen_by_one_worker_attributes_flows_on_the_other(link: VethLink, tmp_path: Path,
                                                              sensors: list[LiveSensor]) -> None:
    frames = attribution_frames()
    capture = tmp_path / "attribution.pcap"
    with capture.open("wb") as stream, PcapWriter(stream) as writer:
        for index, frame in enumerate(frames):
            writer.write(1_700_000_000_000_000_000 + index * 1_000_000, frame)
    expected = replay_alert_keys(capture)
    assert expected == {("tracker-egress-no-baa", f"10.20.7.{10 + i}", "Mixpanel") for i in range(8)}
    sensor = LiveSensor(link, tmp_path, "--workers", "2")
    sensors.append(sensor)
    send(link, frames[:2])
    time.sleep(0.1)  # the answer reaches the side channels before the connections start
    send(link, frames[2:])
    wait_for(lambda: sensor.alert_keys() >= expected, 15, "an alert for every PHI host")
    assert sensor.stop() == 0, sensor.stderr()
    assert sensor.alert_keys() == expected


@live_only
def test_sighup_with_a_broken_config_keeps_running_then_reloads(link: VethLink, tmp_path: Path,
                                                                 sensors: list[LiveSensor]) -> None:
    config = tmp_path / "sensor.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text())
    sensor = LiveSensor(link, tmp_path, config=config)
    sensors.append(sensor)
    config.write_text(EXAMPLE_CONFIG.read_text().replace("plaintext-phi: {severity: critical}",
                                                         "plaintext-phi: {severity: urgent}"))
    sensor.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in sensor.stderr(), 10, "the reload to fail")
    failure = [line for line in sensor.stderr().splitlines() if "reload failed" in line]
    assert len(failure) == 1 and str(config) in failure[0] and "rules.plaintext-phi.severity" in failure[0]
    assert sensor.process.poll() is None
    # The running configuration still works; then a good file takes effect without a restart.
    config.write_text(EXAMPLE_CONFIG.read_text().replace("unreviewed-vendor: {enabled: false}",
                                                         "unreviewed-vendor: {enabled: true}"))
    sensor.signal(signal.SIGHUP)
    wait_for(lambda: "configuration and signatures reloaded" in sensor.stderr(), 10, "the reload")
    send(link, pcap_frames(PCAPS / "demo.pcap"))
    wait_for(lambda: any(rule == "unreviewed-vendor" for rule, _, _ in sensor.alert_keys()), 15,
             "an alert of the rule the new configuration enabled")
    assert sensor.stop() == 0, sensor.stderr()
    assert sensor.stats()["reloads"] == {"ok": 1, "failed": 1}


@live_only
def test_sigterm_processes_what_was_captured_then_exits_zero(link: VethLink, tmp_path: Path,
                                                             sensors: list[LiveSensor]) -> None:
    sensor = LiveSensor(link, tmp_path, "--stats-interval", "3600")
    sensors.append(sensor)
    send(link, pcap_frames(PCAPS / "demo.pcap"), gap=0.0)
    assert sensor.stop() == 0, sensor.stderr()  # at once: the frames are still in the kernel's ring
    assert sensor.alert_keys() == replay_alert_keys(PCAPS / "demo.pcap")
    documents = sensor.documents()
    assert documents[-1]["event"]["kind"] == "metric"  # the final stats, after the last alerts
    assert sensor.stats()["packets"] == 30


@live_only
def test_interface_down_then_up_keeps_capturing(link: VethLink, tmp_path: Path, sensors: list[LiveSensor]) -> None:
    sensor = LiveSensor(link, tmp_path, "--workers", "2")
    sensors.append(sensor)
    try:
        ip("-n", link.namespace, "link", "set", link.capture, "down")
        wait_for(lambda: "interface is down" in sensor.stderr(), 10, "the sensor to notice the interface is down")
        wait_for(lambda: sensor.stats()["interface_up"] is False, 5, "the stats to say the interface is down")
    finally:
        ip("-n", link.namespace, "link", "set", link.capture, "up")
    wait_for(lambda: sensor.stderr().count("capture resumed") == 2, 10, "both workers to resume capture")
    assert sensor.process.poll() is None
    send(link, pcap_frames(PCAPS / "demo.pcap"))
    wait_for(lambda: sensor.alert_keys() >= replay_alert_keys(PCAPS / "demo.pcap"), 15, "alerts after the link flap")
    assert sensor.stop() == 0, sensor.stderr()
    stats = sensor.stats()
    assert stats["interface_up"] is True and stats["interface_down_events"] == 1


def child_pids(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


@live_only
def test_packets_are_processed_as_the_unprivileged_user(link: VethLink, sensors: list[LiveSensor]) -> None:
    account = nobody()
    with tempfile.TemporaryDirectory(prefix="phi-sensor-live-") as shared:
        os.chmod(shared, 0o777)  # output, stats and spool written by that user
        sensor = LiveSensor(link, Path(shared), "--user", account.pw_name, "--workers", "2")
        sensors.append(sensor)
        workers = child_pids(sensor.process.pid)
        assert len(workers) == 2
        for pid in [sensor.process.pid, *workers]:
            status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            uids = next(line for line in status_lines if line.startswith("Uid:")).split()[1:]
            caps = next(line for line in status_lines if line.startswith("CapEff:")).split()[1]
            assert uids == [str(account.pw_uid)] * 4 and caps == "0000000000000000"
        send(link, pcap_frames(PCAPS / "demo.pcap"))
        wait_for(lambda: sensor.alert_keys() >= replay_alert_keys(PCAPS / "demo.pcap"), 15, "alerts")
        assert sensor.stop() == 0, sensor.stderr()


@live_only
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tcpreplay") is None, reason="tcpreplay not installed")
def test_rate_sweep_without_kernel_drops(tmp_path: Path) -> None:
    driver = tmp_path / "live_main.py"
    driver.write_text(SENSOR_MAIN)
    capture = REPO / "bench" / "out" / "mixed-200000-seed1.pcap"
    if not capture.exists():
        capture = tmp_path / "mixed.pcap"
        subprocess.run([sys.executable, str(REPO / "bench" / "make_capture.py"), str(capture), "--packets", "200000"],
                       check=True, capture_output=True, timeout=300)
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "live_rate.py"), "--capture", str(capture), "--rates", "50000,100000",
         "--workers", "1,2", "--buffer-mb", "64", "--sensor-cmd", f"{sys.executable} {driver}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.split("highest rate with zero kernel drops:")[1]
    for workers in (1, 2):
        found = re.search(rf"{workers} worker\(s\), 64 MiB ring: ([\d,]+) packets/s", summary)
        assert found and int(found.group(1).replace(",", "")) >= 95_000, proc.stdout  # tcpreplay's pacing is not exact


HANGING_WEBHOOK = """
import socket, sys, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(64)
print("listening", flush=True)
held = []
while True:  # accept and never answer: the slowest webhook there is
    conn, _ = server.accept()
    held.append(conn)
"""


@live_only
def test_a_hanging_webhook_never_holds_up_capture_or_the_other_sinks(link: VethLink, tmp_path: Path,
                                                                      sensors: list[LiveSensor]) -> None:
    ip("-n", link.namespace, "link", "set", "lo", "up")
    port = 18000 + os.getpid() % 1000
    webhook = subprocess.Popen(["ip", "netns", "exec", link.namespace, sys.executable, "-c", HANGING_WEBHOOK, str(port)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert webhook.stdout is not None and webhook.stdout.readline().strip() == "listening"
        sensor = LiveSensor(link, tmp_path, "--output", f"webhook=http://127.0.0.1:{port}/hook",
                            "--flush-timeout", "1")
        sensors.append(sensor)
        started = time.monotonic()
        send(link, pcap_frames(PCAPS / "demo.pcap"))
        expected = replay_alert_keys(PCAPS / "demo.pcap")
        wait_for(lambda: sensor.alert_keys() >= expected, 15, "alerts in the file while the webhook hangs")
        assert time.monotonic() - started < 15
        # the alerts wait in the webhook's spool, counted, while capture goes on
        wait_for(lambda: sensor.stats()["sink_queue_depth"] >= len(expected), 10, "the webhook spool to hold the alerts")
        send(link, pcap_frames(PCAPS / "mixpanel-plaintext.pcap"))
        wait_for(lambda: sensor.stats()["packets"] > 30, 10, "capture to go on")
        assert sensor.process.poll() is None
        stopping = time.monotonic()
        assert sensor.stop() == 0, sensor.stderr()
        assert time.monotonic() - stopping < 20  # the flush gives up after --flush-timeout; the spool keeps the rest
        assert "not everything was delivered" in sensor.stderr()
    finally:
        webhook.kill()
        webhook.wait(timeout=10)


@live_only
@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reopens_the_output_file_logrotate_renamed(link: VethLink, tmp_path: Path, sensors: list[LiveSensor],
                                                          workers: int) -> None:
    expected = replay_alert_keys(PCAPS / "demo.pcap")
    sensor = LiveSensor(link, tmp_path, "--workers", str(workers))
    sensors.append(sensor)
    send(link, pcap_frames(PCAPS / "demo.pcap"))
    wait_for(lambda: sensor.alert_keys() >= expected, 15, "the demo's alerts")
    rotated = sensor.output.with_name("live.jsonl.1")
    sensor.output.rename(rotated)  # what logrotate does before its postrotate script
    sensor.signal(signal.SIGHUP)
    wait_for(lambda: any(doc["event"]["kind"] == "metric" for doc in sensor.documents()), 10,
             "the stats event in the reopened file")
    assert sensor.stop() == 0, sensor.stderr()
    before, after = rotated.read_text().splitlines(), sensor.output.read_text().splitlines()
    documents = [json.loads(line) for line in before + after]  # whole lines only, in either file
    assert {alert_key(doc) for doc in documents if doc["event"]["kind"] == "alert"} == expected
    assert {alert_key(json.loads(line)) for line in before if '"kind":"alert"' in line} == expected
    assert any(doc["event"]["kind"] == "metric" for doc in map(json.loads, after))
    assert not set(before) & set(after)  # nothing written twice
