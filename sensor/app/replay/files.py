"""One capture file into the pipeline, with a progress bar on a terminal."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor.app.replay.plan import should_prefilter
from sensor.capture.inputs import is_stream
from sensor.capture.pcap import CaptureFile
from sensor.capture.prefilter import AnyPrefilter, CompiledPrefilter, open_prefilter, route_of
from sensor.capture.workers import SHARED_ANSWER
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.packet import LINKTYPE_NAMES
from sensor.errors import CaptureError
from sensor.pipeline import Pipeline
from sensor.records import Record

try:  # the alerts replay's loop over a batch in one compiled call (sensor/_fast/packet.c): alerts_batch_py is the reference
    from sensor._fast import replay_alerts as _replay_alerts
except ImportError:  # built without a C compiler
    _replay_alerts = None

log = logging.getLogger("phi_sensor")

PROGRESS_MIN_BYTES = 32 << 20
# events written at most this many at a time: a block of a few hundred kilobytes stays in the
# CPU's cache from its writing to the output's buffer (a block of a whole batch is megabytes)
EVENT_BLOCK = 256
# Called with (bytes done, bytes total) while a file is replayed.
ProgressCallback = Callable[[int, int], None]
# Takes a packet (timestamp, link type, frame, shared) that another process decodes (shared:
# only learns from, another worker's DNS answer).
Forward = Callable[[float, int, bytes, bool], None]


def replay_file(
    pipeline: Pipeline, path: Path, prefilter: str = "auto", progress: ProgressCallback | None = None,
    forward: Forward | None = None, started: AnyPrefilter | None = None,
) -> list[str]:
    """Feed one capture file; return its problems as one line each (the rest is still processed).

    `forward` splits the work with a second process: the packets of worker 1 go there
    (sensor.capture.workers, as the compiled selector splits them), so a host's DNS, flows and
    alert windows stay in one process; DNS answers go to both, to teach both attribution caches.
    `started`: this file's prefilter, already running (see `plan.start_early`)."""
    counters = pipeline.counters
    stream = is_stream(path)
    try:
        total = 0 if stream else path.stat().st_size
    except OSError as exc:
        return [f"{path}: cannot open: {exc.strerror or exc}"]
    if path.is_dir():
        return [f"{path}: no capture files in this directory"]
    runner: AnyPrefilter | None = started
    if stream:  # read once from the front: no probe, no prefilter (its faults come from packets())
        capture = CaptureFile(path)
    elif runner is not None:
        capture = CaptureFile(path, stream=runner.stdout)
        counters.add("capture.prefiltered_files")
    elif should_prefilter(path, "always" if forward is not None else prefilter):
        runner = open_prefilter(path)
        capture = CaptureFile(path, stream=runner.stdout)
        counters.add("capture.prefiltered_files")
    else:
        capture = CaptureFile(path)
        try:
            capture.check()
        except CaptureError as exc:
            return [str(exc)]
    feed, drain = pipeline.decoder.feed, pipeline.drain
    decoder = pipeline.decoder
    feed_shared, feed_found = decoder.feed_shared, decoder.feed_found
    # a split selector hands this worker the other's DNS answers too: not counted here
    shared_before = (decoder.shared_frames, decoder.shared_bytes)
    # with only the detector to see records (an alerts replay), each is handed to it here:
    # what drain does, without a call of it per record
    detection = pipeline.detection_only()
    # with events written as JSON lines (--emit all or events to files), up to EVENT_BLOCK at a time
    # in one block per output: what drain does, without a call of it (and a write) per record
    blocks = pipeline.event_blocks() if detection is None else None
    packets = decoder.packets
    tunnels, with_tunnels = packets.tunnels, packets.with_tunnels
    try:
        for batch in capture.batches():
            decode = decoder.compiled_decode
            if forward is None and blocks is not None and decode is not None:
                lines_of, writers, on_record, ship = blocks
                pending: list = []  # records whose events are yet to be written
                for ts, linktype, frame in batch:
                    found = decode(linktype, frame, ts)  # TrafficDecoder.feed, unrolled as below
                    if found or found is None:
                        feed_found(ts, linktype, frame, found)
                    records = decoder.records
                    if records:
                        decoder.records = []
                        if tunnels:
                            records = with_tunnels(records)
                        if len(pending) >= EVENT_BLOCK:
                            _write_lines(lines_of, pending, writers)
                            pending = []
                        if on_record is None:
                            pending += records
                            continue
                        for record in records:
                            pending.append(record)
                            alerts = on_record(record)
                            if alerts:  # its event and those before it go first
                                _write_lines(lines_of, pending, writers)
                                pending = []
                                ship(alerts)
                if pending:
                    _write_lines(lines_of, pending, writers)
            elif forward is None and detection is not None and decode is not None:
                alerts_batch(batch, decode, feed_found, decoder, *detection)
            elif forward is None:
                for ts, linktype, frame in batch:
                    feed(ts, linktype, frame)
                    if decoder.records:
                        drain()
            else:
                for ts, linktype, frame in batch:
                    route = route_of(linktype, frame)
                    if route:  # worker 1's, or a DNS answer both learn from (SHARED_ANSWER)
                        forward(ts, linktype, frame, route == SHARED_ANSWER)
                        if route != SHARED_ANSWER:
                            if route & SHARED_ANSWER:
                                feed_shared(ts, linktype, frame)
                            continue
                    feed(ts, linktype, frame)
                    if decoder.records:
                        drain()
            if progress is not None:
                done = runner.bytes_read() if runner is not None else capture.frame_bytes
                progress(min(done or 0, total), total)
    finally:
        problems = list(capture.errors)
        if runner is not None:
            complaint = runner.close()
            if complaint:
                problems.append(f"{path}: {complaint}")
    if isinstance(runner, CompiledPrefilter) and runner.split:
        frames, size = decoder.shared_frames - shared_before[0], decoder.shared_bytes - shared_before[1]
        capture.frames -= frames
        capture.frame_bytes -= size
        if frames:
            linktype = next(iter(capture.by_linktype))  # a classic pcap file has one
            capture.by_linktype[linktype] -= frames
    # With the prefilter these are the packets libpcap passed, not every packet of the file.
    counters.add("packets.passed_prefilter" if runner is not None else "packets", capture.frames)
    counters.add("bytes", capture.frame_bytes)
    counters.add("files", 1)
    if capture.empty_records or capture.late_records:
        counters.add("capture.empty_records", capture.empty_records)
        counters.add("capture.late_records", capture.late_records)
        log.warning(capture.suspicious())  # a second replay worker reports what it saw
    for linktype, count in capture.by_linktype.items():
        counters.add(f"packets.linktype.{LINKTYPE_NAMES.get(linktype, str(linktype))}", count)
    unsupported = capture.linktypes - set(LINKTYPE_NAMES)
    if unsupported:
        problems.append(f"{path}: unsupported link type(s) {sorted(unsupported)}: those packets were skipped")
    if progress is not None:
        progress(total, total)
    return problems


def alerts_batch_py(batch: list[tuple[float, int, bytes]], decode: Callable[[int, bytes, float], Any],
                    feed_found: Callable[[float, int, bytes, Any], None], decoder: TrafficDecoder,
                    on_record: Callable[[Record], list[dict[str, Any]]], ship: Callable[[list[dict[str, Any]]], None]) -> None:
    """An alerts replay's loop over one batch: TrafficDecoder.feed unrolled (() was taken whole), each
    record the decoder then holds to the detector, its alerts shipped. The reference of the compiled
    replay_alerts."""
    for ts, linktype, frame in batch:
        found = decode(linktype, frame, ts)
        if found or found is None:
            feed_found(ts, linktype, frame, found)
        records = decoder.records
        if records:
            decoder.records = []
            for record in records:
                alerts = on_record(record)
                if alerts:
                    ship(alerts)


alerts_batch = _replay_alerts if _replay_alerts is not None else alerts_batch_py


def _write_lines(lines_of: Callable[[list], bytes], records: list, writers: list[Callable[[bytes, int], object]]) -> None:
    """The events of `records`, one block to each output."""
    block = lines_of(records)
    for write in writers:
        write(block, len(records))


def progress_for(path: Path, mode: str, quiet: bool) -> _ProgressBar | None:
    """A progress bar for one file: always, never, or (auto) on a terminal for a large file."""
    if mode == "never" or quiet:
        return None
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if mode == "auto" and (not sys.stderr.isatty() or size < PROGRESS_MIN_BYTES):
        return None
    return _ProgressBar(path.name, size)


class _ProgressBar:
    def __init__(self, name: str, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

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
