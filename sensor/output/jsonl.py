"""The default sink: one JSON document per line, to stdout or a file (embedded, no server).

A file output reopens its path after SIGHUP, as logrotate expects: the rotated file keeps
everything written before the signal, the file at the path gets everything after it. The
signal handler only counts; each sink notices the count moved at its next write or flush.
"""
from __future__ import annotations

import logging
import os
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from sensor.errors import ConfigError
from sensor.severity import SEVERITY_RANK

log = logging.getLogger("phi_sensor")

def severity_at_least(doc: dict, minimum: str | None) -> bool:
    """Events carry no severity and always pass; alerts pass when at or above `minimum`."""
    if minimum is None:
        return True
    severity = doc.get("phi_egress", {}).get("severity")
    return severity is None or SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK[minimum]


_hangups = 0  # SIGHUPs received so far by this process
_handler_installed = False


def note_hangup() -> None:
    """Ask every file output to reopen its path (what SIGHUP does)."""
    global _hangups
    _hangups += 1


def _install_hangup_handler() -> None:
    """SIGHUP reopens the files, then does whatever it did before (live: reload the configuration)."""
    global _handler_installed
    if _handler_installed:
        return
    previous = signal.getsignal(signal.SIGHUP)

    def on_hangup(signum: int, frame: Any) -> None:
        note_hangup()
        if callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGHUP, on_hangup)
    except ValueError:  # not the main thread (an embedding application): no handler of ours
        return
    _handler_installed = True


def check_writable(target: str | Path, source: str, key: str, *, directory: bool = False) -> None:
    """ConfigError unless `target` (a file, or with `directory` a directory) can be created or
    written, without creating anything. "-" is stdout."""
    if not directory and str(target) == "-":
        return
    path = Path(target)
    kind = "directory" if directory else "file"
    problem = None
    if path.exists():
        if path.is_dir() != directory:
            problem = "a file" if directory else "a directory"
        elif not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            problem = "not writable"
    else:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            problem = f"{parent} is not a directory"
        elif not os.access(parent, os.W_OK | os.X_OK):
            problem = f"cannot create it in {parent} (not writable)"
    if problem:
        raise ConfigError(source, key, f"expected a writable {kind}, found {path}: {problem}")


def open_jsonl(target: str | Path, source: str, key: str, min_severity: str | None = None) -> JsonlSink:
    """A JsonlSink, or ConfigError naming the output when its file cannot be opened."""
    try:
        return JsonlSink(target, min_severity=min_severity)
    except OSError as exc:
        raise ConfigError(
            source, key, f"expected a writable file, found {target}: {exc.strerror or exc}"
        ) from None


class JsonlSink:
    def __init__(self, target: str | Path = "-", min_severity: str | None = None) -> None:
        self.name = "stdout" if str(target) == "-" else f"jsonl:{target}"
        self.min_severity = min_severity
        self._stream: BinaryIO | _TextAdapter
        self._path: Path | None = None
        self._hangups_seen = _hangups
        if str(target) == "-":
            # stdout may have been replaced by a text-only stream (embedding, tests)
            self._stream = getattr(sys.stdout, "buffer", None) or _TextAdapter(sys.stdout)
            self._owned = False
        else:
            self._path = Path(target)
            self._stream = self._open(self._path)
            self._owned = True
            _install_hangup_handler()
        self._counts = {"sent": 0, "dropped_below_severity": 0, "write_errors": 0, "reopened": 0}
        self._broken = False

    @staticmethod
    def _open(path: Path) -> BinaryIO:
        from sensor.output.files import open_append  # created 0600; an unusable path is exit 2

        return open_append(path, buffering=1 << 20)

    def reopen(self) -> None:
        """Flush to the file open now (perhaps renamed by logrotate), then write to the path anew.
        If the path cannot be opened, say so and keep writing where we were."""
        self._hangups_seen = _hangups
        if self._path is None or self._stream.closed:
            return
        try:
            fresh = self._open(self._path)
        except OSError as exc:
            log.error("%s: cannot reopen after SIGHUP, still writing to the old file: %s",
                      self._path, exc.strerror or exc)
            return
        old, self._stream = self._stream, fresh
        try:
            old.close()
        except OSError as exc:
            log.error("%s: writing the last lines before reopening failed: %s", self._path, exc.strerror or exc)
        self._counts["reopened"] += 1

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
        if self._hangups_seen != _hangups:
            self.reopen()
        try:
            self._stream.write(line)
        except BrokenPipeError:  # reader went away (e.g. `| head`): stop writing, keep running
            self._broken = True
            self._counts["write_errors"] += 1
            return
        self._counts["sent"] += 1

    def append_fd(self) -> int | None:
        """The descriptor of the regular file this sink appends to (O_APPEND), for a forked replay
        worker to write its whole-line blocks to at once; None for anything else (stdout, a pipe,
        a severity floor, a network file system). Every write of this sink is whole lines too (send_line, send_lines and
        the buffer they fill), so blocks of the two processes never cut into each other's lines."""
        from sensor.output.files import appends_atomically

        if (not self._owned or self._broken or self.min_severity is not None or self._path is None
                or isinstance(self._stream, _TextAdapter) or not appends_atomically(self._path)):
            return None
        try:
            import fcntl  # (POSIX)

            fd = self._stream.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode) or not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
                return None
        except (OSError, ValueError):
            return None
        return fd

    def count_sent(self, count: int) -> None:
        """Lines written to this sink's file by another process (append_fd)."""
        self._counts["sent"] += count

    def send_lines(self, block: bytes, count: int | None = None) -> None:
        """Documents already serialized, whole JSON lines one after another (`count` of them, when
        the caller knows)."""
        if self._broken or not block:
            return
        if self._hangups_seen != _hangups:
            self.reopen()
        try:
            self._stream.write(block)
        except BrokenPipeError:
            self._broken = True
            self._counts["write_errors"] += 1
            return
        self._counts["sent"] += block.count(b"\n") if count is None else count

    def flush(self, timeout: float = 0.0) -> bool:
        if self._hangups_seen != _hangups and not self._broken:
            self.reopen()
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

    @property
    def closed(self) -> bool:
        return bool(self._text.closed)

    def close(self) -> None:  # the text stream is the caller's: it stays open
        self._text.flush()
