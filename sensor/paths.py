"""Where things live: the data bundled in the package, and the places an operator's files go.

The bundled data (vendor signatures, PHI lexicons, index templates, lifecycle policies, Kibana
objects) sits inside the package, so a wheel, an sdist and a source checkout find it alike,
whatever the working directory. Wheels are always unpacked, so the package directory is a
real directory and the loaders can read it with ordinary paths.
"""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

DATA_DIR = Path(str(files("sensor") / "data"))
SIGNATURES_DIR = DATA_DIR / "signatures"
VENDORS_DIR = SIGNATURES_DIR / "vendors"
PHI_LEXICON_DIR = SIGNATURES_DIR / "phi"
TEMPLATES_DIR = DATA_DIR / "elasticsearch"
KIBANA_DIR = DATA_DIR / "kibana"
SECURITY_RULES_DIR = KIBANA_DIR / "security-rules"

APP = "phi-sensor"
DEFAULT_USER = APP  # the account `live` switches to once its capture is open
CONFIG_FILE_NAME = "sensor.yaml"
SPOOL_DIR_NAME = "spool"


def config_dir() -> Path:
    """The system configuration directory: $PHI_SENSOR_CONFIG_DIR, else $CONFIGURATION_DIRECTORY
    (set by systemd's ConfigurationDirectory=), else /etc/phi-sensor."""
    chosen = os.environ.get("PHI_SENSOR_CONFIG_DIR") or _first(os.environ.get("CONFIGURATION_DIRECTORY"))
    return Path(chosen) if chosen else Path("/etc") / APP


def default_config_file() -> Path | None:
    """The configuration used when --config is absent: <config dir>/sensor.yaml if it exists."""
    path = config_dir() / CONFIG_FILE_NAME
    return path if path.is_file() else None


def state_dir() -> Path:
    """Where the sensor keeps state between runs: $STATE_DIRECTORY under systemd (StateDirectory=,
    /var/lib/phi-sensor), else $XDG_STATE_HOME/phi-sensor (default ~/.local/state/phi-sensor)."""
    service = _first(os.environ.get("STATE_DIRECTORY"))
    if service:
        return Path(service)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / APP


def default_spool_dir() -> Path:
    """The remote sinks' disk queue: never the working directory, so every run finds it again."""
    return state_dir() / SPOOL_DIR_NAME


def _first(value: str | None) -> str | None:
    """systemd passes one path per directory listed, separated by colons: the first is ours."""
    return value.split(":", 1)[0] if value else None
