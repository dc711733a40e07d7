"""TCP reassembly per direction, and the flow table that bounds it.

Each direction of a TCP connection is a `TcpStream` that turns segments (any order, with
retransmissions and overlaps) into the contiguous byte stream its consumer parses. Segments that
arrive ahead of a hole wait in a heap ordered by stream offset and are merged, as one delivery,
once the hole fills: O(log n) per segment, whatever the order. Memory is bounded, each bound with
a counter: bytes and segments held per stream and across all streams, number of streams (the
least recently queued evicted in O(1)), and idle time. Connections that carry nothing to parse
cost a key, not a stream: half-open ones (SYN only; a SYN flood churns only those), ones seen
mid-stream whose start is not known yet, and finished ones (a consumer that has what it needs, a
ClientHello parsed, returns False; later segments then cost one dict lookup). Each of those
three tables is bounded in number and, as the streams are, by idle time on the capture's clock:
a sensor that runs for days keeps what the last few minutes of traffic need, not what a busy day
fills the caps with.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Protocol

from sensor.records import Counters

SEQ_MOD = 1 << 32
HALF_SEQ = 1 << 31
MAX_PENDING_SEGMENTS = 8  # segments held while the start of a stream without SYN is unknown
MAX_STREAM_SEGMENTS = 32_768  # segments held out of order per stream
MAX_HALF_OPEN = 32_768  # SYNs remembered for connections that sent no data yet
MAX_UNANCHORED = 32_768  # connections seen mid-stream, holding segments until one opens a protocol
MAX_FINISHED = 65_536  # connections whose parser is done (or that hold nothing to parse): ignored
MAX_HELD_BYTES = 64 << 20  # out-of-order bytes held across all streams
MAX_HELD_SEGMENTS = 655_360  # out-of-order segments held across all streams (~130 B overhead each)


class StreamConsumer(Protocol):
    def feed(self, ts: float, data: bytes) -> bool:
        """Take the next contiguous bytes; return False once no more bytes are wanted."""

    def gap(self) -> bool:
        """Bytes were lost before the next feed; return False if the stream cannot continue."""

    def finish(self, ts: float) -> None:
        """The stream ended (FIN, RST, eviction, end of capture)."""


# A TCP stream: (source address, destination address, source port, destination port), addresses packed.
FlowKey = tuple[bytes, bytes, int, int]

# Decides, from the stream key and its first bytes, who parses it (None: nobody, drop the stream).
Classifier = Callable[[FlowKey, bytes], "StreamConsumer | None"]


class _Held(list[tuple[int, bytes]]):
    """Segments (seq, payload) of a connection seen mid-stream, and when the last one came."""

    __slots__ = ("seen",)
    seen: float


class TcpStream:
    __slots__ = (
        "key", "next_seq", "pos", "ooo", "heap", "ooo_bytes", "consumer", "done", "last_ts", "queued",
    )

    def __init__(self, key: FlowKey, ts: float) -> None:
        self.key = key
        self.next_seq = 0  # sequence number of the next byte to deliver
        self.pos = 0  # the same point as an offset from the stream start (never wraps)
        self.ooo: dict[int, bytes] | None = None  # held segments by stream offset
        self.heap: list[int] | None = None  # their offsets, smallest first
        self.ooo_bytes = 0
        self.consumer: StreamConsumer | None = None
        self.done = False
        self.last_ts = ts
        self.queued = ts  # when the stream took its place in the eviction order


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
        max_stream_segments: int = MAX_STREAM_SEGMENTS,
        max_half_open: int = MAX_HALF_OPEN,
        max_held_bytes: int = MAX_HELD_BYTES,
        max_held_segments: int = MAX_HELD_SEGMENTS,
        max_unanchored: int = MAX_UNANCHORED,
        max_finished: int = MAX_FINISHED,
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
        self.max_stream_segments = max_stream_segments
        self.max_half_open = max_half_open
        self.max_held_bytes = max_held_bytes
        self.max_held_segments = max_held_segments
        self.max_unanchored = max_unanchored
        self.max_finished = max_finished
        # Oldest first: eviction and the idle sweep take from the front in O(1).
        self.streams: OrderedDict[FlowKey, TcpStream] = OrderedDict()
        # key -> (whole seconds << 32) | ISN of a SYN whose connection sent no data yet: ~100 bytes
        # each instead of a stream, and a flood of them never evicts a stream that carries data.
        self.half_open: OrderedDict[FlowKey, int] = OrderedDict()
        # key -> segments (seq, payload) of a connection seen mid-stream that opened nothing yet,
        # the least recently active first
        self.unanchored: OrderedDict[FlowKey, _Held] = OrderedDict()
        # key -> when a connection with nothing more to parse was last seen (refreshed at most once
        # a sweep period, so in time order): its segments are ignored until it idles out
        self.finished: OrderedDict[FlowKey, float] = OrderedDict()
        self.held_bytes = 0
        self.held_segments = 0
        self._holding: OrderedDict[FlowKey, TcpStream] = OrderedDict()  # streams holding segments, oldest first
        self.next_sweep = 0.0  # when the next sweep is due (callers per packet look before calling)
        # how far a finished key's time may lag its last segment: it is refreshed only when older
        self._period = min(10.0, idle_timeout / 4)

    def syn(self, key: FlowKey, ts: float, seq: int) -> None:
        """A SYN fixes where the stream starts, so a first segment arriving late is still placed."""
        if key in self.streams:
            return  # a retransmitted SYN: the stream goes on
        self.finished.pop(key, None)  # a new connection from the port of a finished one
        held = self.unanchored.pop(key, None) if self.unanchored else None
        if held is not None:  # segments came before their SYN: now they can be placed
            self._release_unanchored(held)
            stream = self._new(key, ts, counted=True)
            stream.next_seq = (seq + 1) % SEQ_MOD
            for held_seq, payload in held:
                if stream.done:
                    break
                self.segment(key, ts, held_seq, payload)
            return
        half_open = self.half_open
        if key not in half_open:
            counts = self.counters.values  # one SYN each: Counters.add would cost more than the count
            counts["tcp.streams"] = counts.get("tcp.streams", 0) + 1
            if len(half_open) >= self.max_half_open:
                half_open.popitem(last=False)
                self.counters.add("tcp.half_open_evicted")
        half_open[key] = (int(ts) << 32) | ((seq + 1) % SEQ_MOD)

    def segment(self, key: FlowKey, ts: float, seq: int, payload: bytes) -> None:
        stream = self.streams.get(key)
        if stream is None:
            seen = self.finished.get(key)
            if seen is not None:
                if ts - seen > self._period:  # at most once a period: to the back, with its new time
                    self.finished[key] = ts
                    self.finished.move_to_end(key)
                return
            syn = self.half_open.pop(key, None)
            if syn is not None:
                if seq == syn & 0xFFFFFFFF and payload and len(self.streams) < self.max_streams:
                    self._first_segment(key, ts, seq, payload)
                    return
                stream = self._new(key, ts, counted=True)
                stream.next_seq = syn & 0xFFFFFFFF
            else:
                # Stream start unknown (no SYN seen): take this segment as the start if it opens a
                # protocol we parse; else hold it briefly, as an earlier segment may still come.
                consumer = self.classify(key, payload)
                if consumer is None:
                    self._hold_unanchored(key, ts, seq, payload)
                    return
                held = self.unanchored.pop(key, None)
                stream = self._new(key, ts, counted=held is not None)
                stream.consumer, stream.next_seq = consumer, seq
                if held is not None:  # placed against the start (those before it count as retransmitted)
                    self._release_unanchored(held)
                    for held_seq, held_payload in held:
                        self.segment(key, ts, held_seq, held_payload)
                    if stream.done:
                        return
        elif stream.done:
            return
        stream.last_ts = ts
        next_seq = stream.next_seq
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
        if payload:
            self._hold(stream, ts, stream.pos + delta, payload)

    def _first_segment(self, key: FlowKey, ts: float, seq: int, payload: bytes) -> None:
        """The first bytes of a connection whose SYN was seen, in order: what a new stream and
        `_deliver` do with them, but the stream takes a place in the table only when its consumer
        wants more (a ClientHello whole in one segment, the common case, needs none)."""
        consumer = self.classify(key, payload)
        if consumer is None and self.watch is not None:
            consumer = self.watch(key, payload)
        if consumer is None:
            self.finish_key(key, ts)
            self.counters.add("tcp.streams_unclassified")
            return
        if not consumer.feed(ts, payload):
            self.finish_key(key, ts)
            return
        stream = self._new(key, ts, counted=True)
        stream.consumer = consumer
        stream.next_seq = (seq + len(payload)) % SEQ_MOD
        stream.pos = len(payload)

    def end(self, key: FlowKey, ts: float) -> None:
        """FIN or RST: deliver what is buffered (across any gap) and forget the stream."""
        stream = self.streams.pop(key, None)
        if stream is not None:
            self._close(stream, ts)  # over: its key is not kept among the finished ones
            return
        self.half_open.pop(key, None)
        self.finished.pop(key, None)
        held = self.unanchored.pop(key, None)
        if held is not None:
            self._release_unanchored(held)
            self.counters.add("tcp.streams_unclassified")

    def finish(self) -> None:
        for stream in list(self.streams.values()):
            self._close(stream, stream.last_ts)
        self.streams.clear()
        self.half_open.clear()
        for held in self.unanchored.values():
            self._release_unanchored(held)
        self.unanchored.clear()
        self.finished.clear()

    def sweep(self, now: float) -> None:
        """Expire idle streams and keys; cheap enough to call per packet (runs every few seconds of
        capture time, and looks only at the front of the queues: a stream found active goes to the
        back, so each is looked at about once per idle period). A stream expires between one and
        two idle periods after its last segment; a finished key between one idle period and a
        sweep period more; a half-open or unanchored key about one idle period after."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + self._period
        limit = now - self.idle_timeout
        self._expire_finished(limit - self._period)
        self._expire_unanchored(limit)
        streams, expired = self.streams, 0
        while streams:
            key = next(iter(streams))
            stream = streams[key]
            if stream.queued >= limit:
                break
            if stream.last_ts < limit:
                del streams[key]
                self._close(stream, now)
                expired += 1
            else:
                stream.queued = stream.last_ts
                streams.move_to_end(key)
        if expired:
            self.counters.add("tcp.streams_expired", expired)
        half_open, whole_limit = self.half_open, int(limit) << 32
        while half_open:
            key = next(iter(half_open))
            if half_open[key] >= whole_limit:
                break
            del half_open[key]

    # -- internals -------------------------------------------------------------------------
    def _expire_finished(self, limit: float) -> None:
        finished, expired = self.finished, 0
        while finished:
            key = next(iter(finished))
            if finished[key] >= limit:
                break
            del finished[key]
            expired += 1
        if expired:
            self.counters.add("tcp.finished_expired", expired)

    def _expire_unanchored(self, limit: float) -> None:
        unanchored = self.unanchored
        while unanchored:
            key = next(iter(unanchored))
            held = unanchored[key]
            if held.seen >= limit:
                break
            del unanchored[key]
            self._release_unanchored(held)
            self.counters.add("tcp.unanchored_expired")

    def _new(self, key: FlowKey, ts: float, counted: bool) -> TcpStream:
        """A stream for `key`; `counted`: its connection was already counted (SYN or held segments)."""
        streams = self.streams
        if len(streams) >= self.max_streams:
            _, oldest = streams.popitem(last=False)
            self._close(oldest, ts)
            self.counters.add("tcp.streams_evicted")
        stream = streams[key] = TcpStream(key, ts)
        if not counted:
            self.counters.add("tcp.streams")
        return stream

    def _hold_unanchored(self, key: FlowKey, ts: float, seq: int, payload: bytes) -> None:
        if not payload:
            return
        unanchored = self.unanchored
        held = unanchored.get(key)
        if held is None:
            self.counters.add("tcp.streams")
            if len(unanchored) >= self.max_unanchored:
                _, oldest = unanchored.popitem(last=False)
                self._release_unanchored(oldest)
                self.counters.add("tcp.unanchored_evicted")
            held = unanchored[key] = _Held()
        else:
            unanchored.move_to_end(key)
        held.seen = ts
        held.append((seq, payload))
        self.held_bytes += len(payload)
        self.held_segments += 1
        if len(held) >= MAX_PENDING_SEGMENTS or sum(len(p) for _, p in held) > self.stream_buffer_cap:
            del unanchored[key]
            self._release_unanchored(held)
            self.finish_key(key, ts)
            self.counters.add("tcp.streams_unclassified")
        else:
            self._enforce_global()

    def _release_unanchored(self, held: list[tuple[int, bytes]]) -> None:
        self.held_bytes -= sum(len(payload) for _, payload in held)
        self.held_segments -= len(held)

    def finish_key(self, key: FlowKey, ts: float) -> None:
        """Remember that `key` has nothing more to parse, as of `ts` (a bounded memory of it)."""
        finished = self.finished
        if key in finished:
            finished.move_to_end(key)
        elif len(finished) >= self.max_finished:
            finished.popitem(last=False)
        finished[key] = ts

    def _hold(self, stream: TcpStream, ts: float, start: int, payload: bytes) -> None:
        ooo = stream.ooo
        if ooo is None:
            ooo = stream.ooo = {}
            stream.heap = []
        elif start in ooo:
            held = ooo[start]
            if len(payload) <= len(held):
                self.counters.add("tcp.retransmissions")
                return
            # repacketized: a longer segment from the same offset carries bytes the held one lacks
            ooo[start] = payload
            self._account(stream, len(payload) - len(held), 0)
            self.counters.add("tcp.retransmissions")
            return
        ooo[start] = payload
        heappush(stream.heap, start)  # type: ignore[arg-type]
        self._account(stream, len(payload))
        self.counters.add("tcp.out_of_order")
        if stream.ooo_bytes > self.stream_buffer_cap:
            self._skip_gap(stream, ts)
        elif len(ooo) > self.max_stream_segments:
            self.counters.add("tcp.stream_segment_cap")
            self._skip_gap(stream, ts)
        else:
            self._enforce_global()

    def _account(self, stream: TcpStream, size: int, segments: int = 1) -> None:
        stream.ooo_bytes += size
        self.held_bytes += size
        self.held_segments += segments
        if stream.key not in self._holding:
            self._holding[stream.key] = stream

    def _release(self, stream: TcpStream, size: int, segments: int) -> None:
        stream.ooo_bytes -= size
        self.held_bytes -= size
        self.held_segments -= segments
        if not stream.ooo_bytes and not stream.ooo:
            self._holding.pop(stream.key, None)

    def _enforce_global(self) -> None:
        """Over the table-wide caps: the stream that has held segments longest gives them up
        (delivered across their gaps); before any stream, connections seen mid-stream that opened
        nothing give up what they hold."""
        while self.held_bytes > self.max_held_bytes or self.held_segments > self.max_held_segments:
            if self.unanchored:  # segments of connections that may never open anything go first
                key, held = self.unanchored.popitem(last=False)
                self._release_unanchored(held)
                self.finish_key(key, held.seen)
                self.counters.add("tcp.held_cap_flushes")
                self.counters.add("tcp.streams_unclassified")
                continue
            if not self._holding:
                return
            _, stream = self._holding.popitem(last=False)
            self.counters.add("tcp.held_cap_flushes")
            while stream.ooo and not stream.done:
                self._skip_gap(stream, stream.last_ts)
            if stream.ooo:
                self._drop(stream)

    def _deliver(self, stream: TcpStream, ts: float, data: bytes) -> None:
        if not data:
            return
        stream.next_seq = (stream.next_seq + len(data)) % SEQ_MOD
        stream.pos += len(data)
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
        """Deliver, as one piece, the held segments that are now contiguous (trimming overlaps)."""
        ooo, heap = stream.ooo, stream.heap
        if not ooo or heap is None:
            return
        pos = stream.pos
        parts: list[bytes] = []
        size = count = 0
        while heap and heap[0] <= pos:
            start = heappop(heap)
            payload = ooo.pop(start)
            size += len(payload)
            count += 1
            overlap = pos - start
            if overlap < len(payload):
                parts.append(payload[overlap:] if overlap else payload)
                pos += len(payload) - overlap
        if count:
            self._release(stream, size, count)
        if parts:
            self._deliver(stream, ts, parts[0] if len(parts) == 1 else b"".join(parts))

    def _skip_gap(self, stream: TcpStream, ts: float) -> None:
        """Give up on missing bytes: jump to the earliest held segment and go on from there."""
        if not stream.ooo or stream.done:
            return
        self.counters.add("tcp.gaps")
        if stream.consumer is not None and not stream.consumer.gap():
            self._drop(stream)
            return
        start = stream.heap[0]  # type: ignore[index]
        if start > stream.pos:
            stream.next_seq = (stream.next_seq + start - stream.pos) % SEQ_MOD
            stream.pos = start
        self._drain(stream, ts)

    def _close(self, stream: TcpStream, ts: float) -> None:
        while stream.ooo and not stream.done and stream.consumer is not None:
            self._skip_gap(stream, ts)
        if stream.consumer is not None and not stream.done:
            stream.consumer.finish(ts)
        self._drop(stream)

    def _drop(self, stream: TcpStream) -> None:
        """Nothing more to parse: buffers freed, and a live stream leaves the table for the
        bounded memory of finished keys (a few dozen bytes instead of a stream)."""
        if stream.ooo_bytes or stream.ooo:
            self._release(stream, stream.ooo_bytes, len(stream.ooo or ()))
            self._holding.pop(stream.key, None)
        stream.done = True
        stream.ooo = stream.heap = None
        stream.ooo_bytes = 0
        stream.consumer = None
        if self.streams.get(stream.key) is stream:
            del self.streams[stream.key]
            self.finish_key(stream.key, stream.last_ts)
