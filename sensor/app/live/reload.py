"""SIGHUP: the detection rebuilt from the files through the composition root, swapped in only when all of it loaded."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from sensor.app.assemble import Parts, assemble, load
from sensor.errors import SensorError
from sensor.pipeline import Pipeline

log = logging.getLogger("phi_sensor")


def describe_failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SensorError) else f"{type(exc).__name__}: {exc}"


def build_detection(args: argparse.Namespace, config: Any = None) -> Parts:
    """Configuration, signatures, detector and event builder, with no sinks: the caller gives
    them (workers and reloads must not open the spools and files the main process owns)."""
    return assemble(args, config, live=True, sinks=[])


class Reloader:
    """SIGHUP: build the new detection first; swap only if everything loaded, else keep the old.

    What carries over: the DNS attribution cache and the open throttle windows (so a reload does
    not page anyone twice for the same alert). Outputs and decoder limits take effect at the next
    restart; a reload that changes them says so.
    """

    def __init__(self, args: argparse.Namespace, config: Any = None) -> None:
        """`config`: the running configuration (loaded from args when None)."""
        self.args = args
        if config is None:
            config = load(args)
        self._outputs = list(config.outputs)
        self._decode = config.decode.model_dump()
        self.succeeded = 0
        self.failed = 0

    def check(self) -> Parts | None:
        """The new detection, or None (after logging why) when the new files are bad."""
        from sensor.output.specs import validate_outputs

        try:
            config = load(self.args)
            if not self.args.output:
                validate_outputs(list(config.outputs), source=config.source)
            fresh = build_detection(self.args, config)
        except Exception as exc:  # whatever is wrong with the new files, the sensor keeps running
            self.failed += 1
            log.error("reload failed, keeping the running configuration: %s", describe_failure(exc))
            return None
        self.succeeded += 1
        if not self.args.output and list(config.outputs) != self._outputs:
            log.warning("reload: outputs changed; they take effect at the next restart")
        if config.decode.model_dump() != self._decode:
            log.warning("reload: decode limits changed; they take effect at the next restart")
        return fresh

    @staticmethod
    def apply(pipeline: Pipeline, fresh: Parts) -> None:
        old, new = pipeline.detector, fresh.pipeline.detector
        if new is not None:
            new.counters = pipeline.counters
            if old is not None:
                new.adopt_state(old)
        pipeline.detector = new
        pipeline.event_builder = fresh.pipeline.event_builder

    def reload(self, pipeline: Pipeline) -> bool:
        fresh = self.check()
        if fresh is None:
            return False
        self.apply(pipeline, fresh)
        return True
