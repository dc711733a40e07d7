"""unreviewed-vendor: a PHI host reaches a third party that is neither catalogued nor covered by a
BAA. Off by default: it feeds the vendor inventory rather than paging anyone."""
from __future__ import annotations

from sensor.detect.base import Alert, RuleInfo, describe_host
from sensor.enrich.assets import is_internal_name
from sensor.enrich.observation import Observation
from sensor.enrich.vendors import registered_domain
from sensor.records import positional_constructor

# an Alert from every field in order (compiled: a lookup or hello raises one per record that fires)
_new_alert = positional_constructor(Alert)

INFO = RuleInfo(
    id="unreviewed-vendor",
    name="PHI host contacts unreviewed third party",
    category="inventory",
    description="A host that handles PHI reached a domain that is neither a catalogued vendor nor covered by "
    "a BAA: review it and add it to the BAA registry or the allow list.",
    reference="https://www.hhs.gov/hipaa/for-professionals/privacy/guidance/business-associates/index.html",
    catalogued=False,
    enabled_by_default=False,
)

def evaluate(obs: Observation) -> Alert | None:
    name = obs.destination
    if obs.phi_host is None or obs.vendor is not None or obs.baa is not None or obs.allowed or not name:
        return None
    if is_internal_name(name):
        return None
    domain = registered_domain(name) or name
    host = describe_host(obs)
    summary = f"PHI host {host} reached {name}, a third party with no catalog entry and no BAA"
    return _new_alert(INFO, "low", obs, summary, domain, (), ())
