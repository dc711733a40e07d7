"""Where alerts go: the Sink protocol and the command-line shorthands.

The outputs are validated in specs.py and built in factory.py.
"""
from __future__ import annotations

import re
from typing import Any, Protocol

from sensor.errors import ConfigError
from sensor.output.documents import is_alert

COMMAND_LINE = "command line"

# Command-line shorthand -> (output type, webhook format).
_URL_TYPES: dict[str, tuple[str, str | None]] = {
    "elasticsearch": ("elasticsearch", None),
    "opensearch": ("opensearch", None),
    "webhook": ("webhook", "generic"),
    "slack": ("webhook", "slack"),
}


class Sink(Protocol):
    name: str

    def send(self, doc: dict[str, Any]) -> None:
        """Queue one document; never blocks on the network."""

    def flush(self, timeout: float) -> bool:
        """Try to deliver what is queued; True when nothing is left undelivered."""

    def close(self, timeout: float) -> None:
        """Flush, then stop; what could not be delivered stays in the spool for the next run."""

    def stats(self) -> dict[str, int]:
        """Counters: sent, retries, failed, dropped, spool_depth, ..."""


def parse_output_spec(spec: str) -> dict[str, Any]:
    """Turn a command-line `--output` value into an `outputs:` entry.

    `-` (stdout), `PATH` (JSON lines file), `elasticsearch=URL`, `opensearch=URL`, `webhook=URL`,
    `slack=URL`, `pagerduty` or `pagerduty=ROUTING_KEY_FILE`, `jsonl=PATH`.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError(COMMAND_LINE, "--output", "expected -, a file path, or TYPE=URL")
    kind, sep, value = spec.partition("=")
    kind = kind.lower()
    if kind == "pagerduty":
        out: dict[str, Any] = {"type": "webhook", "format": "pagerduty"}
        if value:
            out["routing_key_file"] = value
        return out
    if sep and kind in _URL_TYPES:
        if not value:
            raise ConfigError("command line", "--output", f"{kind}= needs a URL")
        out_type, fmt = _URL_TYPES[kind]
        out = {"type": out_type, "url": value}
        if fmt:
            out["format"] = fmt
        return out
    if sep and kind == "jsonl":
        return {"type": "jsonl", "path": value or "-"}
    if sep and re.fullmatch(r"[a-z][a-z0-9_-]*", kind):
        # NAME=VALUE with an unknown NAME is a misspelt type, never a file named "elastic=http:..."
        known = ", ".join(["jsonl", *_URL_TYPES, "pagerduty"])
        raise ConfigError(
            COMMAND_LINE, "--output",
            f"expected one of {known} before '=', found {kind!r} (a file whose name has '=' is jsonl=PATH)",
        )
    if re.match(r"^[a-z][a-z0-9+.-]*://", spec, re.IGNORECASE):
        raise ConfigError(
            "command line",
            "--output",
            "a URL needs its type: elasticsearch=URL, opensearch=URL, webhook=URL, slack=URL",
        )
    return {"type": "jsonl", "path": spec}


class AlertsOnly:
    """Keeps events away from a JSON lines sink that asked for alerts only."""

    def __init__(self, inner: Sink) -> None:
        self._inner = inner
        self.name = inner.name

    def send(self, doc: dict[str, Any]) -> None:
        if is_alert(doc):
            self._inner.send(doc)

    def flush(self, timeout: float) -> bool:
        return self._inner.flush(timeout)

    def close(self, timeout: float) -> None:
        self._inner.close(timeout)

    def stats(self) -> dict[str, int]:
        return self._inner.stats()
