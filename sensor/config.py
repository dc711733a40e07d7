"""The sensor's YAML configuration: loading, defaults, and errors that name file, key and problem.

The schema itself (keys, types, ranges, with pydantic) is in config_schema.py, loaded when a file
is read; `load_config(None)` answers with `DefaultConfig` without it.

Every key is documented in deploy/config/sensor.example.yaml. ``load_config(None)`` reads
/etc/phi-sensor/sensor.yaml when it exists (see `paths.default_config_file`), else gives the
defaults: every private address is a PHI host, no BAAs, no allow list, every rule as it ships,
JSON lines to stdout, redaction on.

Validation happens in two steps. ``load_config`` checks the file on its own (types, ranges,
unknown keys, addresses). ``SensorConfig.build_policy(catalog)`` resolves what needs the vendor
catalog (BAA vendor names) and returns the objects the detectors use.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sensor.config_base import (
    DECODE_DEFAULTS,
    DEFAULT_SOURCE,
    MAX_CONFIG_BYTES,
    default_outputs,
    default_sensor_name,
    describe_value,
    parse_yaml,
)
from sensor.errors import ConfigError

if TYPE_CHECKING:
    from sensor.config_schema import SensorConfig
    from sensor.enrich.policy import Policy
    from sensor.enrich.vendors import VendorCatalog

def load_config(path: Path | None) -> SensorConfig | DefaultConfig:
    """Read and validate a configuration file; None gives the documented defaults."""
    if path is None:
        return DefaultConfig()
    source = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(source, "", "configuration file not found") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_config(data, source)


def parse_config(data: bytes | str, source: str) -> SensorConfig:
    """Validate configuration text; also builds the asset inventory so bad addresses fail here."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, "", f"expected at most {MAX_CONFIG_BYTES} bytes of configuration")
    document = parse_yaml(data, source)
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise ConfigError(source, "", f"expected a mapping of settings at the top level, found {describe_value(document)}")
    from sensor.config_schema import validate

    return validate(document, source)


class _Values:
    """A section of DefaultConfig: its values as attributes, and as a dict like a model's."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def model_dump(self) -> dict[str, Any]:
        return dict(self.__dict__)


class DefaultConfig:
    """The configuration without a file. What every run reads (observer name, redaction, decode
    limits, outputs, rule tuning) has its default values here, from the constants the schema
    uses too; anything else (the policy, the asset inventory) comes from the schema's own
    default instance, built on first use. A plain replay so never loads pydantic."""

    source = DEFAULT_SOURCE

    def __init__(self) -> None:
        self.sensor = _Values(name=default_sensor_name(), signatures=None)
        self.redaction = _Values(unredacted=False)
        self.decode = _Values(**DECODE_DEFAULTS)
        self.outputs = default_outputs()
        self.rules: dict[str, Any] = {}

    def check_rule_ids(self, known: Iterable[str]) -> None:
        """No rule is tuned: nothing to check."""

    def rule(self, rule_id: str) -> _Values:
        """No rule is tuned: each keeps its own defaults (RuleTuning's, all None)."""
        return _Values(enabled=None, severity=None, throttle_seconds=None)

    def build_policy(self, catalog: VendorCatalog) -> Policy:
        """The default policy: every private address a PHI host, no BAAs, no allow list."""
        from sensor.enrich.assets import AssetInventory
        from sensor.enrich.baa import BaaRegistry
        from sensor.enrich.policy import Policy

        return Policy(catalog=catalog, assets=AssetInventory.default(), baa=BaaRegistry(()), allow=frozenset())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = self.__dict__.get("_full")
        if full is None:
            from sensor.config_schema import SensorConfig

            full = self.__dict__["_full"] = SensorConfig()
        return getattr(full, name)


def __getattr__(name: str) -> Any:
    """The schema's names (SensorConfig, RuleTuning, ...), loaded with pydantic on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    import sensor.config_schema as schema

    try:
        return getattr(schema, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


