"""What every rule shares: its info, the alert it returns, and the observation it looks at
(made by enrichment, sensor/enrich/observation.py)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sensor.enrich.observation import Observation

if TYPE_CHECKING:  # typing only: rules load the scanners themselves when they need them
    from sensor.phi.layers import Field
    from sensor.phi.recognizers import Finding

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
    # fires only on what a request carried (health data found in it, a tracker payload): the
    # detector does not ask it about DNS lookups and TLS or QUIC hellos
    reads_content: bool = False
    # True: fires only where the destination is a catalogued vendor; False: only where it is not;
    # None: either (the detector asks a rule only about destinations it may fire on)
    catalogued: bool | None = None


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
    # none by default, shared: most alerts carry none, and a day of traffic keeps thousands of them
    findings: Sequence[Finding] = ()
    fields: Sequence[Field] = ()  # decoded fields the findings point into (for evidence excerpts)
