"""TCP reassembly per direction, and the flow table that bounds it.

Each direction of a TCP connection is a `TcpStream` that turns segments (any order, with
retransmissions and overlaps) into the contiguous byte stream its consumer parses. Memory is
bounded three ways, each with a counter: bytes buffered out of order per stream, number of
streams (oldest evicted), and idle time. A consumer that has what it needs (a ClientHello parsed)
returns False and the stream drops its buffers; later segments then cost one dict lookup.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sensor.records import Counters

SEQ_MOD = 1 << 32
HALF_SEQ = 1 << 31
MAX_PENDING_SEGMENTS = 8  # segments held while the start of a stream without SYN is unknown


class StreamConsumer(Protocol):
    def feed(self, ts: float, data: bytes) -> bool:
        """Take the next contiguous bytes; return False once no more bytes are wanted."""

    def gap(self) -> bool:
        """Bytes were lost before the next feed; return False if the stream cannot continue."""

    def finish(self, ts: float) -> None:
        """The stream ended (FIN, RST, eviction, end of capture)."""


# Decides, from the stream key and its first bytes, who parses it (None: nobody, drop the stream).
Classifier = Callable[[tuple, bytes], "StreamConsumer | None"]


class TcpStream:
    __slots__ = ("key", "next_seq", "ooo", "ooo_bytes", "consumer", "done", "last_ts", "pending")

    def __init__(self, key: tuple, ts: float) -> None:
        self.key = key
        self.next_seq: int | None = None
        self.ooo: dict[int, bytes] = {}
        self.ooo_bytes = 0
        self.consumer: StreamConsumer | None = None
        self.done = False
        self.last_ts = ts
        self.pending = 0


class FlowTable:
    """Streams keyed by (src addr, dst addr, src port, dst port)."""

    def __init__(
        self,
        counters: Counters,
        classify: Classifier,
        max_streams: int = 200_000,
        stream_buffer_cap: int = 262_144,
        idle_timeout: float = 120.0,
        watch: Classifier | None = None,
    ) -> None:
        """`watch`: who takes a stream that `classify` left, when its first byte is known (a SYN
        was seen), e.g. to follow a plaintext start up to an upgrade to TLS; never consulted for a
        stream picked up midway, whose held segments may still be preceded by its real start."""
        self.counters = counters
        self.classify = classify
        self.watch = watch
        self.max_streams = max_streams
        self.stream_buffer_cap = stream_buffer_cap
        self.idle_timeout = idle_timeout
        self.streams: dict[tuple, TcpStream] = {}
        self._next_sweep = 0.0

    def syn(self, key: tuple, ts: float, seq: int) -> None:
        """A SYN fixes where the stream starts, so a first segment arriving late is still placed."""
        stream = self.streams.get(key)
        if stream is None:
            stream = self._new(key, ts)
        if stream.consumer is None and not stream.done:
            stream.next_seq = (seq + 1) % SEQ_MOD
            if stream.ooo:
                self._drain(stream, ts)

    def segment(self, key: tuple, ts: float, seq: int, payload: bytes) -> None:
        stream = self.streams.get(key)
        if stream is None:
            stream = self._new(key, ts)
        elif stream.done:
            return
        stream.last_ts = ts
        next_seq = stream.next_seq
        if next_seq is None:
            # Stream start unknown (no SYN seen): take this segment as the start if it opens a
            # protocol we parse; else hold it briefly, as an earlier segment may still come.
            consumer = self.classify(key, payload)
            if consumer is not None:
                stream.consumer = consumer
                stream.next_seq = next_seq = seq
            else:
                self._hold(stream, seq, payload)
                return
        delta = (seq - next_seq) % SEQ_MOD
        if delta >= HALF_SEQ:  # starts before what was delivered: retransmission or overlap
            overlap = SEQ_MOD - delta
            if overlap >= len(payload):
                self.counters.add("tcp.retransmissions")
                return
            payload = payload[overlap:]
            delta = 0
            self.counters.add("tcp.overlaps")
        if delta == 0:
            self._deliver(stream, ts, payload)
            if stream.ooo and not stream.done:
                self._drain(stream, ts)
            return
        if seq in stream.ooo:
            self.counters.add("tcp.retransmissions")
            return
        stream.ooo[seq] = payload
        stream.ooo_bytes += len(payload)
        self.counters.add("tcp.out_of_order")
        if stream.ooo_bytes > self.stream_buffer_cap:
            self._skip_gap(stream, ts)

    def end(self, key: tuple, ts: float) -> None:
        """FIN or RST: deliver what is buffered (across any gap) and forget the stream."""
        stream = self.streams.pop(key, None)
        if stream is not None:
            self._close(stream, ts)

    def finish(self) -> None:
        for stream in list(self.streams.values()):
            self._close(stream, stream.last_ts)
        self.streams.clear()

    def sweep(self, now: float) -> None:
        """Expire idle streams; cheap enough to call per packet (runs every few seconds of capture time)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(10.0, self.idle_timeout / 4)
        limit = now - self.idle_timeout
        idle = [key for key, stream in self.streams.items() if stream.last_ts < limit]
        for key in idle:
            self._close(self.streams.pop(key), now)
        if idle:
            self.counters.add("tcp.streams_expired", len(idle))

    # -- internals -------------------------------------------------------------------------
    def _new(self, key: tuple, ts: float) -> TcpStream:
        if len(self.streams) >= self.max_streams:
            oldest = next(iter(self.streams))
            self._close(self.streams.pop(oldest), ts)
            self.counters.add("tcp.streams_evicted")
        stream = self.streams[key] = TcpStream(key, ts)
        self.counters.add("tcp.streams")
        return stream

    def _hold(self, stream: TcpStream, seq: int, payload: bytes) -> None:
        if not payload:
            return
        stream.ooo[seq] = payload
        stream.ooo_bytes += len(payload)
        stream.pending += 1
        if stream.pending >= MAX_PENDING_SEGMENTS or stream.ooo_bytes > self.stream_buffer_cap:
            self._drop(stream)
            self.counters.add("tcp.streams_unclassified")

    def _deliver(self, stream: TcpStream, ts: float, data: bytes) -> None:
        if not data:
            return
        stream.next_seq = (stream.next_seq + len(data)) % SEQ_MOD  # type: ignore[operator]
        consumer = stream.consumer
        if consumer is None:
            consumer = stream.consumer = self.classify(stream.key, data)
            if consumer is None and self.watch is not None:
                consumer = stream.consumer = self.watch(stream.key, data)
            if consumer is None:
                self._drop(stream)
                self.counters.add("tcp.streams_unclassified")
                return
        if not consumer.feed(ts, data):
            self._drop(stream)

    def _drain(self, stream: TcpStream, ts: float) -> None:
        """Deliver held segments that are now contiguous (trimming overlaps)."""
        ooo = stream.ooo
        while ooo and not stream.done:
            next_seq = stream.next_seq
            progressed = False
            for seq in list(ooo):
                delta = (seq - next_seq) % SEQ_MOD  # type: ignore[operator]
                if delta == 0 or delta >= HALF_SEQ:
                    payload = ooo.pop(seq)
                    stream.ooo_bytes -= len(payload)
                    if delta:
                        overlap = SEQ_MOD - delta
                        if overlap >= len(payload):
                            progressed = True
                            continue
                        payload = payload[overlap:]
                    self._deliver(stream, ts, payload)
                    progressed = True
                    break
            if not progressed:
                return

    def _skip_gap(self, stream: TcpStream, ts: float) -> None:
        """Give up on missing bytes: jump to the earliest held segment and go on from there."""
        if not stream.ooo or stream.done:
            return
        self.counters.add("tcp.gaps")
        if stream.consumer is not None and not stream.consumer.gap():
            self._drop(stream)
            return
        start = min(stream.ooo, key=lambda s: (s - stream.next_seq) % SEQ_MOD)  # type: ignore[operator]
        stream.next_seq = start
        self._drain(stream, ts)

    def _close(self, stream: TcpStream, ts: float) -> None:
        while stream.ooo and not stream.done and stream.consumer is not None:
            self._skip_gap(stream, ts)
        if stream.consumer is not None and not stream.done:
            stream.consumer.finish(ts)
        self._drop(stream)

    @staticmethod
    def _drop(stream: TcpStream) -> None:
        stream.done = True
        stream.ooo = {}
        stream.ooo_bytes = 0
        stream.consumer = None
