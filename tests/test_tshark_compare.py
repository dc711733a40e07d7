"""Our protocol events against tshark, the reference decoder, on every story capture and every
capture of the shared corpus: DNS query names, TLS and QUIC server names (with the transport they
came over), and HTTP requests (host, method, target as sent).

Where tshark is known to miss something the sensor rightly finds, the exception is listed below by
capture and value; everything else must agree exactly.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sensor.cli import main
from sensor.errors import EXIT_OK

TSHARK = shutil.which("tshark")
REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

# One display filter for the three questions, so each capture is read once; a frame's fields are
# only counted for the question it matched, as three separate -Y runs would.
DISPLAY_FILTER = "dns.flags.response==0 || tls.handshake.type==1 || http.request"
FIELDS = (
    "frame.protocols",
    "dns.flags.response",
    "dns.qry.name",
    "tls.handshake.type",
    "tls.handshake.extensions_server_name",
    "http.request",
    "http.host",
    "http.request.method",
    "http.request.uri",
)
AGGREGATOR = "\x1f"  # between occurrences of one field in a frame: never part of a name or a URI

HttpRequest = tuple[str, str, str]  # (host without port, method, request target as sent)

# The plaintext GET sent through the CONNECT tunnel ("GE" + "T / HTTP/1.1" in two segments, no Host
# header): suricata-verify expects it, tshark does not decode HTTP inside a tunnel it saw set up.
TSHARK_MISSES: dict[str, Counter[HttpRequest]] = {
    "http-connect__http-connect-fragmented__input.pcap": Counter({("", "GET", "/"): 1}),
}


@dataclass
class Seen:
    dns: set[str] = field(default_factory=set)
    sni: set[tuple[str, str]] = field(default_factory=set)  # (server name, transport)
    http: Counter[HttpRequest] = field(default_factory=Counter)


def host_without_port(value: str) -> str:
    value = value.strip()
    if value.startswith("["):  # an IPv6 literal, with or without a port
        return value[1:].partition("]")[0].lower()
    host, colon, port = value.rpartition(":")
    return (host if colon and port.isdigit() and ":" not in host else value).lower()


def tshark_view(capture: Path) -> Seen:
    command = [
        TSHARK, "-2", "-n", "-r", str(capture), "-o", "tcp.reassemble_out_of_order:TRUE",
        "-Y", DISPLAY_FILTER, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
        "-E", f"aggregator={AGGREGATOR}",
    ]
    for name in FIELDS:
        command += ["-e", name]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = Seen()
    for line in result.stdout.splitlines():
        values = dict(zip(FIELDS, line.split("\t")))
        lists = {name: [item for item in value.split(AGGREGATOR) if item] for name, value in values.items()}
        if "0" in lists["dns.flags.response"]:
            seen.dns.update(name.rstrip(".").lower() for name in lists["dns.qry.name"])
        if "1" in lists["tls.handshake.type"]:
            transport = "udp" if ":quic" in values["frame.protocols"] else "tcp"
            seen.sni.update((name.lower(), transport) for name in lists["tls.handshake.extensions_server_name"])
        methods = lists["http.request.method"]
        if lists["http.request"] and methods:
            hosts = lists["http.host"] if len(lists["http.host"]) == len(methods) else [""] * len(methods)
            for host, method, uri in zip(hosts, methods, lists["http.request.uri"]):
                seen.http[(host_without_port(host), method, uri)] += 1
    return seen


def sensor_view(capture: Path, tmp_path: Path) -> Seen:
    output = tmp_path / "events.jsonl"
    # The story captures carry health data on purpose: compare the targets as sent, not redacted.
    unredacted = ["--unredacted"] if capture.parent == PCAPS else []
    code = main(["replay", str(capture), "--emit", "events", "--output", str(output), "--quiet", *unredacted])
    assert code == EXIT_OK
    seen = Seen()
    for line in output.read_text().splitlines():
        doc = json.loads(line)
        dataset = doc["event"]["dataset"]
        if dataset == "phi_sensor.dns":
            seen.dns.add(doc["dns"]["question"]["name"].rstrip(".").lower())
        elif dataset in ("phi_sensor.tls", "phi_sensor.quic"):
            name = doc.get("tls", {}).get("client", {}).get("server_name")
            if name:
                seen.sni.add((name.lower(), doc["network"]["transport"]))
        elif dataset == "phi_sensor.http":
            url = doc.get("url", {})
            host = host_without_port(url.get("domain", ""))
            seen.http[(host, doc["http"]["request"]["method"], url.get("original", ""))] += 1
    return seen


def _captures() -> list:
    params = [pytest.param(path, id=path.name) for path in sorted(PCAPS.glob("*.pcap"))]
    corpus = sorted(CORPUS.glob("*.pcap*")) if CORPUS.is_dir() else []
    if not corpus:
        params.append(pytest.param(None, id="corpus", marks=pytest.mark.skip(reason="shared corpus not present")))
    params += [pytest.param(path, id=path.name) for path in corpus]
    return params


CAPTURES = _captures()


Views = Callable[[Path], tuple[Seen, Seen]]


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Views:
    """(tshark, sensor) per capture, each computed once for the three comparisons."""
    cache: dict[Path, tuple[Seen, Seen]] = {}
    folder = tmp_path_factory.mktemp("events")

    def get(capture: Path) -> tuple[Seen, Seen]:
        if capture not in cache:
            workdir = folder / capture.name
            workdir.mkdir()
            cache[capture] = (tshark_view(capture), sensor_view(capture, workdir))
        return cache[capture]

    return get


def test_the_captures_are_all_there() -> None:
    story_files = {entry["file"] for entry in json.loads((PCAPS / "stories.json").read_text())["captures"]}
    assert story_files <= {path.name for path in PCAPS.glob("*.pcap")}


@pytest.mark.parametrize("capture", CAPTURES)
def test_dns_query_names(views: Views, capture: Path) -> None:
    reference, ours = views(capture)
    assert ours.dns == reference.dns


@pytest.mark.parametrize("capture", CAPTURES)
def test_tls_and_quic_server_names(views: Views, capture: Path) -> None:
    reference, ours = views(capture)
    assert ours.sni == reference.sni


@pytest.mark.parametrize("capture", CAPTURES)
def test_http_requests(views: Views, capture: Path) -> None:
    reference, ours = views(capture)
    missed = TSHARK_MISSES.get(capture.name, Counter())
    assert ours.http - reference.http == missed
    assert reference.http - ours.http == Counter()


def test_something_was_compared(views: Views) -> None:
    """Guards the comparison itself: tshark must have produced names and requests to compare."""
    reference, _ = views(PCAPS / "demo.pcap")
    assert "api.mixpanel.com" in reference.dns
    assert ("www.facebook.com", "tcp") in reference.sni
    assert sum(reference.http.values()) == 4
    quic, _ = views(PCAPS / "ga4-quic.pcap")
    assert ("region1.google-analytics.com", "udp") in quic.sni
