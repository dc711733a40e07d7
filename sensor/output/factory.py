"""Building the outputs: every `outputs:` entry checked first, then opened (validated in specs.py).

Remote sinks (Elasticsearch, OpenSearch, webhooks) each get their own disk spool in `spool_dir`,
named after the sink, so what one run could not deliver the next run delivers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sensor.output.jsonl import check_writable, open_jsonl
from sensor.output.sinks import COMMAND_LINE, AlertsOnly, Sink


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

    validated = build_validated(specs, spool_dir=spool_dir, observer=observer, source=source, keys=keys)
    # Spooled sinks first: an alert is on disk before any other output shows it (a SIGKILL
    # between the two never leaves an alert only on stdout).
    return sorted(validated, key=lambda sink: not isinstance(sink, SpooledSink))


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
