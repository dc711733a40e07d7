"""A replay over two processes: fork after start-up, each decodes its half of the clients. The
second appends its documents to the outputs' files itself where every output is a plain
JSON-lines file, else spills them to a file this process ships at the end; its counters go to a
file this process adds at the end."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO, NoReturn, cast

import orjson

from sensor.app.replay.files import replay_file
from sensor.capture.channel import FrameWriter, read_frames
from sensor.capture.prefilter import AnyPrefilter, CompiledPrefilter, route_of, widen_pipe
from sensor.enrich.dnscache import DnsCache
from sensor.errors import EXIT_INTERNAL, SensorError
from sensor.output.jsonl import JsonlSink
from sensor.output.sinks import Sink
from sensor.pipeline import Pipeline

_SPILL_BLOCK = 1 << 20
# Counted once per file by each worker when both read every file.
_PER_FILE_COUNTERS = frozenset({"files", "capture.prefiltered_files"})

# replay_each(paths, progress, replay_one): the first process's files, each with its progress bar.
ReplayEach = Callable[[list[Path], str, Callable[[int, Path, Any], list[str]]], list[str]]


class SplitReplay:
    """The two-process replay of one run's pipeline and sinks."""

    def __init__(self, pipeline: Pipeline, sinks: list[Sink], replay_each: ReplayEach) -> None:
        self.pipeline = pipeline
        self.sinks = sinks
        self.replay_each = replay_each

    def replay_split(self, paths: list[Path], progress: str, started: AnyPrefilter | None) -> list[str]:
        """Fork after start-up; each process decodes its half of the clients (worker 1's in the
        child, sensor.capture.workers), which the compiled selector hands it straight from each file, so a host's
        flows, DNS and alert windows stay in one process and nothing passes between the two
        until the end but every DNS answer, which both are handed to learn from. The child
        writes its documents (_run_child) and its counters to a file this process adds
        afterwards."""
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
                self.pipeline.decoder.share(1, route_of, self._dns_cache())
                for index, path in enumerate(paths):
                    selector = first_file if index == 0 else _split_selector(path, 1)
                    if selector is not None:  # else this process reports nothing: the parent does
                        replay_file(self.pipeline, path, started=selector)

            self._run_child(spill, trailer_file, replay_my_half)
        started.continue_as(0, in_child=False)
        self.pipeline.decoder.share(0, route_of, self._dns_cache())
        first_file = started
        problems = self.replay_each(paths, progress, lambda index, path, reporter: replay_file(
            self.pipeline, path, progress=reporter, prefilter="never",
            started=first_file if index == 0 else _split_selector(path, 0),
        ))
        self.pipeline.finish()
        self._collect_child(pid, spill, trailer_file, shared_counters=_PER_FILE_COUNTERS)
        return problems

    def replay_two_workers(self, paths: list[Path], progress: str, started: AnyPrefilter | None) -> list[str]:
        """Fork after start-up. This process reads the capture through the prefilter and hands
        worker 1's packets (sensor.capture.workers) to the child through a pipe; each decodes its half
        with its own flows, DNS cache and throttle, so no state is shared (every DNS answer goes
        to both, to teach both caches). The child spills its
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
                feed, feed_shared = self.pipeline.feed, self.pipeline.decoder.feed_shared
                with os.fdopen(read_end, "rb") as packets:
                    for ts, linktype, frame, shared in read_frames(packets):
                        (feed_shared if shared else feed)(ts, linktype, frame)

            self._run_child(spill, trailer_file, replay_forwarded)
        os.close(read_end)
        # A small buffer: what it holds back at the end is work the child starts only then.
        channel = FrameWriter(os.fdopen(write_end, "wb", buffering=1 << 16))
        problems: list[str] = []
        try:
            problems = self.replay_each(paths, progress, lambda index, path, reporter: replay_file(
            self.pipeline,                 path, progress=reporter, forward=channel.write, started=started if index == 0 else None
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

    def _dns_cache(self) -> DnsCache | None:
        """The attribution cache the decoder's DNS answers teach, if the detector keeps one."""
        return getattr(self.pipeline.detector, "dns_cache", None)

    def _run_child(self, spill: IO[bytes], trailer_file: BinaryIO, replay_share: Callable[[], None]) -> NoReturn:
        """The second worker: `replay_share()` feeds its packets; its documents go straight to
        the outputs' files (_AppendSink) or else to `spill`, its counters to `trailer_file`.
        Never returns; the sinks and threads it inherited are left alone."""
        code = 0
        try:
            direct = _AppendSink.of(self.sinks)
            self.pipeline.sinks = [direct or _SpillSink(spill)]
            replay_share()
            self.pipeline.finish()
            spill.flush()
            if direct is not None:
                direct.flush()
            trailer_file.write(orjson.dumps({
                "counters": self.pipeline.counters.values, "alerts": self.pipeline.alerts.to_json(),
                "appended": direct.lines if direct is not None else 0,
            }))
            trailer_file.flush()
        except BaseException:  # noqa: BLE001 - the parent reports a failed worker
            code = EXIT_INTERNAL
        finally:
            os._exit(code)

    def _collect_child(
        self, pid: int, spill: IO[bytes], trailer_file: BinaryIO, shared_counters: frozenset[str] = frozenset()
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
            outcome = orjson.loads(trailer)
            for name, value in outcome["counters"].items():
                if name not in shared_counters:
                    self.pipeline.counters.add(name, value)
            self.pipeline.alerts.absorb(outcome["alerts"])
            if outcome.get("appended"):  # lines it wrote to the outputs' files itself (_AppendSink)
                for sink in self.sinks:
                    sink.count_sent(outcome["appended"])  # type: ignore[attr-defined]
        spill.seek(shipped)
        self._ship_spill(spill)
        spill.close()
        if not finished or os.waitstatus_to_exitcode(status) != 0:
            raise SensorError("the second replay worker failed; run again with --workers 1")
        self.pipeline.counters.add("replay.workers", 2)

    def _ship_spill(self, spill: IO[bytes]) -> None:
        """Send the second worker's documents on. Plain JSON-lines sinks take the bytes it wrote,
        in large blocks when every output is one; anything else parses each line. (Its alerts
        reach the summary through its tally, in the trailer.)"""
        if self._ships_raw_blocks():
            while block := spill.read(_SPILL_BLOCK):
                self._send_raw_block(block + spill.readline())  # whole lines only
            return
        raw_sinks = [sink for sink in self.sinks if isinstance(sink, JsonlSink) and sink.min_severity is None]
        other_sinks = [sink for sink in self.sinks if sink not in raw_sinks]
        for line in spill:
            if other_sinks:
                doc = orjson.loads(line)
                for sink in other_sinks:  # the spool first, as for the first worker's documents
                    sink.send(doc)
            for sink in raw_sinks:
                sink.send_line(line)

    def _ships_raw_blocks(self) -> bool:
        """Whether the second worker's lines go on as blocks of bytes: every output is a plain
        JSON-lines one."""
        return all(isinstance(sink, JsonlSink) and sink.min_severity is None for sink in self.sinks)

    def _send_raw_block(self, block: bytes) -> None:
        for sink in self.sinks:
            sink.send_lines(block)  # type: ignore[attr-defined]


def _split_selector(path: Path, worker: int) -> CompiledPrefilter | None:
    """`worker`'s share of a later file, or None when it cannot be opened (replay reports why)."""
    try:
        return CompiledPrefilter(path, split=True, only=worker)
    except (OSError, ValueError):
        return None


class _AppendSink:
    """The second replay worker's sink when every output is a JSON-lines file: its documents
    appended to those files directly, in blocks of whole lines (O_APPEND: each write lands whole
    after whatever either process wrote before it), so the first worker has none of them to
    ship at the end."""

    name = "worker-append"

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds
        self._buffer = bytearray()
        self.lines = 0

    @classmethod
    def of(cls, sinks: list[Sink]) -> _AppendSink | None:
        """The sink writing to `sinks`' files, or None unless every one is a plain JSON-lines file."""
        fds = [sink.append_fd() if isinstance(sink, JsonlSink) else None for sink in sinks]
        return cls(cast(list[int], fds)) if fds and None not in fds else None

    def send(self, doc: dict) -> None:
        self.send_lines(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE), 1)

    def line_writer(self) -> Callable[[bytes], object]:
        return self._write_line

    def _write_line(self, line: bytes) -> None:
        self._buffer += line
        self.lines += 1
        if len(self._buffer) >= _SPILL_BLOCK:
            self.flush()

    def send_lines(self, block: bytes, count: int | None = None) -> None:
        self._buffer += block
        self.lines += block.count(b"\n") if count is None else count
        if len(self._buffer) >= _SPILL_BLOCK:
            self.flush()

    def flush(self, timeout: float = 0.0) -> bool:
        if self._buffer:
            block = memoryview(self._buffer)
            for fd in self._fds:
                done = 0
                while done < len(block):  # (a regular file takes it whole but for a full disk)
                    done += os.write(fd, block[done:])
            block.release()
            self._buffer.clear()
        return True

    def close(self, timeout: float = 0.0) -> None:
        self.flush()

    def stats(self) -> dict[str, int]:
        return {}


class _SpillSink:
    """The second replay worker's sink: documents as JSON lines in a file the parent reads back."""

    name = "worker-spill"

    def __init__(self, stream) -> None:
        self._stream = stream

    def send(self, doc: dict) -> None:
        self._stream.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))

    def line_writer(self) -> Callable[[bytes], object]:
        return self._stream.write

    def send_lines(self, block: bytes, count: int | None = None) -> None:
        """Documents already serialized, whole JSON lines (the parent counts them as it ships them)."""
        self._stream.write(block)

    def flush(self, timeout: float = 0.0) -> bool:
        self._stream.flush()
        return True

    def close(self, timeout: float = 0.0) -> None:
        self.flush()

    def stats(self) -> dict[str, int]:
        return {}
