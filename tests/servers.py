"""Real servers on loopback for the sink tests: osmem (OpenSearch-compatible), a header-rewriting
proxy that lets the official Elasticsearch client talk to it (and simulates outages), and a
recording webhook server that fails on demand.

Test modules import the fixtures they use from here (`tests/conftest.py` is shared by everyone).
"""
from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

REAL_ES_URL = os.environ.get("PHI_SENSOR_TEST_ES_URL")
REAL_ES_API_KEY = os.environ.get("PHI_SENSOR_TEST_ES_API_KEY")
REAL_ES_CA_FILE = os.environ.get("PHI_SENSOR_TEST_ES_CA_FILE")

_COMPAT = re.compile(r"application/vnd\.elasticsearch\+([a-z-]+)\s*;\s*compatible-with=\d+", re.IGNORECASE)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection", "host"}

SEVERITY_SCORE = {"low": 21, "medium": 47, "high": 73, "critical": 99}


def make_alert(
    n: int,
    severity: str = "high",
    *,
    rule: str = "tracker-egress-no-baa",
    day: str = "2024-05-17",
    alert_key: str | None = None,
) -> dict[str, Any]:
    """An alert document shaped like the ones the sensor ships (ECS 8, nested form)."""
    src = f"10.20.{n // 250 % 250}.{n % 250 + 1}"
    return {
        "@timestamp": f"{day}T10:{n // 60 % 60:02d}:{n % 60:02d}.000Z",
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "severity": SEVERITY_SCORE[severity],
            "id": f"alert-{n:06d}-{rule}",
            "dataset": "phi_sensor.alert",
            "module": "phi_sensor",
        },
        "rule": {
            "id": rule,
            "name": "PHI host sent data to a tracker without a BAA",
            "category": "phi-egress",
            "ruleset": "phi-egress-sensor",
            "reference": "https://www.hhs.gov/hipaa/for-professionals/privacy/guidance/hipaa-online-tracking/index.html",
        },
        "source": {"ip": src, "port": 40000 + n % 20000},
        "destination": {"ip": "157.240.22.35", "port": 443, "domain": "www.facebook.com"},
        "network": {"transport": "tcp", "protocol": "tls", "community_id": f"1:{n:020d}="},
        "related": {"ip": [src, "157.240.22.35"], "hosts": ["www.facebook.com", "portal.example-health.org"]},
        "observer": {"name": "sensor-test", "type": "sensor"},
        "url": {"domain": "www.facebook.com", "path": "/tr/"},
        "tls": {"client": {"server_name": "www.facebook.com"}},
        "phi_egress": {
            "severity": severity,
            "alert_key": alert_key or f"{src}|meta-pixel|{rule}",
            "count": 1 + n % 4,
            "first_seen": f"{day}T10:00:00.000Z",
            "last_seen": f"{day}T10:05:00.000Z",
            "source_record": "tls",
            "vendor": {"id": "meta-pixel", "name": "Meta Pixel", "owner": "Meta Platforms", "category": "advertising"},
            "baa": {"status": "none", "stance": "Meta does not sign BAAs", "source": "https://www.facebook.com/business/help"},
            "phi_host": {"name": "portal.example-health.org", "tags": ["patient-portal"]},
            "phi": {"types": ["condition"], "categories": ["clinical"], "count": 1},
            "evidence": [
                {
                    "type": "condition",
                    "category": "clinical",
                    "confidence": 0.9,
                    "path": "dl",
                    "excerpt": "/conditions/[REDACTED]",
                }
            ],
            "tracker": {"decoder": "meta-pixel", "event": "PageView", "page_url": "https://portal.example-health.org/[REDACTED]"},
            "summary": f"portal.example-health.org sent a condition page view to Meta Pixel (no BAA) #{n}",
        },
    }


def make_event(n: int, day: str = "2024-05-17") -> dict[str, Any]:
    return {
        "@timestamp": f"{day}T11:00:{n % 60:02d}.000Z",
        "event": {"kind": "event", "dataset": "dns", "id": f"event-{n:06d}", "module": "phi_sensor"},
        "source": {"ip": "10.0.0.5", "port": 53000 + n},
        "destination": {"ip": "10.0.0.53", "port": 53},
        "network": {"transport": "udp", "protocol": "dns"},
        "dns": {
            "question": {"name": "connect.facebook.net", "type": "A", "registered_domain": "facebook.net"},
            "answers": [{"name": "connect.facebook.net", "type": "A", "data": "157.240.22.19", "ttl": 60}],
            "resolved_ip": ["157.240.22.19"],
            "response_code": "NOERROR",
        },
        "observer": {"name": "sensor-test", "type": "sensor"},
    }


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# -- search backends --------------------------------------------------------------------------
@dataclass
class SearchBackend:
    """A cluster to read back what the sinks wrote, with the same credentials the sinks use."""

    kind: str  # "osmem" or "elasticsearch"
    url: str
    prefix: str
    session: requests.Session

    @property
    def namespace(self) -> str:
        """A data stream namespace of this test's own (no '-' allowed there)."""
        return self.prefix.replace("-", "_")

    def refresh(self) -> None:
        self.session.post(f"{self.url}/{self.prefix}-*/_refresh", timeout=10)

    def ids_in(self, pattern: str) -> list[str]:
        """Ids of the documents in `pattern` (comma-separated patterns and data streams too)."""
        self.session.post(f"{self.url}/{pattern}/_refresh", params={"ignore_unavailable": "true"}, timeout=10)
        response = self.session.post(
            f"{self.url}/{pattern}/_search", params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            json={"size": 10000, "_source": False, "query": {"match_all": {}}}, timeout=10,
        )
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [hit["_id"] for hit in response.json()["hits"]["hits"]]

    def ids(self, kind: str = "alerts") -> list[str]:
        self.refresh()
        response = self.session.post(
            f"{self.url}/{self.prefix}-{kind}-*/_search",
            json={"size": 10000, "_source": False, "query": {"match_all": {}}},
            timeout=10,
        )
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return [hit["_id"] for hit in response.json()["hits"]["hits"]]

    def indices(self) -> list[str]:
        response = self.session.get(f"{self.url}/_cat/indices/{self.prefix}-*", params={"format": "json"}, timeout=10)
        if response.status_code == 404:
            return []
        return sorted(row["index"] for row in response.json())

    def mapping(self, index: str) -> dict[str, Any]:
        response = self.session.get(f"{self.url}/{index}/_mapping", timeout=10)
        response.raise_for_status()
        return response.json()[index]["mappings"]

    def cleanup(self) -> None:
        for index in self.indices():
            self.session.delete(f"{self.url}/{index}", timeout=10)
        for path in (f"_index_template/{self.prefix}-alerts", f"_index_template/{self.prefix}-events",
                     f"_component_template/{self.prefix}-ecs", f"_ilm/policy/{self.prefix}-alerts",
                     f"_ilm/policy/{self.prefix}-events"):
            self.session.delete(f"{self.url}/{path}", timeout=10)
        install = f"phi_sensor-{self.namespace}"
        self.session.delete(f"{self.url}/_data_stream/logs-phi_sensor.*-{self.namespace}", timeout=10)
        for name in ("alert", "dns", "tls", "quic", "http", "stats"):
            self.session.delete(f"{self.url}/_index_template/{install}-{name}", timeout=10)
        for path in (f"_component_template/{install}-ecs", f"_ilm/policy/{install}-alerts", f"_ilm/policy/{install}-events"):
            self.session.delete(f"{self.url}/{path}", timeout=10)


@pytest.fixture(params=["osmem", "elasticsearch"])
def search_backend(request: pytest.FixtureRequest) -> Iterator[SearchBackend]:
    """osmem on loopback always; a real Elasticsearch too when PHI_SENSOR_TEST_ES_URL is set."""
    prefix = f"phi-sensor-t{uuid.uuid4().hex[:8]}"
    session = requests.Session()
    if request.param == "osmem":
        from osmem_server import OsmemServer

        server = OsmemServer.start(japanese=False)
        try:
            yield SearchBackend("osmem", server.url, prefix, session)
        finally:
            session.close()
            server.close()
        return
    if not REAL_ES_URL:
        pytest.skip("PHI_SENSOR_TEST_ES_URL is not set")
    if REAL_ES_API_KEY:
        session.headers["Authorization"] = f"ApiKey {REAL_ES_API_KEY}"
    if REAL_ES_CA_FILE:
        session.verify = REAL_ES_CA_FILE
    backend = SearchBackend("elasticsearch", REAL_ES_URL.rstrip("/"), prefix, session)
    try:
        yield backend
    finally:
        backend.cleanup()
        session.close()


@pytest.fixture
def osmem_backend() -> Iterator[SearchBackend]:
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False)
    session = requests.Session()
    try:
        yield SearchBackend("osmem", server.url, f"phi-sensor-t{uuid.uuid4().hex[:8]}", session)
    finally:
        session.close()
        server.close()


# -- a proxy that makes the Elasticsearch client and OpenSearch-compatible servers meet --------
class _TrackingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: Any) -> None:
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _LoopbackServer:
    """Start/stop a handler on one loopback port; stop also cuts open keep-alive connections."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.port = 0
        self._server: _TrackingServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = _TrackingServer(("127.0.0.1", self.port), self.handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()
        self._server = None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the delayed-ACK stall
    server: _TrackingServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _relay(self) -> None:
        proxy: EsCompatProxy = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        proxy.seen.append((self.command, self.path))
        status = proxy.fail_status
        if status:
            payload = json.dumps({"error": {"type": "unavailable", "reason": "proxy says no"}, "status": status}).encode()
            self._answer(status, {"Content-Type": "application/json"}, payload)
            return
        refusal = proxy.check_media_types(self.headers)
        if refusal is not None:
            self._answer(400, {"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"}, refusal)
            return
        path = self.path.split("?")[0]
        if proxy.forbid_updates and self.command in ("PUT", "POST") and "/_doc/" in path and "if_seq_no" in self.path:
            payload = json.dumps({"error": {"type": "security_exception", "reason": "action [indices:data/write/index] "
                                            "is unauthorized"}, "status": 403}).encode()
            self._answer(403, {"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"}, payload)
            return
        if self.command in ("GET", "HEAD") and path == "/":
            data = json.dumps(proxy.root_answer()).encode()
            self._answer(200, {"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"},
                         b"" if self.command == "HEAD" else data)
            return
        if self.command in ("PUT", "POST") and path.startswith("/_index_template/") and body:
            body = proxy.take_data_stream_template(body)
        headers = {k: _COMPAT.sub(r"application/\1", v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        rejected: dict[int, dict[str, Any]] = {}
        if path.endswith("/_bulk") and (proxy.reject_items > 0 or proxy.stream_patterns):
            body, rejected = proxy.take_rejections(body)
            if not body:
                self._answer(200, {"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"},
                             _merge_bulk(b"", rejected))
                return
        upstream = urlsplit(proxy.upstream)
        connection: http.client.HTTPConnection
        if upstream.scheme == "https":
            context = ssl.create_default_context(cafile=REAL_ES_CA_FILE) if REAL_ES_CA_FILE else ssl.create_default_context()
            connection = http.client.HTTPSConnection(upstream.hostname or "", upstream.port or 443, timeout=30, context=context)
        else:
            connection = http.client.HTTPConnection(upstream.hostname or "", upstream.port or 80, timeout=30)
        if body or self.command in ("POST", "PUT"):
            headers["Content-Length"] = str(len(body))
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            reply_headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
            code = response.status
        finally:
            connection.close()
        with proxy.lock:
            drop = proxy.drop_after_forward > 0
            if drop:
                proxy.drop_after_forward -= 1
        if drop:
            # The upstream did the work; the client never hears about it (an ambiguous failure).
            self.close_connection = True
            return
        if rejected:
            data = _merge_bulk(data, rejected)
        reply_headers["X-Elastic-Product"] = "Elasticsearch"
        self._answer(code, reply_headers, data)

    def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay


def _merge_bulk(data: bytes, rejected: dict[int, dict[str, Any]]) -> bytes:
    answer = json.loads(data) if data else {"items": [], "took": 0}
    forwarded = iter(answer.get("items", []))
    total = len(answer.get("items", [])) + len(rejected)
    answer["items"] = [rejected[i] if i in rejected else next(forwarded) for i in range(total)]
    answer["errors"] = True
    return json.dumps(answer).encode()


# What each Elasticsearch major accepts in `compatible-with` (REST API compatibility: one major back).
ACCEPTED_COMPAT = {7: (6, 7), 8: (7, 8), 9: (8, 9)}


class EsCompatProxy(_LoopbackServer):
    """An Elasticsearch of version `version` (8.x or 9.x) in front of an OpenSearch-compatible server.

    Like that Elasticsearch it answers `GET /` with its version and `X-Elastic-Product:
    Elasticsearch`, takes `compatible-with` values of its own major and the one before, and answers
    the rest with Elasticsearch's 400 `media_type_header_exception`. Index templates with
    `data_stream` make their names data streams: there, only `create` with an @timestamp is taken
    (Elasticsearch's item errors otherwise). Then it forwards as `application/json`.

    Failure switches: `fail_status` answers every request with that status; `drop_after_forward`
    forwards the next N requests and then hangs up without answering; `reject_items` answers 429
    for the next N bulk items without forwarding them; `stop()`/`start()` refuse connections.
    """

    handler = _ProxyHandler

    def __init__(self, upstream: str, version: str = "9.1.0") -> None:
        super().__init__()
        self.upstream = upstream
        self.version = version
        self.major = int(version.partition(".")[0])
        self.lock = threading.Lock()
        self.fail_status = 0
        self.drop_after_forward = 0
        self.reject_items = 0
        self.rejected_ids: list[str] = []
        self.seen: list[tuple[str, str]] = []
        self.compat_seen: set[int] = set()  # compatible-with values the client sent
        self.media_refusals = 0
        self.stream_patterns: list[str] = []
        self.forbid_updates = False  # a key with create_doc only: conditional overwrites answer 403

    def bulk_requests(self) -> int:
        return sum(path.split("?")[0].endswith("/_bulk") for _, path in self.seen)

    def root_answer(self) -> dict[str, Any]:
        return {
            "name": "es-like", "cluster_name": "es-like", "cluster_uuid": "es-like-uuid",
            "version": {"number": self.version, "build_flavor": "default", "build_type": "docker",
                        "lucene_version": "9.12.0", "minimum_wire_compatibility_version": f"{self.major - 1}.18.0",
                        "minimum_index_compatibility_version": f"{self.major - 1}.0.0"},
            "tagline": "You Know, for Search",
        }

    def check_media_types(self, headers: Any) -> bytes | None:
        """None when Elasticsearch `major` takes the request's Accept and Content-Type, else its 400 body."""
        for name in ("Accept", "Content-Type"):
            value = headers.get(name) or ""
            found = re.search(r"compatible-with=(\d+)", value)
            if not found:
                continue
            wanted = int(found[1])
            with self.lock:
                self.compat_seen.add(wanted)
            allowed = ACCEPTED_COMPAT[self.major]
            if wanted not in allowed:
                with self.lock:
                    self.media_refusals += 1
                reason = f"Invalid media-type value on headers [{name}]"
                cause = (f"{name} version must be either version {allowed[1]} or {allowed[0]}, "
                         f"but found {wanted}. {name}={value}")
                return json.dumps({
                    "error": {"root_cause": [{"type": "media_type_header_exception", "reason": reason}],
                              "type": "media_type_header_exception", "reason": reason,
                              "caused_by": {"type": "status_exception", "reason": cause}},
                    "status": 400,
                }).encode()
        return None

    def take_data_stream_template(self, body: bytes) -> bytes:
        """Remember a data stream template's patterns; the upstream gets it without `data_stream`."""
        template = json.loads(body)
        if isinstance(template, dict) and "data_stream" in template:
            del template["data_stream"]
            with self.lock:
                self.stream_patterns.extend(template.get("index_patterns", []))
        return json.dumps(template).encode()

    def is_stream(self, index: str) -> bool:
        return any(fnmatch.fnmatchcase(index, pattern) for pattern in self.stream_patterns)

    def take_rejections(self, body: bytes) -> tuple[bytes, dict[int, dict[str, Any]]]:
        lines = body.decode().splitlines()
        kept: list[str] = []
        rejected: dict[int, dict[str, Any]] = {}
        for position in range(len(lines) // 2):
            action, source = lines[2 * position], lines[2 * position + 1]
            op, meta = next(iter(json.loads(action).items()))
            error = None
            if self.is_stream(meta.get("_index", "")):
                if op != "create":
                    error = {"type": "illegal_argument_exception",
                             "reason": "only write ops with an op_type of create are allowed in data streams"}
                elif "@timestamp" not in json.loads(source):
                    error = {"type": "document_parsing_exception",
                             "reason": "data stream timestamp field [@timestamp] is missing"}
            if error is not None:
                rejected[position] = {op: {"_index": meta.get("_index"), "_id": meta.get("_id"), "status": 400,
                                           "error": error}}
                continue
            with self.lock:
                reject = self.reject_items > 0
                if reject:
                    self.reject_items -= 1
            if reject:
                self.rejected_ids.append(meta.get("_id", ""))
                rejected[position] = {op: {
                    "_index": meta.get("_index"), "_id": meta.get("_id"), "status": 429,
                    "error": {"type": "es_rejected_execution_exception", "reason": "queue full"},
                }}
            else:
                kept.extend((action, source))
        return ("\n".join(kept) + "\n").encode() if kept else b"", rejected


@pytest.fixture
def es_proxy(search_backend: SearchBackend) -> Iterator[EsCompatProxy]:
    proxy = EsCompatProxy(search_backend.url)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(params=["8.17.0", "9.1.0"], ids=["es8", "es9"])
def es_like(request: pytest.FixtureRequest, osmem_backend: SearchBackend) -> Iterator[EsCompatProxy]:
    """An 8.x-like and a 9.x-like Elasticsearch in front of osmem."""
    proxy = EsCompatProxy(osmem_backend.url, request.param)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


# -- webhook receiver ---------------------------------------------------------------------------
@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _WebhookHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _TrackingServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        hook: WebhookServer = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with hook.lock:
            behaviour = hook.script.popleft() if hook.script else hook.default
            hook.attempts.append(Received(time.monotonic(), self.path, dict(self.headers.items()), body))
        status, headers, hang = behaviour.status, behaviour.headers, behaviour.hang
        if hang:
            hook.release.wait(hang)
            self.close_connection = True
            return
        if 200 <= status < 300:
            with hook.lock:
                hook.received.append(Received(time.monotonic(), self.path, dict(self.headers.items()), body))
        data = behaviour.body
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_PUT = do_GET = do_POST


@dataclass
class Behaviour:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds to stall without answering
    body: bytes = b'{"ok":true}'


class WebhookServer(_LoopbackServer):
    """Records every POST; answers from `script` (a queue of Behaviours) and then with `default`."""

    handler = _WebhookHandler

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.script: deque[Behaviour] = deque()
        self.default = Behaviour()
        self.attempts: list[Received] = []
        self.received: list[Received] = []  # attempts answered 2xx
        self.release = threading.Event()

    def start(self) -> None:
        self.release.clear()
        super().start()

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    server = WebhookServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
