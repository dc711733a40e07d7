"""What every sink reads from a document: whether it is an alert, and how it ranks."""
from __future__ import annotations

from typing import Any

from sensor.severity import SEVERITY_RANK


def is_alert(doc: dict[str, Any]) -> bool:
    event = doc.get("event")
    return isinstance(event, dict) and event.get("kind") == "alert"


def alert_severity(doc: dict[str, Any]) -> str | None:
    """The alert's severity name (low|medium|high|critical), or None for events and unknown values."""
    if not is_alert(doc):
        return None
    phi = doc.get("phi_egress")
    severity = phi.get("severity") if isinstance(phi, dict) else None
    return severity if severity in SEVERITY_RANK else None


def severity_rank(doc: dict[str, Any]) -> int:
    """0 for events, 1 (low) to 4 (critical) for alerts; an alert of unknown severity ranks as low."""
    if not is_alert(doc):
        return 0
    severity = alert_severity(doc)
    return SEVERITY_RANK[severity] + 1 if severity else 1
