"""ECS 8 documents for protocol events and alerts (the shapes Packetbeat and the Suricata
integration use, so Kibana users feel at home). Our own fields live under `phi_egress.*`."""
from __future__ import annotations

import base64
import copy
import functools
import hashlib
import socket
import struct
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import orjson

from sensor.enrich.ech import is_cover_name
from sensor.phi import evidence, redact, redact_url
from sensor.phi.recognizers import url_findings
from sensor.records import (
    DnsQuery,
    Flow,
    HttpRequest,
    LocalNameQuery,
    Record,
    TlsHello,
    TunnelledFlow,
    UpgradedHello,
    split_target,
)
from sensor.severity import SEVERITY_SCORE

try:  # the compiled fast paths (see sensor/_fast/ecs.c); community_id_py, _envelope_py and the dict
    # builders with orjson are the reference
    from sensor._fast import alert_line as _alert_line_fast
    from sensor._fast import bind_json as _bind_json
    from sensor._fast import community_id as _community_id_fast
    from sensor._fast import dns_event_line as _dns_line_fast
    from sensor._fast import event_envelope as _envelope_fast
    from sensor._fast import iso_time as _iso_time_fast
    from sensor._fast import prune as _prune_fast
    from sensor._fast import tls_event_line as _tls_line_fast

    _bind_json(orjson.dumps)
except ImportError:  # built without a C compiler
    _community_id_fast = _envelope_fast = _dns_line_fast = _tls_line_fast = _prune_fast = _iso_time_fast = None
    _alert_line_fast = None
try:  # EventBuilder.json_lines in one call (sensor/_fast/ecs.c event_lines); lines_py is the reference
    from sensor._fast import event_lines as _event_lines_fast
except ImportError:
    _event_lines_fast = None

ECS_VERSION = "8.11.0"
MODULE = "phi_sensor"
_PROTO_NUMBERS = {"tcp": 6, "udp": 17}

# One dataset scheme, `phi_sensor.<what>`, for event.dataset and data_stream.dataset alike; the data
# stream an Elasticsearch output writes to is `<type>-<dataset>-<namespace>` (Elastic's naming).
DATA_STREAM_TYPE = "logs"
DEFAULT_NAMESPACE = "default"
ALERT_DATASET = f"{MODULE}.alert"
STATS_DATASET = f"{MODULE}.stats"
EVENT_DATASETS = {protocol: f"{MODULE}.{protocol}" for protocol in ("dns", "tls", "quic", "http")}
DATASETS = (*EVENT_DATASETS.values(), ALERT_DATASET, STATS_DATASET)


def data_stream(dataset: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, str]:
    """ECS `data_stream.*` of a document of `dataset`."""
    return {"type": DATA_STREAM_TYPE, "dataset": dataset, "namespace": namespace}


def prune(value):
    """`value` without the null and empty values ECS documents leave out (None, "", [], {}). The
    result may share dicts and lists with `value` (documents are serialised, never mutated)."""
    if _prune_fast is not None:
        pruned = _prune_fast(value)
        if pruned is not None:
            return pruned
    return prune_py(value)


def prune_py(value):
    """prune in Python: the reference, and the path for what the compiled one declines."""
    if isinstance(value, dict):
        pruned = {key: prune_py(item) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if item is not None and item != "" and item != [] and item != {}}
    if isinstance(value, list):
        return [item for item in map(prune_py, value) if item is not None and item != "" and item != [] and item != {}]
    return value


_SECOND_PREFIX: dict[int, str] = {}


# The instants a date can name (years 1 to 9999): a capture can claim any 64-bit time.
_FIRST_SECOND = int(datetime(1, 1, 1, tzinfo=timezone.utc).timestamp())
_LAST_SECOND = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp())


def iso_time(ts: float) -> str:
    """UTC ISO 8601 with microseconds. A time outside years 1 to 9999 is given as the nearest one inside."""
    if _iso_time_fast is not None:
        text = _iso_time_fast(ts)
        if text is not None:
            return text
    return iso_time_py(ts)


def iso_time_py(ts: float) -> str:
    """iso_time in Python: the reference; the date-time part is cached per second (events cluster)."""
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

    def __init__(
        self,
        observer: str,
        registered_domain: Callable[[str], str],
        redact_urls: bool = True,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.observer = {"name": observer, "type": "sensor", "product": "phi-egress-sensor"}
        self.registered_domain = registered_domain
        self.redact_urls = redact_urls
        self.namespace = namespace
        # one shared dict per dataset, as for the observer: documents are serialised, never mutated
        self._data_streams = {dataset: data_stream(dataset, namespace) for dataset in DATASETS}
        self._line_prefixes: dict[str, bytes] = {}
        self._prefixes: dict[str, bytes] = {}  # _all_prefixes, made at the first json_lines
        self._tunnels: dict[int, tuple[tuple, bytes, bytes]] = {}  # id(tunnel) -> (tunnel, its JSON parts)

    def __call__(self, record: Record) -> dict:
        if isinstance(record, DnsQuery):
            doc = self.dns(record)
        elif isinstance(record, TlsHello):
            doc = self.tls(record)
        else:
            doc = self.http(record)
        flow = record.flow
        if type(flow) is TunnelledFlow:
            self._add_tunnel(doc, *flow.tunnel)
        return doc

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
        dict first (the observer is read once, at the first such event); those of a tunnelled flow
        get their tunnel's fields spliced in (_with_tunnel).
        """
        line = None
        if type(record) is DnsQuery and _dns_line_fast is not None:
            line = _dns_line_fast(record, self.registered_domain(record.name) or None, self._line_prefix("dns"))
        elif type(record) is TlsHello and _tls_line_fast is not None and record.protocol in EVENT_DATASETS:
            name = record.server_name
            domain = name if name and not (record.ech and is_cover_name(name)) else None
            line = _tls_line_fast(record, domain, self._line_prefix(record.protocol))
        if line is None:
            return self.line_py(record)
        flow = record.flow
        return line if type(flow) is not TunnelledFlow else self._with_tunnel(line, flow.tunnel, type(record) is TlsHello)

    def json_lines(self, records: list[Record]) -> bytes:
        """The events of `records` as JSON lines, one block: json_line of each, in order. The
        compiled writer takes the list in one call (DNS and TLS events written there, HTTP events
        with their _http_fields, a tunnelled flow's with its _tunnel_parts; json_line called back
        for the rest)."""
        if _event_lines_fast is None:
            return self.lines_py(records)
        prefixes = self._prefixes or self._all_prefixes()
        return _event_lines_fast(
            records, DnsQuery, TlsHello, Flow, self.registered_domain, is_cover_name, prefixes, self.json_line,
            TunnelledFlow, self._tunnel_parts, HttpRequest, self._http_fields,
        )

    def lines_py(self, records: list[Record]) -> bytes:
        """json_lines in Python: the reference of the compiled event_lines."""
        return b"".join(map(self.line_py, records))

    def _http_fields(self, rec: HttpRequest) -> tuple[bytes, str | None]:
        """An HTTP event's own fields as its line has them (`,"url":...,"http":...,"user_agent":...`,
        what http() adds between the envelope and `related`) and its destination.domain: for the
        compiled json_lines."""
        url, http, agent, domain = self._http_parts(rec)
        fields: dict = {"url": url} if url else {}
        fields["http"] = http
        if agent:
            fields["user_agent"] = agent
        return b"," + orjson.dumps(fields)[1:-1], domain or None

    def _all_prefixes(self) -> dict[str, bytes]:
        """_line_prefix of every event dataset's protocol, for the compiled json_lines."""
        self._prefixes = {protocol: self._line_prefix(protocol) for protocol in EVENT_DATASETS}
        return self._prefixes

    def _with_tunnel(self, line: bytes, tunnel: tuple, has_own: bool) -> bytes:
        """A compiled DNS or TLS line with what _add_tunnel adds: the VLANs at the end of `network`
        (whose last field, the Community ID, is one string of base64), and phi_egress.tunnel at the
        end of the event's phi_egress (TLS has its own, followed by `related`, the last field) or,
        for DNS, as a new last field. Only a structural `,"` is followed by no backslash: the
        searched keys cannot be found inside a string."""
        network, own = self._tunnel_parts(tunnel)
        at = line.index(b'"}', line.index(b',"community_id":"') + 17) + 1
        line = line[:at] + network + line[at:] if network else line
        if not has_own:
            return line[:-2] + b',"phi_egress":{' + own + b"}}\n"
        at = line.rindex(b',"related":{') - 1  # the brace closing phi_egress
        return line[:at] + b"," + own + line[at:]

    def _tunnel_parts(self, tunnel: tuple) -> tuple[bytes, bytes]:
        """The JSON of a tunnel's `network` fields and of its `"tunnel":...`, once per tunnel (the
        value is one object shared by its flows, and kept here with its parts)."""
        cached = self._tunnels.get(id(tunnel))
        if cached is None or cached[0] is not tunnel:
            doc: dict = {"network": {}}
            self._add_tunnel(doc, *tunnel)
            network = orjson.dumps(doc["network"])[1:-1]
            if len(self._tunnels) > 4096:
                self._tunnels.clear()
            cached = self._tunnels[id(tunnel)] = (
                tunnel,
                b"," + network if network else b"",
                b'"tunnel":' + orjson.dumps(doc["phi_egress"]["tunnel"]),
            )
        return cached[1], cached[2]

    def line_py(self, record: Record) -> bytes:
        """line in Python: the reference of the compiled DNS and TLS line writers, and every other event's path."""
        return orjson.dumps(self(record), option=orjson.OPT_APPEND_NEWLINE)

    def _line_prefix(self, protocol: str) -> bytes:
        """`"ecs":...,"data_stream":...,"event":...,"observer":...` of a `protocol` event, as orjson
        writes them."""
        prefix = self._line_prefixes.get(protocol)
        if prefix is None:
            envelope = self._envelope_py(0.0, protocol, Flow("0.0.0.0", 0, "0.0.0.0", 0, "udp"))
            prefix = orjson.dumps({key: envelope[key] for key in ("ecs", "data_stream", "event", "observer")})[1:-1]
            self._line_prefixes[protocol] = prefix
        return prefix

    def _envelope(self, ts: float, protocol: str, flow: Flow, wire: str | None = None) -> dict:
        """The fields every event has: time, ECS metadata, data stream, observer, the two ends and the flow.

        `protocol` picks the dataset; `wire` is network.protocol when it differs (mdns in the dns dataset)."""
        if _envelope_fast is not None:
            dataset = EVENT_DATASETS.get(protocol)
            if dataset is not None:
                doc = _envelope_fast(
                    ts, dataset, flow, wire or protocol, self.observer, ECS_VERSION, MODULE,
                    self._data_streams[dataset],
                )
                if doc is not None:
                    return doc
        return self._envelope_py(ts, protocol, flow, wire)

    def _envelope_py(self, ts: float, protocol: str, flow: Flow, wire: str | None = None) -> dict:
        """_envelope in Python: the reference, and the path for what the compiled one declines."""
        dataset = EVENT_DATASETS.get(protocol) or f"{MODULE}.{protocol}"
        return {
            "@timestamp": iso_time(ts),
            "ecs": {"version": ECS_VERSION},
            "data_stream": self._data_streams.get(dataset) or data_stream(dataset, self.namespace),
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
                "protocol": wire or protocol,
                "type": "ipv6" if ":" in flow.src_ip else "ipv4",
                "community_id": community_id(flow),
            },
        }

    def dns(self, rec: DnsQuery) -> dict:
        # mDNS, LLMNR and NetBIOS names are DNS events that say on the wire what they were
        wire = rec.protocol if isinstance(rec, LocalNameQuery) else None
        doc = self._envelope(rec.ts, "dns", rec.flow, wire)
        question = {"name": rec.name or ".", "type": rec.qtype}  # the root, never an empty name
        registered = self.registered_domain(rec.name)
        if registered:
            question["registered_domain"] = registered
        # ECS types dns.id as keyword: the number as text
        dns: dict = {"id": str(rec.id), "type": "answer" if rec.response_seen else "query", "question": question}
        resolved: list[str] = []
        if rec.response_seen:
            dns["response_code"] = rec.rcode
            if rec.answers:
                dns["answers"] = [_answer(a) for a in rec.answers]
                resolved = [a.data for a in rec.answers if _is_address(a)]
                if resolved:
                    dns["resolved_ip"] = resolved
        doc["dns"] = dns
        doc["related"] = _related(rec.flow, rec.name, resolved)
        return doc

    def tls(self, rec: TlsHello) -> dict:
        doc = self._envelope(rec.ts, rec.protocol, rec.flow)
        tls_doc: dict = {}  # ECS leaves out what is not known: no empty tls.client
        if rec.server_name:
            tls_doc["client"] = {"server_name": rec.server_name}
            if not (rec.ech and is_cover_name(rec.server_name)):  # an ECH cover name is never the destination
                doc["destination"]["domain"] = rec.server_name
        if rec.version:
            tls_doc["version"] = rec.version
            tls_doc["version_protocol"] = "tls"
        if tls_doc:
            doc["tls"] = tls_doc
        tls_meta: dict = {"alpn": list(rec.alpn), "ech": rec.ech} if rec.alpn else {"ech": rec.ech}
        if isinstance(rec, UpgradedHello):  # found after a plaintext start: STARTTLS, a proxy's CONNECT, ...
            tls_meta["preamble"] = rec.preamble
            if rec.tunnel_target:
                tls_meta["tunnel_target"] = rec.tunnel_target
        doc["phi_egress"] = {"tls": tls_meta}
        doc["related"] = _related(rec.flow, rec.server_name)
        return doc

    def http(self, rec: HttpRequest) -> dict:
        doc = self._envelope(rec.ts, "http", rec.flow)
        url, http, agent, domain = self._http_parts(rec)
        if domain:
            doc["destination"]["domain"] = domain
        if url:
            doc["url"] = url
        doc["http"] = http
        if agent:
            doc["user_agent"] = agent
        doc["related"] = _related(rec.flow, rec.host)
        return doc

    def _http_parts(self, rec: HttpRequest) -> tuple[dict, dict, dict | None, str | None]:
        """An HTTP event's own fields: `url`, `http` and `user_agent` (None: none), and the host
        named as `destination.domain` (None: none)."""
        headers: dict[str, str] = {}  # the first of each name, as rec.header finds it: one pass for the three
        for name, value in rec.headers:
            headers.setdefault(name.lower(), value)
        target, referrer = rec.target, headers.get("referer")
        if self.redact_urls:
            target, referrer = _redacted_event_urls(rec.method, target, referrer)
        url: dict = {"original": target} if target else {}
        path, query = _split_target(target) if len(target) > _CACHED_URL_CHARS else _split_target_cached(target)
        if path:
            url["path"] = path
        if query:
            url["query"] = query
        domain = None
        if rec.host:
            if _is_ip_literal(rec.host):
                url["domain"] = f"[{rec.host}]" if ":" in rec.host else rec.host  # ECS keeps IPv6 brackets
            else:
                url["domain"] = domain = rec.host
        request: dict = {"method": rec.method, "body": {"bytes": rec.body_bytes}}
        if referrer:
            request["referrer"] = referrer
        mime_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if mime_type:
            request["mime_type"] = mime_type
        http = {"version": rec.version, "request": request} if rec.version else {"request": request}
        agent = headers.get("user-agent")
        return url, http, {"original": _redacted_agent(agent) if self.redact_urls else agent} if agent else None, domain


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


def _redacted_agent(agent: str) -> str:
    """A User-Agent with identifier-shaped values masked; the few agents of a network are cached."""
    return _redacted_agent_cached(agent) if len(agent) <= _CACHED_URL_CHARS else redact(agent, ())


@functools.lru_cache(maxsize=1024)
def _redacted_agent_cached(agent: str) -> str:
    return redact(agent, ())


def _redacted_request_urls(
    method: str, target: str, referrer: str | None, known: list | tuple = ()
) -> tuple[str, str | None]:
    """The request target and referrer with any health data they carry (or `known` found) masked."""
    if len(target) + len(referrer or "") <= _CACHED_URL_CHARS:  # an alert's request was an event's too
        found = _url_findings_cached(method, target, referrer)
    else:
        found = url_findings(method, target, referrer)
    findings = list(found)  # none found: identifier-shaped values are still masked
    # A finding listed twice masks nothing more (its spans merge into the first's). The rule's
    # findings are mostly the scan's own objects: told by identity first, as `in` would, without
    # comparing them to every finding before them (a Python __eq__ each).
    if known:
        listed = {id(finding) for finding in findings}
        for finding in known:
            if id(finding) not in listed and finding not in findings:
                findings.append(finding)
                listed.add(id(finding))
    if known and len(findings) == len(found):  # the rule found nothing new: the event's URLs, masked once
        return _redacted_event_urls(method, target, referrer)
    return redact_url(target, findings), (redact_url(referrer, findings) if referrer else None)


_url_findings_cached = functools.lru_cache(maxsize=4096)(url_findings)


def _is_ip_literal(host: str) -> bool:
    if ":" not in host and not "0" <= host[-1:] <= "9":  # a dotted quad ends in a digit: most hosts fail here
        return False
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, ValueError):  # ValueError: a NUL byte in a hostile Host header
        return False
    return True


def _related_ips(flow: Flow, extra=()) -> list[str]:
    ips = [flow.src_ip, flow.dst_ip]
    if extra:  # (most records resolve nothing)
        ips.extend(ip for ip in extra if ip not in ips)
    return ips


def _answer(answer) -> dict:
    """One ECS dns.answers entry: the root named ".", no empty data."""
    entry = {"name": answer.name or ".", "type": answer.type, "data": answer.data, "ttl": answer.ttl}
    if not answer.data:
        del entry["data"]
    return entry


def _is_address(answer) -> bool:
    """An A or AAAA answer whose data is an address; decode writes broken data as hex, which has
    neither dots nor colons."""
    return (answer.type == "A" and "." in answer.data) or (answer.type == "AAAA" and ":" in answer.data)


def _related(flow: Flow, host: str | None, extra_ips=()) -> dict:
    """ECS `related`: the addresses, and the host name when there is one (no empty list)."""
    related: dict = {"ip": _related_ips(flow, extra_ips)}
    if host:
        related["hosts"] = [host]
    return related


def _split_target(target: str) -> tuple[str, str]:
    """Path and query of a request target (origin form, or absolute form as proxies see it); none
    for the authority form (CONNECT) or "*"."""
    if target.startswith(("/", "http://", "https://")):
        return split_target(target)
    return "", ""


_split_target_cached = functools.lru_cache(maxsize=4096)(_split_target)  # events repeat request lines


_SCALARS = (str, int, float, type(None))  # the tunnel values a cache key holds as they are
# what the compiled alert writer writes an alert document on (alert_line's kind)
_DNS, _TLS, _HTTP = 0, 1, 2

# Parts of every alert document, shared by all as the observer is (sinks read documents, never change them).
_ALERT_CATEGORIES = ["network", "intrusion_detection"]
_ALERT_TYPES = ["info"]
# id(object) -> (object, its fields): the rules, the vendors of the catalog and the PHI hosts of the
# inventory are few and live as long as the configuration
_FIELDS_OF: dict[int, tuple[object, dict]] = {}


def _fields_of(thing, fields: Callable[[Any], dict]) -> dict:
    """fields(thing), built once for each object."""
    cached = _FIELDS_OF.get(id(thing))
    if cached is None or cached[0] is not thing:
        if len(_FIELDS_OF) > 4096:
            _FIELDS_OF.clear()
        cached = _FIELDS_OF[id(thing)] = (thing, fields(thing))
    return cached[1]


def _rule_fields(rule) -> dict:
    """ECS `rule.*` of a rule."""
    return {
        "id": rule.id,
        "name": rule.name,
        "category": rule.category,
        "description": rule.description,
        "reference": rule.reference,
        "ruleset": "phi-egress-sensor",
    }


def _vendor_fields(vendor) -> dict:
    """`phi_egress.vendor` of a catalog vendor."""
    return {"id": vendor.id, "name": vendor.name, "owner": vendor.owner, "category": vendor.category}


def _phi_host_fields(phi_host) -> dict:
    """`phi_egress.phi_host` of an inventory entry."""
    return {"name": phi_host.name, "tags": list(phi_host.tags)}


# (rule, PHI host, vendor, BAA status) -> their fields in an alert document, for the few there are
_CONSTANT_FIELDS: dict[tuple, tuple[tuple, tuple, tuple | None]] = {}


def _constant_fields(rule, phi_host, vendor, baa_status) -> tuple:
    """(`rule.*`, `phi_egress.phi_host` or None, `phi_egress.vendor` or None, `phi_egress.baa`) of
    an alert, built once for each combination (documents share them, as they share the observer)."""
    key = (id(rule), id(phi_host), id(vendor), baa_status)
    cached = _CONSTANT_FIELDS.get(key)
    if cached is not None and cached[0][0] is rule and cached[0][1] is phi_host and cached[0][2] is vendor:
        return cached[1]
    if vendor is not None:
        baa = {"status": baa_status, "stance": vendor.baa_stance}
        if vendor.baa_source:
            baa["source"] = vendor.baa_source
    else:
        baa = {"status": baa_status, "stance": "unknown"}
    fields = (
        _fields_of(rule, _rule_fields),
        _fields_of(phi_host, _phi_host_fields) if phi_host else None,
        _fields_of(vendor, _vendor_fields) if vendor is not None else None,
        baa,
    )
    if len(_CONSTANT_FIELDS) > 4096:
        _CONSTANT_FIELDS.clear()
    _CONSTANT_FIELDS[key] = ((rule, phi_host, vendor), fields, None)
    return fields


def _constant_lines(rule, phi_host, vendor, baa_status) -> tuple[bytes, bytes, bytes] | None:
    """_constant_fields as the compiled alert writer takes them, pruned and written by orjson:
    the rule object, `,"phi_host":...` (or nothing) and `,"vendor":...,"baa":...`; None where
    the rule or the BAA is left out."""
    key = (id(rule), id(phi_host), id(vendor), baa_status)
    cached = _CONSTANT_FIELDS.get(key)
    if cached is None or cached[0][0] is not rule or cached[0][1] is not phi_host or cached[0][2] is not vendor:
        _constant_fields(rule, phi_host, vendor, baa_status)
        cached = _CONSTANT_FIELDS[key]
    lines = cached[2]
    if lines is None:
        rule_fields, phi_host_fields, vendor_fields, baa = (prune(part) for part in cached[1])
        written = None
        if rule_fields and baa:
            written = (
                orjson.dumps(rule_fields),
                b',"phi_host":' + orjson.dumps(phi_host_fields) if phi_host_fields else b"",
                (b',"vendor":' + orjson.dumps(vendor_fields) if vendor_fields else b"") + b',"baa":' + orjson.dumps(baa),
            )
        lines = (written,)
        _CONSTANT_FIELDS[key] = (cached[0], cached[1], lines)
    return lines[0]


def _alert_members(alert, count: int, first_seen: float, last_seen: float, first: str, last: str,
                   primary: str | None, summary: str, destinations: list | None, phi_host_fields: dict | None,
                   vendor_fields: dict | None, baa: dict) -> dict:
    """`phi_egress.*` of an alert document but for its findings and tracker payload."""
    pe: dict = {
        "severity": alert.severity,
        "alert_key": "|".join((alert.rule.id, alert.observation.record.flow.src_ip, alert.throttle_subject)),
        "count": count,
        "first_seen": first,
        "last_seen": last,
        "source_record": alert.observation.source_record,
        "destination": primary,
        "summary": summary,
        "phi_host": phi_host_fields,
    }
    if destinations:
        # most hosts of a window were first or last seen when the window was
        stamps = {first_seen: first, last_seen: last}
        pe["destinations"] = [
            {
                "host": entry.host,
                "count": entry.count,
                "first_seen": stamps.get(entry.first_seen) or iso_time(entry.first_seen),
                "last_seen": stamps.get(entry.last_seen) or iso_time(entry.last_seen),
                "health_data": entry.health_data,
            }
            for entry in destinations
        ]
    if vendor_fields is not None:
        pe["vendor"] = vendor_fields
    pe["baa"] = baa
    return pe


class AlertBuilder:
    """Turns throttled alerts into ECS alert documents; health data values are redacted unless
    the operator asked for `unredacted` (a logged forensic opt-in)."""

    def __init__(self, events: EventBuilder, unredacted: bool = False) -> None:
        self.events = events
        self.unredacted = unredacted
        self._plain_events: EventBuilder | None = None  # events with redact_urls off (_request_event)
        self._head: tuple[Any, Any, tuple[bytes, bytes, bytes] | None] | None = None  # _alert_head's, with what it read
        self._tunnels: dict[tuple, tuple[bytes, bytes]] = {}  # a tunnel's value -> _alert_tunnel_parts

    def __call__(
        self, alert, count: int, first_seen: float, last_seen: float, event_id: str, destinations: list | None = None
    ) -> dict:
        obs = alert.observation
        record = obs.record
        findings = alert.findings
        if findings and type(record) is HttpRequest and not self.unredacted and self.events.redact_urls:
            doc = self._request_event(record, findings)
        else:
            doc = self.events(record)
            self._redact_record_fields(doc, record, findings)
        named = obs.destination
        primary = _primary_destination(destinations, named)
        summary = _summary_naming(alert.summary, named, primary, destinations)
        if not self.unredacted:
            summary = redact(summary, findings)
        first = iso_time(first_seen)
        last = first if last_seen == first_seen else iso_time(last_seen)
        doc["@timestamp"] = first
        doc["data_stream"] = self.events._data_streams[ALERT_DATASET]
        doc["event"] = {
            "kind": "alert",
            "category": _ALERT_CATEGORIES,
            "type": _ALERT_TYPES,
            "severity": SEVERITY_SCORE[alert.severity],
            "id": event_id,
            "dataset": ALERT_DATASET,
            "module": MODULE,
            # the throttle window the alert stands for
            "start": first,
            "end": last,
        }
        doc["message"] = summary  # ECS's main text field: what Discover and Security show first
        rule = alert.rule
        rule_fields, phi_host_fields, vendor_fields, baa = _constant_fields(rule, obs.phi_host, obs.vendor,
                                                                            obs.baa_status)
        doc["rule"] = rule_fields
        if primary and not isinstance(record, DnsQuery):
            # for DNS the destination is the resolver; the name asked for is dns.question.name
            doc["destination"]["domain"] = primary
        related = doc["related"]
        hosts = related.get("hosts")
        if hosts is None:
            hosts = related["hosts"] = []
        _add_related_hosts(hosts, named, destinations)
        if not hosts:  # nothing null or empty is written
            del related["hosts"]
        pe = _alert_members(alert, count, first_seen, last_seen, first, last, primary, summary, destinations,
                            phi_host_fields, vendor_fields, baa)
        own = doc.get("phi_egress")  # the event's own (tls, tunnel) come first
        if own is None:
            doc["phi_egress"] = pe
        else:
            own.update(pe)
            pe = own
        if findings:
            pe["phi"] = _phi_fields(findings)
            pe["evidence"] = evidence(findings, alert.fields, self.unredacted)
        tracker = obs.tracker
        if tracker is not None and rule.id == "phi-in-tracker-payload":
            pe["tracker"] = self._tracker_fields(tracker, findings)
        # nothing null or empty (an unnamed PHI host, a vendor without a BAA source): ECS leaves it out
        return prune(doc)

    def _tracker_fields(self, tracker, findings) -> dict:
        """`phi_egress.tracker` of an alert on a tracker payload: its decoder, event, page and referrer."""
        event = tracker.event
        if event and not self.unredacted:
            event = redact(event, findings)
        fields = {"decoder": tracker.decoder, "event": event}
        for name in ("page_url", "referrer"):
            value = getattr(tracker, name)
            if value:
                fields[name] = value if self.unredacted else redact_url(value, findings)
        return fields

    def json_line(
        self, alert, count: int, first_seen: float, last_seen: float, event_id: str, destinations: list | None = None
    ) -> tuple[bytes, dict | tuple]:
        """The alert document as one JSON line, byte for byte line_py's, and what the summary
        counts of it: the document, or where compiled code wrote the line without building one
        (an alert on a lookup or hello, without findings) AlertTally.add_values's arguments."""
        if _alert_line_fast is not None:
            written = self._line_fast(alert, count, first_seen, last_seen, event_id, destinations)
            if written is not None:
                return written
        doc = self(alert, count, first_seen, last_seen, event_id, destinations)
        return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE), doc

    def line_py(
        self, alert, count: int, first_seen: float, last_seen: float, event_id: str, destinations: list | None = None
    ) -> bytes:
        """The line in Python: the reference of the compiled alert writer (orjson's line of self(...))."""
        return orjson.dumps(self(alert, count, first_seen, last_seen, event_id, destinations),
                            option=orjson.OPT_APPEND_NEWLINE)

    def _line_fast(self, alert, count, first_seen, last_seen, event_id, destinations) -> tuple[bytes, tuple] | None:
        """json_line by the compiled writer, or None where it declines: what __call__ does, with
        the document's parts that hold no record field written by Python (orjson, pruned) and
        handed over as bytes."""
        obs = alert.observation
        record = obs.record
        cls = type(record)
        if cls is TlsHello:
            if record.protocol not in EVENT_DATASETS or record.ech is None:
                return None
            kind = _TLS
        elif cls is DnsQuery:
            kind = _DNS
        elif cls is HttpRequest and (self.unredacted or self.events.redact_urls):  # (else its URLs are masked here)
            kind = _HTTP
        else:
            return None
        flow = record.flow
        if type(flow) is Flow:
            network_tail, tunnel = b"", None
        elif type(flow) is TunnelledFlow:
            network_tail, tunnel = self._alert_tunnel_parts(flow.tunnel)
        else:
            return None
        named = obs.destination
        # most windows reached one host, the one their alert named: its summary as it was
        if not destinations:
            primary, summary = named, alert.summary
        elif len(destinations) == 1 and destinations[0].host == named:
            primary, summary = destinations[0].host, alert.summary
        else:
            primary = _primary_destination(destinations, named)
            summary = _summary_naming(alert.summary, named, primary, destinations)
        findings = alert.findings
        if not self.unredacted:
            summary = redact(summary, findings)
        severity, baa_status = alert.severity, obs.baa_status
        # what a document leaves out when empty, or holds as the writer does not spell it: the Python builder
        if not (primary and summary and obs.source_record and severity and event_id and baa_status and alert.rule.id
                and type(count) is int and type(primary) is str):
            return None
        rule, phi_host, vendor = alert.rule, obs.phi_host, obs.vendor
        cached = _CONSTANT_FIELDS.get((id(rule), id(phi_host), id(vendor), baa_status))  # (_constant_lines, inline)
        if (cached is not None and cached[2] is not None and cached[0][0] is rule and cached[0][1] is phi_host
                and cached[0][2] is vendor):
            written = cached[2][0]
        else:
            written = _constant_lines(rule, phi_host, vendor, baa_status)
        events, head_cached = self.events, self._head  # (_alert_head, inline)
        if (head_cached is not None and head_cached[0] is events.observer
                and head_cached[1] is events._data_streams[ALERT_DATASET]):
            head = head_cached[2]
        else:
            head = self._alert_head()
        if written is None or head is None:
            return None
        first = _iso_time_fast(first_seen) or iso_time(first_seen)
        last = first if last_seen == first_seen else _iso_time_fast(last_seen) or iso_time(last_seen)
        # phi_egress's members after the BAA: the findings' and the tracker payload's
        members_end, types = written[2], ()
        if findings:
            phi, shown = prune(_phi_fields(findings)), prune(evidence(findings, alert.fields, self.unredacted))
            types = phi.get("types", ())
            members_end += (b',"phi":' + orjson.dumps(phi) if phi else b"") + (
                b',"evidence":' + orjson.dumps(shown) if shown else b"")
        if obs.tracker is not None and rule.id == "phi-in-tracker-payload":
            tracker = prune(self._tracker_fields(obs.tracker, findings))
            members_end += b',"tracker":' + orjson.dumps(tracker) if tracker else b""
        middle = None
        if kind == _DNS:
            hosts = [record.name] if record.name else []
            domain = self.events.registered_domain(record.name) or None
        else:
            own_host = record.server_name if kind == _TLS else record.host
            hosts = [own_host] if own_host else []
            domain = primary  # (what the alert names, in place of the hello's or request's)
            if kind == _HTTP:
                middle = self._request_fields(record, findings)
        if destinations or (named and named not in hosts):
            _add_related_hosts(hosts, named, destinations)
        source = flow.src_ip
        line = _alert_line_fast(
            kind, record, domain, first, head[0], SEVERITY_SCORE[severity], event_id, head[1], first, last, head[2],
            tuple(hosts), severity, "|".join((rule.id, source, alert.throttle_subject)), count, obs.source_record,
            primary, summary, written[1], destinations or None, members_end, written[0], network_tail, tunnel, middle,
        )
        if line is None:
            return None
        return line, (event_id, severity, rule.id, source, (phi_host.name or None) if phi_host else None,
                      (vendor.name if vendor is not None else None) or primary, baa_status, types, count)

    def _request_fields(self, record: HttpRequest, findings) -> bytes:
        """`,"url":...,"http":...,"user_agent":...` of an alert on a request as __call__ writes them,
        pruned: the event's (EventBuilder._http_parts), its URLs masked as _request_event and
        _redact_record_fields mask them."""
        if findings and not self.unredacted and self.events.redact_urls:  # (_request_event)
            fields = self._request_parts(self._plain(), record, findings)
            url = fields.get("url")
            if url is not None and "path" in url and not _split_target(url["original"])[0]:
                fields = self._request_parts(self.events, record, findings)  # (_masked_event)
            elif "user_agent" in fields:
                fields["user_agent"]["original"] = _redacted_agent(fields["user_agent"]["original"])
        else:
            fields = self._request_parts(self.events, record, findings)
        return b"," + orjson.dumps(prune(fields))[1:-1]

    def _request_parts(self, events: EventBuilder, record: HttpRequest, findings) -> dict:
        """The `url`, `http` and `user_agent` of the event `events` makes of `record`, as its
        document holds them, with _redact_record_fields applied."""
        url, http, agent, _ = events._http_parts(record)
        fields = {"url": url, "http": http} if url else {"http": http}
        if agent:
            fields["user_agent"] = agent
        self._redact_record_fields(fields, record, findings)
        return fields

    def _alert_tunnel_parts(self, tunnel: tuple) -> tuple[bytes, bytes]:
        """What the compiled alert writer adds for a tunnelled flow, as __call__ writes it (the
        event's tunnel fields, pruned): the end of `network` and phi_egress's `"tunnel":...`
        (empty where pruned away). Once per tunnel, by its value (an alert read back from the
        windows' spill holds a copy of its flow's)."""
        info, outer, inner = tunnel
        key: tuple | None = None
        cached = None
        # (by exact type too: True and 1 are equal keys, written apart)
        if all(type(value) in _SCALARS for value in (*info.values(), outer, inner)):
            key = (*((name, type(value), value) for name, value in info.items()), type(outer), outer, type(inner), inner)
            cached = self._tunnels.get(key)
        if cached is None:
            doc: dict = {"network": {}}
            EventBuilder._add_tunnel(doc, *tunnel)
            network, own = prune(doc["network"]), prune(doc["phi_egress"]["tunnel"])
            cached = (b"," + orjson.dumps(network)[1:-1] if network else b"",
                      b'"tunnel":' + orjson.dumps(own) if own else b"")
            if key is not None:
                if len(self._tunnels) > 4096:
                    self._tunnels.clear()
                self._tunnels[key] = cached
        return cached

    def _alert_head(self) -> tuple[bytes, bytes, bytes] | None:
        """A document's `ecs`, `data_stream`, `event` and `observer` as orjson writes them, pruned,
        around the event's severity, id, start and end; None where the data stream is left out."""
        events = self.events
        observer, stream = events.observer, events._data_streams[ALERT_DATASET]
        cached = self._head
        if cached is None or cached[0] is not observer or cached[1] is not stream:
            parts = prune({"ecs": {"version": ECS_VERSION}, "data_stream": stream, "observer": observer})
            head = None
            if "data_stream" in parts:
                before = orjson.dumps({"ecs": parts["ecs"], "data_stream": parts["data_stream"]})[1:-1]
                event = orjson.dumps({"kind": "alert", "category": _ALERT_CATEGORIES, "type": _ALERT_TYPES})[:-1]
                head = (
                    before + b',"event":' + event + b',"severity":',
                    b',"dataset":' + orjson.dumps(ALERT_DATASET) + b',"module":' + orjson.dumps(MODULE) + b',"start":',
                    b"}" + (b',"observer":' + orjson.dumps(parts["observer"]) if "observer" in parts else b""),
                )
            cached = self._head = (observer, stream, head)
        return cached[2]

    def _plain(self) -> EventBuilder:
        """self.events with redact_urls off (_request_event)."""
        plain = self._plain_events
        if plain is None or plain.observer is not self.events.observer:
            plain = self._plain_events = copy.copy(self.events)
            plain.redact_urls = False
        return plain

    def _request_event(self, record: HttpRequest, findings) -> dict:
        """self.events(record) with _redact_record_fields applied, the event's own masking of the
        URLs (which these replace) left out: the event built unmasked, its user agent masked here."""
        doc = self._plain()(record)
        self._redact_record_fields(doc, record, findings)
        url = doc.get("url")
        if url is not None and "path" in url and not _split_target(url["original"])[0]:
            return self._masked_event(record, findings)  # (the masked event's path stays there)
        agent = doc.get("user_agent")
        if agent is not None:
            agent["original"] = _redacted_agent(agent["original"])
        return doc

    def _masked_event(self, record, findings) -> dict:
        doc = self.events(record)
        self._redact_record_fields(doc, record, findings)
        return doc

    def _redact_record_fields(self, doc: dict, record, findings: list) -> None:
        """URLs and referrers of an alerting request may carry the very data that alerted: mask
        what the URL scan finds and what the rule found (a tracker decoder sees more)."""
        if self.unredacted or not isinstance(record, HttpRequest) or (not findings and self.events.redact_urls):
            return  # (the rule found nothing: the event masked what the URL scan finds already)
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


def _add_related_hosts(hosts: list[str], named: str | None, destinations: list | None) -> None:
    """`related.hosts` of an alert: the record's own, then the host it names, then the window's
    other hosts, each once."""
    if named and named not in hosts:
        hosts.append(named)
    for entry in destinations or ():
        host = entry.host
        if host and host not in hosts:
            hosts.append(host)


def _phi_fields(findings: list) -> dict:
    """`phi_egress.phi`: the findings' types and categories, and how many there are (what
    summarize counts, without counting each type)."""
    return {
        "types": sorted({f.type for f in findings}),
        "categories": sorted({f.category for f in findings}),
        "count": len(findings),
    }


def _primary_destination(destinations: list | None, fallback: str | None) -> str | None:
    """The host an alert names: the one that received health data, else the most contacted
    (the first seen on a tie)."""
    if not destinations:
        return fallback
    if len(destinations) == 1:
        return destinations[0].host
    best = max(enumerate(destinations), key=lambda item: (item[1].health_data, item[1].count, -item[0]))
    return best[1].host


_SUMMARY_HOSTS = 5


def _replace_word(text: str, word: str, replacement: str) -> str:
    """`text` with the first `word` that follows a space and ends the text or precedes a space (or
    a newline that ends the text) replaced."""
    end_of_text = len(text) - 1 if text.endswith("\n") else len(text)
    at = text.find(word, 1)
    while at != -1:
        after = at + len(word)
        if text[at - 1] == " " and (after >= end_of_text or text[after] == " "):
            return text[:at] + replacement + text[after:]
        at = text.find(word, at + 1)
    return text


def _summary_naming(summary: str, named: str | None, primary: str | None, destinations: list | None) -> str:
    """The rule's summary with the primary host in place of the one its record went to, and the
    window's other hosts after it."""
    if named and primary and primary != named:
        summary = _replace_word(summary, named, primary)
    others = [entry.host for entry in destinations or () if entry.host != primary]
    if others:
        listed = ", ".join(others[:_SUMMARY_HOSTS]) + (
            f" and {len(others) - _SUMMARY_HOSTS} more" if len(others) > _SUMMARY_HOSTS else ""
        )
        summary += f"; also {listed}"
    return summary

