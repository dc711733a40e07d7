"""The configuration schema: every key, its type, range and default, validated with pydantic.

Loaded only to read a configuration file (or for what only the schema can answer): a run without
one uses `config.DefaultConfig`, which has the same values without loading pydantic.
"""
from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from sensor.config_base import (
    DECODE_DEFAULTS,
    DEFAULT_SOURCE,
    RULE_ID,
    as_date,
    default_outputs,
    default_sensor_name,
    describe_value,
)
from sensor.enrich.policy import Policy
from sensor.errors import ConfigError
from sensor.severity import Severity

if TYPE_CHECKING:
    from sensor.enrich.assets import AssetInventory
    from sensor.enrich.vendors import VendorCatalog


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
    if not RULE_ID.fullmatch(value):
        raise ValueError(f"expected a rule id such as tracker-egress-no-baa, found {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SensorSection(_Section):
    name: str = Field(default_factory=default_sensor_name, min_length=1)  # observer.name
    # A vendor directory merged over the bundled signatures (relative: to the configuration file).
    signatures: str | None = Field(default=None, min_length=1)


class PhiHostEntry(_Section):
    cidr: str
    name: str | None = Field(default=None, min_length=1)
    tags: list[str] = []


class BaaAgreement(_Section):
    vendor: str | None = Field(default=None, min_length=1)
    domains: list[str] = []
    scope: str = ""
    signed: Annotated[dt.date | None, BeforeValidator(_optional_date)] = None
    expires: Annotated[dt.date | None, BeforeValidator(_optional_date)] = None


class RuleTuning(_Section):
    enabled: bool | None = None  # None: the rule's own default (some rules start disabled)
    severity: Severity | None = None
    throttle_seconds: int | None = Field(default=None, ge=0, le=30 * 86400)


class DecodeLimits(_Section):
    # bytes kept per TCP direction
    tcp_stream_cap: int = Field(default=DECODE_DEFAULTS["tcp_stream_cap"], ge=1024, le=64 * 1024 * 1024)
    # decoded body bytes kept per request
    http_body_cap: int = Field(default=DECODE_DEFAULTS["http_body_cap"], ge=0, le=16 * 1024 * 1024)
    max_flows: int = Field(default=DECODE_DEFAULTS["max_flows"], ge=1, le=10_000_000)
    flow_idle_timeout: float = Field(default=DECODE_DEFAULTS["flow_idle_timeout"], gt=0, le=86400)  # seconds
    # seconds to wait for the response to a query
    dns_timeout: float = Field(default=DECODE_DEFAULTS["dns_timeout"], gt=0, le=300)
    # UDP port -> the tunnel it carries (both ports of a datagram are looked at); {} decodes none
    tunnel_ports: dict[Annotated[int, Field(ge=1, le=65535)], Literal["vxlan", "geneve", "gtp-u", "teredo", "l2tp"]] | None = None


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
    outputs: list[Annotated[dict[str, Any], BeforeValidator(_output_spec)]] = Field(default_factory=default_outputs)
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


def validate(document: Mapping[str, Any], source: str) -> SensorConfig:
    """A parsed configuration document as the validated configuration, or ConfigError."""
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
        words = {
            "greater_than": "greater than", "greater_than_equal": "at least",
            "less_than": "less than", "less_than_equal": "at most",
        }
        limit = next(iter(context.values()))
        shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
        problem = f"expected a number {words[kind]} {shown}, found {found}"
    else:
        problem = f"expected {_EXPECTED.get(kind, error['msg'])}, found {found}"
    remaining = exc.error_count() - 1
    if remaining:
        problem += f" (and {remaining} more problem{'s' if remaining > 1 else ''})"
    return ConfigError(source, _format_key(loc), problem)
