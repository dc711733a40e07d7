"""The composition root: configuration and signatures in, the parts of a run out (policy, event
and alert builders, detector, sinks, pipeline).

Replay, live (and its reloads), report and check-config all build here, each from one loaded
configuration, so they cannot drift apart in what they read or how they wire it.
"""
from __future__ import annotations

import argparse
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sensor.decode.settings import DecodeSettings
from sensor.output.ecs import EventBuilder
from sensor.output.sinks import Sink
from sensor.pipeline import Pipeline
from sensor.records import Counters

if TYPE_CHECKING:
    from sensor.detect.engine import DetectionEngine, RuleSettings
    from sensor.enrich.policy import Policy
    from sensor.enrich.vendors import VendorCatalog

log = logging.getLogger("phi_sensor")


@dataclass(slots=True)
class Parts:
    """One assembled run: what a mode's loop needs, and the configuration it came from."""

    config: Any  # SensorConfig or DefaultConfig
    pipeline: Pipeline
    sinks: list[Sink]
    events: EventBuilder


def load(args: argparse.Namespace) -> Any:
    """The configuration a run reads (--config, else the defaults), its rule tuning checked
    against the rules that exist."""
    from sensor.config import load_config

    config = load_config(args.config)
    config.check_rule_ids(rule_ids())
    return config


def rule_ids() -> Iterator[str]:
    """The detection rules' ids, the rules loaded only when a configuration tunes one."""
    from sensor.detect.rules import ALL_RULES

    for rule in ALL_RULES:
        yield rule.INFO.id


def spool_dir(args: argparse.Namespace) -> Path:
    """--spool-dir, else the state directory's spool (never the working directory)."""
    from sensor.paths import default_spool_dir

    return args.spool_dir or default_spool_dir()


def output_specs(args: argparse.Namespace, config: Any) -> tuple[list[dict[str, Any]], str]:
    """The outputs a run writes to, and where they were given: --output, else the configuration's."""
    from sensor.output.sinks import COMMAND_LINE, parse_output_spec

    if not args.output:
        return list(config.outputs), config.source
    specs = [parse_output_spec(spec) for spec in args.output]
    if getattr(args, "emit", "alerts") in ("events", "all"):  # events on the command line: every output
        for spec in specs:
            spec.setdefault("events", True)
    return specs, COMMAND_LINE


def signature_overlay(option: Path | None, config: Any) -> Path | None:
    """The operator's vendor directory: --signatures, else the configuration's sensor.signatures
    (relative to the configuration file's directory)."""
    if option is not None:
        return option
    configured = config.sensor.signatures
    if not configured:
        return None
    path = Path(configured).expanduser()
    return path if path.is_absolute() else Path(config.source).parent / path


def decode_settings(config: Any) -> DecodeSettings:
    """The decoder's settings from the configuration's `decode` section; its tunnel ports are set
    on the packet decoder (process-wide: the compiled selector and decoder share them)."""
    from sensor.decode.packet import configure_udp_tunnels

    limits = config.decode.model_dump()
    ports = limits.pop("tunnel_ports", None)
    if ports is not None:
        configure_udp_tunnels(ports)
    return DecodeSettings(**limits)


def catalog_and_policy(args: argparse.Namespace, config: Any) -> tuple[VendorCatalog, Policy]:
    """The vendor catalog (with the operator's overlay) and the policy resolved against it."""
    from sensor.enrich.vendors import VendorCatalog

    catalog = VendorCatalog.with_overlay(signature_overlay(args.signatures, config))
    return catalog, config.build_policy(catalog)


def rule_settings(config: Any) -> dict[str, RuleSettings]:
    """Each rule's settings: its own defaults, tuned by the configuration's `rules:`."""
    from sensor.detect.engine import DEFAULT_THROTTLE_SECONDS, RuleSettings
    from sensor.detect.rules import ALL_RULES

    settings = {}
    for rule in ALL_RULES:
        tuning = config.rule(rule.INFO.id)
        enabled = rule.INFO.enabled_by_default if tuning.enabled is None else tuning.enabled
        settings[rule.INFO.id] = RuleSettings(
            enabled=enabled,
            severity=tuning.severity,
            throttle_seconds=float(tuning.throttle_seconds or DEFAULT_THROTTLE_SECONDS),
        )
    return settings


def assemble(
    args: argparse.Namespace, config: Any = None, *, live: bool = False, sinks: list[Sink] | None = None
) -> Parts:
    """Everything a replay or a live worker runs, from `config` (loaded from args when None).

    `sinks`: use these instead of building the configured outputs (live workers and reloads
    must not open the spools and files the main process owns)."""
    from sensor.enrich.vendors import registered_domain

    if config is None:
        config = load(args)
    unredacted = args.unredacted or config.redaction.unredacted
    if unredacted:
        log.warning("unredacted output requested: alerts will contain health data values in clear")
    if sinks is None:
        sinks = build_outputs(args, config)
    counters = Counters()
    events = EventBuilder(config.sensor.name, registered_domain, redact_urls=not unredacted)
    detector = None
    if args.emit in ("alerts", "all"):  # the vendor catalog and the rules load only to detect
        from sensor.detect.engine import DetectionEngine
        from sensor.output.ecs import AlertBuilder

        _, policy = catalog_and_policy(args, config)
        detector = DetectionEngine(
            policy, AlertBuilder(events, unredacted=unredacted), rule_settings(config), counters, immediate=live
        )
    pipeline = Pipeline(
        sinks=sinks,
        counters=counters,
        settings=decode_settings(config),
        event_builder=events if args.emit in ("events", "all") else None,
        detector=detector,
    )
    _warm_up(registered_domain)
    _settle_heap()
    return Parts(config, pipeline, sinks, events)


def build_outputs(args: argparse.Namespace, config: Any) -> list[Sink]:
    """The run's outputs (--output, else the configuration's), opened."""
    from sensor.output.factory import build_sinks

    specs, source = output_specs(args, config)
    return build_sinks(specs, spool_dir=spool_dir(args), observer=config.sensor.name, source=source)


def assemble_inventory(
    args: argparse.Namespace, on_observation: Callable[[Any], None]
) -> tuple[Pipeline, DetectionEngine]:
    """`report`: the decoder and the enrichment of detection, every rule off, each observation
    handed to `on_observation` instead of becoming an alert."""
    from sensor.config import load_config
    from sensor.detect.engine import DetectionEngine, RuleSettings
    from sensor.detect.rules import ALL_RULES

    config = load_config(args.config)
    _, policy = catalog_and_policy(args, config)
    no_rules = {rule.INFO.id: RuleSettings(enabled=False) for rule in ALL_RULES}
    engine = DetectionEngine(policy, lambda *a: {}, no_rules, immediate=False, on_observation=on_observation)
    return Pipeline(sinks=[], settings=decode_settings(config), detector=engine), engine


def check_config(args: argparse.Namespace) -> str:
    """What replay and live check before they start, on the same configuration and outputs; the
    one-line summary of what was found."""
    from sensor.output.factory import check_outputs

    config = load(args)
    catalog, policy = catalog_and_policy(args, config)
    specs, source = output_specs(args, config)
    check_outputs(specs, spool_dir=spool_dir(args), source=source)
    return (
        f"{config.source}: ok ({len(policy.assets)} PHI host entries, {len(policy.baa)} BAA(s), "
        f"{len(policy.allow)} allowed domain(s), {len(catalog)} vendors in the catalog, {len(specs)} output(s))"
    )


def _warm_up(registered_domain: Callable[[str], str]) -> None:
    """Build what decoding builds on first use anyway, the public suffix list and the health term
    lexicon, once here: a replay that forks its second worker after this shares them."""
    from sensor.phi.lexicon import term_matcher

    registered_domain("example.com")
    term_matcher()


def _settle_heap() -> None:
    """What start-up built (catalog, lexicons, suffix trie, compiled patterns) lives for the whole
    run: freeze it out of the cycle collector's scans. The hot loop allocates many short-lived
    tuples that reference counting frees, and what survives is the decoder's and detector's
    state, which holds no cycles: a young collection finds nothing and scans every survivor (each
    a cache miss, about 35 ms for one collection over 50,000 objects), so the threshold is high
    enough that a replay's state seldom reaches it. A first start leaves next to no cyclic garbage,
    so it freezes without the full collection (~5 ms). A replay's start-up runs with the collector
    off (cli._cmd_replay): it is back on from here."""
    if gc.get_freeze_count():  # a live reload: what the previous configuration froze may be garbage now
        gc.unfreeze()
        gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 50, 100)
    gc.enable()
