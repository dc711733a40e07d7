"""The sensor's YAML configuration: schema, defaults, and errors that name file, key and problem.

Every key is documented in deploy/config/sensor.example.yaml. ``load_config(None)`` gives the
defaults: every private address is a PHI host, no BAAs, no allow list, every rule as it ships,
JSON lines to stdout, redaction on.

Validation happens in two steps. ``load_config`` checks the file on its own (types, ranges,
unknown keys, addresses). ``SensorConfig.build_policy(catalog)`` resolves what needs the vendor
catalog (BAA vendor names) and returns the objects the detectors use.
"""
from __future__ import annotations

import datetime as dt
import difflib
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from sensor.errors import ConfigError

# The enrich modules use this module's YAML and message helpers, so they are imported where they
# are needed rather than here.
if TYPE_CHECKING:
    from sensor.enrich.assets import AssetInventory
    from sensor.enrich.baa import BaaRegistry
    from sensor.enrich.vendors import VendorCatalog

DEFAULT_SOURCE = "<defaults>"
MAX_CONFIG_BYTES = 1024 * 1024
Severity = Literal["low", "medium", "high", "critical"]  # the scale of sensor.detect
_RULE_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


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


def _optional_date(value: object) -> object:
    return None if value is None else as_date(value)


def _cidr_entry(value: object) -> object:
    if isinstance(value, str):
        return {"cidr": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an address, a CIDR or a mapping with cidr, name, tags; found {describe_value(value)}")
    return value


def _domain(value: str) -> str:
    from sensor.enrich.vendors import is_hostname, normalize_host, registered_domain

    domain = normalize_host(value)
    if not is_hostname(domain):
        raise ValueError(f"expected a domain such as example.com, found {value!r}")
    if not registered_domain(domain):
        raise ValueError(f"expected a registered domain or a host below one, found the public suffix {value!r}")
    return domain


def _output_spec(value: object) -> object:
    sinks = "jsonl, elasticsearch, opensearch, webhook"
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping with a 'type' key naming the sink ({sinks}), found {describe_value(value)}")
    sink = value.get("type")
    if not isinstance(sink, str) or not sink.strip():
        found = "no type" if sink is None else describe_value(sink)
        raise ValueError(f"expected a 'type' key naming the sink ({sinks}), found {found}")
    return value


def _rule_id(value: str) -> str:
    if not _RULE_ID.fullmatch(value):
        raise ValueError(f"expected a rule id such as tracker-egress-no-baa, found {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SensorSection(_Section):
    name: str = Field(default_factory=lambda: platform.node() or "phi-sensor", min_length=1)  # observer.name


class PhiHostEntry(_Section):
    cidr: str
    name: str | None = Field(None, min_length=1)
    tags: list[str] = []


class BaaAgreement(_Section):
    vendor: str | None = Field(None, min_length=1)
    domains: list[str] = []
    scope: str = ""
    signed: Annotated[dt.date | None, BeforeValidator(_optional_date)] = None
    expires: Annotated[dt.date | None, BeforeValidator(_optional_date)] = None


class RuleTuning(_Section):
    enabled: bool | None = None  # None: the rule's own default (some rules start disabled)
    severity: Severity | None = None
    throttle_seconds: int | None = Field(None, ge=0, le=30 * 86400)


class DecodeLimits(_Section):
    tcp_stream_cap: int = Field(262144, ge=1024, le=64 * 1024 * 1024)  # bytes kept per TCP direction
    http_body_cap: int = Field(65536, ge=0, le=16 * 1024 * 1024)  # decoded body bytes kept per request
    max_flows: int = Field(200000, ge=1, le=10_000_000)
    flow_idle_timeout: float = Field(120.0, gt=0, le=86400)  # seconds
    dns_timeout: float = Field(5.0, gt=0, le=300)  # seconds to wait for the response to a query


class Redaction(_Section):
    unredacted: bool = False  # true puts PHI evidence in clear into alerts: for lab use only


class SensorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sensor: SensorSection = Field(default_factory=SensorSection)
    phi_hosts: list[Annotated[PhiHostEntry, BeforeValidator(_cidr_entry)]] | None = None  # None: all private space
    phi_hosts_exclude: list[str] = []
    baa: list[BaaAgreement] = []
    allow: list[Annotated[str, AfterValidator(_domain)]] = []  # domains never alerted on
    rules: dict[Annotated[str, AfterValidator(_rule_id)], RuleTuning] = {}
    decode: DecodeLimits = Field(default_factory=DecodeLimits)
    outputs: list[Annotated[dict[str, Any], BeforeValidator(_output_spec)]] = [{"type": "jsonl", "path": "-"}]
    redaction: Redaction = Field(default_factory=Redaction)

    _source: str = PrivateAttr(DEFAULT_SOURCE)

    @property
    def source(self) -> str:
        """The file this configuration came from, or <defaults>."""
        return self._source

    @cached_property
    def assets(self) -> AssetInventory:
        from sensor.enrich.assets import AssetInventory

        entries = None if self.phi_hosts is None else [entry.model_dump(exclude_none=True) for entry in self.phi_hosts]
        return AssetInventory.from_config(entries, self._source, self.phi_hosts_exclude)

    def rule(self, rule_id: str) -> RuleTuning:
        """The tuning for a rule; None fields mean the rule's own default."""
        return self.rules.get(rule_id) or RuleTuning()

    def check_rule_ids(self, known: Iterable[str]) -> None:
        """Reject tuning for rules that do not exist (the rule engine passes its ids)."""
        known_ids = sorted(known)
        for rule_id in self.rules:
            if rule_id not in known_ids:
                close = difflib.get_close_matches(rule_id, known_ids, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known rules: {', '.join(known_ids)}"
                raise ConfigError(self._source, f"rules.{rule_id}", f"unknown rule ({hint})")

    def build_policy(self, catalog: VendorCatalog) -> Policy:
        """Resolve BAA vendor names against the catalog and bundle what the detectors consult."""
        from sensor.enrich.baa import BaaRegistry

        agreements = [agreement.model_dump() for agreement in self.baa]
        baa = BaaRegistry.from_config(agreements, catalog, self._source)
        return Policy(catalog=catalog, assets=self.assets, baa=baa, allow=frozenset(self.allow))


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


def load_config(path: Path | None) -> SensorConfig:
    """Read and validate a configuration file; None gives the documented defaults."""
    if path is None:
        return SensorConfig()
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
    try:
        config = SensorConfig.model_validate(document)
    except ValidationError as exc:
        raise _config_error(exc, source) from None
    config._source = source
    _ = config.assets
    return config


def _nested_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _nested_model(argument)
        if found is not None:
            return found
    return None


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the section a location points into, for "did you mean" hints."""
    model: type[BaseModel] | None = SensorConfig
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is not None:
            model = _nested_model(field.annotation)
    return list(model.model_fields) if model is not None else []


def _format_key(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        if part == "[key]":
            continue
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "date_type": "a date (YYYY-MM-DD)",
    "string_too_short": "a non-empty string",
}


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    kind = error["type"]
    context = error.get("ctx", {})
    found = describe_value(error.get("input"))
    if kind == "missing":
        problem = "required key missing"
    elif kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        problem = f"unknown key (did you mean {close[0]!r}?)" if close else f"unknown key (expected one of: {', '.join(allowed)})"
    elif kind == "value_error":
        problem = str(context.get("error", error["msg"]))
    elif kind == "literal_error":
        problem = f"expected one of {context.get('expected')}, found {found}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than", "less_than_equal": "at most"}
        limit = next(iter(context.values()))
        shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
        problem = f"expected a number {words[kind]} {shown}, found {found}"
    else:
        problem = f"expected {_EXPECTED.get(kind, error['msg'])}, found {found}"
    remaining = exc.error_count() - 1
    if remaining:
        problem += f" (and {remaining} more problem{'s' if remaining > 1 else ''})"
    return ConfigError(source, _format_key(loc), problem)
