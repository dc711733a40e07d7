"""ECS 8 documents for protocol events and alerts (the shapes Packetbeat and the Suricata
integration use, so Kibana users feel at home). Our own fields live under `phi_egress.*`."""
from __future__ import annotations

import base64
import functools
import hashlib
import socket
import struct
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from urllib.parse import urlsplit

import orjson

from sensor.enrich.ech import is_cover_name
from sensor.phi import redact_url, scan_http
from sensor.records import DnsQuery, Flow, HttpRequest, Record, TlsHello

try:  # the compiled fast paths (see sensor/_fast.c); community_id_py, _envelope_py and the dict
    # builders with orjson are the reference
    from sensor._fast import bind_json as _bind_json
    from sensor._fast import community_id as _community_id_fast
    from sensor._fast import dns_event_line as _dns_line_fast
    from sensor._fast import event_envelope as _envelope_fast
    from sensor._fast import tls_event_line as _tls_line_fast

    _bind_json(orjson.dumps)
except ImportError:  # built without a C compiler
    _community_id_fast = _envelope_fast = _dns_line_fast = _tls_line_fast = None

ECS_VERSION = "8.11.0"
MODULE = "phi_sensor"
_PROTO_NUMBERS = {"tcp": 6, "udp": 17}


_SECOND_PREFIX: dict[int, str] = {}


# The instants a date can name (years 1 to 9999): a capture can claim any 64-bit time.
_FIRST_SECOND = int(datetime(1, 1, 1, tzinfo=timezone.utc).timestamp())
_LAST_SECOND = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp())


def iso_time(ts: float) -> str:
    """UTC ISO 8601 with microseconds; the date-time part is cached per second (events cluster).
    A time outside years 1 to 9999 is given as the nearest one inside."""
    second = int(ts // 1)
    prefix = _SECOND_PREFIX.get(second)
    if prefix is None:
        if not _FIRST_SECOND <= second <= _LAST_SECOND:
            return "0001-01-01T00:00:00.000000Z" if second < _FIRST_SECOND else "9999-12-31T23:59:59.999999Z"
        if len(_SECOND_PREFIX) > 4096:
            _SECOND_PREFIX.clear()
        # isoformat, not strftime: "%Y" leaves years below 1000 unpadded on glibc
        prefix = _SECOND_PREFIX[second] = datetime.fromtimestamp(second, tz=timezone.utc).isoformat()[:19]
    micros = min(int((ts - second) * 1_000_000 + 0.5), 999_999)
    return f"{prefix}.{micros:06d}Z"


_COMMUNITY_CACHE: dict[tuple, str] = {}


def community_id(flow: Flow, seed: int = 0) -> str:
    """Community ID v1 (the flow hash Zeek, Suricata and Arkime share), so analysts can pivot."""
    if _community_id_fast is not None:
        value = _community_id_fast(
            flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port, _PROTO_NUMBERS.get(flow.transport, 0), seed
        )
        if value is not None:
            return value
    return community_id_py(flow, seed)


def community_id_py(flow: Flow, seed: int = 0) -> str:
    """community_id in pure Python, cached per flow."""
    key = (flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port, flow.transport, seed)
    cached = _COMMUNITY_CACHE.get(key)
    if cached is not None:
        return cached
    family = socket.AF_INET6 if ":" in flow.src_ip else socket.AF_INET
    src = socket.inet_pton(family, flow.src_ip)
    dst = socket.inet_pton(family, flow.dst_ip)
    sport, dport = flow.src_port, flow.dst_port
    if (src, sport) > (dst, dport):
        src, dst, sport, dport = dst, src, dport, sport
    proto = _PROTO_NUMBERS.get(flow.transport, 0)
    digest = hashlib.sha1(struct.pack("!H", seed) + src + dst + struct.pack("!BBHH", proto, 0, sport, dport)).digest()
    value = "1:" + base64.b64encode(digest).decode()
    if len(_COMMUNITY_CACHE) > 100_000:
        _COMMUNITY_CACHE.clear()
    _COMMUNITY_CACHE[key] = value
    return value


class EventBuilder:
    """Turns records into ECS event documents."""

    def __init__(self, observer: str, registered_domain: Callable[[str], str], redact_urls: bool = True) -> None:
        self.observer = {"name": observer, "type": "sensor", "product": "phi-egress-sensor"}
        self.registered_domain = registered_domain
        self.redact_urls = redact_urls
        self._line_prefixes: dict[str, bytes] = {}
        # the packet decoder's tunnelled flows (sensor.decode.packet.PacketDecoder.tunnels), when wired
        self.tunnels: Mapping[tuple, tuple[dict, int | None, int | None]] = {}

    def __call__(self, record: Record) -> dict:
        if isinstance(record, DnsQuery):
            doc = self.dns(record)
        elif isinstance(record, TlsHello):
            doc = self.tls(record)
        else:
            doc = self.http(record)
        if self.tunnels:
            tunnel = self._tunnel(record.flow)
            if tunnel is not None:
                self._add_tunnel(doc, *tunnel)
        return doc

    def _tunnel(self, flow: Flow) -> tuple[dict, int | None, int | None] | None:
        tunnels = self.tunnels
        found = tunnels.get((flow.src_ip, flow.src_port, flow.dst_ip, flow.dst_port))
        return found if found is not None else tunnels.get((flow.dst_ip, flow.dst_port, flow.src_ip, flow.src_port))

    @staticmethod
    def _add_tunnel(doc: dict, info: dict, outer_vlan: int | None, inner_vlan: int | None) -> None:
        """The outside of a tunnelled flow: ECS VLAN fields and phi_egress.tunnel."""
        network = doc["network"]
        if outer_vlan is not None:
            network["vlan"] = {"id": str(outer_vlan)}
        if inner_vlan is not None:
            network["inner"] = {"vlan": {"id": str(inner_vlan)}}
        doc.setdefault("phi_egress", {})["tunnel"] = dict(info)

    def json_line(self, record: Record) -> bytes:
        """The event of `record` as one JSON line, byte for byte what orjson makes of self(record).

        DNS and TLS events, most of a capture's, are written by compiled code without building the
        dict first (the observer is read once, at the first such event).
        """
        kind = type(record)
        line = None
        if self.tunnels and self._tunnel(record.flow) is not None:
            pass  # the compiled writers know nothing of tunnels
        elif kind is DnsQuery and _dns_line_fast is not None:
            line = _dns_line_fast(record, self.registered_domain(record.name) or None, self._line_prefix("dns"))
        elif kind is TlsHello and _tls_line_fast is not None:
            name = record.server_name
            domain = name if name and not (record.ech and is_cover_name(name)) else None
            line = _tls_line_fast(record, domain, self._line_prefix("tls"))
        return orjson.dumps(self(record), option=orjson.OPT_APPEND_NEWLINE) if line is None else line

    def _line_prefix(self, dataset: str) -> bytes:
        """`"ecs":...,"event":...,"observer":...` of a `dataset` event, as orjson writes them."""
        prefix = self._line_prefixes.get(dataset)
        if prefix is None:
            envelope = self._envelope_py(0.0, dataset, Flow("0.0.0.0", 0, "0.0.0.0", 0, "udp"), dataset)
            prefix = orjson.dumps({key: envelope[key] for key in ("ecs", "event", "observer")})[1:-1]
            self._line_prefixes[dataset] = prefix
        return prefix

    def _envelope(self, ts: float, dataset: str, flow: Flow, protocol: str) -> dict:
        """The fields every event has: time, ECS metadata, observer, the two ends and the flow."""
        if _envelope_fast is not None:
            doc = _envelope_fast(ts, dataset, flow, protocol, self.observer, ECS_VERSION, MODULE)
            if doc is not None:
                return doc
        return self._envelope_py(ts, dataset, flow, protocol)

    def _envelope_py(self, ts: float, dataset: str, flow: Flow, protocol: str) -> dict:
        """_envelope in Python: the reference, and the path for what the compiled one declines."""
        return {
            "@timestamp": iso_time(ts),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": "event",
                "category": ["network"],
                "type": ["protocol", "connection"],
                "dataset": dataset,
                "module": MODULE,
            },
            "observer": self.observer,
            "source": {"ip": flow.src_ip, "port": flow.src_port},
            "destination": {"ip": flow.dst_ip, "port": flow.dst_port},
            "network": {
                "transport": flow.transport,
                "protocol": protocol,
                "type": "ipv6" if ":" in flow.src_ip else "ipv4",
                "community_id": community_id(flow),
            },
        }

    def dns(self, rec: DnsQuery) -> dict:
        doc = self._envelope(rec.ts, "dns", rec.flow, "dns")
        question = {"name": rec.name, "type": rec.qtype}
        registered = self.registered_domain(rec.name)
        if registered:
            question["registered_domain"] = registered
        dns: dict = {"id": rec.id, "type": "answer" if rec.response_seen else "query", "question": question}
        resolved: list[str] = []
        if rec.response_seen:
            dns["response_code"] = rec.rcode
            if rec.answers:
                dns["answers"] = [{"name": a.name, "type": a.type, "data": a.data, "ttl": a.ttl} for a in rec.answers]
                resolved = [a.data for a in rec.answers if a.type == "A" or a.type == "AAAA"]
                if resolved:
                    dns["resolved_ip"] = resolved
        doc["dns"] = dns
        doc["related"] = {"ip": _related_ips(rec.flow, resolved), "hosts": [rec.name]}
        return doc

    def tls(self, rec: TlsHello) -> dict:
        doc = self._envelope(rec.ts, "tls", rec.flow, rec.protocol)
        tls_doc: dict = {"client": {}}
        if rec.server_name:
            tls_doc["client"]["server_name"] = rec.server_name
            if not (rec.ech and is_cover_name(rec.server_name)):  # an ECH cover name is never the destination
                doc["destination"]["domain"] = rec.server_name
        if rec.version:
            tls_doc["version"] = rec.version
            tls_doc["version_protocol"] = "tls"
        doc["tls"] = tls_doc
        doc["phi_egress"] = {"tls": {"alpn": list(rec.alpn), "ech": rec.ech}}
        doc["related"] = {"ip": _related_ips(rec.flow), "hosts": [rec.server_name] if rec.server_name else []}
        return doc

    def http(self, rec: HttpRequest) -> dict:
        doc = self._envelope(rec.ts, "http", rec.flow, "http")
        target, referrer = rec.target, rec.header("referer")
        if self.redact_urls:
            target, referrer = _redacted_event_urls(rec.method, target, referrer)
        url: dict = {"original": target}
        path, query = _split_target(target)
        if path:
            url["path"] = path
        if query:
            url["query"] = query
        if rec.host:
            if _is_ip_literal(rec.host):
                url["domain"] = f"[{rec.host}]" if ":" in rec.host else rec.host  # ECS keeps IPv6 brackets
            else:
                url["domain"] = rec.host
                doc["destination"]["domain"] = rec.host
        doc["url"] = url
        request: dict = {"method": rec.method, "body": {"bytes": rec.body_bytes}}
        if referrer:
            request["referrer"] = referrer
        content_type = rec.header("content-type")
        if content_type:
            request["mime_type"] = content_type.split(";", 1)[0].strip().lower()
        doc["http"] = {"version": rec.version, "request": request}
        agent = rec.header("user-agent")
        if agent:
            doc["user_agent"] = {"original": agent}
        doc["related"] = {"ip": _related_ips(rec.flow), "hosts": [rec.host] if rec.host else []}
        return doc


# Events repeat request lines (asset paths, beacons); one bounded cache, keyed by the URLs alone.
_CACHED_URL_CHARS = 2048


def _redacted_event_urls(method: str, target: str, referrer: str | None) -> tuple[str, str | None]:
    """_redacted_request_urls for an event (no findings known beforehand), cached for short URLs."""
    if len(target) + len(referrer or "") <= _CACHED_URL_CHARS:
        return _redacted_event_urls_cached(method, target, referrer)
    return _redacted_request_urls(method, target, referrer)


@functools.lru_cache(maxsize=4096)
def _redacted_event_urls_cached(method: str, target: str, referrer: str | None) -> tuple[str, str | None]:
    return _redacted_request_urls(method, target, referrer)


def _redacted_request_urls(
    method: str, target: str, referrer: str | None, known: list | tuple = ()
) -> tuple[str, str | None]:
    """The request target and referrer with any health data they carry (or `known` found) masked."""
    findings = scan_http(method, target, (("referer", referrer),) if referrer else (), b"", None)
    findings = [*findings, *known]
    if not findings:
        return target, referrer
    return redact_url(target, findings), (redact_url(referrer, findings) if referrer else None)


def _is_ip_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, ValueError):  # ValueError: a NUL byte in a hostile Host header
        return False
    return True


def _related_ips(flow: Flow, extra=()) -> list[str]:
    ips = [flow.src_ip, flow.dst_ip]
    ips.extend(ip for ip in extra if ip not in ips)
    return ips


def _split_target(target: str) -> tuple[str, str]:
    """Path and query of a request target (origin form, or absolute form as proxies see it)."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    return "", ""  # authority form (CONNECT) or "*"


class AlertBuilder:
    """Turns throttled alerts into ECS alert documents; health data values are redacted unless
    the operator asked for `unredacted` (a logged forensic opt-in)."""

    def __init__(self, events: EventBuilder, unredacted: bool = False) -> None:
        self.events = events
        self.unredacted = unredacted

    def __call__(self, alert, count: int, first_seen: float, last_seen: float, event_id: str) -> dict:
        from sensor.detect.base import SEVERITY_SCORE
        from sensor.phi import summarize
        from sensor.phi.redact import evidence

        from sensor.phi.redact import redact

        obs = alert.observation
        record = obs.record
        doc = self.events(record)
        self._redact_record_fields(doc, record, alert.findings)
        summary = alert.summary if self.unredacted else redact(alert.summary, alert.findings)
        doc["@timestamp"] = iso_time(first_seen)
        doc["event"] = {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "severity": SEVERITY_SCORE[alert.severity],
            "id": event_id,
            "dataset": "phi_sensor.alert",
            "module": MODULE,
        }
        rule = alert.rule
        doc["rule"] = {
            "id": rule.id,
            "name": rule.name,
            "category": rule.category,
            "description": rule.description,
            "reference": rule.reference,
            "ruleset": "phi-egress-sensor",
        }
        if obs.destination and not isinstance(record, DnsQuery):
            # for DNS the destination is the resolver; the name asked for is dns.question.name
            doc["destination"]["domain"] = obs.destination
            if obs.destination not in doc["related"]["hosts"]:
                doc["related"]["hosts"].append(obs.destination)
        pe: dict = {
            "severity": alert.severity,
            "alert_key": "|".join((rule.id, record.flow.src_ip, alert.throttle_subject)),
            "count": count,
            "first_seen": iso_time(first_seen),
            "last_seen": iso_time(last_seen),
            "source_record": obs.source_record,
            "destination": obs.destination,
            "summary": summary,
            "phi_host": {"name": obs.phi_host.name, "tags": list(obs.phi_host.tags)} if obs.phi_host else {},
        }
        if obs.vendor is not None:
            vendor = obs.vendor
            pe["vendor"] = {"id": vendor.id, "name": vendor.name, "owner": vendor.owner, "category": vendor.category}
        pe["baa"] = {
            "status": obs.baa_status,
            "stance": obs.vendor.baa_stance if obs.vendor else "unknown",
        }
        if obs.vendor is not None and obs.vendor.baa_source:
            pe["baa"]["source"] = obs.vendor.baa_source
        if alert.findings:
            counts = summarize(alert.findings)
            pe["phi"] = {
                "types": sorted(counts),
                "categories": sorted({f.category for f in alert.findings}),
                "count": sum(counts.values()),
            }
            pe["evidence"] = evidence(alert.findings, alert.fields, self.unredacted)
        tracker = obs.tracker
        if tracker is not None and alert.rule.id == "phi-in-tracker-payload":
            event = tracker.event
            if event and not self.unredacted:
                event = redact(event, alert.findings)
            pe["tracker"] = {"decoder": tracker.decoder, "event": event}
            for name in ("page_url", "referrer"):
                value = getattr(tracker, name)
                if value:
                    pe["tracker"][name] = value if self.unredacted else _redacted_url(value, alert.findings)
        doc["phi_egress"] = {**doc.get("phi_egress", {}), **pe}
        return doc

    def _redact_record_fields(self, doc: dict, record, findings: list) -> None:
        """URLs and referrers of an alerting request may carry the very data that alerted: mask
        what the URL scan finds and what the rule found (a tracker decoder sees more)."""
        if self.unredacted or not isinstance(record, HttpRequest):
            return
        target, referrer = _redacted_request_urls(record.method, record.target, record.header("referer"), findings)
        url = doc.get("url", {})
        url["original"] = target
        path, query = _split_target(target)
        if "path" in url:
            url["path"] = path or url["path"]
        if "query" in url:
            url["query"] = query
        request = doc.get("http", {}).get("request", {})
        if referrer:
            request["referrer"] = referrer


def _redacted_url(url: str, findings: list) -> str:
    from sensor.phi.redact import redact_url

    return redact_url(url, findings)
