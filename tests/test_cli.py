"""Bad input at the command line: every case ends with one clear line naming what is wrong, the
documented exit code (sensor/cli.py: 2 usage or configuration, 3 capture), and never a traceback.
Whatever can still be read is processed."""
from __future__ import annotations

import gzip
import json
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.cli import main
from sensor.errors import EXIT_CAPTURE, EXIT_OK, EXIT_USAGE

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
GOOD = PCAPS / "mixpanel-plaintext.pcap"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PCAP_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z phi-sensor: ")  # the time stamp, then the message


def replay(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sensor", "replay", *map(str, args)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, cwd=cwd)


def assert_one_line_about(result: subprocess.CompletedProcess[str], name: str | Path, code: int) -> str:
    """The exit code, no traceback, and exactly one stderr line, naming `name`; returns that line."""
    assert "Traceback" not in result.stderr
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    about = [line for line in lines if str(name) in line]
    assert len(about) == 1, result.stderr
    assert LOG_LINE.match(about[0]), about[0]
    return about[0]


def pcap_records(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every record of a little-endian microsecond pcap."""
    records, pos = [], PCAP_HEADER.size
    while pos + RECORD_HEADER.size <= len(data):
        incl = RECORD_HEADER.unpack_from(data, pos)[2]
        records.append((pos, RECORD_HEADER.size + incl))
        pos += RECORD_HEADER.size + incl
    return records


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# --- capture files that are not what they claim -----------------------------------------------------


def test_the_good_capture_is_read_cleanly() -> None:
    result = replay(GOOD, "--emit", "events", "--quiet")
    assert (result.returncode, result.stderr) == (EXIT_OK, "")
    assert len(events(result.stdout)) == 4  # DNS, TLS and two plaintext requests


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("notes.txt", b"hello, this is not a capture\n", "not a capture file"),
        ("empty.pcap", b"", "empty file"),
        ("garbage.pcap.gz", gzip.compress(bytes(range(256)) * 4), "gzip file does not contain a pcap"),
        ("broken.pcap.gz", b"\x1f\x8b" + b"\xff" * 40, "corrupt gzip data"),
        ("header-only.pcap", GOOD.read_bytes()[:10], "truncated pcap header"),
    ],
    ids=["text", "empty", "gzip-of-garbage", "corrupt-gzip", "cut-header"],
)
def test_unreadable_file(tmp_path: Path, name: str, content: bytes, words: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    line = assert_one_line_about(replay(path, "--quiet"), path, EXIT_CAPTURE)
    assert words in line


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pcap"
    line = assert_one_line_about(replay(path, "--quiet"), path, EXIT_CAPTURE)
    assert "cannot open" in line and "No such file" in line


def test_directory_without_captures(tmp_path: Path) -> None:
    line = assert_one_line_about(replay(tmp_path, "--quiet"), tmp_path, EXIT_CAPTURE)
    assert "no capture files in this directory" in line


def test_truncated_capture_keeps_what_precedes_the_cut(tmp_path: Path) -> None:
    data = GOOD.read_bytes()
    records = pcap_records(data)
    offset, length = records[len(records) // 2]
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[: offset + length // 2])  # in the middle of a record
    result = replay(path, "--emit", "events", "--quiet")
    line = assert_one_line_about(result, path, EXIT_CAPTURE)
    assert "truncated" in line and f"byte {offset}" in line
    names = [doc["dns"]["question"]["name"] for doc in events(result.stdout) if doc["event"]["dataset"] == "phi_sensor.dns"]
    assert names == ["api.mixpanel.com"]  # the lookup comes before the cut


def test_truncated_gzip_capture(tmp_path: Path) -> None:
    packed = gzip.compress(GOOD.read_bytes())
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(packed[: len(packed) // 2])
    line = assert_one_line_about(replay(path, "--quiet"), path, EXIT_CAPTURE)
    assert "corrupt compressed data" in line


def test_gzip_capture_is_read(tmp_path: Path) -> None:
    path = tmp_path / "whole.pcap.gz"
    path.write_bytes(gzip.compress(GOOD.read_bytes()))
    plain = replay(GOOD, "--emit", "events", "--quiet")
    packed = replay(path, "--emit", "events", "--quiet")
    assert (packed.returncode, packed.stderr) == (EXIT_OK, "")
    assert packed.stdout == plain.stdout


def test_unknown_link_type(tmp_path: Path) -> None:
    path = tmp_path / "user0.pcap"
    frame = b"\x00" * 60
    path.write_bytes(PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, 147) + RECORD_HEADER.pack(1, 0, 60, 60) + frame)
    result = replay(path, "--emit", "events", "--stats", "--quiet")
    line = assert_one_line_about(result, path, EXIT_CAPTURE)
    assert "unsupported link type(s) [147]" in line
    assert result.stdout == ""
    assert "  packets" in result.stderr  # the run finished and reported its counters


def test_truncated_pcapng(tmp_path: Path) -> None:
    source = CORPUS / "community-id-ipv6__input.pcapng"
    if not source.exists():
        pytest.skip("shared corpus not present beside the repository")
    data = source.read_bytes()
    path = tmp_path / "cut.pcapng"
    path.write_bytes(data[: len(data) - 7])
    line = assert_one_line_about(replay(path, "--emit", "events", "--quiet"), path, EXIT_CAPTURE)
    assert "truncated" in line


def test_one_bad_file_among_good_ones(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"definitely not a capture")
    result = replay(GOOD, bad, PCAPS / "ga4-quic.pcap", "--emit", "events", "--quiet")
    assert_one_line_about(result, bad, EXIT_CAPTURE)
    names = {doc["dns"]["question"]["name"] for doc in events(result.stdout) if doc["event"]["dataset"] == "phi_sensor.dns"}
    assert names == {"api.mixpanel.com", "www.googletagmanager.com", "region1.google-analytics.com"}


def test_one_bad_file_still_reports_alerts_of_the_good_ones(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pcap"
    result = replay(missing, PCAPS / "ga4-quic.pcap", "--fail-on", "low", "--quiet")
    assert_one_line_about(result, missing, EXIT_CAPTURE)  # an unread capture outranks --fail-on
    assert len(events(result.stdout)) == 2


# --- configuration and options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("phi_hostz: [10.0.0.0/8]\n", "phi_hostz", "did you mean 'phi_hosts'"),
        ("rules:\n  plaintext-phi: {severity: urgent}\n", "rules.plaintext-phi.severity", "'urgent'"),
        ("rules:\n  plaintext-phy: {enabled: false}\n", "rules.plaintext-phy", "did you mean 'plaintext-phi'"),
        ("phi_hosts: [10.20.0.1/16]\n", "phi_hosts[0]", "host bits set"),
        ("baa:\n  - vendor: Segmnt\n", "baa[0].vendor", "did you mean 'Segment'"),
        ("outputs:\n  - {type: kafka}\n", "outputs[0].type", "expected one of"),
        ("decode:\n  max_flows: 0\n", "decode.max_flows", "at least 1"),
        ("phi_hosts: [10.0.0.0/8\n", "line 2", "invalid YAML"),
    ],
    ids=[
        "unknown-key", "bad-severity", "unknown-rule", "host-bits", "unknown-vendor", "unknown-sink", "range", "syntax",
    ],
)
def test_bad_configuration(tmp_path: Path, text: str, key: str, words: str) -> None:
    config = tmp_path / "sensor.yaml"
    config.write_text(text)
    result = replay(GOOD, "--config", config, "--quiet")
    line = assert_one_line_about(result, config, EXIT_USAGE)
    assert f"{config}: {key}" in line
    assert words in line
    assert result.stdout == ""


def test_missing_configuration(tmp_path: Path) -> None:
    config = tmp_path / "absent.yaml"
    line = assert_one_line_about(replay(GOOD, "--config", config, "--quiet"), config, EXIT_USAGE)
    assert "not found" in line


def test_url_output_without_a_type(tmp_path: Path) -> None:
    result = replay(GOOD, "--output", "ftp://127.0.0.1/alerts", "--quiet", cwd=tmp_path)
    line = assert_one_line_about(result, "--output", EXIT_USAGE)
    assert "needs its type" in line
    assert list(tmp_path.iterdir()) == []


def test_unknown_output_type(tmp_path: Path) -> None:
    result = replay(GOOD, "--output", "elastic=http://127.0.0.1:9200", "--quiet", cwd=tmp_path)
    assert_one_line_about(result, "--output", EXIT_USAGE)
    assert list(tmp_path.iterdir()) == []


def test_unknown_choice_is_a_usage_error() -> None:
    result = replay(GOOD, "--emit", "everything")
    assert result.returncode == EXIT_USAGE
    assert "Traceback" not in result.stderr
    assert "invalid choice: 'everything'" in result.stderr


# --- random and mutated captures ---------------------------------------------------------------------


def _mutations() -> st.SearchStrategy[bytes]:
    good = GOOD.read_bytes()
    flips = st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=40)

    def flip(changes: list[tuple[int, int]]) -> bytes:
        data = bytearray(good)
        for offset, value in changes:
            data[offset] = value
        return bytes(data)

    headers = st.builds(
        lambda linktype, body: PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype) + body,
        st.integers(0, 0xFFFFFFFF),
        st.binary(max_size=400),
    )
    return st.one_of(
        st.binary(max_size=300),
        flips.map(flip),
        st.integers(0, len(good)).map(lambda cut: good[:cut]),
        headers,
        st.binary(max_size=200).map(lambda body: b"\x0a\x0d\x0d\x0a" + body),
        st.binary(max_size=200).map(lambda body: gzip.compress(good[:24] + body)),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_random_and_mutated_captures_never_break_the_command(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        capture = Path(folder) / "input.pcap"
        capture.write_bytes(data)
        output = Path(folder) / "out.jsonl"
        arguments = ["replay", str(capture), "--emit", "all", "--output", str(output), "--quiet", "--prefilter", "never"]
        code = main(arguments)
        assert code in (EXIT_OK, EXIT_CAPTURE)  # never 70, the internal-error code
        # JSON lines end at "\n" only: splitlines() would also cut at a U+0085 inside a string.
        for line in filter(None, output.read_text().split("\n")) if output.exists() else ():
            json.loads(line)


def test_program_exit_flushes_every_output_and_keeps_the_exit_code(tmp_path: Path) -> None:
    """The program leaves without tearing its heap down (cli.run): nothing written may be lost."""
    to_file = tmp_path / "events.jsonl"
    assert main(["replay", str(PCAPS / "demo.pcap"), "--emit", "all", "--output", str(to_file), "--quiet"]) == EXIT_OK
    expected = to_file.read_text().splitlines()
    piped = replay(PCAPS / "demo.pcap", "--emit", "all", "--output", "-", "--quiet")
    assert piped.returncode == EXIT_OK, piped.stderr
    assert len(piped.stdout.splitlines()) == len(expected) > 10
    assert [json.loads(line)["event"]["kind"] for line in piped.stdout.splitlines()] == [
        json.loads(line)["event"]["kind"] for line in expected
    ]
    missing = replay(tmp_path / "missing.pcap")
    assert_one_line_about(missing, tmp_path / "missing.pcap", EXIT_CAPTURE)
    early_reader = subprocess.run(  # a reader that stops at once: a closed pipe is no traceback
        f"{sys.executable} -m sensor replay {PCAPS / 'demo.pcap'} --emit events --output - | head -c 1",
        shell=True, capture_output=True, text=True, timeout=120, check=False,
    )
    assert "Traceback" not in early_reader.stderr


def test_capture_times_no_date_can_name_are_clamped(tmp_path: Path) -> None:
    """pcapng timestamps are 64-bit: a packet from year 586524 still becomes an event."""
    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    dns = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(dns), 0) + dns
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes(4)) + udp
    frame = bytes(12) + b"\x08\x00" + ip
    stamp = 0xFFFFFFFFFFFFFFFF
    packet = block(6, struct.pack("<IIIII", 0, stamp >> 32, stamp & 0xFFFFFFFF, len(frame), len(frame)) + frame)
    path = tmp_path / "far-future.pcapng"
    path.write_bytes(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
                     + block(1, struct.pack("<HHI", 1, 0, 65535)) + packet)
    result = replay(path, "--emit", "all", "--output", "-", "--quiet")
    assert result.returncode == EXIT_OK, result.stderr
    assert [doc["@timestamp"] for doc in events(result.stdout)] == ["9999-12-31T23:59:59.999999Z"]


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "a.pcap", "b.pcap", "--emit", "all", "--workers", "2", "--signatures", "sigs"],
        ["report", "a.pcap", "--format", "json", "--exposure"],
        ["live", "-i", "eth0", "--workers", "2", "--no-ring"],
        ["check-config", "sensor.yaml", "--output", "-"],
        ["signatures", "lookup", "example.com", "--json"],
        ["setup", "--es", "http://localhost:9200"],
        ["status", "--json"],
    ],
)
def test_the_parser_of_one_command_reads_it_as_the_whole_parser(argv: list[str]) -> None:
    """main() builds only the options of the command it runs: the same arguments come out."""
    from sensor.cli import build_parser

    if argv[0] == "setup":  # main() hands setup its own arguments; the REMAINDER is still built
        argv = argv[:1]
    assert vars(build_parser(argv[0]).parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_a_replay_does_not_load_the_other_commands() -> None:
    code = (
        "import sys; from sensor.cli import build_parser;"
        "build_parser('replay').parse_args(['replay', 'a.pcap']);"
        "print('sensor.signatures_cmd' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "False"
