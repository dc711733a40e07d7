"""Errors that reach the user as one clear line (never a traceback), and every exit code."""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAIL_ON = 1  # --fail-on matched an alert
EXIT_STALE = 1  # `status`: the stats file is missing or too old
EXIT_USAGE = 2  # usage or configuration
EXIT_CAPTURE = 3  # the capture (file or interface) could not be read
EXIT_SINK = 4  # an output could not deliver (setup: the server refused)
EXIT_INTERNAL = 70  # a bug: EX_SOFTWARE of sysexits.h
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class SensorError(Exception):
    """Base for errors the CLI reports as a single line with an exit code."""

    exit_code = EXIT_USAGE


class ConfigError(SensorError):
    """A configuration or signature file is invalid: says which file, which key, what was expected."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class CaptureError(SensorError):
    """A capture file cannot be read (not a capture, truncated, unknown link type)."""

    exit_code = EXIT_CAPTURE
