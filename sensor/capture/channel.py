"""Frames handed from one replay process to another through a pipe: (timestamp, link type, frame,
whether it is only shared: another worker's DNS answer, sensor.capture.workers)."""
from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

_HEADER = struct.Struct("<dH?I")  # timestamp, link type, shared, frame length
_BLOCK = 1 << 20


class FrameWriter:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pack = _HEADER.pack

    def write(self, ts: float, linktype: int, frame: bytes, shared: bool = False) -> None:
        self._stream.write(self._pack(ts, linktype, shared, len(frame)) + frame)

    def close(self) -> None:
        self._stream.close()


def read_frames(stream: BinaryIO) -> Iterator[tuple[float, int, bytes, bool]]:
    """Every frame a FrameWriter wrote, until the writer closes its end."""
    unpack_from, header = _HEADER.unpack_from, _HEADER.size
    read = getattr(stream, "read1", stream.read)
    buf = b""
    pos = 0
    while True:
        chunk = read(_BLOCK)
        if not chunk:
            return
        buf = buf[pos:] + chunk
        pos = 0
        end = len(buf)
        while pos + header <= end:
            ts, linktype, shared, length = unpack_from(buf, pos)
            stop = pos + header + length
            if stop > end:
                break
            yield ts, linktype, buf[pos + header : stop], shared
            pos = stop
