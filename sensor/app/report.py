"""The compliance inventory: which PHI host talked to which third party, how, and under what
agreement, with a suggested egress allow list. What auditors ask for and no sensor gives them.

`phi-sensor report` (report_main) replays captures into it through the composition root."""
from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import io
import json
import logging
import os
from dataclasses import dataclass, field

from sensor.app.assemble import assemble_inventory
from sensor.enrich.assets import is_internal, is_internal_name
from sensor.enrich.observation import Observation
from sensor.enrich.vendors import registered_domain
from sensor.errors import EXIT_CAPTURE, EXIT_OK
from sensor.output.ecs import iso_time
from sensor.phi import evidence, is_health_data, request_fields
from sensor.records import HttpRequest

log = logging.getLogger("phi_sensor")

VERDICTS = ("tracker without BAA", "unreviewed third party", "covered by BAA", "allowed", "internal")
MAX_EXAMPLES = 6  # redacted examples kept per row
MAX_ENDPOINTS = 20
# PHI host tags that mark a web portal, for which a Content-Security-Policy is suggested
PORTAL_TAGS = frozenset({"portal", "patient-portal", "web", "web-portal", "website"})
# Sec-Fetch-Dest (sent by every current browser) -> the CSP directive that governs the load
FETCH_DEST_DIRECTIVES = {
    "script": "script-src", "serviceworker": "script-src", "sharedworker": "script-src", "worker": "script-src",
    "image": "img-src", "empty": "connect-src", "style": "style-src", "font": "font-src",
    "iframe": "frame-src", "frame": "frame-src", "audio": "media-src", "video": "media-src", "track": "media-src",
}
_EXTENSION_DIRECTIVES = {
    ".js": "script-src", ".mjs": "script-src", ".gif": "img-src", ".png": "img-src", ".jpg": "img-src",
    ".jpeg": "img-src", ".svg": "img-src", ".webp": "img-src", ".ico": "img-src", ".css": "style-src",
    ".woff": "font-src", ".woff2": "font-src",
}
CSP_DIRECTIVES = ("connect-src", "img-src", "script-src")


@dataclass(slots=True)
class InventoryRow:
    host_ip: str
    host_name: str
    destination: str  # vendor name, else the registered domain
    category: str
    baa: str
    verdict: str
    names: set[str] = field(default_factory=set)
    protocols: set[str] = field(default_factory=set)
    health_data: set[str] = field(default_factory=set)
    records: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    endpoints: set[str] = field(default_factory=set)  # "METHOD host/path" of HTTP requests
    examples: list[str] = field(default_factory=list)  # "path: redacted excerpt" of health data sent
    decrypted: bool = False  # seen in a HAR file or through a key log

    def as_dict(self) -> dict:
        return {
            "phi_host": self.host_ip,
            "phi_host_name": self.host_name,
            "destination": self.destination,
            "category": self.category,
            "baa": self.baa,
            "verdict": self.verdict,
            "hosts": sorted(self.names),
            "protocols": sorted(self.protocols),
            "health_data": sorted(self.health_data),
            "records": self.records,
            "first_seen": iso_time(self.first_seen),
            "last_seen": iso_time(self.last_seen),
            "endpoints": sorted(self.endpoints),
            "examples": list(self.examples),
            "decrypted": self.decrypted,
        }


@dataclass(slots=True)
class ExposureRow:
    """How large an exposure is, for one PHI host entry and one destination."""

    phi_host: str  # the inventory entry: its name, else its network
    network: str
    destination: str
    verdict: str
    baa: str
    requests: int = 0  # requests that carried health data
    clients: set[str] = field(default_factory=set)
    identifiers: set[bytes] = field(default_factory=set)  # keyed hashes, never written
    health_data: set[str] = field(default_factory=set)
    first_seen: float = 0.0
    last_seen: float = 0.0

    def as_dict(self) -> dict:
        return {
            "phi_host": self.phi_host,
            "network": self.network,
            "destination": self.destination,
            "verdict": self.verdict,
            "baa": self.baa,
            "requests_with_health_data": self.requests,
            "client_hosts": len(self.clients),
            "distinct_identifiers": len(self.identifiers),
            "health_data": sorted(self.health_data),
            "first_seen": iso_time(self.first_seen),
            "last_seen": iso_time(self.last_seen),
            "span_seconds": round(self.last_seen - self.first_seen, 3),
        }


class Exposure:
    """Counts for breach assessment. Identifiers are counted through an HMAC whose random key
    lives only in this object's memory: the count survives, no value or hash is ever written."""

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._rows: dict[tuple[str, str], ExposureRow] = {}

    def add(self, obs: Observation, destination: str, verdict: str, types: set[str], identifiers: list[str]) -> None:
        host = obs.phi_host
        network = str(host.network) if host else obs.record.flow.src_ip
        label = (host.name if host and host.name else network)
        ts = obs.record.ts
        row = self._rows.get((network, destination))
        if row is None:
            row = self._rows[(network, destination)] = ExposureRow(
                label, network, destination, verdict, obs.baa_status, first_seen=ts, last_seen=ts
            )
        row.requests += 1
        row.clients.add(obs.record.flow.src_ip)
        row.health_data.update(types)
        for value in identifiers:
            row.identifiers.add(hmac.new(self._key, value.strip().lower().encode(), hashlib.sha256).digest())
        row.first_seen = min(row.first_seen, ts)
        row.last_seen = max(row.last_seen, ts)

    def rows(self) -> list[ExposureRow]:
        return sorted(self._rows.values(), key=lambda r: (VERDICTS.index(r.verdict), -r.requests, r.phi_host,
                                                          r.destination))


class Inventory:
    """Collects enriched observations of PHI hosts (see DetectionEngine's on_observation)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], InventoryRow] = {}
        self.exposure = Exposure()
        # portal PHI host address -> destination host -> CSP directives its loads need ("" unknown)
        self._loads: dict[str, dict[str, set[str]]] = {}

    def observe(self, obs: Observation) -> None:
        name = obs.destination
        record = obs.record
        if not name:
            return
        vendor = obs.vendor
        key_name = vendor.name if vendor else (registered_domain(name) or name)
        key = (record.flow.src_ip, key_name)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = InventoryRow(
                host_ip=record.flow.src_ip,
                host_name=(obs.phi_host.name or "") if obs.phi_host else "",
                destination=key_name,
                category=vendor.category if vendor else "-",
                baa=obs.baa_status,
                verdict=_verdict(obs),
                first_seen=record.ts,
            )
        row.names.add(name)
        row.protocols.add(obs.source_record)
        row.records += 1
        row.first_seen = min(row.first_seen, record.ts)
        row.last_seen = max(row.last_seen, record.ts)
        from sensor.deep import DecryptedHttpRequest

        row.decrypted = row.decrypted or isinstance(record, DecryptedHttpRequest)
        types: set[str] = set()
        for findings in (obs.findings, obs.tracker_findings):
            if findings and is_health_data(findings):
                types.update(f.type for f in findings)
        row.health_data.update(types)
        if isinstance(record, HttpRequest):
            if len(row.endpoints) < MAX_ENDPOINTS:
                row.endpoints.add(f"{record.method} {record.host or name}{_path_of(record.target)}")
            if types:
                self._note_health_data(row, obs, record, types)
        if obs.phi_host is not None and PORTAL_TAGS.intersection(obs.phi_host.tags):
            loads = self._loads.setdefault(record.flow.src_ip, {}).setdefault(name, set())
            if isinstance(record, HttpRequest):
                loads.add(_directive_of(record))

    def _note_health_data(self, row: InventoryRow, obs: Observation, record: HttpRequest, types: set[str]) -> None:
        """Redacted examples for the row, and the request's share of the exposure (record is obs.record)."""
        if obs.tracker_findings and obs.tracker is not None:
            findings, fields = obs.tracker_findings, list(obs.tracker.params)
        else:
            findings = obs.findings or []
            fields = request_fields(record.target, record.headers, record.body, record.header("content-type"))
        for item in evidence(findings, fields):
            line = f"{item['path']}: {item['excerpt']}"
            if len(row.examples) < MAX_EXAMPLES and line not in row.examples:
                row.examples.append(line)
        values = [f.value for group in (obs.findings, obs.tracker_findings) for f in group or ()
                  if f.category == "identifier"]
        if obs.tracker is not None and obs.vendor is not None:
            values += [p.value for p in obs.tracker.params if p.value and obs.vendor.role_of(p.path) == "identifiers"]
        self.exposure.add(obs, row.destination, row.verdict, types, values)

    def rows(self) -> list[InventoryRow]:
        return sorted(self._rows.values(), key=lambda r: (VERDICTS.index(r.verdict), r.host_ip, r.destination))

    def allow_list(self) -> list[str]:
        """Registered domains PHI hosts may keep reaching: covered by a BAA or allow-listed."""
        keep = {registered_domain(n) or n for r in self._rows.values() if r.verdict in ("covered by BAA", "allowed")
                for n in r.names}
        return sorted(keep)

    def block_list(self) -> list[str]:
        """Tracker domains PHI hosts reached without a BAA: candidates for an egress block."""
        return sorted({registered_domain(n) or n for r in self._rows.values() if r.verdict == "tracker without BAA"
                       for n in r.names})

    def csp(self) -> list[dict]:
        """Per portal PHI host, a suggested CSP from the hosts it loaded from, trackers without a
        BAA removed. A host seen only in DNS/TLS (no request to read) is listed as unclassified."""
        verdicts = {(r.host_ip, n): r.verdict for r in self._rows.values() for n in r.names}
        out = []
        for host_ip in sorted(self._loads):
            directives: dict[str, set[str]] = {d: set() for d in CSP_DIRECTIVES}
            other: dict[str, set[str]] = {}
            removed, unclassified = set(), set()
            for name, needs in self._loads[host_ip].items():
                verdict = verdicts.get((host_ip, name))
                if verdict == "tracker without BAA":
                    removed.add(name)
                    continue
                source = f"https://{name}"
                for directive in needs or {""}:
                    if not directive:
                        unclassified.add(source)
                    else:
                        (directives if directive in directives else other).setdefault(directive, set()).add(source)
            policy = {d: sorted(v) for d, v in {**directives, **other}.items()}
            header = "; ".join(f"{d} 'self' {' '.join(v)}".rstrip() for d, v in policy.items())
            out.append({"phi_host": host_ip, "directives": policy, "header": f"default-src 'self'; {header}",
                        "removed_trackers": sorted(removed), "unclassified": sorted(unclassified)})
        return out

    def document(self, exposure: bool = False) -> dict:
        """Everything the report says, as the JSON format writes it (the other formats render it)."""
        doc: dict = {"inventory": [r.as_dict() for r in self.rows()], "allow": self.allow_list(),
                     "block": self.block_list(), "csp": self.csp()}
        if exposure:
            doc["exposure"] = [r.as_dict() for r in self.exposure.rows()]
        return doc

    def to_json(self, exposure: bool = False) -> str:
        return json.dumps(self.document(exposure), indent=2)

    def to_csv(self, exposure: bool = False) -> str:
        """The inventory as CSV; with `exposure`, the exposure table instead."""
        out = io.StringIO()
        if exposure:
            rows = self.document(True)["exposure"]
            columns = list(ExposureRow("", "", "", "internal", "").as_dict())
        else:
            rows = [r.as_dict() for r in self.rows()]
            columns = ["phi_host", "phi_host_name", "destination", "category", "baa", "verdict", "hosts", "protocols",
                       "health_data", "records", "first_seen", "last_seen"]
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for values in rows:
            writer.writerow({k: " ".join(v) if isinstance(v, list) else v for k, v in values.items()})
        return out.getvalue()

    def print_table(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=max(140, Console().width))
        table = Table(title="PHI host data flows", title_justify="left")
        for column in ("PHI host", "destination", "category", "BAA", "verdict", "via", "health data", "records"):
            table.add_column(column, overflow="fold")
        for row in self.rows():
            host = f"{row.host_ip} ({row.host_name})" if row.host_name else row.host_ip
            table.add_row(host, row.destination, row.category, row.baa, row.verdict, ", ".join(sorted(row.protocols)),
                          ", ".join(sorted(row.health_data)) or "-", str(row.records))
        console.print(table)
        console.print("suggested egress allow list: " + (", ".join(self.allow_list()) or "(none)"))
        console.print("trackers reached without a BAA: " + (", ".join(self.block_list()) or "(none)"))
        for policy in self.csp():
            console.print(f"suggested Content-Security-Policy for {policy['phi_host']}: {policy['header']}")

    def print_exposure(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=max(140, Console().width))
        table = Table(title="Exposure (requests carrying health data)", title_justify="left")
        for column in ("PHI host", "destination", "verdict", "requests", "client hosts", "identifiers",
                       "health data", "first seen", "last seen"):
            table.add_column(column, overflow="fold")
        for row in self.document(True)["exposure"]:
            table.add_row(row["phi_host"], row["destination"], row["verdict"], str(row["requests_with_health_data"]),
                          str(row["client_hosts"]), str(row["distinct_identifiers"]),
                          ", ".join(row["health_data"]), row["first_seen"], row["last_seen"])
        console.print(table)


def _path_of(target: str) -> str:
    """The path of a request target, without its query (which may carry health data)."""
    if target.startswith(("http://", "https://")):
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    return target.split("?", 1)[0].split("#", 1)[0] or "/"


def _directive_of(record: HttpRequest) -> str:
    """The CSP directive a request falls under: Sec-Fetch-Dest, else the path's extension; "" unknown."""
    dest = (record.header("sec-fetch-dest") or "").strip().lower()
    if dest in FETCH_DEST_DIRECTIVES:
        return FETCH_DEST_DIRECTIVES[dest]
    if record.method != "GET":
        return "connect-src"
    path = _path_of(record.target).lower()
    dot = path.rfind(".")
    return _EXTENSION_DIRECTIVES.get(path[dot:], "") if dot > path.rfind("/") else ""


def _verdict(obs: Observation) -> str:
    if obs.allowed:
        return "allowed"
    if obs.baa is not None:
        return "covered by BAA"
    if obs.vendor is not None:
        return "tracker without BAA"
    if (is_internal(obs.record.flow.dst_ip) and obs.source_record != "dns") or is_internal_name(obs.destination or ""):
        return "internal"
    return "unreviewed third party"


def report_main(args: argparse.Namespace) -> int:
    """Replay captures into the data-flow inventory instead of alerts."""
    from sensor.deep.replay import feed_inputs

    inventory = Inventory()
    pipeline, engine = assemble_inventory(args, inventory.observe)
    problems = feed_inputs(pipeline, args.pcaps, args.keylog, args.har_source, args.prefilter,
                           lambda: engine.policy.assets)
    pipeline.finish()
    if args.format == "json":
        print(inventory.to_json(args.exposure))
    elif args.format == "csv":
        print(inventory.to_csv(args.exposure), end="")
    elif args.format in ("html", "markdown"):
        from sensor.app.report_html import render

        print(render(inventory.document(args.exposure), args.format), end="")
    else:
        inventory.print_table()
        if args.exposure:
            inventory.print_exposure()
    for line in problems:
        log.error("%s", line)
    return EXIT_CAPTURE if problems else EXIT_OK
