"""Errors that reach the user as one clear line (never a traceback)."""
from __future__ import annotations


class SensorError(Exception):
    """Base for errors the CLI reports as a single line with an exit code."""

    exit_code = 2


class ConfigError(SensorError):
    """A configuration or signature file is invalid: says which file, which key, what was expected."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class CaptureError(SensorError):
    """A capture file cannot be read (not a capture, truncated, unknown link type)."""

    exit_code = 3
