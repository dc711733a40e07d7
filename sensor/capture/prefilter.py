"""Replay prefilter: a pcap stream holding only the packets that can matter, selected in C on the
other core while Python decodes.

For an uncompressed classic pcap file the compiled selector (`select_pcap_file` in sensor/_fast/select.c,
the same selection as capture/bpf.py's filter) runs on a thread in this process: the file is read
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

from sensor.capture.bpf import BULK_SEGMENT, HTTP_PORTS, default_filter
from sensor.capture.inputs import is_regular
from sensor.capture.pcap import GZIP_MAGIC, MAX_FRAME, PCAP_MAGICS
from sensor.capture.workers import SERVICE_PORTS, route_of_py, worker_of_py
from sensor.decode import packet as _packet  # noqa: F401  its import sets the selector's tunnel ports (UDP, kept whole)
from sensor.decode.dns import LOCAL_NAME_PORTS

try:  # the compiled selector (see sensor/_fast/select.c); without it, tcpdump selects
    from sensor._fast import bind_select as _bind_select
    from sensor._fast import pcap_resync as _pcap_resync
    from sensor._fast import select_pcap_file as _select_pcap
    from sensor._fast import select_route, select_worker
except ImportError:  # built without a C compiler
    _bind_select = _select_pcap = _pcap_resync = None
    select_worker, select_route = worker_of_py, route_of_py
else:  # the selector applies these as the filter and the reader do: bound from here, not copied into C
    _bind_select(MAX_FRAME, BULK_SEGMENT, HTTP_PORTS, LOCAL_NAME_PORTS, SERVICE_PORTS)
# worker_of(linktype, frame): the replay worker (0 or 1) that decodes a frame (sensor.capture.workers)
worker_of: Callable[[int, bytes], int] = select_worker
# route_of(linktype, frame): its worker, plus SHARED_ANSWER for a DNS answer both workers learn from
route_of: Callable[[int, bytes], int] = select_route

# A thread selects ahead of the decoder, into memory, up to this much: while the sensor starts up
# the selection runs on the otherwise idle core instead of stalling.
PREFETCH_BYTES = 32 << 20
# Once the decoder reads, it is the slower of the two: this much ahead keeps it fed, and a long
# replay holds no more than a short one.
STEADY_PREFETCH_BYTES = 4 << 20
SELECT_CHUNK = 4 << 20  # the compiled selector hands over the kept records about this much at a time
# In the steady state, the free C heap is given back again after this much more selected: the
# chunks freed as the decoder takes them leave free pages in the heap a long replay would keep.
TRIM_EVERY_BYTES = 64 << 20
FORK_SETTLE_SECONDS = 0.1  # how long a fork waits for a selection about to end (CompiledPrefilter.fork)
# Before a fork, what is left of a file this large is shared with a second thread (`hurry`), when
# no more is left than two threads select in about FORK_SETTLE_SECONDS.
TAIL_MIN_BYTES = 64 << 20
HURRY_REACH_BYTES = 1 << 30
# The first thread reads at most this much of the file per call, so that it stops where a second
# thread started later takes over.
HEAD_SPAN = 32 << 20
TAIL_MAX_KEPT = PREFETCH_BYTES // 2  # what that thread may hold until the first one gets there
# Its states (sensor/_fast/select.c select_pcap_file).
_MORE, _END, _TRUNCATED, _CORRUPT, _READ_ERROR = range(5)


def tcpdump_path() -> str | None:
    return shutil.which("tcpdump")


def capture_linktype(path: Path) -> int | None:
    """Link type of a classic pcap file (also gzip-compressed); None for pcapng or unreadable files."""
    header = _pcap_header(path)
    if header is None:
        return None
    endian, _ = PCAP_MAGICS[header[:4]]
    return struct.unpack_from(endian + "I", header, 20)[0] & 0x0FFFFFFF


def _pcap_header(path: Path) -> bytes | None:
    """The 24-byte header of a classic pcap file (also gzip-compressed), else None."""
    import gzip
    import zlib

    if not is_regular(path):  # a pipe or stdin is read once, by replay itself
        return None
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            stream: BinaryIO = gzip.GzipFile(fileobj=raw) if head == GZIP_MAGIC else raw  # type: ignore[assignment]
            header = stream.read(24)
    except (OSError, EOFError, zlib.error):  # replay reads the file itself and reports the fault
        return None
    if len(header) < 24 or header[:4] not in PCAP_MAGICS:
        return None
    return header


def is_plain_pcap(path: Path) -> bool:
    """An uncompressed classic pcap file, which the compiled selector reads itself."""
    if not is_regular(path):
        return False
    try:
        with open(path, "rb") as raw:
            return raw.read(4) in PCAP_MAGICS
    except OSError:
        return False


def compiled_reads(path: Path) -> bool:
    """Whether the compiled selector is built and can read this file itself (uncompressed classic pcap)."""
    return _select_pcap is not None and is_plain_pcap(path)


def open_prefilter(path: Path) -> AnyPrefilter:
    """The compiled selector for an uncompressed classic pcap file when it is built, else tcpdump."""
    if _select_pcap is not None and is_plain_pcap(path):
        return CompiledPrefilter(path)
    return Prefilter(path)


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
            self._gunzip = subprocess.Popen(
                ["gzip", "-dc", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            stdin = self._gunzip.stdout
        # tcpdump reads and writes microseconds unless told: keep a nanosecond file's times whole
        header = _pcap_header(path)
        nano = ["--time-stamp-precision=nano"] if header is not None and PCAP_MAGICS[header[:4]][1] < 1e-6 else []
        self.process = subprocess.Popen(
            [tcpdump_path() or "tcpdump", "-n", *nano, "-r", source, "-w", "-", self.expression],
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
            return self._prefetcher.reader(0)  # type: ignore[return-value]
        return self._pipe

    @property
    def _pipe(self) -> BinaryIO:
        assert self.process.stdout is not None
        return self.process.stdout  # type: ignore[return-value]

    def prefetch(self, limit: int = PREFETCH_BYTES) -> None:
        """Drain tcpdump's output into memory in the background, up to `limit` bytes."""
        if self._prefetcher is None:
            pipe = self._pipe

            def next_chunk() -> tuple[Chunks, None] | None:
                chunk = pipe.read1(1 << 20)  # type: ignore[attr-defined]
                return ((chunk,), None) if chunk else None

            self._prefetcher = _Prefetcher(next_chunk, limit)

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
            complaint = self._gunzip.stderr.read().decode(errors="replace") if self._gunzip.stderr else ""
            if self._gunzip.wait() == 1:  # what tcpdump then says (a truncated file) follows from it
                last = complaint.strip().splitlines()[-1:] or ["gzip failed"]
                return "corrupt compressed data: " + last[0].rsplit(": ", 1)[-1] + "; rest of file skipped"
        if code != 0:
            lines = [line for line in stderr.splitlines() if line and not line.startswith("reading from file")]
            return "; ".join(lines[-2:]) or f"tcpdump exited with status {code}"
        return None


class CompiledPrefilter:
    """The compiled selector over an uncompressed classic pcap file, on a thread of this process.

    `stdout` is the selected pcap stream, as tcpdump would write it (timestamps kept at the
    file's own resolution). The selector reads the file itself in large blocks without the GIL,
    so the decoder is not held up. Faults are described as the pcap reader describes them, by
    file offset.

    With `split`, it selects for the two replay workers at once: worker 0's packets and worker 1's
    (see `route_of` in sensor/_fast/select.c) go to two streams, DNS answers to both. `fork()`
    forks the process while the selection is consistent; then each process calls
    `continue_as(its worker)` and reads only its stream, the child with a thread of its own from
    where the parent's had got.
    """

    def __init__(self, path: Path, split: bool = False, only: int | None = None) -> None:
        """`split`: a stream per worker; `only`: then keep just that worker's (after the fork)."""
        self.path = path
        self.split = split or only is not None
        self._file = open(path, "rb")
        header = self._file.read(24)
        if len(header) < 24 or header[:4] not in PCAP_MAGICS:
            self._file.close()
            raise ValueError(f"{path}: not a classic pcap file")
        endian, _ = PCAP_MAGICS[header[:4]]
        self._linktype = struct.unpack_from(endian + "I", header, 20)[0] & 0x0FFFFFFF
        self._big_endian = endian == ">"
        self._header: bytes | None = header
        self._wanted = 0b11 if only is None else 1 << only  # the workers whose packets are kept, a bit each
        self._worker = only or 0
        self._offset = 24  # the next record to select
        self._done = False
        self._complaint: str | None = None
        # The second thread, once `hurry` starts it; set and read with where the first one is.
        self._tail: _Tail | None = None
        self._tail_lock = threading.Lock()
        self._stream = _Prefetcher(
            self._next_chunks, PREFETCH_BYTES, streams=2 if self.split else 1, steady_limit=STEADY_PREFETCH_BYTES
        )

    def hurry(self) -> None:
        """Share what is left of a large file with a second thread, from a guessed record
        boundary halfway: done when the sensor has started up, not before, so that the selection
        does not take the core the start-up runs on (the decoder is slower than one thread)."""
        assert _pcap_resync is not None
        size = os.fstat(self._file.fileno()).st_size
        with self._tail_lock:
            if self._tail is not None or self._done:
                return
            # past anything the first thread's call under way can reach
            begin = self._offset + 2 * HEAD_SPAN
            if not TAIL_MIN_BYTES // 2 <= size - begin <= HURRY_REACH_BYTES:
                return
            start = _pcap_resync(self._file.fileno(), begin + (size - begin) // 2, self._big_endian)
            if start > begin:
                self._tail = _Tail(self, start)

    @property
    def stdout(self) -> BinaryIO:
        """The selected stream of this process's worker."""
        return self._stream.reader(self._worker)  # type: ignore[return-value]

    def bytes_read(self) -> int:
        """How far the selector has read the file, for the progress bar."""
        return self._offset

    def fork(self, settle: float = FORK_SETTLE_SECONDS) -> int:
        """os.fork() for two replay workers; then each calls continue_as(its worker).

        A child forked before the selection ends selects the rest of the file again for itself,
        so when the end is near (within `settle` seconds), the fork waits for it, with a second
        thread on it.
        """
        self.hurry()
        self._stream.wait_for_end(settle)
        return self._stream.fork()

    def continue_as(self, worker: int, in_child: bool) -> None:
        """After the fork: keep only `worker`'s packets from here on, and select on."""
        self._worker = worker
        self._wanted = 1 << worker
        if in_child:
            self._tail = None  # the second thread runs in the parent only: the child selects it all
        self._stream.continue_with(worker, in_child)

    def _next_chunks(self) -> tuple[Chunks, Callable[[], None] | None] | None:
        """The next selected records of each stream (after the pcap header), with the commit of
        how far the file is read; None at the end."""
        if self._header is not None:
            header = self._header
            return ((header, header) if self.split else (header,)), self._header_sent
        assert _select_pcap is not None
        if self._done:
            return None
        with self._tail_lock:
            tail, offset = self._tail, self._offset
        first, second, at, state, detail = _select_pcap(
            self._file.fileno(), offset, self._linktype, self._big_endian, SELECT_CHUNK, self.split,
            self._wanted, tail.start if tail is not None else offset + HEAD_SPAN,
        )
        if tail is not None and state == _MORE and at >= tail.start:
            tail.thread.join()
            if at == tail.start and tail.state is not None:  # the guess was a record boundary: go on from its end
                first += b"".join(kept[0] for kept in tail.kept)
                second += b"".join(kept[1] for kept in tail.kept)
                at, state, detail = tail.offset, tail.state, tail.detail

        def commit() -> None:
            with self._tail_lock:
                if tail is not None and at >= tail.start:
                    self._tail = None
                self._offset = at
            if state != _MORE:
                self._done = True
                if state == _TRUNCATED:
                    self._complaint = f"truncated: last record cut short at byte {at} ({detail} bytes left over)"
                elif state == _CORRUPT:
                    self._complaint = f"corrupt record at byte {at} (length {detail}); rest of file skipped"
                elif state == _READ_ERROR:
                    self._complaint = f"read error: {os.strerror(detail)}"

        return ((first, second) if self.split else (first,)), commit

    def _header_sent(self) -> None:
        self._header = None

    def close(self) -> str | None:
        """Stop selecting; the fault found in the file (truncated, corrupt, unreadable), or None."""
        self._stream.close()
        self._stream.wait()  # the thread ends within one chunk: then the file can close under it
        if self._tail is not None:
            self._tail.thread.join()
        self._file.close()
        return self._complaint


class _Tail:
    """The second half of a file selected ahead, from `start` (a guessed record boundary), by a
    thread of its own: at most TAIL_MAX_KEPT bytes kept, held until the first thread reaches
    `start` exactly (which confirms the guess) and takes them; `offset`, `state` and `detail` say
    where it stopped (state None: it failed, and the first thread selects that part itself)."""

    def __init__(self, owner: CompiledPrefilter, start: int) -> None:
        self.start = self.offset = start
        self.kept: list[tuple[bytes, bytes]] = []
        self.state: int | None = _MORE
        self.detail = 0
        self.thread = threading.Thread(target=self._select, args=(owner,), name="prefilter-tail", daemon=True)
        self.thread.start()

    def _select(self, owner: CompiledPrefilter) -> None:
        assert _select_pcap is not None
        held = 0
        try:
            while self.state == _MORE and held < TAIL_MAX_KEPT:
                first, second, self.offset, self.state, self.detail = _select_pcap(
                    owner._file.fileno(), self.offset, owner._linktype, owner._big_endian, SELECT_CHUNK,
                    owner.split, owner._wanted, -1,
                )
                self.kept.append((first, second))
                held += len(first) + len(second)
        except (OSError, ValueError):
            self.state = None


AnyPrefilter = Prefilter | CompiledPrefilter


Chunks = tuple[bytes, ...]


class _Prefetcher:
    """A reader thread fills one queue per stream from `source` and pauses while `limit` bytes
    wait (`steady_limit` once a reader has taken some); `reader(i)` takes from queue i, so the
    bytes of each stream keep their order.

    `source()` returns the next chunk of each stream and a callable that commits the source's
    own progress (or None), or None at the end. The commit and the queueing happen together under
    the lock that `fork()` holds, so a forked child sees the source's progress and the queues
    agree, whatever the thread was doing.
    """

    def __init__(
        self, source: Callable[[], tuple[Chunks, Callable[[], None] | None] | None], limit: int, streams: int = 1,
        steady_limit: int | None = None,
    ) -> None:
        self._source = source
        self._limit = limit
        self._steady_limit = limit if steady_limit is None else steady_limit
        self._queues: list[deque[bytes]] = [deque() for _ in range(streams)]
        self._live = set(range(streams))
        self._readers = [_QueueReader(self, index) for index in range(streams)]
        self._queued = 0
        self._ready = threading.Condition(threading.Lock())
        self._reading = True
        self._closed = False
        # selected bytes queued since the free heap was last given back; None while the start-up's
        # read-ahead is there, or never (no steady limit)
        self._untrimmed: int | None = None if steady_limit is not None else -1
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._fill, name="prefilter-prefetch", daemon=True)
        thread.start()
        return thread

    def reader(self, index: int) -> _QueueReader:
        return self._readers[index]

    def _fill(self) -> None:
        try:
            while not self._closed:
                produced = self._source()
                if produced is None:
                    break
                chunks, commit = produced
                with self._ready:
                    while self._queued >= self._limit and not self._closed:
                        self._ready.wait()
                    if commit is not None:
                        commit()
                    queued = 0
                    for index in self._live:
                        if chunks[index]:
                            self._queues[index].append(chunks[index])
                            queued += len(chunks[index])
                    self._queued += queued
                    self._ready.notify_all()
                    untrimmed = self._untrimmed
                    if untrimmed is None:  # the start-up's read-ahead, until a reader takes it
                        trim = self._limit == self._steady_limit
                    else:
                        trim = untrimmed >= 0 and untrimmed + queued >= TRIM_EVERY_BYTES
                        self._untrimmed = untrimmed + queued if untrimmed >= 0 else untrimmed
                if trim:  # the chunks taken since were freed: their pages go back
                    self._untrimmed = 0
                    release_free_heap()
        except (OSError, ValueError):
            pass  # the source was closed under us: close() is under way
        finally:
            with self._ready:
                self._reading = False
                self._ready.notify_all()

    def take(self, index: int, size: int) -> bytes:
        """Up to `size` bytes of stream `index` (a whole queued chunk when size < 0); b"" at its end."""
        queue = self._queues[index]
        with self._ready:
            while not queue and self._reading:
                self._ready.wait()
            if not queue:
                return b""
            chunk = queue.popleft()
            if 0 <= size < len(chunk):
                queue.appendleft(chunk[size:])
                chunk = chunk[:size]
            self._queued -= len(chunk)
            self._limit = self._steady_limit
            self._ready.notify_all()
            return chunk

    def wait_for_end(self, timeout: float) -> None:
        """Wait until the source is exhausted or the queues are full (nothing more comes until a
        reader takes some), for at most `timeout` seconds."""
        with self._ready:
            self._ready.wait_for(lambda: not self._reading or self._queued >= self._limit, timeout)

    def fork(self) -> int:
        """os.fork(), at a moment when the queues and the source's committed progress agree."""
        with self._ready:
            return os.fork()

    def continue_with(self, index: int, in_child: bool) -> None:
        """After fork(): keep stream `index` only and read on. In the child, whose copy of the
        thread does not run, a new thread takes over from the committed progress, with a lock
        of its own."""
        if in_child:
            self._ready = threading.Condition(threading.Lock())
        with self._ready:
            self._live = {index}
            for other, queue in enumerate(self._queues):
                if other != index:
                    self._queued -= sum(len(chunk) for chunk in queue)
                    queue.clear()
            if in_child and self._reading:
                self._thread = self._start()
            self._ready.notify_all()

    def close(self) -> None:
        """Tell the reader thread to stop at its next chunk."""
        with self._ready:
            self._closed = True
            for queue in self._queues:
                queue.clear()
            self._queued = 0
            self._ready.notify_all()

    def wait(self) -> None:
        """Wait for the reader thread to end (after close(), once its source has returned)."""
        self._thread.join()


class _QueueReader:
    """One stream of a _Prefetcher, read like a pipe (read1, read)."""

    def __init__(self, prefetcher: _Prefetcher, index: int) -> None:
        self._prefetcher = prefetcher
        self._index = index

    def read1(self, size: int = -1) -> bytes:
        """Up to `size` bytes (a whole queued chunk when size < 0); b"" at the end of the stream."""
        return self._prefetcher.take(self._index, size)

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
        self._prefetcher.close()


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim, where there is one).
    The start-up's read-ahead, tens of MiB of selected packets, is freed as the decoder takes it,
    but the allocator would keep those pages for the rest of a long replay."""
    import ctypes  # (loaded on the selector's thread, once a long replay reaches its steady state)

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError, TypeError):
        pass


_F_SETPIPE_SZ = 1031  # Linux fcntl: pipe capacity


def widen_pipe(fd: int) -> None:
    """A 1 MiB pipe lets the writer run ahead instead of waking the reader for every 64 KiB."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe still works
