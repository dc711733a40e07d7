"""`phi-sensor live --listen vxlan://...` (and geneve://): a cloud mirror session received on a real
UDP socket on loopback raises the alerts of the mirrored capture, and counts its datagrams."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.vxlan import VXLAN

from sensor.capture.mirror import MirrorListener, parse_listen
from sensor.capture.pcap import CaptureFile
from sensor.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "deploy" / "config" / "sensor.example.yaml"
STORY = REPO / "pcaps" / "mixpanel-plaintext.pcap"
EXPECTED = {("tracker-egress-no-baa", "10.20.5.23"), ("plaintext-phi", "10.20.5.23"),
            ("phi-in-tracker-payload", "10.20.5.23")}  # pcaps/stories.json for this capture


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def story_frames() -> list[bytes]:
    return [frame for _ts, _linktype, frame in CaptureFile(STORY).packets()]


def test_listen_urls() -> None:
    assert parse_listen("vxlan://0.0.0.0:4789") == ("vxlan", "0.0.0.0", 4789)
    assert parse_listen("geneve://[::1]") == ("geneve", "::1", 6081)
    assert parse_listen("vxlan://10.0.0.5") == ("vxlan", "10.0.0.5", 4789)
    for bad in ("udp://0.0.0.0:4789", "vxlan://0.0.0.0:99999", "vxlan://host:4789/path", "eth0"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_listener_decapsulates_and_counts() -> None:
    listener = MirrorListener("vxlan://127.0.0.1:0")
    listener.open()
    try:
        frame = story_frames()[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(bytes(VXLAN(vni=7) / frame), ("127.0.0.1", listener.port))
            sender.sendto(b"\x00" * 8 + frame, ("127.0.0.1", listener.port))  # no I flag: not VXLAN
        frames: list = []
        wait_for(lambda: frames.extend(listener.read(0.2)[0]) or listener.received >= 2, 5, "two datagrams")
        assert [f for _ts, f in frames] == [frame]
        assert listener.kernel_stats() == {"packets": 2, "drops": 1, "datagrams_received": 2,
                                           "datagrams_decapsulated": 1, "datagrams_dropped": 1}
    finally:
        listener.close()


def test_geneve_carrying_ip_gets_an_ethernet_header() -> None:
    listener = MirrorListener("geneve://127.0.0.1:0")
    ip_packet = story_frames()[0][14:]
    frame = listener.inner_frame(bytes(GENEVE(vni=1, proto=0x0800) / ip_packet))
    assert frame is not None and frame[12:14] == b"\x08\x00" and frame[14:] == ip_packet


@pytest.mark.parametrize("scheme", ["vxlan", "geneve"])
def test_live_listen_raises_the_captures_alerts(scheme: str, tmp_path: Path) -> None:
    port = free_port()
    output, stats_path = tmp_path / "live.jsonl", tmp_path / "stats.json"
    command = [sys.executable, "-m", "sensor", "live", "--listen", f"{scheme}://127.0.0.1:{port}",
               "--config", str(EXAMPLE_CONFIG), "--output", str(output), "--stats-file", str(stats_path),
               "--stats-interval", "0.3", "--spool-dir", str(tmp_path / "spool"), "--user", "root"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_for(lambda: stats_path.exists() or process.poll() is not None, 30, "the sensor to start")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        frames = story_frames()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for frame in frames:
                header = VXLAN(vni=42) if scheme == "vxlan" else GENEVE(vni=42, proto=0x6558)
                sender.sendto(bytes(header / frame), ("127.0.0.1", port))
                time.sleep(0.002)
            sender.sendto(b"junk", ("127.0.0.1", port))

        def kernel() -> dict:
            try:
                return json.loads(stats_path.read_text())["phi_egress"]["stats"]["kernel"]
            except (OSError, ValueError, KeyError):
                return {}

        wait_for(lambda: kernel().get("datagrams_received") == len(frames) + 1, 30, "every datagram")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stats = kernel()
    assert (stats["datagrams_decapsulated"], stats["datagrams_dropped"]) == (len(frames), 1)
    docs = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    assert {(d["rule"]["id"], d["source"]["ip"]) for d in docs if d["event"]["kind"] == "alert"} == EXPECTED
