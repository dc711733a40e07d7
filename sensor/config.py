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

import datetime as dt
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sensor.errors import ConfigError

# The enrich modules use this module's YAML and message helpers, so they are imported where they
# are needed rather than here.
if TYPE_CHECKING:
    from sensor.config_schema import SensorConfig
    from sensor.enrich.assets import AssetInventory
    from sensor.enrich.baa import BaaRegistry
    from sensor.enrich.vendors import VendorCatalog

DEFAULT_SOURCE = "<defaults>"
MAX_CONFIG_BYTES = 1024 * 1024
Severity = Literal["low", "medium", "high", "critical"]  # the scale of sensor.detect
_RULE_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# Defaults the schema declares and DefaultConfig answers without it.
DECODE_DEFAULTS: dict[str, Any] = {
    "tcp_stream_cap": 262144,  # bytes kept per TCP direction
    "http_body_cap": 65536,  # decoded body bytes kept per request
    "max_flows": 200000,
    "flow_idle_timeout": 120.0,  # seconds
    "dns_timeout": 5.0,  # seconds to wait for the response to a query
    "tunnel_ports": None,  # UDP port -> tunnel kind; None: sensor.decode.packet.DEFAULT_UDP_TUNNEL_PORTS
}


def default_sensor_name() -> str:
    """observer.name when the configuration names no sensor: the host's name."""
    return platform.node() or "phi-sensor"


def default_outputs() -> list[dict[str, Any]]:
    """JSON lines to stdout."""
    return [{"type": "jsonl", "path": "-"}]


def describe_value(value: object) -> str:
    """A short, type-revealing form of a configuration value for "found ..." messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return text if isinstance(value, str) else f"{text} ({type(value).__name__})"


@cache
def _loaders() -> tuple[type, type]:
    """(base loader, strict loader), built on first use: a run without configuration or signature
    files never loads PyYAML."""
    import yaml

    # libyaml's parser when PyYAML was built with it: loading the catalog is then several times faster.
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[misc,valid-type]
        """SafeLoader that rejects duplicate keys (aliases are refused before loading, see parse_yaml).

        A duplicate key silently drops the first value, which hides mistakes; aliases let a small
        file expand into an enormous structure, and configuration files have no need for them.
        """

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[object] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # an unhashable key: the base constructor reports it with its position
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> dt.date | dt.datetime:
            # An impossible date (2024-02-30) would otherwise surface as a ValueError without a line.
            try:
                return super().construct_yaml_timestamp(node)  # type: ignore[no-any-return]
            except ValueError as exc:
                raise yaml.constructor.ConstructorError(
                    None, None, f"impossible date {node.value!r} ({exc})", node.start_mark
                ) from None

    StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", StrictLoader.construct_yaml_timestamp)
    return base, StrictLoader


def parse_yaml(data: bytes | str, source: str) -> Any:
    """One YAML document, or ConfigError with the line and column of the problem."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(source, "", f"expected UTF-8 text, found an invalid byte at offset {exc.start}") from None
    import yaml

    base_loader, strict_loader = _loaders()
    try:
        for event in yaml.parse(data, Loader=base_loader):
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not supported", event.start_mark)
        return yaml.load(data, Loader=strict_loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ": ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(source, where, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(source, "", "invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError, TypeError) as exc:
        # PyYAML builds dates and numbers itself; an impossible one (2024-02-30) ends up here.
        raise ConfigError(source, "", f"invalid YAML value: {exc}") from None


def as_date(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a date (YYYY-MM-DD), found {describe_value(value)}")


@dataclass(frozen=True, slots=True)
class Policy:
    catalog: VendorCatalog
    assets: AssetInventory
    baa: BaaRegistry
    allow: frozenset[str]

    def is_allowed(self, host: str) -> bool:
        """Whether a host is on the allow list (the listed domain or any subdomain)."""
        from sensor.enrich.vendors import domain_suffixes, normalize_host

        return any(suffix in self.allow for suffix in domain_suffixes(normalize_host(host)))


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


