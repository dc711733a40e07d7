"""`phi-sensor` command line.

Exit codes: 0 done; 1 an alert at or above --fail-on was raised; 2 usage or configuration error;
3 a capture could not be read (completely or partly: the rest was still processed);
4 a sink could not deliver everything (what was left is kept in the spool); 70 internal error.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from sensor import __version__
from sensor.errors import SensorError

EXIT_OK, EXIT_FAIL_ON, EXIT_USAGE, EXIT_CAPTURE, EXIT_SINK, EXIT_INTERNAL = 0, 1, 2, 3, 4, 70
DEFAULT_USER = "phi-sensor"  # the account `live` switches to once its capture is open
DEFAULT_STATS_INTERVAL = 60.0
SEVERITIES = ("low", "medium", "high", "critical")

log = logging.getLogger("phi_sensor")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="sensor YAML configuration (default: built-in conservative policy)")
    parser.add_argument(
        "--emit", choices=("alerts", "events", "all"), default="alerts",
        help="what to write: alerts (default), protocol events, or both",
    )
    parser.add_argument(
        "--output", action="append", metavar="SPEC",
        help="where to write (repeatable): '-' stdout, a file path (JSON lines), elasticsearch=URL, "
        "opensearch=URL, webhook=URL, slack=URL, pagerduty=ROUTING_KEY_FILE. Default: outputs from the config, else '-'",
    )
    parser.add_argument("--stats", action="store_true", help="print counters to stderr at the end")
    parser.add_argument("--fail-on", choices=SEVERITIES, help="exit 1 if an alert of this severity or above was raised")
    parser.add_argument(
        "--unredacted", action="store_true",
        help="forensic opt-in: put matched health data values in alerts instead of typed placeholders (logged)",
    )
    parser.add_argument("--spool-dir", type=Path, default=Path("spool"), help="disk queue for remote sinks")
    parser.add_argument(
        "--flush-timeout", type=float, default=30.0, metavar="SECONDS",
        help="at the end, how long to keep trying to deliver to remote sinks (the rest stays spooled)",
    )
    parser.add_argument("--signatures", type=Path, help="vendor signature directory (default: bundled signatures/vendors)")
    parser.add_argument("--quiet", action="store_true", help="no summary table or progress bar on stderr")


def add_live_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `phi-sensor live` beyond the common ones (here, so that parsing a replay
    command does not load the live service)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-i", "--interface", help="network interface to capture on (a span or mirror port)")
    source.add_argument(
        "--listen", metavar="URL",
        help="receive a cloud mirror session on a UDP socket instead: vxlan://HOST[:PORT] (default port 4789) "
        "or geneve://HOST[:PORT] (6081); see docs/tunnels.md",
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="capture processes sharing the traffic by flow (PACKET_FANOUT); default 1",
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--bpf", metavar="EXPR", help="kernel capture filter in pcap syntax instead of the built-in one")
    choice.add_argument("--no-bpf", action="store_true", help="no kernel filter: every packet reaches Python (slow)")
    parser.add_argument(
        "--stats-interval", type=float, default=DEFAULT_STATS_INTERVAL, metavar="SECONDS",
        help="how often the stats event is sent and the stats file rewritten; default 60",
    )
    parser.add_argument(
        "--stats-file", type=Path, metavar="PATH",
        help="stats file for `phi-sensor status` (default: $RUNTIME_DIRECTORY/stats.json under systemd, "
        "/run/phi-sensor/stats.json as root, else a per-user runtime directory)",
    )
    parser.add_argument(
        "--user", help=f"run as this user once the capture is open, when started as root (default: {DEFAULT_USER} if it exists)"
    )
    parser.add_argument(
        "--buffer-mb", type=int, default=64, metavar="MIB", help="kernel packet buffer per worker, in MiB; default 64"
    )
    parser.add_argument(
        "--ring", action=argparse.BooleanOptionalAction, default=True,
        help="read packets from a TPACKET_V3 memory-mapped ring (default) or, with --no-ring, a socket queue",
    )
    parser.add_argument(
        "--promiscuous", action=argparse.BooleanOptionalAction, default=True,
        help="put the interface in promiscuous mode (default), as a span port needs",
    )


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `phi-sensor status` (here, so that parsing a replay command does not load it)."""
    parser.add_argument(
        "--stats-file", type=Path,
        help="the file `phi-sensor live` writes (default: $RUNTIME_DIRECTORY/stats.json under systemd, "
        "/run/phi-sensor/stats.json as root or when that directory exists, else a per-user runtime directory)",
    )
    parser.add_argument("--json", action="store_true", help="print the stats document itself")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phi-sensor",
        description="Find protected health information leaving for ad and analytics vendors.",
    )
    parser.add_argument("--version", action="version", version=f"phi-sensor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    replay = sub.add_parser("replay", help="replay pcap/pcapng files (also .gz) through the sensor")
    replay.add_argument("pcaps", nargs="+", type=Path, metavar="PCAP")
    _add_common(replay)
    replay.add_argument(
        "--prefilter", choices=("auto", "always", "never"), default="auto",
        help="let tcpdump's BPF drop bulk packets before Python sees them (auto: large classic pcap files)",
    )
    replay.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    replay.add_argument(
        "--workers", choices=("auto", "1", "2"), default="auto",
        help="decode on both cores, each taking half of the clients (auto: when the prefilter is used)",
    )
    replay.set_defaults(handler=_cmd_replay)

    live = sub.add_parser("live", help="capture on a network interface: kernel BPF filter, PACKET_FANOUT workers")
    _add_common(live)
    add_live_arguments(live)
    live.set_defaults(handler=_cmd_live)

    status = sub.add_parser("status", help="health of the running live sensor, from its stats file")
    add_status_arguments(status)
    status.set_defaults(handler=_cmd_status)

    report = sub.add_parser(
        "report", help="inventory of which PHI host talks to which third party, with BAA status and verdict"
    )
    report.add_argument("pcaps", nargs="+", type=Path, metavar="PCAP")
    report.add_argument("--config", type=Path, help="sensor YAML configuration")
    report.add_argument("--signatures", type=Path, help="vendor signature directory")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--prefilter", choices=("auto", "always", "never"), default="auto")
    report.set_defaults(handler=_cmd_report)

    setup = sub.add_parser(
        "setup", add_help=False,
        help="install index templates, lifecycle policy and Kibana objects (phi-sensor setup --help)",
    )
    setup.add_argument("setup_args", nargs=argparse.REMAINDER)
    setup.set_defaults(handler=_cmd_setup)

    check = sub.add_parser("check-config", help="validate a configuration file and the signatures")
    check.add_argument("config", type=Path)
    check.add_argument("--signatures", type=Path)
    check.set_defaults(handler=_cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="phi-sensor: %(message)s", stream=sys.stderr)
    # The HTTP clients log every failed request of an outage; the sinks count and report them instead.
    for noisy in ("elastic_transport", "opensearch", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["setup"]:  # setup owns its options; argparse REMAINDER would not pass "--x" through
        args = argparse.Namespace(handler=_cmd_setup, setup_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SensorError as exc:
        print(f"phi-sensor: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("phi-sensor: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, never the input's fault: one line, details on request
        if os.environ.get("PHI_SENSOR_DEBUG"):
            raise
        print(f"phi-sensor: internal error: {type(exc).__name__}: {exc} (set PHI_SENSOR_DEBUG=1 for details)",
              file=sys.stderr)
        return EXIT_INTERNAL


def run() -> NoReturn:
    """The program's entry point: main(), then exit without taking the heap apart.

    After a large replay the interpreter spends tens of milliseconds freeing caches and decoder
    state object by object. Once main() has returned every sink is flushed and closed, so the
    process flushes its standard streams and leaves. Where a flush fails (a closed pipe) or
    child processes remain, the ordinary exit runs instead and reports as it always does.
    """
    code = main()
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None or not multiprocessing.active_children():
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(code)
        os._exit(code)
    sys.exit(code)


def _cmd_replay(args: argparse.Namespace) -> int:
    from sensor.capture.prefilter import start_early

    # libpcap starts filtering the first file on the other core while the sensor loads.
    started = start_early(args.pcaps, args.prefilter, args.workers)
    try:
        from sensor.runner import Runner

        runner = Runner.from_args(args)
    except BaseException:
        if started is not None:
            started.close()
        raise
    return runner.replay(
        args.pcaps, prefilter=args.prefilter, progress=args.progress, workers=args.workers, started=started
    )


def _cmd_check_config(args: argparse.Namespace) -> int:
    from sensor.runner import Runner

    return Runner.check_config(args.config, args.signatures)


def _cmd_setup(args: argparse.Namespace) -> int:
    from sensor.setup import setup_main

    return setup_main(args.setup_args)


def _cmd_report(args: argparse.Namespace) -> int:
    from sensor.runner import Runner

    return Runner.report(args)


def _cmd_live(args: argparse.Namespace) -> int:
    from sensor.live import live_main

    return live_main(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from sensor.status import status_main

    return status_main(args)
