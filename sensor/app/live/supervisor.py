"""The main process of a multi-worker live: starts the workers, owns the sinks, relays signals, sums the stats."""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing import popen_fork  # noqa: F401  Process.start() imports it after privileges are dropped
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from sensor.app.assemble import Parts, build_outputs
from sensor.app.live.reload import Reloader
from sensor.app.live.stats import StatsReporter, print_counters
from sensor.app.live.system import Flags, install_signal_handlers, notify_systemd
from sensor.app.live.worker import FLUSH_SECONDS, POLL_SECONDS, close_sinks, flush_sinks, worker_main
from sensor.capture.live import LiveCapture
from sensor.errors import EXIT_INTERNAL, EXIT_OK

log = logging.getLogger("phi_sensor")

WORKER_STOP_TIMEOUT = 30.0


class Supervisor:
    """The main process with several workers: owns the sinks, relays signals, sums the stats."""

    def __init__(
        self, args: argparse.Namespace, captures: list[LiveCapture], stats_path: Path, observer: str,
        config: Any, detection: Parts,
    ) -> None:
        self.args = args
        self.config = config
        self.detection = detection
        self.captures = captures
        self.stats_path = stats_path
        self.observer = observer
        self.snapshots: dict[int, dict[str, Any]] = {}
        self.done: set[int] = set()

    def run(self) -> int:
        context = multiprocessing.get_context("fork")
        processes: dict[int, multiprocessing.process.BaseProcess] = {}
        conns: dict[Connection, int] = {}
        for index, capture in enumerate(self.captures):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main, args=(index, self.captures, sender, self.args, os.getpid(), self.config, self.detection),
                name=f"phi-sensor-worker-{index}",
            )
            process.start()
            sender.close()
            # The worker holds the sockets now; the kernel counters are its to read.
            capture.close(collect=False)
            processes[index] = process
            conns[receiver] = index
        flags = Flags()
        install_signal_handlers(flags)
        reloader = Reloader(self.args, self.config)
        try:
            sinks = build_outputs(self.args, self.config)
        except BaseException:
            self._terminate(processes)
            raise
        reporter = StatsReporter(sinks, self.stats_path, observer=self.observer, interface=self.args.interface,
                                 interval=self.args.stats_interval)
        code = EXIT_OK
        stop_deadline: float | None = None
        try:
            notify_systemd("READY=1")
            next_flush = time.monotonic() + FLUSH_SECONDS
            reported_once = False
            while conns:
                if flags.reload:
                    flags.reload = False
                    notify_systemd("RELOADING=1")
                    if reloader.check() is not None:  # check once here; workers rebuild their own
                        for worker in processes.values():
                            if worker.is_alive() and worker.pid:
                                os.kill(worker.pid, signal.SIGHUP)
                        log.info("configuration and signatures reloaded")
                    notify_systemd("READY=1")
                if flags.stop and stop_deadline is None:
                    notify_systemd("STOPPING=1")
                    stop_deadline = time.monotonic() + WORKER_STOP_TIMEOUT
                    self._signal_all(processes, signal.SIGTERM)
                for conn in wait(list(conns), timeout=POLL_SECONDS):
                    assert isinstance(conn, Connection)  # wait() returns some of the objects it was given
                    index = conns[conn]
                    try:
                        kind, payload = conn.recv()
                    except (EOFError, OSError):
                        del conns[conn]
                        if index not in self.done and stop_deadline is None:
                            processes[index].join(1.0)
                            log.error("worker %d stopped unexpectedly (exit status %s); stopping",
                                      index, processes[index].exitcode)
                            code = processes[index].exitcode or EXIT_INTERNAL
                            flags.stop = True
                        continue
                    if kind == "docs":
                        for doc in payload:
                            for sink in sinks:
                                sink.send(doc)
                    else:  # "stats" or "done"
                        self.snapshots[index] = payload
                        if kind == "done":
                            self.done.add(index)
                now = time.monotonic()
                if now >= next_flush:
                    next_flush = now + FLUSH_SECONDS
                    flush_sinks(sinks)
                if stop_deadline is not None and now > stop_deadline:
                    log.error("workers did not stop within %.0f s; killing them", WORKER_STOP_TIMEOUT)
                    self._signal_all(processes, signal.SIGKILL)
                    break
                # The first stats wait for every worker's first report, so they cover all of them.
                ready = len(self.snapshots) == len(processes)
                if ready and (not reported_once or reporter.due(time.time())):
                    reporter.emit(self._ordered_snapshots(), (reloader.succeeded, reloader.failed))
                    reported_once = True
            for worker in processes.values():
                worker.join(5.0)
            if self.snapshots:
                reporter.emit(self._ordered_snapshots(), (reloader.succeeded, reloader.failed))
        finally:
            self._terminate(processes)
            close_sinks(sinks, self.args.flush_timeout)
        if self.args.stats and self.snapshots:
            totals: dict[str, int] = {}
            for snap in self.snapshots.values():
                for name, value in snap["counters"].items():
                    totals[name] = totals.get(name, 0) + value
            print_counters(totals)
        return code

    def _ordered_snapshots(self) -> list[dict[str, Any]]:
        return [self.snapshots[index] for index in sorted(self.snapshots)]

    @staticmethod
    def _signal_all(processes: dict[int, multiprocessing.process.BaseProcess], signum: int) -> None:
        for process in processes.values():
            if process.is_alive() and process.pid:
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    def _terminate(self, processes: dict[int, multiprocessing.process.BaseProcess]) -> None:
        """Whatever happened, no worker outlives the main process."""
        for process in processes.values():
            if process.is_alive():
                process.terminate()
                process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
