"""Replay prefilter: a pcap stream holding only the packets that can matter, selected in C on the
other core while Python decodes.

For an uncompressed classic pcap file the compiled selector (`select_pcap` in sensor/_fast.c, the
same selection as capture/bpf.py's filter) runs on a thread in this process: the file is read
once, in large blocks, with no pipe. Otherwise (gzip files, or no compiled extension) libpcap
applies the BPF filter through tcpdump."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sensor.capture.bpf import default_filter
from sensor.capture.pcap import GZIP_MAGIC, PCAP_MAGICS

try:  # the compiled selector (see sensor/_fast.c); without it, tcpdump selects
    from sensor._fast import select_pcap_file as _select_pcap
except ImportError:  # built without a C compiler
    _select_pcap = None

AUTO_MIN_BYTES = 64 << 20  # below this, a prefilter costs more than it saves
# A thread selects ahead of the decoder, into memory, up to this much: while the sensor starts up
# the selection runs on the otherwise idle core instead of stalling.
PREFETCH_BYTES = 32 << 20
SELECT_CHUNK = 1 << 20  # the compiled selector hands over the kept records about this much at a time
# Its states (sensor/_fast.c select_pcap_file).
_MORE, _END, _TRUNCATED, _CORRUPT, _READ_ERROR = range(5)


def tcpdump_path() -> str | None:
    return shutil.which("tcpdump")


def capture_linktype(path: Path) -> int | None:
    """Link type of a classic pcap file (also gzip-compressed); None for pcapng or unreadable files."""
    import gzip

    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=raw) if head == GZIP_MAGIC else raw  # type: ignore[assignment]
            header = stream.read(24)
    except (OSError, EOFError):
        return None
    if len(header) < 24 or header[:4] not in PCAP_MAGICS:
        return None
    endian, _ = PCAP_MAGICS[header[:4]]
    return struct.unpack_from(endian + "I", header, 20)[0] & 0x0FFFFFFF


def two_workers(paths: list[Path], prefilter: str, workers: str) -> bool:
    """Whether replay splits the decode over both cores: when every file goes through the
    prefilter (decode is then the bottleneck) and the machine has two cores and fork."""
    if workers == "1" or not hasattr(os, "fork"):
        return False
    if workers == "auto" and (os.cpu_count() or 1) < 2:
        return False
    mode = "always" if workers == "2" and prefilter == "auto" else prefilter
    return all(should_prefilter(path, mode) for path in paths)


def start_early(paths: list[Path], prefilter: str, workers: str) -> AnyPrefilter | None:
    """Start the first file's prefilter before the rest of the sensor is loaded, when replay will
    use it; hand the result to `Pipeline.replay`, or `close()` it if the run stops before."""
    if not paths:
        return None
    mode = "always" if two_workers(paths, prefilter, workers) else prefilter
    if not should_prefilter(paths[0], mode):
        return None
    try:
        early = open_prefilter(paths[0])
    except (OSError, ValueError):
        return None  # replay opens the file itself and reports the problem
    if isinstance(early, Prefilter):
        early.prefetch()
    return early


def is_plain_pcap(path: Path) -> bool:
    """An uncompressed classic pcap file, which the compiled selector reads itself."""
    try:
        with open(path, "rb") as raw:
            return raw.read(4) in PCAP_MAGICS
    except OSError:
        return False


def open_prefilter(path: Path) -> AnyPrefilter:
    """The compiled selector for an uncompressed classic pcap file when it is built, else tcpdump."""
    if _select_pcap is not None and is_plain_pcap(path):
        return CompiledPrefilter(path)
    return Prefilter(path)


def should_prefilter(path: Path, mode: str) -> bool:
    """'never', 'always' (when possible), or 'auto': large classic pcap files.

    Possible for an uncompressed classic pcap file when the compiled selector is built, and for
    any classic pcap file (gzip too) when tcpdump is installed.
    """
    if mode == "never" or capture_linktype(path) is None:
        return False
    if tcpdump_path() is None and not (_select_pcap is not None and is_plain_pcap(path)):
        return False
    if mode == "always":
        return True
    try:
        return path.stat().st_size >= AUTO_MIN_BYTES
    except OSError:
        return False


class Prefilter:
    """A running tcpdump (fed by gzip -dc for compressed files) whose stdout is the filtered pcap."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._prefetcher: _Prefetcher | None = None
        linktype = capture_linktype(path)
        if linktype is None:
            raise ValueError(f"{path}: not a classic pcap file")
        self.expression = default_filter(linktype)
        with open(path, "rb") as probe:
            compressed = probe.read(2) == GZIP_MAGIC
        self._gunzip: subprocess.Popen | None = None
        source = "-" if compressed else str(path)
        stdin = None
        if compressed:
            self._gunzip = subprocess.Popen(["gzip", "-dc", str(path)], stdout=subprocess.PIPE)
            stdin = self._gunzip.stdout
        self.process = subprocess.Popen(
            [tcpdump_path() or "tcpdump", "-n", "-r", source, "-w", "-", self.expression],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=1 << 20,
        )
        if self._gunzip is not None and self._gunzip.stdout is not None:
            self._gunzip.stdout.close()  # tcpdump owns the read end now
        widen_pipe(self.stdout.fileno())

    @property
    def stdout(self) -> BinaryIO:
        """The filtered pcap stream (read it with read1)."""
        if self._prefetcher is not None:
            return self._prefetcher  # type: ignore[return-value]
        return self._pipe

    @property
    def _pipe(self) -> BinaryIO:
        assert self.process.stdout is not None
        return self.process.stdout  # type: ignore[return-value]

    def prefetch(self, limit: int = PREFETCH_BYTES) -> None:
        """Drain tcpdump's output into memory in the background, up to `limit` bytes."""
        if self._prefetcher is None:
            pipe = self._pipe
            self._prefetcher = _Prefetcher(lambda: pipe.read1(1 << 20), limit)  # type: ignore[attr-defined]

    def bytes_read(self) -> int | None:
        """How far tcpdump has read its input (Linux /proc), for the progress bar."""
        try:
            for line in Path(f"/proc/{self.process.pid}/io").read_text().splitlines():
                if line.startswith("rchar:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            return None
        return None

    def close(self) -> str | None:
        """Wait for tcpdump; return its complaint (truncated file, ...) or None."""
        self.stdout.close()
        self._pipe.close()
        stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        code = self.process.wait()
        if self._gunzip is not None:
            self._gunzip.wait()
        if code != 0:
            lines = [l for l in stderr.splitlines() if l and not l.startswith("reading from file")]
            return "; ".join(lines[-2:]) or f"tcpdump exited with status {code}"
        return None


class CompiledPrefilter:
    """The compiled selector over an uncompressed classic pcap file, on a thread of this process.

    `stdout` is the selected pcap stream, as tcpdump would write it (timestamps kept at the
    file's own resolution). The selector reads the file itself in large blocks without the GIL,
    so the decoder is not held up. Faults are described as the pcap reader describes them, by
    file offset.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")
        header = self._file.read(24)
        if len(header) < 24 or header[:4] not in PCAP_MAGICS:
            self._file.close()
            raise ValueError(f"{path}: not a classic pcap file")
        endian, _ = PCAP_MAGICS[header[:4]]
        self._linktype = struct.unpack_from(endian + "I", header, 20)[0] & 0x0FFFFFFF
        self._big_endian = endian == ">"
        self._header: bytes | None = header
        self._offset = 24  # the next record to select
        self._done = False
        self._complaint: str | None = None
        self._stream = _Prefetcher(self._next_chunk, PREFETCH_BYTES)

    @property
    def stdout(self) -> BinaryIO:
        return self._stream  # type: ignore[return-value]

    def bytes_read(self) -> int:
        """How far the selector has read the file, for the progress bar."""
        return self._offset

    def _next_chunk(self) -> bytes:
        """The next selected records (after the pcap header), b"" at the end of the file."""
        if self._header is not None:
            header, self._header = self._header, None
            return header
        assert _select_pcap is not None
        while not self._done:
            kept, at, state, detail = _select_pcap(
                self._file.fileno(), self._offset, self._linktype, self._big_endian, SELECT_CHUNK
            )
            self._offset = at
            if state != _MORE:
                self._done = True
                if state == _TRUNCATED:
                    self._complaint = f"truncated: last record cut short at byte {at} ({detail} bytes left over)"
                elif state == _CORRUPT:
                    self._complaint = f"corrupt record at byte {at} (length {detail}); rest of file skipped"
                elif state == _READ_ERROR:
                    self._complaint = f"read error: {os.strerror(detail)}"
            if kept:
                return kept
        return b""

    def close(self) -> str | None:
        """Stop selecting; the fault found in the file (truncated, corrupt, unreadable), or None."""
        self._stream.close()
        self._stream.wait()  # the thread ends within one chunk: then the file can close under it
        self._file.close()
        return self._complaint


AnyPrefilter = Prefilter | CompiledPrefilter


class _Prefetcher:
    """A reader thread fills a queue from `source` (a callable returning the next chunk, b"" at
    the end) and pauses while `limit` bytes wait; read1() and read() take from the queue, so the
    bytes keep their order."""

    def __init__(self, source: Callable[[], bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._ready = threading.Condition()
        self._reading = True
        self._closed = False
        self._thread = threading.Thread(target=self._fill, name="prefilter-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._closed:
                chunk = self._source()
                if not chunk:
                    break
                with self._ready:
                    while self._queued >= self._limit and not self._closed:
                        self._ready.wait()
                    self._chunks.append(chunk)
                    self._queued += len(chunk)
                    self._ready.notify_all()
        except (OSError, ValueError):
            pass  # the source was closed under us: close() is under way
        finally:
            with self._ready:
                self._reading = False
                self._ready.notify_all()

    def read1(self, size: int = -1) -> bytes:
        """Up to `size` bytes (a whole queued chunk when size < 0); b"" at the end of the stream."""
        with self._ready:
            while not self._chunks and self._reading:
                self._ready.wait()
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if 0 <= size < len(chunk):
                self._chunks.appendleft(chunk[size:])
                chunk = chunk[:size]
            self._queued -= len(chunk)
            self._ready.notify_all()
            return chunk

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, fewer only at the end of the stream."""
        parts: list[bytes] = []
        while size > 0:
            chunk = self.read1(size)
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Tell the reader thread to stop at its next chunk."""
        with self._ready:
            self._closed = True
            self._chunks.clear()
            self._queued = 0
            self._ready.notify_all()

    def wait(self) -> None:
        """Wait for the reader thread to end (after close(), once its source has returned)."""
        self._thread.join()


_F_SETPIPE_SZ = 1031  # Linux fcntl: pipe capacity


def widen_pipe(fd: int) -> None:
    """A 1 MiB pipe lets the writer run ahead instead of waking the reader for every 64 KiB."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe still works
