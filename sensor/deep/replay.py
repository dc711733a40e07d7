"""`phi-sensor replay` with HAR files and/or a TLS key log: the capture files take the ordinary
path; HAR requests and the requests tshark decrypts join the same pipeline as records."""
from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sensor.capture.inputs import is_har
from sensor.deep import mark_decrypted
from sensor.errors import EXIT_USAGE, SensorError

if TYPE_CHECKING:
    from sensor.enrich.assets import AssetInventory

log = logging.getLogger("phi_sensor")


class UsageError(SensorError):
    exit_code = EXIT_USAGE


def resolve_source(spec: str | None, assets: AssetInventory) -> str:
    """The client address HAR requests get: `spec` as an address or a phi_hosts name; without
    one, the first PHI host entry (a HAR carries no client address)."""
    if spec:
        try:
            return str(ipaddress.ip_address(spec.strip()))
        except ValueError:
            pass
        for host in assets.hosts:
            if host.name and host.name.lower() == spec.strip().lower():
                return _address_in(host.network)
        names = ", ".join(h.name for h in assets.hosts if h.name) or "none"
        raise UsageError(f"--har-source {spec!r}: neither an IP address nor a phi_hosts name (names: {names})")
    if not assets.hosts:
        raise UsageError("a HAR file carries no client address: give --har-source")
    address = _address_in(assets.hosts[0].network)
    log.info("HAR requests stand for PHI host %s (the first phi_hosts entry; --har-source names another)", address)
    return address


def _address_in(network) -> str:
    return str(network.network_address if network.num_addresses == 1 else network.network_address + 1)


def replay_deep(runner, paths: list[Path], keylog: Path | None, har_source: str | None, prefilter: str) -> int:
    """Replay `paths` (captures and HAR files) through `runner`'s pipeline; returns the exit code."""
    pipeline = runner.pipeline
    detector = pipeline.detector
    if detector is not None:
        detector.build_document = mark_decrypted(detector.build_document, lambda alert, *rest: alert.observation.record)
        detector.hold_back = math.inf  # decrypted requests come after their capture: windows stay open to the end
    if pipeline.event_builder is not None:
        pipeline.event_builder = mark_decrypted(pipeline.event_builder, lambda record: record)
    problems = feed_inputs(pipeline, paths, keylog, har_source, prefilter, lambda: _assets(runner))
    pipeline.finish()
    return runner.conclude(problems)


def feed_inputs(pipeline, paths: list[Path], keylog: Path | None, har_source: str | None, prefilter: str,
                assets: Callable[[], AssetInventory]) -> list[str]:
    """Feed captures (the ordinary path, then what the key log decrypts in them) and HAR files to
    `pipeline`; their problems, one line each. `assets()` names the PHI hosts for --har-source."""
    from sensor.app.replay.files import replay_file
    from sensor.deep.har import parse_har

    if keylog is not None:
        from sensor.deep.keylog import check_keylog

        check_keylog(keylog)
    counters = pipeline.counters
    body_cap = pipeline.decoder.settings.http_body_cap
    source: str | None = None
    problems: list[str] = []
    for path in paths:
        if is_har(path):
            try:
                data = path.read_bytes()
            except OSError as exc:
                problems.append(f"{path}: cannot open: {exc.strerror or exc}")
                continue
            if source is None:
                source = resolve_source(har_source, assets())
            records, problem = parse_har(data, source, body_cap, counters)
            counters.add("har.files")
            if problem:
                problems.append(f"{path}: {problem}")
            pipeline.feed_records(records)
            continue
        problems.extend(replay_file(pipeline, path, prefilter=prefilter))
        if keylog is not None:
            from sensor.deep.keylog import decrypted_requests

            records, problem = decrypted_requests(path, keylog, body_cap, counters)
            if problem:
                problems.append(f"{path}: {problem}")
            pipeline.feed_records(records)
    return problems


def _assets(runner) -> AssetInventory:
    detector = runner.pipeline.detector
    if detector is not None:
        return detector.policy.assets
    from sensor.config import load_config

    return load_config(runner.args.config).assets
