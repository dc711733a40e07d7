"""Streaming pcap / pcapng / gzip reader yielding (timestamp, linktype, frame bytes).

Records are sliced out of large blocks with struct instead of one reader object per packet:
per-packet objects cap a Python loop far below what a span port replay needs.
Faults never raise out of the iterator: they are appended to `CaptureFile.errors` as one
line each and the reader keeps what it can (skips a bad pcapng block, stops at a torn pcap record).
"""
from __future__ import annotations

import gzip
import io
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from sensor.errors import CaptureError

try:  # the compiled record loop (see sensor/_fast/pcap.c); pcap_records_py below is the reference
    from sensor._fast import bind_pcap as _bind_pcap
    from sensor._fast import pcap_records as _pcap_records
except ImportError:  # built without a C compiler
    _bind_pcap = _pcap_records = None

BLOCK_SIZE = 4 << 20
TIME_JUMP = 3600.0  # a record stamped this much before the latest one so far is counted as suspicious
MAX_FRAME = 262_144 * 4  # a record claiming more than this is corruption, not a frame
if _bind_pcap is not None:
    _bind_pcap(TIME_JUMP)

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"

# pcapng block types
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6


def sniff_format(head: bytes) -> str | None:
    """'pcap', 'pcapng' or 'gzip' from the first bytes of a file, None when it is none of them."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_SHB:
        return "pcapng"
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    return None


class ByteSource(Protocol):
    """What a capture is read from: a file, a pipe, a decompressor, or one of those behind a sniffed head."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class CaptureFile:
    """One capture file, opened lazily; iterate `packets()` once."""

    def __init__(self, path: Path | str, stream: BinaryIO | None = None) -> None:
        """Read `path`, or an already open pcap `stream` (e.g. a prefilter's output) named `path`."""
        self.path = Path(path)
        self.stdin = str(path) == "-"
        self.name = "standard input" if self.stdin else str(path)
        self.errors: list[str] = []
        self.linktypes: set[int] = set()
        self.format: str | None = "pcap" if stream is not None else None
        self.compressed = False
        self.empty_records = 0  # records of zero captured bytes
        self.late_records = 0  # records stamped over TIME_JUMP before the latest so far
        self.frames = self.frame_bytes = 0  # records handed over, and their captured bytes
        self.by_linktype: dict[int, int] = {}  # records handed over per link type
        self._given_stream = stream

    def suspicious(self) -> str | None:
        """One line on what in a readable file looks wrong (empty records, time running back)."""
        found = []
        if self.empty_records:
            found.append(f"{self.empty_records} empty record(s)")
        if self.late_records:
            found.append(f"{self.late_records} record(s) stamped over {TIME_JUMP / 3600:.0f} h before an earlier one")
        return f"{self.name}: suspicious: " + ", ".join(found) if found else None

    def _open(self) -> ByteSource:
        """The capture's records as a stream read once from the front: no seek, one open, so a
        pipe or standard input (`-`) reads like a file."""
        if self._given_stream is not None:
            return self._given_stream
        try:
            raw: BinaryIO = sys.stdin.buffer if self.stdin else open(self.path, "rb")
        except OSError as exc:
            raise CaptureError(f"{self.name}: cannot open: {exc.strerror or exc}") from None
        try:
            head = _read_exactly(raw, 4)
        except OSError as exc:
            raw.close()
            raise CaptureError(f"{self.name}: cannot read: {exc.strerror or exc}") from None
        kind = sniff_format(head)
        if kind == "gzip":
            self.compressed = True
            stream: ByteSource = gzip.GzipFile(fileobj=_Prefixed(head, raw))
            try:
                inner = _read_exactly(stream, 4)
            except (OSError, EOFError, zlib.error) as exc:
                raw.close()
                raise CaptureError(f"{self.name}: corrupt gzip data: {exc}") from None
            kind = sniff_format(inner)
            if kind not in ("pcap", "pcapng"):
                raw.close()
                raise CaptureError(f"{self.name}: gzip file does not contain a pcap or pcapng capture")
            self.format = kind
            return _Prefixed(inner, stream, closes=raw)
        if kind is None:
            raw.close()
            if not head:
                raise CaptureError(f"{self.name}: empty file, not a capture")
            raise CaptureError(
                f"{self.name}: not a capture file (magic {head.hex()}; expected pcap, pcapng or gzip)"
            )
        self.format = kind
        return _Prefixed(head, raw)

    def _reader(self, stream: ByteSource) -> Callable[[int], bytes]:
        """How to read blocks: from a pipe (a prefilter's output) or a decompressor, what is there
        now (a decompressor that fails mid-block then loses only what it had not handed over)."""
        if self._given_stream is not None or self.compressed or self.stdin:
            return getattr(stream, "read1", stream.read)
        return stream.read

    def check(self) -> None:
        """Raise CaptureError now if the file cannot be opened as a capture (a regular file only:
        a pipe would lose what the check read)."""
        self._open().close()

    def packets(self) -> Iterator[tuple[float, int, bytes]]:
        """The records; faults go to `errors` (opening faults too), never raised."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[tuple[float, int, bytes]]]:
        """The records as `packets()` gives them, in lists (a block's records at a time from a
        pcap file); `frames`, `frame_bytes` and `by_linktype` count what was handed over."""
        try:
            stream = self._open()
        except CaptureError as exc:
            self.errors.append(str(exc))
            return
        try:
            if self.format == "pcap":
                yield from self._pcap(stream)
            else:
                for record in self._pcapng(stream):
                    self._tally(record[1], 1, len(record[2]))
                    yield [record]
        except MemoryError:  # a length that lies; what came before it was delivered
            self.errors.append(f"{self.name}: corrupt: a record claims more memory than there is; rest of file skipped")
        except (OSError, EOFError, zlib.error, struct.error, ValueError, IndexError) as exc:
            # gzip.BadGzipFile is an OSError; a block or record cut in the middle surfaces as
            # struct.error / IndexError: either way the file ends here, what was read is kept.
            kind = "corrupt compressed data" if self.compressed else "read error"
            self.errors.append(f"{self.name}: {kind}: {exc or type(exc).__name__}; rest of file skipped")
        finally:
            try:
                stream.close()
            except (OSError, EOFError, zlib.error):
                pass

    def _tally(self, linktype: int, frames: int, size: int) -> None:
        self.frames += frames
        self.frame_bytes += size
        self.by_linktype[linktype] = self.by_linktype.get(linktype, 0) + frames

    # -- pcap -----------------------------------------------------------------------------
    def _pcap(self, stream: ByteSource) -> Iterator[list[tuple[float, int, bytes]]]:
        header = _read_exactly(stream, 24)
        if len(header) < 24:
            self.errors.append(f"{self.name}: truncated pcap header ({len(header)} of 24 bytes)")
            return
        endian, scale = PCAP_MAGICS[header[:4]]
        snaplen, linktype_field = struct.unpack_from(endian + "II", header, 16)
        linktype = linktype_field & 0x0FFFFFFF  # upper bits carry FCS info in some writers
        self.linktypes.add(linktype)
        record = struct.Struct(endian + "IIII")
        unpack_from = record.unpack_from
        big_endian, nanoseconds = endian == ">", scale < 1e-6
        records_of = _pcap_records if _pcap_records is not None else pcap_records_py
        # A pipe (prefilter output) hands over what is there instead of waiting for a full block.
        read = self._reader(stream)
        high = float("-inf")  # the latest time stamp so far
        buf = b""
        pos = 0
        offset = 24  # file offset of buf[0], for error messages
        while True:
            chunk = read(BLOCK_SIZE)
            if not chunk:
                break
            if pos < len(buf):
                buf = buf[pos:] + chunk
            else:
                buf = chunk
            offset += pos
            pos = 0
            end_of_buf = len(buf)
            records, pos, empty, late, high = records_of(buf, pos, linktype, big_endian, nanoseconds, high)
            self.empty_records += empty
            self.late_records += late
            if records:
                self._tally(linktype, len(records), pos - 16 * len(records))  # buf held them from its start
                yield records
            if pos + 16 <= end_of_buf:  # a record not wholly in the buffer: more to read, or corrupt
                _, _, incl, _ = unpack_from(buf, pos)
                if incl > MAX_FRAME:
                    self.errors.append(
                        f"{self.name}: corrupt record at byte {offset + pos} (length {incl}); rest of file skipped"
                    )
                    return
        if pos < len(buf):
            self.errors.append(
                f"{self.name}: truncated: last record cut short at byte {offset + pos} "
                f"({len(buf) - pos} bytes left over)"
            )

    # -- pcapng ---------------------------------------------------------------------------
    def _pcapng(self, stream: ByteSource) -> Iterator[tuple[float, int, bytes]]:
        endian = "<"
        interfaces: list[tuple[int, float]] = []  # (linktype, seconds per timestamp unit)
        read = self._reader(stream)
        high = float("-inf")
        buf = b""
        pos = 0
        offset = 0
        eof = False
        while True:
            while not eof and len(buf) - pos < 12:
                chunk = read(BLOCK_SIZE)
                if not chunk:
                    eof = True
                offset += pos
                buf = buf[pos:] + chunk
                pos = 0
            if len(buf) - pos < 12:
                if len(buf) - pos:
                    self.errors.append(f"{self.name}: truncated: {len(buf) - pos} stray bytes at end of file")
                return
            btype = buf[pos : pos + 4]
            if btype == PCAPNG_SHB:
                bom = buf[pos + 8 : pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    self.errors.append(f"{self.name}: corrupt section header at byte {offset + pos}")
                    return
                interfaces = []
            block_type, block_len = struct.unpack_from(endian + "II", buf, pos)
            if block_len < 12 or block_len % 4 or block_len > 16 << 20:
                self.errors.append(
                    f"{self.name}: corrupt block at byte {offset + pos} (length {block_len}); rest of file skipped"
                )
                return
            while len(buf) - pos < block_len and not eof:
                chunk = read(max(BLOCK_SIZE, block_len))
                if not chunk:
                    eof = True
                    break
                offset += pos
                buf = buf[pos:] + chunk
                pos = 0
            if len(buf) - pos < block_len:
                self.errors.append(f"{self.name}: truncated: last block cut short at byte {offset + pos}")
                return
            body = pos + 8
            if block_type == _EPB:
                if block_len < 32:
                    self.errors.append(f"{self.name}: bad packet block at byte {offset + pos}; skipped")
                    pos += block_len
                    continue
                iface, ts_hi, ts_lo, cap_len = struct.unpack_from(endian + "IIII", buf, body)
                if iface >= len(interfaces) or 20 + cap_len + 12 > block_len:
                    self.errors.append(f"{self.name}: bad packet block at byte {offset + pos}; skipped")
                else:
                    linktype, unit = interfaces[iface]
                    start = body + 20
                    ts = ((ts_hi << 32) | ts_lo) * unit
                    if not cap_len:
                        self.empty_records += 1
                    if ts > high:
                        high = ts
                    elif ts < high - TIME_JUMP:
                        self.late_records += 1
                    yield ts, linktype, buf[start : start + cap_len]
            elif block_type == _IDB:
                linktype = struct.unpack_from(endian + "H", buf, body)[0]
                interfaces.append((linktype, _if_tsresol(buf, body + 8, pos + block_len - 4, endian)))
                self.linktypes.add(linktype)
            elif block_type == _SPB:
                if interfaces:
                    linktype, _unit = interfaces[0]
                    orig_len = struct.unpack_from(endian + "I", buf, body)[0]
                    cap_len = min(orig_len, block_len - 16)
                    yield 0.0, linktype, buf[body + 4 : body + 4 + cap_len]
            elif block_type == _PB and block_len >= 32:
                iface, _drops, ts_hi, ts_lo, cap_len = struct.unpack_from(endian + "HHIII", buf, body)
                if iface < len(interfaces) and 20 + cap_len + 12 <= block_len:
                    linktype, unit = interfaces[iface]
                    start = body + 20
                    yield ((ts_hi << 32) | ts_lo) * unit, linktype, buf[start : start + cap_len]
            pos += block_len


PcapRecords = tuple[list[tuple[float, int, bytes]], int, int, int, float]


def pcap_records_py(
    buf: bytes, pos: int, linktype: int, big_endian: bool, nanoseconds: bool, high: float
) -> PcapRecords:
    """The records wholly in `buf` from `pos`: (timestamp, linktype, frame) each; where the first record
    not wholly there begins; how many were empty; how many were stamped more than TIME_JUMP seconds
    before the latest time stamp so far (`high`, returned updated).

    The reference of the compiled pcap_records, and the path without it."""
    unpack_from = (_RECORD_BIG if big_endian else _RECORD_LITTLE).unpack_from
    scale = 1e-9 if nanoseconds else 1e-6
    records: list[tuple[float, int, bytes]] = []
    empty = late = 0
    end_of_buf = len(buf)
    while pos + 16 <= end_of_buf:
        sec, frac, incl, _orig = unpack_from(buf, pos)
        end = pos + 16 + incl
        if end > end_of_buf:
            break
        ts = sec + frac * scale
        if not incl:
            empty += 1
        if ts > high:
            high = ts
        elif ts < high - TIME_JUMP:
            late += 1
        records.append((ts, linktype, buf[pos + 16 : end]))
        pos = end
    return records, pos, empty, late, high


_RECORD_BIG, _RECORD_LITTLE = struct.Struct(">IIII"), struct.Struct("<IIII")


def _read_exactly(stream: ByteSource, size: int) -> bytes:
    """Up to `size` bytes, fewer only at the end (a pipe may hand over less per read)."""
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class _Prefixed:
    """`head` (already read to learn the format) followed by the rest of `stream`."""

    def __init__(self, head: bytes, stream: ByteSource, closes: ByteSource | None = None) -> None:
        self._head = head
        self._stream = stream
        self._closes = closes

    def read(self, size: int = -1) -> bytes:
        head = self._take_head(size)
        if size < 0:
            return head + self._stream.read()
        return head if head else self._stream.read(size)

    def read1(self, size: int = -1) -> bytes:
        head = self._take_head(size)
        if head:
            return head
        return getattr(self._stream, "read1", self._stream.read)(size)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """A stream read once, front to back: gzip never rewinds it while reading forward."""
        raise io.UnsupportedOperation("seek")

    def _take_head(self, size: int) -> bytes:
        head = self._head
        if not head:
            return b""
        if 0 <= size < len(head):
            self._head = head[size:]
            return head[:size]
        self._head = b""
        return head

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            if self._closes is not None:
                self._closes.close()


def _if_tsresol(buf: bytes, start: int, end: int, endian: str) -> float:
    """Seconds per timestamp unit from an IDB's if_tsresol option (default microseconds)."""
    pos = start
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            value = buf[pos + 4]
            return 2.0 ** -(value & 0x7F) if value & 0x80 else 10.0 ** -value
        pos += 4 + ((length + 3) & ~3)
    return 1e-6
