"""plaintext-phi: health data in unencrypted HTTP leaving a PHI host.

Plaintext is a transmission-security failure whoever the receiver is, so a BAA does not silence
it. Severity: high; critical when identifiers travel together with health data (that is an
identifiable health record on the wire); medium when the receiver is inside the organisation.
"""
from __future__ import annotations

from sensor.deep import HttpsRequest
from sensor.detect.base import Alert, RuleInfo, describe_host
from sensor.enrich.assets import is_internal
from sensor.enrich.observation import Observation
from sensor.phi import is_health_data, summarize

INFO = RuleInfo(
    id="plaintext-phi",
    name="Health data sent unencrypted",
    category="plaintext-phi",
    description="A request from a host that handles PHI carried health data over plaintext HTTP.",
    reference="https://www.hhs.gov/hipaa/for-professionals/security/guidance/index.html",
    reads_content=True,
)


def evaluate(obs: Observation) -> Alert | None:
    findings = obs.findings
    if obs.phi_host is None or obs.allowed or not findings or not is_health_data(findings):
        return None
    if isinstance(obs.record, HttpsRequest):  # read through a key log or a HAR: encrypted on the wire
        return None
    counts = summarize(findings)
    categories = {f.category for f in findings}
    severity = "high"
    if "identifier" in categories:
        severity = "critical"
    record = obs.record
    if obs.vendor is None and is_internal(record.flow.dst_ip):
        severity = "medium"
    host = describe_host(obs)
    kinds = ", ".join(sorted(counts))
    target = obs.destination or record.flow.dst_ip
    summary = f"PHI host {host} sent {kinds} in plaintext HTTP {record.method} to {target}"
    subject = obs.vendor.id if obs.vendor else (obs.destination or record.flow.dst_ip)
    return Alert(INFO, severity, obs, summary, throttle_subject=subject, findings=list(findings))
