"""`phi-sensor` command line.

Exit codes: 0 done; 1 an alert at or above --fail-on was raised; 2 usage or configuration error;
3 a capture could not be read (completely or partly: the rest was still processed);
4 a sink could not deliver everything (what was left is kept in the spool); 70 internal error.
"""
from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from sensor import __version__
from sensor.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, SensorError
from sensor.paths import DEFAULT_USER
from sensor.severity import SEVERITIES

DEFAULT_STATS_INTERVAL = 60.0
LOG_FORMATS = ("text", "json")

log = logging.getLogger("phi_sensor")


def positive_seconds(text: str) -> float:
    """A duration option: a finite number of seconds above zero (nan or inf would never end a wait)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, found {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds above 0, found {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path,
        help="sensor YAML configuration (default: /etc/phi-sensor/sensor.yaml if it exists, else the built-in policy)",
    )
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
    parser.add_argument(
        "--spool-dir", type=Path,
        help="disk queue for remote sinks (default: $STATE_DIRECTORY/spool under systemd, "
        "else $XDG_STATE_HOME/phi-sensor/spool, i.e. ~/.local/state/phi-sensor/spool)",
    )
    parser.add_argument(
        "--flush-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
        help="at the end, how long to keep trying to deliver to remote sinks (the rest stays spooled)",
    )
    parser.add_argument(
        "--signatures", type=Path, metavar="DIR",
        help="vendor signature directory merged over the bundled catalog (a file there replaces the bundled vendor of its id)",
    )
    parser.add_argument("--quiet", action="store_true", help="no summary table or progress bar on stderr")


def _add_deep(parser: argparse.ArgumentParser) -> None:
    """Deep mode: HAR files among the inputs, captures decrypted with a TLS key log."""
    parser.add_argument(
        "--keylog", type=Path, metavar="FILE",
        help="TLS key log (SSLKEYLOGFILE format): decrypt HTTPS and HTTP/3 in the captures with tshark",
    )
    parser.add_argument(
        "--har-source", metavar="HOST",
        help="the PHI host a HAR file stands for: an IP address or a phi_hosts name (default: the first entry)",
    )


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
        "--stats-interval", type=positive_seconds, default=DEFAULT_STATS_INTERVAL, metavar="SECONDS",
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


CAPTURES_HELP = "capture files (pcap, pcapng, .gz), directories of them (sorted), or - for standard input"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line. `command`: the subcommand about to run, when known; the others are then
    registered by name and help alone (their options, and what defines them, are not built)."""
    parser = argparse.ArgumentParser(
        prog="phi-sensor",
        description="Find protected health information leaving for ad and analytics vendors.",
    )
    parser.add_argument("--version", action="version", version=f"phi-sensor {__version__}")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text",
        help="the sensor's own log on stderr: time-stamped text lines (default) or one JSON object per line",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, options) in _COMMANDS.items():
        if command in _COMMANDS and name != command:
            sub.add_parser(name, help=help_text)
        else:
            add_arguments(sub.add_parser(name, help=help_text, **options))
    return parser


def _replay_arguments(replay: argparse.ArgumentParser) -> None:
    replay.add_argument("pcaps", nargs="+", type=Path, metavar="PCAP", help=CAPTURES_HELP)
    replay.add_argument("-r", "--recursive", action="store_true", help="also the captures in subdirectories")
    _add_common(replay)
    replay.add_argument(
        "--prefilter", choices=("auto", "always", "never"), default="auto",
        help="let tcpdump's BPF drop bulk packets before Python sees them (auto: large classic pcap files)",
    )
    replay.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    _add_deep(replay)
    replay.add_argument(
        "--workers", choices=("auto", "1", "2"), default="auto",
        help="decode on both cores, each taking half of the clients (auto: when the prefilter is used)",
    )
    replay.set_defaults(handler=_cmd_replay)


def _live_arguments(live: argparse.ArgumentParser) -> None:
    _add_common(live)
    add_live_arguments(live)
    live.set_defaults(handler=_cmd_live)


def _status_arguments(status: argparse.ArgumentParser) -> None:
    add_status_arguments(status)
    status.set_defaults(handler=_cmd_status)


def _report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument("pcaps", nargs="+", type=Path, metavar="PCAP", help=CAPTURES_HELP)
    report.add_argument("-r", "--recursive", action="store_true", help="also the captures in subdirectories")
    report.add_argument(
        "--config", type=Path, help="sensor YAML configuration (default: /etc/phi-sensor/sensor.yaml if it exists)"
    )
    report.add_argument(
        "--signatures", type=Path, metavar="DIR", help="vendor signature directory merged over the bundled catalog"
    )
    report.add_argument(
        "--format", choices=("table", "json", "csv", "html", "markdown"), default="table",
        help="html: one self-contained page (no external resource); csv: the inventory, or the exposure with --exposure",
    )
    report.add_argument("--prefilter", choices=("auto", "always", "never"), default="auto")
    report.add_argument(
        "--exposure", action="store_true",
        help="add the size of each exposure: requests with health data, client hosts, distinct identifiers, time span",
    )
    _add_deep(report)
    report.set_defaults(handler=_cmd_report)


def _setup_arguments(setup: argparse.ArgumentParser) -> None:
    setup.add_argument("setup_args", nargs=argparse.REMAINDER)
    setup.set_defaults(handler=_cmd_setup)


def _check_config_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument(
        "config", type=Path, nargs="?", help="default: /etc/phi-sensor/sensor.yaml if it exists, else the built-in policy"
    )
    check.add_argument("--signatures", type=Path, metavar="DIR")
    check.add_argument("--output", action="append", metavar="SPEC", help="also check these outputs, as replay --output would")
    check.add_argument("--spool-dir", type=Path, help="the spool directory replay and live would use")
    check.set_defaults(handler=_cmd_check_config)


def _signatures_arguments(signatures: argparse.ArgumentParser) -> None:
    from sensor.signatures_cmd import add_arguments

    add_arguments(signatures)


def main(argv: list[str] | None = None) -> int:
    from sensor.logs import configure_logging

    # The log format is set before anything can log, and wherever it stands (setup parses its own options).
    early = argparse.ArgumentParser(prog="phi-sensor", add_help=False, allow_abbrev=False)
    early.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    known, argv = early.parse_known_args(sys.argv[1:] if argv is None else argv)
    configure_logging(known.log_format)
    # the subcommand: the first word, --log-format having been taken out (-h or --version: none)
    parser = build_parser(argv[0] if argv else None)
    if argv[:1] == ["setup"]:  # setup owns its options; argparse REMAINDER would not pass "--x" through
        args = argparse.Namespace(handler=_cmd_setup, setup_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    if getattr(args, "config", False) is None:
        from sensor.paths import default_config_file

        args.config = default_config_file()
    try:
        return args.handler(args)
    except SensorError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, never the input's fault: one line, details on request
        if os.environ.get("PHI_SENSOR_DEBUG"):
            raise
        log.error("internal error: %s: %s (set PHI_SENSOR_DEBUG=1 for details)", type(exc).__name__, exc)
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
    # Loading the sensor allocates tens of thousands of objects that all live on, so the cycle
    # collector's passes over them during start-up find next to nothing (a few hundred objects
    # of garbage): it is off until the heap settles, once assembled (assemble._settle_heap).
    gc.disable()
    # only what the selector needs loads before it starts (start_early): it runs on the other core
    from sensor.capture.inputs import expand, wants_deep

    args.pcaps = expand(args.pcaps, args.recursive)
    if wants_deep(args.pcaps, args.keylog):
        from sensor.app.replay.main import Runner
        from sensor.deep.replay import replay_deep

        return replay_deep(Runner.from_args(args), args.pcaps, args.keylog, args.har_source, args.prefilter)
    from sensor.app.replay.plan import start_early

    # libpcap starts filtering the first file on the other core while the sensor loads.
    started = start_early(args.pcaps, args.prefilter, args.workers)
    try:
        from sensor.app.replay.main import Runner

        runner = Runner.from_args(args)
    except BaseException:
        if started is not None:
            started.close()
        raise
    return runner.replay(
        args.pcaps, prefilter=args.prefilter, progress=args.progress, workers=args.workers, started=started
    )


def _cmd_check_config(args: argparse.Namespace) -> int:
    from sensor.app.assemble import check_config

    print(check_config(args))
    return EXIT_OK


def _cmd_setup(args: argparse.Namespace) -> int:
    from sensor.app.setup import setup_main

    return setup_main(args.setup_args)


def _cmd_report(args: argparse.Namespace) -> int:
    from sensor.app.report import report_main
    from sensor.capture.inputs import expand

    args.pcaps = expand(args.pcaps, args.recursive)
    return report_main(args)


def _cmd_live(args: argparse.Namespace) -> int:
    from sensor.app.live.service import live_main

    return live_main(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from sensor.app.live.status import status_main

    return status_main(args)


# Each subcommand: its help line, what adds its options, and the parser's own settings.
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], dict[str, Any]]] = {
    "replay": ("replay pcap/pcapng files (also .gz) through the sensor", _replay_arguments, {}),
    "live": ("capture on a network interface: kernel BPF filter, PACKET_FANOUT workers", _live_arguments, {}),
    "status": ("health of the running live sensor, from its stats file", _status_arguments, {}),
    "report": (
        "inventory of which PHI host talks to which third party, with BAA status and verdict", _report_arguments, {}
    ),
    "setup": (
        "install index templates, lifecycle policy and Kibana objects (phi-sensor setup --help)", _setup_arguments,
        {"add_help": False},
    ),
    "check-config": (
        "validate a configuration, its outputs and the signatures, as replay and live would", _check_config_arguments, {}
    ),
    "signatures": ("validate, look up, list and import tracker vendor signatures", _signatures_arguments, {}),
}
