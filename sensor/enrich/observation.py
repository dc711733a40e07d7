"""A record with everything enrichment knows about it: the PHI host it came from, the destination
and vendor it went to, the allow list's and the BAA registry's word on it, and (for HTTP) the
health data found in it. The detector computes it once per record for all rules."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sensor.enrich.assets import PhiHost
from sensor.enrich.baa import BaaEntry
from sensor.enrich.vendors import Vendor
from sensor.records import Record

if TYPE_CHECKING:  # typing only: the observation does not load the PHI scanners itself
    from sensor.phi.recognizers import Finding
    from sensor.phi.trackers import TrackerPayload


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
    findings: list[Finding] | None = None
    tracker: TrackerPayload | None = None
    tracker_findings: list[Finding] | None = None
