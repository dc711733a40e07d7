"""The severity scale, in one place: its names in order, their ranks, and the ECS scores alerts carry."""
from __future__ import annotations

from typing import Literal, get_args

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
SEVERITY_SCORE = {"low": 21, "medium": 47, "high": 73, "critical": 99}  # ECS event.severity, as Elastic rules use


def raise_level(severity: str, steps: int = 1) -> str:
    """The severity `steps` levels up the scale, at most critical."""
    return SEVERITIES[min(len(SEVERITIES) - 1, SEVERITY_RANK[severity] + steps)]
