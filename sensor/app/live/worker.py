"""One capture feeding one pipeline: the loop's pieces, and the worker process of a multi-worker live."""
from __future__ import annotations

import argparse
import logging
import os
import time
from multiprocessing.connection import Connection
from typing import Any

from sensor.app.assemble import Parts
from sensor.app.live.reload import Reloader, build_detection, describe_failure
from sensor.app.live.system import Flags, install_signal_handlers, set_parent_death_signal
from sensor.capture.live import LiveCapture, LiveCaptureError
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.settings import DecodeSettings
from sensor.errors import EXIT_CAPTURE, EXIT_OK
from sensor.output.sinks import Sink
from sensor.pipeline import Pipeline
from sensor.records import Counters

log = logging.getLogger("phi_sensor")

POLL_SECONDS = 0.25  # longest wait before the loop looks at signals and timers again
FLUSH_SECONDS = 1.0  # how often buffered output reaches the sinks and workers report counters
DRAIN_SECONDS = 2.0
DRAIN_WAIT_SECONDS = 0.15  # longer than the ring's block retire timeout: a partial block is handed over
SINK_CLOSE_TIMEOUT = 5.0


class ForwardingSink:
    """A worker's only sink: buffers documents and ships them to the main process in batches."""

    name = "workers"

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._batch: list[dict[str, Any]] = []
        self._sent = 0

    def send(self, doc: dict[str, Any]) -> None:
        self._batch.append(doc)

    def flush(self, timeout: float = 0.0) -> bool:
        if self._batch:
            batch, self._batch = self._batch, []
            self._conn.send(("docs", batch))
            self._sent += len(batch)
        return True

    def close(self, timeout: float = 0.0) -> None:
        self.flush()

    def stats(self) -> dict[str, int]:
        return {"sent": self._sent}


class CaptureWorker:
    """Feeds one capture (and its DNS side channel) into one pipeline."""

    def __init__(self, capture: LiveCapture, pipeline: Pipeline) -> None:
        self.capture = capture
        self.pipeline = pipeline
        # The side channel's DNS only teaches the attribution cache; it has its own counters so
        # nothing is counted twice.
        self.side_decoder = TrafficDecoder(Counters(), DecodeSettings()) if capture.side is not None else None

    def step(self, timeout: float) -> int:
        """Wait up to `timeout` for packets, process what came; returns the number of packets."""
        packets, side = self.capture.read(timeout)
        linktype = self.capture.linktype
        if side and self.side_decoder is not None:
            self._learn_dns(side, linktype)
        if not packets:
            return 0
        feed = self.pipeline.feed
        size = 0
        for ts, frame in packets:
            size += len(frame)
            feed(ts, linktype, frame)
        counters = self.pipeline.counters
        counters.add("packets", len(packets))
        counters.add("bytes", size)
        return len(packets)

    def _learn_dns(self, side: list[tuple[float, bytes]], linktype: int) -> None:
        decoder = self.side_decoder
        assert decoder is not None
        detector = self.pipeline.detector  # its cache learns the answers as they are decoded
        decoder.learn_dns = detector.dns_cache.learn if detector is not None else None
        for ts, frame in side:
            decoder.feed(ts, linktype, frame)
        decoder.records.clear()

    def drain(self) -> None:
        """On stop: what the kernel has already captured is still processed, for a bounded time."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and not self.capture.down:
            if not self.step(DRAIN_WAIT_SECONDS):
                break

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": dict(self.pipeline.counters.values),
            "kernel": self.capture.kernel_stats(),
            "flows_active": len(self.pipeline.decoder.flows.streams),
            "interface_up": not self.capture.down,
            "interface_down_events": self.capture.down_events,
        }

    def finish(self) -> None:
        self.pipeline.finish()


def flush_sinks(sinks: list[Sink]) -> None:
    for sink in sinks:
        sink.flush(0.0)  # never waits on the network: remote sinks keep their spool


def close_sinks(sinks: list[Sink], flush_timeout: float) -> None:
    for sink in sinks:
        if not sink.flush(flush_timeout):
            log.warning("%s: not everything was delivered; the rest stays in the spool", sink.name)
        sink.close(SINK_CLOSE_TIMEOUT)


def worker_main(
    index: int, captures: list[LiveCapture], conn: Connection, args: argparse.Namespace, parent: int,
    config: Any, detection: Parts,
) -> None:
    """One worker process: its copy of the detection the main process built before the fork."""
    set_parent_death_signal()
    if os.getppid() != parent:  # the main process died before the line above took effect
        raise SystemExit(EXIT_CAPTURE)
    # Inherited copies of the other workers' sockets would keep them alive after their owner
    # closes them (and hold their fanout group on a vanished interface).
    for other, copy in enumerate(captures):
        if other != index and copy.main.sock is not None:
            copy.close(collect=False)
    capture = captures[index]
    flags = Flags()
    install_signal_handlers(flags)
    pipeline = detection.pipeline
    forward = ForwardingSink(conn)
    pipeline.sinks = [forward]
    reloader = Reloader(args, config)
    worker = CaptureWorker(capture, pipeline)
    code = EXIT_OK
    try:
        next_report = 0.0
        while not flags.stop:
            if flags.reload:
                flags.reload = False
                fresh = worker_reload(args, index)
                if fresh is not None:
                    reloader.apply(pipeline, fresh)
            try:
                worker.step(POLL_SECONDS)
            except LiveCaptureError as exc:
                log.error("worker %d: %s", index, exc)
                code = EXIT_CAPTURE
                break
            forward.flush()
            now = time.monotonic()
            if now >= next_report:
                next_report = now + FLUSH_SECONDS
                conn.send(("stats", worker.snapshot()))
        if code == EXIT_OK:
            worker.drain()
        worker.finish()
        forward.flush()
        conn.send(("done", worker.snapshot()))
    finally:
        capture.close()
        conn.close()
    raise SystemExit(code)


def worker_reload(args: argparse.Namespace, index: int) -> Parts | None:
    """A worker's reload: the main process has already checked the files, so a failure here
    means they changed in between; the worker keeps its detection and says so."""
    try:
        return build_detection(args)
    except Exception as exc:
        log.error("worker %d: reload failed, keeping the running configuration: %s", index, describe_failure(exc))
        return None
