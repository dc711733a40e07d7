"""What the configuration loader, its schema and the enrichment tables share: the YAML reader,
the "found ..." wording of values, dates, and the documented defaults.

A leaf: it imports nothing of the sensor but its errors and the decoder's settings, so the lookup tables in sensor.enrich can
read their files without depending on the configuration loader that builds them.
"""
from __future__ import annotations

import datetime as dt
import platform
import re
from collections.abc import Mapping
from dataclasses import asdict
from functools import cache
from typing import Any

from sensor.decode.settings import DecodeSettings
from sensor.errors import ConfigError

DEFAULT_SOURCE = "<defaults>"
MAX_CONFIG_BYTES = 1024 * 1024
RULE_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# Defaults the schema declares and DefaultConfig answers without it: the decoder's own, and
# tunnel_ports None (sensor.decode.packet.DEFAULT_UDP_TUNNEL_PORTS).
DECODE_DEFAULTS: dict[str, Any] = {**asdict(DecodeSettings()), "tunnel_ports": None}


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
                return super().construct_yaml_timestamp(node)
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
        # Without an anchor (&name) an alias cannot resolve: loading fails on it (below), so only
        # a text with one is read twice.
        for event in yaml.parse(data, Loader=base_loader) if "&" in data else ():
            if isinstance(event, yaml.AliasEvent):
                # the stub types the C parser's marks apart from yaml.error.Mark, but the error only
                # formats the mark's name, line and column, which both kinds have
                mark = event.start_mark
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not supported", mark  # type: ignore[arg-type]
                )
        return yaml.load(data, Loader=strict_loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ": ".join(part for part in (exc.context, exc.problem) if part)
        if (exc.problem or "").startswith("found undefined alias"):
            problem = "aliases (*name) are not supported"
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
