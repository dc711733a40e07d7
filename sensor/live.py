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
import multiprocessing
import os
import pwd
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing import popen_fork  # noqa: F401  Process.start() imports it after privileges are dropped
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from sensor.app.assemble import Parts, assemble, build_outputs, load
from sensor.capture.live import LiveCapture, LiveCaptureError
from sensor.decode.dispatch import DecodeSettings, TrafficDecoder
from sensor.errors import EXIT_CAPTURE, EXIT_INTERNAL, EXIT_OK, ConfigError, SensorError
from sensor.output.ecs import ECS_VERSION, MODULE, STATS_DATASET, data_stream, iso_time, prune
from sensor.output.sinks import Sink
from sensor.paths import DEFAULT_USER
from sensor.pipeline import Pipeline
from sensor.records import Counters, DnsQuery
from sensor.status import default_stats_file, write_stats_file

log = logging.getLogger("phi_sensor")

POLL_SECONDS = 0.25  # longest wait before the loop looks at signals and timers again
FLUSH_SECONDS = 1.0  # how often buffered output reaches the sinks and workers report counters
DRAIN_SECONDS = 2.0
DRAIN_WAIT_SECONDS = 0.15  # longer than the ring's block retire timeout: a partial block is handed over
SINK_CLOSE_TIMEOUT = 5.0
WORKER_STOP_TIMEOUT = 30.0
# Counters the detector keeps under "alerts." that are not rule ids.
_ALERT_BOOKKEEPING = frozenset({"alerts.escalated", "alerts.suppressed", "alerts.updated"})


# -- small pieces ----------------------------------------------------------------------------------
@dataclass
class Flags:
    """Set by signal handlers, acted on by the loop: handlers never do work themselves."""

    stop: bool = False
    reload: bool = False


def install_signal_handlers(flags: Flags) -> None:
    def on_stop(_signum: int, _frame: Any) -> None:
        flags.stop = True

    def on_reload(_signum: int, _frame: Any) -> None:
        flags.reload = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: READY=1, RELOADING=1, STOPPING=1, STATUS=..."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError:
        log.debug("cannot notify systemd", exc_info=True)


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SensorError) else f"{type(exc).__name__}: {exc}"


def resolve_user(requested: str | None) -> pwd.struct_passwd | None:
    """The account to switch to, or None to stay as we are (not root, or no such default user)."""
    if os.geteuid() != 0:
        if requested:
            log.warning("--user %s ignored: not running as root", requested)
        return None
    name = requested or DEFAULT_USER
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if requested:
            raise ConfigError("command line", "--user", f"no such user: {requested}") from None
        log.warning("running as root: create a %s user or pass --user so packets are never processed as root",
                    DEFAULT_USER)
        return None


def drop_privileges(account: pwd.struct_passwd) -> None:
    """Become `account` for good: no supplementary groups, no way back to root, no capabilities."""
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)


def prepare_stats_dir(path: Path, account: pwd.struct_passwd | None) -> None:
    """Create the stats file's directory, owned by the account the sensor will run as."""
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, mode=0o755)
            if account is not None:
                os.chown(path.parent, account.pw_uid, account.pw_gid)
    except OSError as exc:
        log.warning("%s: cannot create the stats directory: %s", path.parent, exc.strerror or exc)


def build_detection(args: argparse.Namespace, config: Any = None) -> Parts:
    """Configuration, signatures, detector and event builder, with no sinks: the caller gives
    them (workers and reloads must not open the spools and files the main process owns)."""
    return assemble(args, config, live=True, sinks=[])


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


# -- configuration reload ------------------------------------------------------------------------------
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
            log.error("reload failed, keeping the running configuration: %s", _reason(exc))
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
        fresh.events.tunnels = pipeline.decoder.packets.tunnels  # the running decoder knows the tunnelled flows

    def reload(self, pipeline: Pipeline) -> bool:
        fresh = self.check()
        if fresh is None:
            return False
        self.apply(pipeline, fresh)
        return True


# -- one capture feeding one pipeline ---------------------------------------------------------------------
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
        for ts, frame in side:
            decoder.feed(ts, linktype, frame)
        records, decoder.records = decoder.records, []
        detector = self.pipeline.detector
        if detector is None:
            return
        for record in records:
            if isinstance(record, DnsQuery) and record.answers:
                detector.dns_cache.observe(record)

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


# -- stats -------------------------------------------------------------------------------------------
def stats_document(
    snapshots: list[dict[str, Any]],
    sink_stats: list[dict[str, Any]],
    *,
    observer: str,
    interface: str,
    interval: float,
    uptime: float,
    period: float,
    previous: tuple[int, int],
    reloads: tuple[int, int],
    now: float,
) -> dict[str, Any]:
    """The ECS metric event: the workers' counters summed, rates over the last period."""
    counters: dict[str, int] = {}
    kernel: dict[str, int] = {}
    active = down_events = 0
    up = True
    for snap in snapshots:
        for name, value in snap["counters"].items():
            counters[name] = counters.get(name, 0) + value
        for name, value in snap["kernel"].items():
            kernel[name] = kernel.get(name, 0) + value
        active += snap["flows_active"]
        down_events = max(down_events, snap["interface_down_events"])  # every worker sees the same event
        up = up and snap["interface_up"]
    packets, size = counters.get("packets", 0), counters.get("bytes", 0)
    by_rule = {
        name.removeprefix("alerts."): value
        for name, value in counters.items()
        if name.startswith("alerts.") and name not in _ALERT_BOOKKEEPING
    }
    span = max(period, 1e-9)
    stats = {
        "interface": interface,
        "interface_up": up,
        "interface_down_events": down_events,
        "workers": len(snapshots),
        "interval_s": interval,
        "uptime_s": round(uptime, 3),
        "period_s": round(period, 3),
        "packets": packets,
        "bytes": size,
        "packets_per_s": round(max(packets - previous[0], 0) / span, 1),
        "bytes_per_s": round(max(size - previous[1], 0) / span, 1),
        "kernel": kernel,
        "flows": {"active": active, "seen": counters.get("tcp.streams", 0)},
        "records": {
            name.removeprefix("records."): value for name, value in counters.items() if name.startswith("records.")
        },
        "alerts": {"total": sum(by_rule.values()), "by_rule": by_rule},
        # A list, not a mapping keyed by name: sink names hold dots and slashes (file paths).
        "sinks": sink_stats,
        "sink_queue_depth": sum(s.get("spool_depth", 0) for s in sink_stats),
        "reloads": {"ok": reloads[0], "failed": reloads[1]},
        # Dots would turn into object paths in Elasticsearch ("packets" vs "packets.truncated").
        "counters": {name.replace(".", "_"): value for name, value in sorted(counters.items())},
    }
    return prune({  # no empty value (an idle sensor has no alerts by rule, no kernel counters)
        "@timestamp": iso_time(now),
        "ecs": {"version": ECS_VERSION},
        "data_stream": data_stream(STATS_DATASET),
        "event": {"kind": "metric", "category": ["network"], "type": ["info"], "dataset": STATS_DATASET, "module": MODULE},
        "observer": {
            "name": observer,
            "type": "sensor",
            "product": "phi-egress-sensor",
            "ingress": {"interface": {"name": interface}},
        },
        "phi_egress": {"stats": stats},
    })


class StatsReporter:
    """Every `interval` seconds: one stats event to the sinks and the stats file rewritten."""

    def __init__(self, sinks: list[Sink], path: Path, *, observer: str, interface: str, interval: float) -> None:
        self.sinks = sinks
        self.path = path
        self.observer = observer
        self.interface = interface
        self.interval = interval
        self.started = time.time()
        self._last_time = self.started
        self._last_totals = (0, 0)
        self._next = 0.0
        self._file_failed = False

    def due(self, now: float) -> bool:
        return now >= self._next

    def emit(self, snapshots: list[dict[str, Any]], reloads: tuple[int, int]) -> dict[str, Any]:
        now = time.time()
        doc = stats_document(
            snapshots,
            [{"name": sink.name, **sink.stats()} for sink in self.sinks],
            observer=self.observer,
            interface=self.interface,
            interval=self.interval,
            uptime=now - self.started,
            period=now - self._last_time,
            previous=self._last_totals,
            reloads=reloads,
            now=now,
        )
        stats = doc["phi_egress"]["stats"]
        self._last_time, self._last_totals = now, (stats["packets"], stats["bytes"])
        self._next = now + self.interval
        for sink in self.sinks:
            sink.send(doc)
        try:
            write_stats_file(self.path, doc)
            self._file_failed = False
        except OSError as exc:
            if not self._file_failed:  # once per outage, not every interval
                log.warning("%s: cannot write the stats file: %s", self.path, exc.strerror or exc)
            self._file_failed = True
        notify_systemd(f"STATUS={stats['packets']:,} packets, {stats['alerts']['total']:,} alert documents, "
                       f"{stats['kernel'].get('drops', 0):,} kernel drops")
        return doc


def _flush_sinks(sinks: list[Sink]) -> None:
    for sink in sinks:
        sink.flush(0.0)  # never waits on the network: remote sinks keep their spool


def _close_sinks(sinks: list[Sink], flush_timeout: float) -> None:
    for sink in sinks:
        if not sink.flush(flush_timeout):
            log.warning("%s: not everything was delivered; the rest stays in the spool", sink.name)
        sink.close(SINK_CLOSE_TIMEOUT)


def _print_counters(snapshot_counters: dict[str, int]) -> None:
    width = max((len(name) for name in snapshot_counters), default=0)
    print("phi-sensor: stats", file=sys.stderr)
    for name in sorted(snapshot_counters):
        print(f"  {name:<{width}}  {snapshot_counters[name]}", file=sys.stderr)


# -- entry point ---------------------------------------------------------------------------------------
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
                _flush_sinks(sinks)
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
        _close_sinks(sinks, args.flush_timeout)
    if args.stats:
        _print_counters(snapshot["counters"])
    return code


# -- several workers -----------------------------------------------------------------------------------
def _set_parent_death_signal() -> None:
    """A worker whose main process died (SIGKILL, OOM) stops instead of capturing for no one."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable", exc_info=True)


def _worker_main(
    index: int, captures: list[LiveCapture], conn: Connection, args: argparse.Namespace, parent: int,
    config: Any, detection: Parts,
) -> None:
    """One worker process: its copy of the detection the main process built before the fork."""
    _set_parent_death_signal()
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
                fresh = _worker_reload(args, index)
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


def _worker_reload(args: argparse.Namespace, index: int) -> Parts | None:
    """A worker's reload: the main process has already checked the files, so a failure here
    means they changed in between; the worker keeps its detection and says so."""
    try:
        return build_detection(args)
    except Exception as exc:
        log.error("worker %d: reload failed, keeping the running configuration: %s", index, _reason(exc))
        return None


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
                target=_worker_main, args=(index, self.captures, sender, self.args, os.getpid(), self.config, self.detection),
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
                        for process in processes.values():
                            if process.is_alive() and process.pid:
                                os.kill(process.pid, signal.SIGHUP)
                        log.info("configuration and signatures reloaded")
                    notify_systemd("READY=1")
                if flags.stop and stop_deadline is None:
                    notify_systemd("STOPPING=1")
                    stop_deadline = time.monotonic() + WORKER_STOP_TIMEOUT
                    self._signal_all(processes, signal.SIGTERM)
                for conn in wait(list(conns), timeout=POLL_SECONDS):
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
                    _flush_sinks(sinks)
                if stop_deadline is not None and now > stop_deadline:
                    log.error("workers did not stop within %.0f s; killing them", WORKER_STOP_TIMEOUT)
                    self._signal_all(processes, signal.SIGKILL)
                    break
                # The first stats wait for every worker's first report, so they cover all of them.
                ready = len(self.snapshots) == len(processes)
                if ready and (not reported_once or reporter.due(time.time())):
                    reporter.emit(self._ordered_snapshots(), (reloader.succeeded, reloader.failed))
                    reported_once = True
            for process in processes.values():
                process.join(5.0)
            if self.snapshots:
                reporter.emit(self._ordered_snapshots(), (reloader.succeeded, reloader.failed))
        finally:
            self._terminate(processes)
            _close_sinks(sinks, self.args.flush_timeout)
        if self.args.stats and self.snapshots:
            totals: dict[str, int] = {}
            for snap in self.snapshots.values():
                for name, value in snap["counters"].items():
                    totals[name] = totals.get(name, 0) + value
            _print_counters(totals)
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
