"""phi-in-tracker-payload: a decoded tracker payload carries health data, e.g. a condition page in
the Meta Pixel's `dl`, a medication in a GA4 `ep.*` parameter, glucose readings in Mixpanel `data=`.

This shows *what* leaked, not only that a tracker was contacted. Severity: critical when health
data reaches a vendor with no BAA; high when the payload carries identifiers (hashed e-mail,
member id) next to health context only.
"""
from __future__ import annotations

from sensor.detect.base import Alert, RuleInfo, describe_host
from sensor.enrich.observation import Observation
from sensor.phi import is_health_data, summarize

INFO = RuleInfo(
    id="phi-in-tracker-payload",
    name="Health data in tracker payload",
    category="tracker-payload",
    description="A request to a tracking endpoint carried health data in its decoded parameters.",
    reference="https://www.hhs.gov/hipaa/for-professionals/privacy/guidance/hipaa-online-tracking/index.html",
    reads_content=True,
)


def evaluate(obs: Observation) -> Alert | None:
    findings = obs.tracker_findings
    if obs.phi_host is None or obs.allowed or obs.baa is not None or not findings or obs.tracker is None:
        return None
    categories = {f.category for f in findings}
    if is_health_data(findings):
        severity = "critical"
    elif "identifier" in categories and "context" in categories:
        severity = "high"
    else:
        return None
    tracker = obs.tracker
    vendor = obs.vendor.name if obs.vendor else tracker.decoder
    kinds = ", ".join(sorted(summarize(findings)))
    event = f" event {tracker.event}" if tracker.event else ""
    host = describe_host(obs)
    at = f" at {obs.destination}" if obs.destination else ""
    summary = f"PHI host {host} sent {kinds} to {vendor}{at}{event} (no BAA on file)"
    subject = obs.vendor.id if obs.vendor else tracker.decoder
    return Alert(INFO, severity, obs, summary, throttle_subject=subject, findings=list(findings),
                 fields=tracker.params)
