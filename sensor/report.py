"""The compliance inventory: which PHI host talked to which third party, how, and under what
agreement, with a suggested egress allow list. What auditors ask for and no sensor gives them."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from sensor.detect.base import Observation
from sensor.enrich.assets import is_internal, is_internal_name
from sensor.enrich.vendors import registered_domain
from sensor.output.ecs import iso_time
from sensor.phi import is_health_data

VERDICTS = ("tracker without BAA", "unreviewed third party", "covered by BAA", "allowed", "internal")


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
        }


class Inventory:
    """Collects enriched observations of PHI hosts (see DetectionEngine's on_observation)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], InventoryRow] = {}

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
        for findings in (obs.findings, obs.tracker_findings):
            if findings and is_health_data(findings):
                row.health_data.update(f.type for f in findings)

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

    def to_json(self) -> str:
        return json.dumps(
            {"inventory": [r.as_dict() for r in self.rows()], "allow": self.allow_list(), "block": self.block_list()},
            indent=2,
        )

    def to_csv(self) -> str:
        out = io.StringIO()
        columns = ["phi_host", "phi_host_name", "destination", "category", "baa", "verdict", "hosts", "protocols",
                   "health_data", "records", "first_seen", "last_seen"]
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in self.rows():
            values = row.as_dict()
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
