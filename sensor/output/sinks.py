"""Where alerts go: the Sink protocol, the CLI shorthands and building the outputs (validated in specs.py).

Remote sinks (Elasticsearch, OpenSearch, webhooks) each get their own disk spool in `spool_dir`,
named after the sink, so what one run could not deliver the next run delivers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

from sensor.errors import ConfigError
from sensor.output.jsonl import check_writable, open_jsonl

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


def is_alert(doc: dict[str, Any]) -> bool:
    event = doc.get("event")
    return isinstance(event, dict) and event.get("kind") == "alert"


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


def output_keys(specs: list[dict[str, Any]], source: str) -> list[str]:
    """How each output is named in messages: the option on the command line, else its key."""
    if source == COMMAND_LINE:
        return [f"--output {spec.get('path', '-')}" if spec.get("type") == "jsonl" else "--output" for spec in specs]
    return [f"outputs[{index}].path" for index in range(len(specs))]


def build_sinks(specs: list[dict[str, Any]], *, spool_dir: Path, observer: str, source: str = "config") -> list[Sink]:
    """Check every `outputs:` entry first (so a typo in the last one starts nothing), then build
    them. JSON-lines files and stdout as the command line gives them need no schema validation
    (and no pydantic): only the writable-file check `preflight` runs on them too."""
    keys = output_keys(specs, source)
    if all(_plain_jsonl(spec) for spec in specs):
        for spec, key in zip(specs, keys):
            check_writable(spec.get("path", "-"), source, key)
        sinks: list[Sink] = []
        try:
            for spec, key in zip(specs, keys):
                sink: Sink = open_jsonl(spec.get("path", "-"), source, key)
                sinks.append(sink if spec.get("events", True) else AlertsOnly(sink))
        except BaseException:
            for built in sinks:
                built.close(0.0)
            raise
        return sinks
    from sensor.output.specs import build_validated
    from sensor.output.spool import SpooledSink

    built = build_validated(specs, spool_dir=spool_dir, observer=observer, source=source, keys=keys)
    # Spooled sinks first: an alert is on disk before any other output shows it (a SIGKILL
    # between the two never leaves an alert only on stdout).
    return sorted(built, key=lambda sink: not isinstance(sink, SpooledSink))


def check_outputs(specs: list[dict[str, Any]], *, spool_dir: Path, source: str = "config") -> None:
    """What build_sinks checks, without opening anything (check-config)."""
    from sensor.output.specs import preflight

    preflight(specs, spool_dir=spool_dir, source=source, keys=output_keys(specs, source))


def _plain_jsonl(spec: object) -> bool:
    """An entry like parse_output_spec's JSON-lines ones: a path string and an events flag at most."""
    return (
        type(spec) is dict
        and spec.get("type") == "jsonl"
        and spec.keys() <= {"type", "path", "events"}
        and isinstance(spec.get("path", "-"), str)
        and type(spec.get("events", True)) is bool
    )
