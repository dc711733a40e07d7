"""`phi-sensor live`: capture on an interface, decode, detect, send; reload on SIGHUP, stop on
SIGTERM or SIGINT, and report counters in a periodic stats event and a stats file.

Process layout:
- one worker (the default): a single process captures, decodes, detects and writes to the sinks;
- N workers: N processes share the traffic through PACKET_FANOUT, hashed on the flow so both
  directions of a connection reach the same worker, each with its own pipeline. Each also reads
  every DNS packet on a side socket, so a flow is attributed whichever worker saw its DNS answer
  (only the worker fanout gave the DNS packet to raises its events and alerts). Workers pass
  their documents and counters to the main process, which alone owns the sinks: one spool, one
  output file, one stats event.

The capture sockets are opened first, as root or with CAP_NET_RAW; then the process gives up
root (setgid/setuid to `--user`) before it reads a single packet.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

from sensor.app.assemble import Parts, build_outputs, load
from sensor.app.live.reload import Reloader, build_detection
from sensor.app.live.stats import StatsReporter, print_counters
from sensor.app.live.status import default_stats_file
from sensor.app.live.supervisor import Supervisor
from sensor.app.live.system import (
    Flags,
    drop_privileges,
    install_signal_handlers,
    notify_systemd,
    prepare_stats_dir,
    resolve_user,
)
from sensor.app.live.worker import FLUSH_SECONDS, POLL_SECONDS, CaptureWorker, close_sinks, flush_sinks
from sensor.capture.live import LiveCapture, LiveCaptureError
from sensor.errors import EXIT_CAPTURE, EXIT_OK, ConfigError

log = logging.getLogger("phi_sensor")


def live_main(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.workers > 64:
        raise ConfigError("command line", "--workers", "expected 1 to 64")
    if not args.stats_interval > 0:
        raise ConfigError("command line", "--stats-interval", "expected a positive number of seconds")
    if args.buffer_mb < 1:
        raise ConfigError("command line", "--buffer-mb", "expected at least 1 MiB")
    config = load(args)  # the one load at start-up: workers inherit what is built from it
    observer = config.sensor.name
    detection = build_detection(args, config)  # a bad configuration fails here, before the network is touched
    stats_path = args.stats_file or default_stats_file()
    if getattr(args, "listen", None):
        return _listen_main(args, stats_path, observer, config, detection)
    several = args.workers > 1
    fanout = os.getpid() & 0xFFFF if several else None  # fanout groups are per network namespace
    side_channel = several and args.emit != "events"  # only detection attributes flows through DNS
    captures: list[LiveCapture] = []
    try:
        for _ in range(args.workers):
            capture = LiveCapture(
                args.interface,
                expression=args.bpf,
                filtered=not args.no_bpf,
                fanout_group=fanout,
                dns_side_channel=side_channel,
                buffer_bytes=args.buffer_mb << 20,
                ring=args.ring,
                promiscuous=args.promiscuous,
            )
            capture.open()
            captures.append(capture)
    except BaseException:
        for capture in captures:
            capture.close()
        raise
    account = resolve_user(args.user)
    prepare_stats_dir(stats_path, account)
    if account is not None:
        drop_privileges(account)
    filter_name = "none" if args.no_bpf else ("custom" if args.bpf else "built-in")
    log.info("capturing on %s: %d worker(s), %s filter, %s, stats in %s", args.interface, args.workers, filter_name,
             f"{args.buffer_mb} MiB {'ring' if args.ring else 'socket buffer'} per worker", stats_path)
    if several:
        return Supervisor(args, captures, stats_path, observer, config, detection).run()
    return _run_single(args, captures[0], stats_path, observer, config, detection)


def _listen_main(args: argparse.Namespace, stats_path: Path, observer: str, config: Any, detection: Parts) -> int:
    """`--listen`: a cloud mirror session received on a UDP socket (capture/mirror.py), one worker."""
    from sensor.capture.mirror import MirrorListener

    if args.workers != 1:
        raise ConfigError("command line", "--workers", "--listen takes one worker")
    if args.bpf or args.no_bpf:
        raise ConfigError("command line", "--bpf", "--listen has no capture filter: the datagrams are the mirror's")
    listener = MirrorListener(args.listen, buffer_bytes=args.buffer_mb << 20)
    listener.open()
    args.interface = listener.interface  # names the source in logs and stats
    account = resolve_user(args.user)
    prepare_stats_dir(stats_path, account)
    if account is not None:
        drop_privileges(account)
    log.info("listening for %s datagrams on %s:%d, stats in %s", listener.kind, listener.host, listener.port, stats_path)
    return _run_single(args, listener, stats_path, observer, config, detection)  # type: ignore[arg-type]


def _run_single(
    args: argparse.Namespace, capture: LiveCapture, stats_path: Path, observer: str, config: Any, detection: Parts
) -> int:
    flags = Flags()
    install_signal_handlers(flags)
    try:
        sinks = build_outputs(args, config)  # opened as the account that runs from here on
    except BaseException:
        capture.close()
        raise
    pipeline = detection.pipeline
    pipeline.sinks = sinks
    reloader = Reloader(args, config)
    worker = CaptureWorker(capture, pipeline)
    reporter = StatsReporter(sinks, stats_path, observer=observer, interface=args.interface,
                             interval=args.stats_interval)
    code = EXIT_OK
    try:
        reporter.emit([worker.snapshot()], (0, 0))
        notify_systemd("READY=1")
        next_flush = time.monotonic() + FLUSH_SECONDS
        while not flags.stop:
            if flags.reload:
                flags.reload = False
                notify_systemd("RELOADING=1")
                if reloader.reload(pipeline):
                    log.info("configuration and signatures reloaded")
                notify_systemd("READY=1")
            try:
                worker.step(POLL_SECONDS)
            except LiveCaptureError as exc:
                log.error("%s", exc)
                code = EXIT_CAPTURE
                break
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + FLUSH_SECONDS
                flush_sinks(sinks)
            if reporter.due(time.time()):
                reporter.emit([worker.snapshot()], (reloader.succeeded, reloader.failed))
        notify_systemd("STOPPING=1")
        if code == EXIT_OK:
            worker.drain()
        worker.finish()
        snapshot = worker.snapshot()
        reporter.emit([snapshot], (reloader.succeeded, reloader.failed))
    finally:
        capture.close()
        close_sinks(sinks, args.flush_timeout)
    if args.stats:
        print_counters(snapshot["counters"])
    return code


