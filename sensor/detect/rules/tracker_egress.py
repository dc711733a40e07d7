"""tracker-egress-no-baa: a PHI host reaches a catalogued tracker vendor with no BAA on file.

Severity: what the record proves about the exchange. A DNS query shows intent (low); a TLS or
QUIC handshake, or a flow attributed through DNS, shows a connection (medium); plaintext HTTP
shows data was sent (high). One level more from a host tagged as an authenticated or app origin,
and one more for session-replay vendors, which record whatever is on screen.
"""
from __future__ import annotations

from sensor.deep import HttpsRequest
from sensor.detect.base import SENSITIVE_TAGS, Alert, RuleInfo, describe_host
from sensor.enrich.observation import Observation
from sensor.records import positional_constructor
from sensor.severity import raise_level

# an Alert from every field in order (compiled: a lookup or hello raises one per record that fires)
_new_alert = positional_constructor(Alert)

INFO = RuleInfo(
    id="tracker-egress-no-baa",
    name="PHI host contacts tracker vendor without BAA",
    category="tracker-egress",
    description="A host that handles PHI reached an ad, analytics or session-replay vendor that has no "
    "Business Associate Agreement on file.",
    reference="https://www.hhs.gov/hipaa/for-professionals/privacy/guidance/hipaa-online-tracking/index.html",
    catalogued=True,
)

BASE_SEVERITY = {"dns": "low", "tls": "medium", "quic": "medium", "dns-attribution": "medium", "http": "high"}
_HOW = {
    "dns": "looked up",
    "tls": "opened TLS to",
    "quic": "opened QUIC to",
    "dns-attribution": "connected to an address of",
    "http": "sent plaintext HTTP to",
}
_BAA_NOTE = {"expired": "BAA expired", "not-yet-signed": "BAA not yet in effect"}


def evaluate(obs: Observation) -> Alert | None:
    vendor = obs.vendor
    if obs.phi_host is None or vendor is None or obs.baa is not None or obs.allowed:
        return None
    severity = BASE_SEVERITY[obs.source_record]
    if not SENSITIVE_TAGS.isdisjoint(obs.phi_host.tags):  # (no set made per alert)
        severity = raise_level(severity)
    if vendor.category == "session-replay":
        severity = raise_level(severity)
    how = "sent HTTPS (read decrypted) to" if isinstance(obs.record, HttpsRequest) else _HOW[obs.source_record]
    baa_note = _BAA_NOTE.get(obs.baa_status, "no BAA on file")
    host = describe_host(obs)
    summary = f"PHI host {host} {how} {obs.destination} ({vendor.name}, {vendor.category}; {baa_note})"
    return _new_alert(INFO, severity, obs, summary, vendor.id, (), ())
