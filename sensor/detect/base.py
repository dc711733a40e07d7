"""What every rule shares: the observation it looks at, the alert it returns, the severity scale."""
from __future__ import annotations

from dataclasses import dataclass, field

from sensor.enrich.assets import PhiHost
from sensor.enrich.baa import BaaEntry
from sensor.enrich.vendors import Vendor
from sensor.records import Record


# PHI host tags that mean an authenticated or app origin: HHS says trackers there "generally have
# access to PHI", so egress from such a host weighs one level more.
SENSITIVE_TAGS = frozenset({"portal", "patient-portal", "authenticated", "ehr", "emr", "app", "patient-app", "telehealth"})


@dataclass(frozen=True, slots=True)
class RuleInfo:
    id: str
    name: str
    category: str
    description: str
    reference: str
    enabled_by_default: bool = True


@dataclass(slots=True)
class Observation:
    """A record with everything enrichment knows about it, computed once for all rules."""

    record: Record
    source_record: str  # dns | tls | quic | http | dns-attribution
    phi_host: PhiHost | None
    destination: str | None  # the destination name the vendor was matched on
    vendor: Vendor | None
    baa: BaaEntry | None
    allowed: bool
    baa_status: str = "none"  # on-file | expired | not-yet-signed | none
    # filled lazily by the engine for HTTP records and shared by the rules that need them
    findings: list | None = None
    tracker: object | None = None
    tracker_findings: list | None = None


def describe_host(obs: Observation) -> str:
    """The source host for a summary line: its address, and its inventory name when it has one."""
    ip = obs.record.flow.src_ip
    name = obs.phi_host.name if obs.phi_host else None
    return f"{ip} ({name})" if name else ip


@dataclass(slots=True)
class Alert:
    rule: RuleInfo
    severity: str
    observation: Observation
    summary: str
    throttle_subject: str  # vendor id or destination domain: with rule and source host, the throttle key
    findings: list = field(default_factory=list)
    fields: list = field(default_factory=list)  # decoded fields the findings point into (for evidence excerpts)
