"""Replay prefilter: libpcap (through tcpdump) applies the BPF filter in C, on the other core,
and hands Python a pcap stream holding only the packets that can matter."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

from sensor.capture.bpf import default_filter
from sensor.capture.pcap import GZIP_MAGIC, PCAP_MAGICS

AUTO_MIN_BYTES = 64 << 20  # below this, starting tcpdump costs more than it saves
# While the sensor starts up, a thread drains tcpdump into memory (up to this much) so that libpcap
# filters on the otherwise idle core instead of stalling on a full pipe.
PREFETCH_BYTES = 32 << 20


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


def start_early(paths: list[Path], prefilter: str, workers: str) -> Prefilter | None:
    """Start the first file's prefilter before the rest of the sensor is loaded, when replay will
    use it; hand the result to `Pipeline.replay`, or `close()` it if the run stops before."""
    if not paths:
        return None
    mode = "always" if two_workers(paths, prefilter, workers) else prefilter
    if not should_prefilter(paths[0], mode):
        return None
    try:
        early = Prefilter(paths[0])
    except (OSError, ValueError):
        return None  # replay opens the file itself and reports the problem
    early.prefetch()
    return early


def should_prefilter(path: Path, mode: str) -> bool:
    """'never', 'always' (when possible), or 'auto': large classic pcap files with tcpdump installed."""
    if mode == "never" or tcpdump_path() is None or capture_linktype(path) is None:
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
            self._prefetcher = _Prefetcher(self._pipe, limit)

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


class _Prefetcher:
    """A reader thread fills a queue from the pipe until EOF or `limit` bytes; read1() takes
    from the queue first and then from the pipe itself, so the bytes keep their order."""

    def __init__(self, pipe: BinaryIO, limit: int) -> None:
        self._pipe = pipe
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._ready = threading.Condition()
        self._reading = True
        self._closed = False
        self._thread = threading.Thread(target=self._fill, name="prefilter-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        taken = 0
        try:
            while taken < self._limit and not self._closed:
                chunk = self._pipe.read1(1 << 20)  # type: ignore[attr-defined]
                if not chunk:
                    break
                taken += len(chunk)
                with self._ready:
                    self._chunks.append(chunk)
                    self._ready.notify()
        except (OSError, ValueError):
            pass  # the pipe was closed under us: close() is under way
        finally:
            with self._ready:
                self._reading = False
                self._ready.notify()

    def read1(self, size: int = -1) -> bytes:
        """Up to `size` bytes (a whole queued chunk when size < 0); b"" at the end of the stream."""
        with self._ready:
            while not self._chunks and self._reading:
                self._ready.wait()
            if self._chunks:
                chunk = self._chunks.popleft()
                if 0 <= size < len(chunk):
                    self._chunks.appendleft(chunk[size:])
                    chunk = chunk[:size]
                return chunk
        return self._pipe.read1(size)  # type: ignore[attr-defined]

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
        with self._ready:
            self._closed = True
            self._chunks.clear()


_F_SETPIPE_SZ = 1031  # Linux fcntl: pipe capacity


def widen_pipe(fd: int) -> None:
    """A 1 MiB pipe lets the writer run ahead instead of waking the reader for every 64 KiB."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe still works
