"""`phi-sensor replay`: the run assembled once, its files fed in one process or two, the outcome reported."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor.app.assemble import assemble
from sensor.app.replay.files import progress_for, replay_file
from sensor.app.replay.plan import can_split, two_workers
from sensor.app.replay.split import SplitReplay
from sensor.app.summary import fail_on_code, print_stats, print_summary
from sensor.capture.prefilter import AnyPrefilter
from sensor.errors import EXIT_CAPTURE, EXIT_SINK
from sensor.output.ecs import EventBuilder
from sensor.output.sinks import Sink
from sensor.pipeline import Pipeline

log = logging.getLogger("phi_sensor")


class Runner:
    def __init__(self, pipeline: Pipeline, sinks: list[Sink], args: argparse.Namespace) -> None:
        self.pipeline = pipeline
        self.sinks = sinks
        self.args = args
        self.events: EventBuilder | None = None  # the event and alert documents' builder

    @classmethod
    def from_args(cls, args: argparse.Namespace, live: bool = False, sinks: list[Sink] | None = None) -> "Runner":
        """A runner over what `assemble` builds from the command line and configuration."""
        parts = assemble(args, live=live, sinks=sinks)
        runner = cls(parts.pipeline, parts.sinks, args)
        runner.events = parts.events
        return runner


    def replay(
        self, paths: list[Path], prefilter: str = "auto", progress: str = "auto", workers: str = "auto",
        started: AnyPrefilter | None = None,
    ) -> int:
        """`started`: the first file's prefilter, already running (see `plan.start_early`)."""
        if two_workers(paths, prefilter, workers) and can_split(paths):
            problems = self._split().replay_split(paths, progress, started)
        elif two_workers(paths, prefilter, workers):
            problems = self._split().replay_two_workers(paths, progress, started)
        else:
            problems = self._replay_in(paths, prefilter, progress, started)
            self.pipeline.finish()
        return self.conclude(problems)

    def conclude(self, problems: list[str]) -> int:
        """After the last input: close the sinks, say what went wrong, print stats and summary, and
        pick the exit code (a capture problem first, then undelivered documents, then --fail-on)."""
        undelivered = self._close_sinks()
        for line in problems:
            log.error("%s", line)
        if self.args.stats:
            print_stats(self.pipeline.counters, self.sinks)
        if not self.args.quiet and self.args.emit != "events":
            print_summary(self.pipeline.alerts)
        if problems:
            return EXIT_CAPTURE
        if undelivered:
            return EXIT_SINK
        return fail_on_code(self.pipeline.alerts, self.args.fail_on)

    def _replay_in(self, paths: list[Path], prefilter: str, progress: str, started: AnyPrefilter | None) -> list[str]:
        return self._replay_each(paths, progress, lambda index, path, reporter: replay_file(
            self.pipeline, path, prefilter=prefilter, progress=reporter, started=started if index == 0 else None
        ))

    def _replay_each(
        self, paths: list[Path], progress: str, replay_one: Callable[[int, Path, Any], list[str]]
    ) -> list[str]:
        """`replay_one(index, path, progress bar or None)` for each file; their problems."""
        problems: list[str] = []
        for index, path in enumerate(paths):
            reporter = progress_for(path, progress, self.args.quiet)
            try:
                problems.extend(replay_one(index, path, reporter))
            finally:
                if reporter is not None:
                    reporter.close()
        return problems


    def _split(self) -> SplitReplay:
        return SplitReplay(self.pipeline, self.sinks, self._replay_each)

    def _close_sinks(self) -> list[str]:
        undelivered = []
        refused = []
        for sink in self.sinks:
            if not sink.flush(self.args.flush_timeout):
                undelivered.append(sink.name)
            sink.close(5.0)
            note = getattr(sink, "refused_note", lambda: None)()
            if note:
                refused.append(note)
        for name in undelivered:
            log.warning("%s: not everything was delivered; the rest stays in the spool", name)
        for note in refused:
            log.error("%s", note)
        return undelivered + refused


