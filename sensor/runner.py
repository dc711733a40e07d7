"""Assembles a pipeline from the command line and configuration, runs it, reports the outcome."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import orjson

from sensor.capture.channel import FrameWriter, read_frames
from sensor.capture.prefilter import AnyPrefilter, CompiledPrefilter, can_split, two_workers, widen_pipe
from sensor.app.assemble import assemble, assemble_inventory, check_config
from sensor.errors import EXIT_CAPTURE, EXIT_FAIL_ON, EXIT_INTERNAL, EXIT_OK, EXIT_SINK, SensorError
from sensor.output.ecs import EventBuilder
from sensor.output.jsonl import JsonlSink
from sensor.output.sinks import Sink
from sensor.pipeline import Pipeline
from sensor.severity import SEVERITY_RANK

log = logging.getLogger("phi_sensor")

PROGRESS_MIN_BYTES = 32 << 20
SUMMARY_ROWS = 40  # the end-of-run table stays readable; every alert is in the output anyway


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

    @staticmethod
    def check_config(args: argparse.Namespace) -> int:
        """What replay and live check before they start, on the same configuration and outputs."""
        print(check_config(args))
        return EXIT_OK

    @staticmethod
    def report(args: argparse.Namespace) -> int:
        """Replay captures into the data-flow inventory instead of alerts."""
        from sensor.deep.replay import feed_inputs
        from sensor.report import Inventory

        inventory = Inventory()
        pipeline, engine = assemble_inventory(args, inventory.observe)

        problems = feed_inputs(pipeline, args.pcaps, args.keylog, args.har_source, args.prefilter,
                               lambda: engine.policy.assets)
        pipeline.finish()
        if args.format == "json":
            print(inventory.to_json(args.exposure))
        elif args.format == "csv":
            print(inventory.to_csv(args.exposure), end="")
        elif args.format in ("html", "markdown"):
            from sensor.report_html import render

            print(render(inventory.document(args.exposure), args.format), end="")
        else:
            inventory.print_table()
            if args.exposure:
                inventory.print_exposure()
        for line in problems:
            log.error("%s", line)
        return EXIT_CAPTURE if problems else EXIT_OK

    def replay(
        self, paths: list[Path], prefilter: str = "auto", progress: str = "auto", workers: str = "auto",
        started: AnyPrefilter | None = None,
    ) -> int:
        """`started`: the first file's prefilter, already running (see `prefilter.start_early`)."""
        if two_workers(paths, prefilter, workers) and can_split(paths):
            problems = self._replay_split(paths, progress, started)
        elif two_workers(paths, prefilter, workers):
            problems = self._replay_two_workers(paths, progress, started)
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
            self._print_stats()
        if not self.args.quiet and self.args.emit != "events":
            self._print_summary()
        if problems:
            return EXIT_CAPTURE
        if undelivered:
            return EXIT_SINK
        return self._fail_on_code()

    def _replay_in(self, paths: list[Path], prefilter: str, progress: str, started: AnyPrefilter | None) -> list[str]:
        return self._replay_each(paths, progress, lambda index, path, reporter: self.pipeline.replay(
            path, prefilter=prefilter, progress=reporter, started=started if index == 0 else None
        ))

    def _replay_each(
        self, paths: list[Path], progress: str, replay_one: Callable[[int, Path, Any], list[str]]
    ) -> list[str]:
        """`replay_one(index, path, progress bar or None)` for each file; their problems."""
        problems: list[str] = []
        for index, path in enumerate(paths):
            reporter = self._progress_for(path, progress)
            try:
                problems.extend(replay_one(index, path, reporter))
            finally:
                if reporter is not None:
                    reporter.close()
        return problems

    def _replay_split(self, paths: list[Path], progress: str, started: AnyPrefilter | None) -> list[str]:
        """Fork after start-up; each process decodes its half of the clients (odd addresses in
        the child), which the compiled selector hands it straight from each file, so a host's
        flows, DNS and alert windows stay in one process and nothing passes between the two
        until the end. The child spills its documents to a file this process ships afterwards,
        and its counters to another."""
        if not (isinstance(started, CompiledPrefilter) and started.split):
            if started is not None:
                started.close()
            started = CompiledPrefilter(paths[0], split=True)
        spill = tempfile.TemporaryFile(buffering=_SPILL_BLOCK)  # the worker writes 1 MiB at a time, not 8 KiB
        trailer_file = tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = started.fork()
        if pid == 0:
            first_file = started  # narrowed for the closure: a split selector

            def replay_my_half() -> None:
                first_file.continue_as(1, in_child=True)
                for index, path in enumerate(paths):
                    selector = first_file if index == 0 else _split_selector(path, 1)
                    if selector is not None:  # else this process reports nothing: the parent does
                        self.pipeline.replay(path, started=selector)

            self._run_child(spill, trailer_file, replay_my_half)
        started.continue_as(0, in_child=False)
        first_file = started
        problems = self._replay_each(paths, progress, lambda index, path, reporter: self.pipeline.replay(
            path, progress=reporter, started=first_file if index == 0 else _split_selector(path, 0), prefilter="never"
        ))
        self.pipeline.finish()
        self._collect_child(pid, spill, trailer_file, shared_counters=_PER_FILE_COUNTERS)
        return problems

    def _replay_two_workers(self, paths: list[Path], progress: str, started: AnyPrefilter | None) -> list[str]:
        """Fork after start-up. This process reads the capture through the prefilter and hands
        the packets of odd client addresses to the child through a pipe; each decodes its half
        with its own flows, DNS cache and throttle, so no state is shared. The child spills its
        documents to a file this process ships afterwards, and its counters to another."""
        spill = tempfile.TemporaryFile(buffering=_SPILL_BLOCK)  # the worker writes 1 MiB at a time, not 8 KiB
        trailer_file = tempfile.TemporaryFile()
        read_end, write_end = os.pipe()
        widen_pipe(write_end)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:

            def replay_forwarded() -> None:
                os.close(write_end)
                with os.fdopen(read_end, "rb") as packets:
                    for ts, linktype, frame in read_frames(packets):
                        self.pipeline.feed(ts, linktype, frame)

            self._run_child(spill, trailer_file, replay_forwarded)
        os.close(read_end)
        # A small buffer: what it holds back at the end is work the child starts only then.
        channel = FrameWriter(os.fdopen(write_end, "wb", buffering=1 << 16))
        problems: list[str] = []
        try:
            problems = self._replay_each(paths, progress, lambda index, path, reporter: self.pipeline.replay(
                path, progress=reporter, forward=channel.write, started=started if index == 0 else None
            ))
        except BrokenPipeError:
            pass  # the child is gone: reported below
        finally:
            try:
                channel.close()
            except BrokenPipeError:
                pass
        self.pipeline.finish()
        self._collect_child(pid, spill, trailer_file)
        return problems

    def _run_child(self, spill: BinaryIO, trailer_file: BinaryIO, replay_share: Callable[[], None]) -> NoReturn:
        """The second worker: `replay_share()` feeds its packets; its documents go to `spill`,
        its counters to `trailer_file`. Never returns; the sinks and threads it inherited are
        left alone."""
        code = 0
        try:
            self.pipeline.sinks = [_SpillSink(spill)]
            replay_share()
            self.pipeline.finish()
            spill.flush()
            trailer_file.write(orjson.dumps({"counters": self.pipeline.counters.values}))
            trailer_file.flush()
        except BaseException:  # noqa: BLE001 - the parent reports a failed worker
            code = EXIT_INTERNAL
        finally:
            os._exit(code)

    def _collect_child(
        self, pid: int, spill: BinaryIO, trailer_file: BinaryIO, shared_counters: frozenset[str] = frozenset()
    ) -> None:
        """Wait for the second worker, add its counters (but `shared_counters`, which both
        processes counted for the same thing) and ship its documents."""
        shipped = 0
        if self._ships_raw_blocks():  # while it finishes, ship the whole lines it has written so far
            while True:
                ended, status = os.waitpid(pid, os.WNOHANG)
                if ended:
                    break
                block = os.pread(spill.fileno(), _SPILL_BLOCK, shipped)
                block = block[: block.rfind(b"\n") + 1]
                if block:
                    self._send_raw_block(block)
                    shipped += len(block)
                else:
                    time.sleep(0.001)
        else:
            _, status = os.waitpid(pid, 0)
        trailer_file.seek(0)
        trailer = trailer_file.read()
        trailer_file.close()
        finished = bool(trailer)
        if finished:
            for name, value in orjson.loads(trailer)["counters"].items():
                if name not in shared_counters:
                    self.pipeline.counters.add(name, value)
        spill.seek(shipped)
        self._ship_spill(spill)
        spill.close()
        if not finished or os.waitstatus_to_exitcode(status) != 0:
            raise SensorError("the second replay worker failed; run again with --workers 1")
        self.pipeline.counters.add("replay.workers", 2)

    def _ship_spill(self, spill: BinaryIO) -> None:
        """Send the second worker's documents on. Plain JSON-lines sinks take the bytes it wrote,
        in large blocks when no alert can be among them; anything else parses each line."""
        if self._ships_raw_blocks():
            while block := spill.read(_SPILL_BLOCK):
                self._send_raw_block(block + spill.readline())  # whole lines only
            return
        raw_sinks = [sink for sink in self.sinks if isinstance(sink, JsonlSink) and sink.min_severity is None]
        other_sinks = [sink for sink in self.sinks if sink not in raw_sinks]
        for line in spill:
            is_alert = b'"kind":"alert"' in line
            if is_alert or other_sinks:
                doc = orjson.loads(line)
                if is_alert:
                    self.pipeline.alerts.append(doc)
                for sink in other_sinks:  # the spool first, as for the first worker's documents
                    sink.send(doc)
            for sink in raw_sinks:
                sink.send_line(line)

    def _ships_raw_blocks(self) -> bool:
        """Whether the second worker's lines go on as blocks of bytes: no alert can be among them
        and every output is a plain JSON-lines one."""
        return self.pipeline.detector is None and all(
            isinstance(sink, JsonlSink) and sink.min_severity is None for sink in self.sinks
        )

    def _send_raw_block(self, block: bytes) -> None:
        for sink in self.sinks:
            sink.send_lines(block)  # type: ignore[attr-defined]

    def _progress_for(self, path: Path, mode: str):
        if mode == "never" or self.args.quiet:
            return None
        try:
            size = path.stat().st_size
        except OSError:
            return None
        if mode == "auto" and (not sys.stderr.isatty() or size < PROGRESS_MIN_BYTES):
            return None
        return _ProgressBar(path.name, size)

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

    def _fail_on_code(self) -> int:
        threshold = self.args.fail_on
        if threshold is None:
            return EXIT_OK
        for alert in self.pipeline.alerts:
            if SEVERITY_RANK.get(alert["phi_egress"]["severity"], 0) >= SEVERITY_RANK[threshold]:
                return EXIT_FAIL_ON
        return EXIT_OK

    def _print_stats(self) -> None:
        values = dict(self.pipeline.counters.values)
        for sink in self.sinks:
            for key, value in sink.stats().items():
                values[f"sink.{sink.name}.{key}"] = value
        width = max((len(k) for k in values), default=0)
        print("phi-sensor: stats", file=sys.stderr)
        for key in sorted(values):
            print(f"  {key:<{width}}  {values[key]}", file=sys.stderr)

    def _print_summary(self) -> None:
        # Updates of a throttle window reuse its event.id: the latest document per id counts.
        latest = {alert["event"]["id"]: alert for alert in self.pipeline.alerts}
        if not latest:
            print("phi-sensor: no alerts", file=sys.stderr)
            return
        from rich.console import Console
        from rich.table import Table

        tally: Tally = Tally()
        for alert in latest.values():
            pe = alert["phi_egress"]
            key = (
                pe["severity"],
                alert["rule"]["id"],
                f"{alert['source']['ip']} ({pe['phi_host']['name']})" if pe.get("phi_host", {}).get("name")
                else alert["source"]["ip"],
                pe.get("vendor", {}).get("name") or pe.get("destination") or "-",
                pe["baa"]["status"],
                ", ".join(pe.get("phi", {}).get("types", [])) or "-",
            )
            tally[key] += pe.get("count", 1)
        table = Table(title=f"phi-sensor: {len(latest)} alert(s)", title_justify="left")
        for column in ("severity", "rule", "PHI host", "vendor / destination", "BAA", "health data", "seen"):
            table.add_column(column, overflow="fold")
        order = sorted(tally.items(), key=lambda kv: (-SEVERITY_RANK.get(kv[0][0], 0), kv[0][1], kv[0][2]))
        for key, count in order[:SUMMARY_ROWS]:
            table.add_row(*key, str(count))
        console = Console(stderr=True, width=max(120, Console(stderr=True).width))
        console.print(table)
        if len(order) > SUMMARY_ROWS:
            console.print(f"... {len(order) - SUMMARY_ROWS} less severe rows not shown; every alert is in the output")


class _ProgressBar:
    def __init__(self, name: str, total: int) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
        from rich.console import Console

        self._progress = Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        )
        self._task = self._progress.add_task(name, total=total)
        self._progress.start()

    def __call__(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def close(self) -> None:
        self._progress.stop()


_SPILL_BLOCK = 1 << 20
# Counted once per file by each worker when both read every file.
_PER_FILE_COUNTERS = frozenset({"files", "capture.prefiltered_files"})


def _split_selector(path: Path, worker: int) -> CompiledPrefilter | None:
    """`worker`'s share of a later file, or None when it cannot be opened (replay reports why)."""
    try:
        return CompiledPrefilter(path, split=True, only=worker)
    except (OSError, ValueError):
        return None


class _SpillSink:
    """The second replay worker's sink: documents as JSON lines in a file the parent reads back."""

    name = "worker-spill"

    def __init__(self, stream) -> None:
        self._stream = stream

    def send(self, doc: dict) -> None:
        self._stream.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))

    def line_writer(self) -> Callable[[bytes], object]:
        return self._stream.write

    def flush(self, timeout: float = 0.0) -> bool:
        self._stream.flush()
        return True

    def close(self, timeout: float = 0.0) -> None:
        self.flush()

    def stats(self) -> dict[str, int]:
        return {}
