"""The default sink: one JSON document per line, to stdout or a file (embedded, no server)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import orjson

SEVERITY_ORDER = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def severity_at_least(doc: dict, minimum: str | None) -> bool:
    """Events carry no severity and always pass; alerts pass when at or above `minimum`."""
    if minimum is None:
        return True
    severity = doc.get("phi_egress", {}).get("severity")
    return severity is None or SEVERITY_ORDER.get(severity, 0) >= SEVERITY_ORDER[minimum]


class JsonlSink:
    def __init__(self, target: str | Path = "-", min_severity: str | None = None) -> None:
        self.name = "stdout" if str(target) == "-" else f"jsonl:{target}"
        self.min_severity = min_severity
        self._stream: BinaryIO
        if str(target) == "-":
            # stdout may have been replaced by a text-only stream (embedding, tests)
            self._stream = getattr(sys.stdout, "buffer", None) or _TextAdapter(sys.stdout)
            self._owned = False
        else:
            from sensor.output.files import open_append  # created 0600; an unusable path is exit 2

            self._stream = open_append(Path(target), buffering=1 << 20)
            self._owned = True
        self._counts = {"sent": 0, "dropped_below_severity": 0, "write_errors": 0}
        self._broken = False

    def send(self, doc: dict) -> None:
        if self._broken:
            return
        if self.min_severity is not None and not severity_at_least(doc, self.min_severity):
            self._counts["dropped_below_severity"] += 1
            return
        self.send_line(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))

    def line_writer(self) -> Callable[[bytes], None] | None:
        """What takes an event already serialized as one JSON line, when every document is
        written (no severity floor): the pipeline then writes events without building dicts."""
        return self.send_line if self.min_severity is None else None

    def send_line(self, line: bytes) -> None:
        """A document already serialized as one JSON line (ending in a newline)."""
        if self._broken:
            return
        try:
            self._stream.write(line)
        except BrokenPipeError:  # reader went away (e.g. `| head`): stop writing, keep running
            self._broken = True
            self._counts["write_errors"] += 1
            return
        self._counts["sent"] += 1

    def send_lines(self, block: bytes) -> None:
        """Documents already serialized, whole JSON lines one after another."""
        if self._broken or not block:
            return
        try:
            self._stream.write(block)
        except BrokenPipeError:
            self._broken = True
            self._counts["write_errors"] += 1
            return
        self._counts["sent"] += block.count(b"\n")

    def flush(self, timeout: float = 0.0) -> bool:
        if not self._broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._broken = True
        return True

    def close(self, timeout: float = 0.0) -> None:
        self.flush()
        if self._owned:
            self._stream.close()

    def stats(self) -> dict[str, int]:
        return dict(self._counts)


class _TextAdapter:
    """Lets a text stream stand in where bytes are written."""

    def __init__(self, text_stream) -> None:
        self._text = text_stream

    def write(self, data: bytes) -> int:
        return self._text.write(data.decode())

    def flush(self) -> None:
        self._text.flush()
