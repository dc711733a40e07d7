"""Runs the rules over records: enrich once, evaluate every enabled rule, throttle, build documents.

Throttle: one alert per (rule, source host, vendor or domain) per window. The first occurrence is
emitted at once (on-call wants it now); a later occurrence with a higher severity, or one that
reaches a destination host the window has not seen yet (or first carries health data to one),
re-sends the window's document at once; when the window closes, or at the end of a replay, an
update with the same `event.id` carries the final count, so a sink that indexes by id keeps one
document per window with the right count, the strongest evidence and every destination host.

A replay writes one document per window, when no later record can join it any more: once the
capture's time is `hold_back` past the window's end (a record comes at most that much after later
ones), else at the end. A day of traffic so holds the windows of the last hour or so, not all.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import marshal
import math
import os
import struct
import sys
import tempfile
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, cast

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CTR

from sensor.detect.base import Alert, RuleInfo
from sensor.detect.rules import ALL_RULES, tracker_payload
from sensor.enrich.assets import PhiHost
from sensor.enrich.baa import BaaEntry
from sensor.enrich.dnscache import DnsCache
from sensor.enrich.ech import is_cover_name
from sensor.enrich.observation import Observation
from sensor.enrich.policy import Policy
from sensor.enrich.vendors import Vendor, normalize_host
from sensor.phi import is_health_data, scan_http
from sensor.phi.layers import Field
from sensor.phi.recognizers import Finding
from sensor.phi.trackers import TrackerPayload, decode_tracker, scan_tracker
from sensor.records import (
    Counters,
    DnsAnswer,
    DnsQuery,
    Flow,
    HttpRequest,
    LocalNameQuery,
    Record,
    TlsHello,
    TunnelledFlow,
    positional_constructor,
    split_target,
)
from sensor.severity import SEVERITY_RANK

try:  # the compiled twin of event_id_py (sensor/_fast/ecs.c)
    from sensor._fast import window_event_id as _event_id_fast
except ImportError:  # built without a C compiler
    _event_id_fast = None
try:  # on_record_py's commonest answer, compiled (sensor/_fast/detect.c)
    from sensor._fast import detect_front as _detect_front
except ImportError:
    _detect_front = None

DEFAULT_THROTTLE_SECONDS = 3600.0
MAX_THROTTLE_KEYS = 100_000
MAX_ENRICHED_KEYS = 65_536  # (destination names, day) pairs whose enrichment is remembered
# How long after later ones a record may still come: decoding holds a request until it is whole
# and a stream until it idles out (within two idle periods, 4 minutes by default).
DEFAULT_HOLD_BACK_SECONDS = 600.0
_SWEEP_SECONDS = 5.0  # capture seconds between two looks for replay windows to close
_DAY_SECONDS = 86_400.0
_EPOCH_DAY = dt.date(1970, 1, 1)
_TIMES = struct.Struct("ddd")  # (next sweep, day start, day end): DetectionEngine._share_times


@dataclass(frozen=True, slots=True)
class RuleSettings:
    enabled: bool
    severity: str | None = None  # fixed severity overriding the rule's model
    throttle_seconds: float = DEFAULT_THROTTLE_SECONDS


MAX_DESTINATIONS = 64  # destination hosts listed per window; a host that received health data always gets in


@dataclass(slots=True)
class Destination:
    """One destination host of a throttle window: how often and when it was reached, and whether
    any request to it carried health data."""

    host: str
    count: int
    first_seen: float
    last_seen: float
    health_data: bool = False


_new_destination = positional_constructor(Destination)  # (a window's hosts: every field, in order)


# Builds the ECS alert document: (alert, count, first_seen, last_seen, event id, destinations) -> dict
Document = dict[str, Any]  # one ECS alert document
DocumentBuilder = Callable[[Alert, int, float, float, str, list[Destination]], Document]


# The spill file is written a block at a time, and rewritten once this large and mostly alerts
# of windows let go (a day of traffic closes windows as its clock passes them)
_SPILL_BLOCK = 1 << 16
_SPILL_COMPACT_BYTES = 64 << 20
_SPILL_FINAL_BLOCKS = 16  # blocks kept read back at the end (1 MiB): the windows' alerts were packed in about
# the order they opened, but an alert replaced later lies further on
_SPILL_SIZE_BITS = 32  # a place in the spill: offset << 32 | length (a packed alert is far shorter)
_SPILL_SIZE_MASK = (1 << _SPILL_SIZE_BITS) - 1


class _Spill:
    """The throttle windows' packed alerts, in an unlinked temporary file: a day of traffic holds
    tens of thousands of windows, and an alert is read back only for a document. A packed alert
    holds the health data its request carried, so the file holds it sealed (AES-CTR) under a key
    that lives only in this process's memory: nothing readable of it outlives the process on
    disk. The bytes not written yet are read from memory; where no file can be written, all of
    them stay there."""

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._counter = int.from_bytes(os.urandom(16), "big")  # the first block's counter
        self._fd = -1
        self._pid = 0  # the process the file belongs to: a forked process writes a copy of its own
        self._written = 0  # bytes in the file
        self._tail = bytearray()  # the bytes after them, not written yet
        self._flush_at = _SPILL_BLOCK  # (a larger tail after a write failed: tried again less often)
        # the blocks read back and unsealed, by index (each _SPILL_BLOCK long, at a multiple of it),
        # the last used last: documents are built in about the order the alerts were packed
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self.compact_at = _SPILL_COMPACT_BYTES
        self.read_blocks = 1  # blocks kept read back (more at the end: final_documents)
        self._closer: weakref.finalize[[int], _Spill] | None = None  # closes the file once the spill is let go
        self._algorithm = AES(self._key)
        # the key stream of the file's end, where the next write seals from (None: made afresh):
        # writes follow one another, so one stream serves them all
        self._writer: CipherContext | None = None
        self._writer_at = -1
        self._reader: CipherContext | None = None  # the same for the blocks read back (_unseal_read)
        self._reader_at = -1

    @property
    def size(self) -> int:
        return self._written + len(self._tail)

    def put(self, data: bytes) -> int:
        """Keep `data`; where it is (for get)."""
        place = (self._written + len(self._tail)) << _SPILL_SIZE_BITS | len(data)
        self._tail += data
        if len(self._tail) >= self._flush_at:
            self._flush()
        return place

    def get(self, place: int) -> bytes:
        at, size = place >> _SPILL_SIZE_BITS, place & _SPILL_SIZE_MASK
        if at >= self._written:
            at -= self._written
            return bytes(self._tail[at:at + size])
        index, start = divmod(at, _SPILL_BLOCK)
        end = start + size
        if end <= _SPILL_BLOCK:
            block = self._blocks.get(index)
            if block is not None and end <= len(block):  # (_block of a block kept, inline)
                self._blocks.move_to_end(index)
                return block[start:end]
            return self._block(index, end)[start:end]
        if end <= 2 * _SPILL_BLOCK:  # across two blocks (a few in a thousand; the next documents read the second anyway)
            return self._block(index, _SPILL_BLOCK)[start:] + self._block(index + 1, end - _SPILL_BLOCK)[:end - _SPILL_BLOCK]
        return self._seal(at, os.pread(self._fd, size, at))  # (larger than a block: read alone)

    def _block(self, index: int, need: int) -> bytes:
        """Block `index` of the file unsealed, holding at least its first `need` bytes."""
        blocks = self._blocks
        block = blocks.get(index)
        if block is None or need > len(block):  # (a block read while the file ended inside it)
            at = index * _SPILL_BLOCK
            block = blocks[index] = self._unseal_read(at, os.pread(self._fd, _SPILL_BLOCK, at))
            while len(blocks) > self.read_blocks:
                blocks.popitem(last=False)
        else:
            blocks.move_to_end(index)
        return block

    def compacted(self, windows: Iterable[_Window]) -> _Spill:
        """This spill, or once it is mostly alerts of windows let go a fresh one holding those of
        `windows` (the open ones), their places moved."""
        held = [window for window in windows if type(window.packed) is int]
        if 2 * sum(cast(int, window.packed) & _SPILL_SIZE_MASK for window in held) >= self.size:
            self.compact_at = 2 * self.size
            return self
        fresh = _Spill()
        for window in held:
            window.packed = fresh.put(self.get(cast(int, window.packed)))
        return fresh

    def _flush(self) -> None:
        """Write the tail to the file (this process's own), or keep it in memory if that fails."""
        try:
            if self._pid != os.getpid():
                self._open()
            sealed, done = memoryview(self._seal_end()), 0
            while done < len(sealed):
                done += os.pwrite(self._fd, sealed[done:], self._written + done)
        except OSError:  # (a write cut short is written again whole: the file's length does not matter)
            self._flush_at = 2 * len(self._tail)
            return
        self._written += len(self._tail)
        self._tail.clear()
        self._flush_at = _SPILL_BLOCK

    def _seal(self, at: int, data: bytes | bytearray) -> bytes:
        """`data` as it lies (or will lie) at offset `at` of the file, sealed; sealing it again
        opens it (CTR: the key stream of its offset)."""
        return self._stream(at).update(bytes(data))

    def _seal_end(self) -> bytes:
        """_seal of the tail at the file's end, by the stream the last write left there (a cipher
        made per write was most of a write's cost)."""
        at = self._written
        stream = self._writer if self._writer is not None and self._writer_at == at else self._stream(at)
        sealed = stream.update(bytes(self._tail))
        # (a write that then fails leaves the stream past the file's end: the next one makes its own)
        self._writer, self._writer_at = stream, at + len(self._tail)
        return sealed

    def _unseal_read(self, at: int, data: bytes) -> bytes:
        """_seal of a block read at `at`, by the stream the last block read left there where blocks
        are read one after another (the documents read them in about the order written)."""
        stream = self._reader if self._reader is not None and self._reader_at == at else self._stream(at)
        opened = stream.update(data)
        self._reader, self._reader_at = stream, at + len(data)
        return opened

    def _stream(self, at: int) -> CipherContext:
        """The key stream from offset `at` of the file on."""
        counter = (self._counter + at // 16) % (1 << 128)
        stream = Cipher(self._algorithm, CTR(counter.to_bytes(16, "big"))).encryptor()
        if at % 16:
            stream.update(bytes(at % 16))
        return stream

    def _open(self) -> None:
        """Make this process's file, with a copy of what the file it shares with its parent holds."""
        fd, path = tempfile.mkstemp(prefix="phi-sensor-windows-")
        try:
            os.unlink(path)
            done = 0
            while done < self._written:
                done += os.pwrite(fd, os.pread(self._fd, min(self._written - done, 1 << 20), done), done)
        except OSError:
            os.close(fd)
            raise
        if self._closer is not None:
            self._closer()
        self._fd, self._pid = fd, os.getpid()
        self._closer = weakref.finalize(self, os.close, fd)


def event_id_py(rule: str, source: str, subject: str, start: float) -> str:
    """A throttle window's id: of its key and start (the compiled window_event_id's reference)."""
    return hashlib.sha256(f"{rule}|{source}|{subject}|{start:.6f}".encode()).hexdigest()[:40]


@dataclass(slots=True)
class _Window:
    start: float
    end: float
    key: tuple[str, str, str]  # (rule, source host, subject)
    health_data: bool  # whether the request behind the kept alert carried health data
    count: int = 1
    last_seen: float = 0.0
    sent_count: int = 1  # the count the last document of this window carried
    # The hosts reached: the only one while there is one, else all of them in the order first
    # seen (most windows see one host; a dict for each would be most of what a window holds).
    destination: Destination | None = None
    destinations: dict[str, Destination] | None = None
    # The alert its documents show, kept small (a day of traffic holds tens of thousands of
    # windows): its shared parts by reference, its own text and record packed into one bytes
    # object written to the engine's _Spill, of which the window keeps where (see keep and alert).
    severity: str = ""
    rule: RuleInfo | None = None
    phi_host: PhiHost | None = None
    vendor: Vendor | None = None
    baa: BaaEntry | None = None
    packed: int | Alert | None = None  # a place in the spill; an alert not packed (yet) is kept whole

    def keep(self, alert: Alert, health_data: bool) -> None:
        """Keep what the window's documents read of `alert`, the alert itself until `pack`."""
        obs = alert.observation
        self.health_data = health_data
        self.severity, self.rule = alert.severity, alert.rule
        self.phi_host, self.vendor, self.baa = obs.phi_host, obs.vendor, obs.baa
        self.packed = alert

    def pack(self, spill: _Spill) -> None:
        """Pack the kept alert (see _pack) into `spill`, once it is unlikely to be replaced; of its
        findings, decoded fields and tracker payload what its documents show."""
        alert = self.packed
        if not isinstance(alert, Alert):
            return
        findings, fields = alert.findings, alert.fields
        tracker = alert.observation.tracker if alert.rule.id == _TRACKER_PAYLOAD else None  # the only document showing it
        if fields:  # a document reads the fields findings point into (their evidence excerpts)
            paths = {finding.path for finding in findings}
            fields = tuple([field for field in fields if field.path in paths])
        if tracker is not None and tracker.params:  # it shows the decoder, event, page and referrer
            tracker = dataclasses.replace(tracker, params=())
        packed = _pack(alert, findings, fields, tracker)
        self.packed = packed if packed is alert else spill.put(cast(bytes, packed))

    def alert(self, spill: _Spill) -> Alert:
        """The kept alert, as its documents read it: the record without its body and with only
        the headers a document shows; no findings of the scan, a tracker payload only where the
        document shows it."""
        packed = self.packed
        if type(packed) is not int:
            return cast(Alert, packed)
        summary, source, destination, allowed, status, index, values, shown = marshal.loads(spill.get(packed))
        cls, make, answers_at = _PACKABLE[index]
        flow = values[1]
        values[1] = _new_flow(*flow) if len(flow) == 5 else TunnelledFlow(*flow)
        if answers_at:
            values[answers_at] = tuple([_new_answer(*answer) for answer in values[answers_at]])
        findings: Sequence[Finding] = ()
        fields: Sequence[Field] = ()
        tracker = None
        if shown is not None:  # (lists and tuples as the alert had them)
            found, decoded, payload = shown
            findings = type(found)([_new_finding(*finding) for finding in found])
            fields = type(decoded)([_new_field(*field) for field in decoded])
            tracker = None if payload is None else TrackerPayload(*payload)
        obs = _observation(make(*values), source, self.phi_host, destination, self.vendor, self.baa, allowed,
                           status, None, tracker, None)
        return _new_alert(self.rule, self.severity, obs, summary, self.key[2], findings, fields)  # (no cast: a call per document)

    @property
    def event_id(self) -> str:
        """The id every document of the window carries: made, not kept (a replay's windows are many)."""
        rule, source, subject = self.key
        if _event_id_fast is not None:
            made = _event_id_fast(rule, source, subject, self.start)
            if made is not None:
                return cast(str, made)
        return event_id_py(rule, source, subject, self.start)

    def hosts(self) -> list[Destination]:
        """The hosts reached, in the order first seen."""
        if self.destinations is not None:
            return list(self.destinations.values())
        return [] if self.destination is None else [self.destination]

    def see(self, host: str | None, ts: float, health_data: bool) -> bool:
        """Count a request to `host`; True when the window's host list changed (a new host, or
        the first health data to a known one)."""
        if not host:
            return False
        table, only = self.destinations, self.destination
        if table is not None:
            entry = table.get(host)
        else:
            entry = only if only is not None and only.host == host else None
        if entry is None:  # a host not seen yet
            listed = len(table) if table is not None else 0 if only is None else 1
            if listed >= MAX_DESTINATIONS and not health_data:
                return False
            entry = _new_destination(host, 1, ts, ts, health_data)
            if table is not None:
                table[host] = entry
            elif only is None:
                self.destination = entry
            else:
                self.destinations, self.destination = {only.host: only, host: entry}, None
            return True
        entry.count += 1
        entry.first_seen = min(entry.first_seen, ts)
        entry.last_seen = max(entry.last_seen, ts)
        if health_data and not entry.health_data:
            entry.health_data = True
            return True
        return False


# (vendor, destination, allowed, BAA, BAA status) of the names a record goes to on a day
_Enrichment = tuple[Vendor | None, str | None, bool, BaaEntry | None, str]
# (normalized name, enrichment, the rules asked about a lookup or hello there, None: no rule may
# fire and no observation is wanted) of a name as a record spelled it
_Named = tuple[str, _Enrichment, list[tuple[Any, RuleSettings]] | None]

# What the engine does with a record, by its class (a subclass takes its nearest base's kind)
_DNS, _HELLO, _HTTP, _LOCAL = "dns", "hello", "http", "local"
_KINDS: dict[type, str] = {DnsQuery: _DNS, LocalNameQuery: _LOCAL, TlsHello: _HELLO, HttpRequest: _HTTP}
_observation = positional_constructor(Observation)  # every field, in order
_new_alert = positional_constructor(Alert)
_TRACKER_PAYLOAD = tracker_payload.INFO.id
_window_start = attrgetter("start")


class DetectionEngine:
    def __init__(
        self,
        policy: Policy,
        build_document: DocumentBuilder,
        rule_settings: dict[str, RuleSettings] | None = None,
        counters: Counters | None = None,
        immediate: bool = True,
        on_observation: Callable[[Observation], None] | None = None,
        hold_back: float = DEFAULT_HOLD_BACK_SECONDS,
    ) -> None:
        """`immediate`: emit at first sight and on escalation (live); else one final document per
        window when it closes (replay, where an auditor wants one line per alert).
        `on_observation` sees every enriched record of a PHI host (the inventory report).
        `hold_back`: capture seconds a record may come after later ones (see the module doc)."""
        self.policy = policy
        self.immediate = immediate
        self.hold_back = hold_back
        self.on_observation = on_observation
        self.build_document = build_document
        # record -> the record carrying its flow's tunnel, when there was one (the pipeline binds
        # the packet decoder's PacketDecoder.tunnel_of): taken as an alert is raised
        self.tunnel_of: Callable[[Record], Record] | None = None
        self.counters = counters if counters is not None else Counters()
        self.dns_cache = DnsCache(counters=self.counters, late=hold_back)
        self.rules = []
        for rule in ALL_RULES:
            settings = (rule_settings or {}).get(rule.INFO.id) or RuleSettings(rule.INFO.enabled_by_default)
            if settings.enabled:
                self.rules.append((rule, settings))
        # The rules asked about a lookup or hello, by whether its destination is a catalogued vendor:
        # they carry no request content, so the rules that read only content are never asked.
        self._rules_for = {
            catalogued: [
                (rule, settings) for rule, settings in self.rules
                if not rule.INFO.reads_content and rule.INFO.catalogued in (None, catalogued)
            ]
            for catalogued in (True, False)
        }
        self._kinds: dict[type, str] = dict(_KINDS)
        self._phi_host_of = policy.assets.lookup
        self._windows: OrderedDict[tuple[str, str, str], _Window] = OrderedDict()
        # replay: the windows opened, in the order opened, per window length (so soonest end
        # first, but for records that came after later ones); the next time to look
        self._ends: dict[float, deque[_Window]] = {}
        self._sweep_at = math.inf if immediate else -math.inf
        # replay: the windows whose alert changed since the last sweep, to be packed then (a
        # window's alert is mostly replaced in its first seconds, by a stronger one)
        self._unpacked: list[_Window] = []
        self._spill = _Spill()  # the windows' packed alerts
        self._enriched: dict[tuple[tuple[str, ...], dt.date], _Enrichment] = {}
        # (normalized name, enrichment) per name as a lookup or hello spelled it, for the day
        # remembered (_day_value): emptied as that day changes
        self._by_name: dict[str, _Named] = {}
        # the day the last time fell in: times from start to end (excluded) fall on it
        self._day_start, self._day_end, self._day_value = math.inf, -math.inf, dt.date.min
        # the next sweep and the day's bounds as the compiled front reads them (_share_times)
        self._times = bytearray(_TIMES.size)
        self._share_times()
        if _detect_front is not None and type(self).on_record is DetectionEngine.on_record_py:
            # most records (a lookup or hello to a name no rule may fire on) answered by compiled
            # code without a Python call; it hands every other record to on_record_py
            setattr(self, "on_record",
                    _detect_front(self._kinds, self._by_name, self._times, self.on_record_py, _DNS, _HELLO))

    def _share_times(self) -> None:
        """Tell the compiled front the next sweep and the bounds of the day remembered (as they change)."""
        _TIMES.pack_into(self._times, 0, self._sweep_at, self._day_start, self._day_end)

    # -- records in, alert documents out -------------------------------------------------------
    def on_record_py(self, record: Record) -> list[Document]:
        ts = record.ts
        out = self._close_passed(ts) if ts >= self._sweep_at else None  # never in live
        cls = type(record)
        kind = self._kinds.get(cls) or self._kind_of(cls)
        if kind is _DNS or kind is _HELLO:
            # A lookup, or a hello naming its server in the clear (not only an ECH cover name): the
            # name's enrichment (remembered for the day) comes first, as it mostly says that no rule
            # may fire (a destination no catalog knows), before the source is looked up or an
            # observation made. _destination gives the same; it runs where DNS attribution decides.
            # (The kind tells the class: its fields are read without a cast, a call per record.)
            name: str | None
            if kind is _DNS:
                name = record.name  # type: ignore[union-attr]
            else:
                name = None if record.ech else record.server_name  # type: ignore[union-attr]
            if name:
                if self._day_start <= ts < self._day_end:  # the day remembered (False for NaN), its names too
                    day, named = self._day_value, self._by_name
                else:
                    day = self._day(ts)
                    named = self._names_on(day)
                normal, enrichment, rules = named.get(name) or self._name(named, name, day)
                if normal or kind is _DNS:
                    if rules is None:  # no rule may fire there, and no observation is wanted
                        return out or []
                    phi_host = self._phi_host_of(record.flow.src_ip)
                    if phi_host is None:
                        return out or []
                    source = "dns" if kind is _DNS else record.protocol  # type: ignore[union-attr]
                    vendor, destination, allowed, baa, status = enrichment
                    obs = _observation(record, source, phi_host, destination, vendor, baa, allowed, status,
                                       None, None, None)
                    return self._evaluate(obs, rules, ts, out)
        elif kind is _LOCAL:  # a local host's name: never evidence of egress
            return out or []
        phi_host = self._phi_host_of(record.flow.src_ip)
        if phi_host is None or not (self.rules or self.on_observation):
            return out or []
        if kind is _HTTP:
            obs = self._request_observation(record, phi_host)  # type: ignore[arg-type]
            rules = self.rules
        else:  # a hello DNS attribution may decide (no name, or an ECH one): asked of a PHI host's only
            found = self._destination(record, kind)
            if found is None:
                return out or []
            rules = self._rules_for[found[1][0] is not None]  # (source, (vendor, ...))
            if not rules and self.on_observation is None:  # no rule may fire: no observation to make
                return out or []
            source, (vendor, destination, allowed, baa, status) = found
            obs = _observation(record, source, phi_host, destination, vendor, baa, allowed, status, None, None, None)
        return self._evaluate(obs, rules, ts, out)

    on_record = on_record_py  # (an engine's own on_record is the compiled front where there is one)

    def _evaluate(self, obs: Observation, rules: list[tuple[Any, RuleSettings]], ts: float,
                  out: list[Document] | None) -> list[Document]:
        """Ask `rules` about an observation, counting each alert into its window; `out` with the
        documents that go out."""
        if self.on_observation is not None:
            self.on_observation(obs)
        if out is None:
            out = []
        for rule, settings in rules:
            alert = rule.evaluate(obs)
            if alert is not None:
                if self.tunnel_of is not None:  # its documents, however late, name its flow's tunnel
                    obs.record = self.tunnel_of(obs.record)
                if settings.severity:
                    alert.severity = settings.severity
                self._throttle(alert, ts, settings.throttle_seconds, out)
        return out

    def _kind_of(self, cls: type) -> str:
        """The kind of record a class is (its nearest known base decides), remembered."""
        kind = next(_KINDS[base] for base in cls.__mro__ if base in _KINDS)
        self._kinds[cls] = kind
        return kind

    def adopt_state(self, previous: "DetectionEngine") -> None:
        """Carry DNS attribution and open throttle windows over from the engine this one replaces
        (a configuration reload must not page anyone twice for the same alert)."""
        self.dns_cache = previous.dns_cache
        self._windows = previous._windows
        self._ends = previous._ends
        self._unpacked = previous._unpacked
        self._spill = previous._spill

    def _close_passed(self, now: float) -> list[Document]:
        """The final documents of the replay windows no record can join any more, let go."""
        self._sweep_at = now + _SWEEP_SECONDS
        self._share_times()
        horizon = now - self.hold_back
        windows, out = self._windows, []
        for opened in self._ends.values():
            # a window behind one that ends later closes with it, still after its own end
            while opened and opened[0].end <= horizon:
                window = opened.popleft()
                if windows.get(window.key) is window:  # else replaced or evicted since
                    del windows[window.key]
                    if window.count > window.sent_count:
                        out.append(self._final(window))
        for window in self._unpacked:
            if windows.get(window.key) is window:
                window.pack(self._spill)
        self._unpacked.clear()
        self._compact_spill()
        return out

    def finish(self) -> list[Document]:
        return list(self.final_documents())

    def final_documents(self) -> Iterator[Document]:
        """finish() one document at a time, in the order of the windows' start, each window let
        go once its document is built."""
        for window in self._last_windows():
            yield self._final(window)

    def final_lines(self) -> Iterator[tuple[bytes, Any]]:
        """final_documents as the document builder's json_line gives them, (JSON line, what the
        summary counts of it), for outputs that all take lines."""
        line_of = self.build_document.json_line  # type: ignore[attr-defined]
        spill = self._spill  # (let go after the last window)
        for window in self._last_windows():
            count = window.sent_count = window.count
            only = window.destination  # (hosts() inline: most windows reached one host)
            hosts = window.hosts() if window.destinations is not None else [] if only is None else [only]
            yield line_of(window.alert(spill), count, window.start, window.last_seen, window.event_id, hosts)

    def _last_windows(self) -> Iterator[_Window]:
        """The windows whose final document is still to go, in the order of their start, at the end."""
        pending = [window for window in self._windows.values() if window.count > window.sent_count]
        pending.sort(key=_window_start)
        pending.reverse()
        # no record comes any more: what attributed and enriched records is let go, its memory
        # serving the documents (a day of traffic fills these caches)
        self.dns_cache.clear()
        self._enriched.clear()
        self._by_name.clear()
        self._windows.clear()
        self._ends.clear()
        self._unpacked.clear()
        # the documents read the spill in about the order it was written: more blocks kept, fewer
        # unsealings (not the whole spill at once: a day's would add to the run's peak)
        self._spill.read_blocks = _SPILL_FINAL_BLOCKS
        while pending:
            yield pending.pop()
        self._spill = _Spill()  # the file let go

    # -- enrichment ----------------------------------------------------------------------------
    def _observe(self, record: Record, phi_host: PhiHost | None, kind: str | None = None) -> Observation | None:
        if kind is None:
            kind = self._kinds.get(type(record)) or self._kind_of(type(record))
        if kind is _HTTP:
            return self._request_observation(cast(HttpRequest, record), phi_host)
        found = self._destination(record, _DNS if kind is _LOCAL else kind)  # (never asked of a local name)
        if found is None:
            return None
        source, (vendor, destination, allowed, baa, status) = found
        return _observation(record, source, phi_host, destination, vendor, baa, allowed, status, None, None, None)

    def _request_observation(self, record: HttpRequest, phi_host: PhiHost | None) -> Observation:
        host, ts = record.host, record.ts
        if host:  # the name's enrichment as a lookup's or hello's of that name (the same computation)
            if self._day_start <= ts < self._day_end:  # the day remembered (False for NaN), its names too
                day, named = self._day_value, self._by_name
            else:
                day = self._day(ts)
                named = self._names_on(day)
            vendor, destination, allowed, baa, status = (named.get(host) or self._name(named, host, day))[1]
        else:
            names = self.dns_cache.names_for(record.flow.dst_ip, ts)
            vendor, destination, allowed, baa, status = self._enrich(names, self._day(ts))
        obs = _observation(record, "http", phi_host, destination, vendor, baa, allowed, status, None, None, None)
        self._inspect_http(record, obs)
        return obs

    def _destination(self, record: Record, kind: str) -> tuple[str, _Enrichment] | None:
        """(source, enrichment) of a lookup or hello (`kind` says which); None for a hello whose
        destination is unknown."""
        ts = record.ts
        if self._day_start <= ts < self._day_end:  # the day remembered (False for NaN), its names too
            day, named = self._day_value, self._by_name
        else:
            day = self._day(ts)
            named = self._names_on(day)
        if kind is _DNS:
            name = cast(DnsQuery, record).name
            return "dns", (named.get(name) or self._name(named, name, day))[1]
        hello = cast(TlsHello, record)
        resolved = None  # what DNS said the destination is: looked up only when it decides
        if hello.server_name:
            found = named.get(hello.server_name) or self._name(named, hello.server_name, day)
            sni, enrichment = found[0], found[1]
            if sni:
                if not hello.ech:
                    return hello.protocol, enrichment
                resolved = self.dns_cache.names_for(hello.flow.dst_ip, ts)
                if not is_cover_name(sni, resolved):
                    return hello.protocol, enrichment
        if resolved is None:
            resolved = self.dns_cache.names_for(hello.flow.dst_ip, ts)
        # no SNI, or only an ECH cover name: the destination is what DNS said it is
        return ("dns-attribution", self._enrich(resolved, day)) if resolved else None

    def _names_on(self, day: dt.date) -> dict[str, _Named]:
        """Where the names of a day are remembered: the remembered day's table, or for a time
        outside it nowhere (an empty table)."""
        return self._by_name if day == self._day_value else {}

    def _name(self, named: dict[str, _Named], name: str, day: dt.date) -> _Named:
        """(normalized name, enrichment, the rules a lookup or hello may fire) of a name as a record
        spelled it, remembered in `named`: the rules are None where none may fire and no
        observation is wanted (most names: no catalog knows them)."""
        normal = normalize_host(name)
        if len(named) >= MAX_ENRICHED_KEYS:
            named.clear()
        enrichment = self._enrich((normal,), day)
        rules = self._rules_for[enrichment[0] is not None]
        found = named[name] = (normal, enrichment, rules if rules or self.on_observation is not None else None)
        return found

    def _enrich(self, names: tuple[str, ...], day: dt.date) -> _Enrichment:
        """(vendor, destination, allowed, BAA, BAA status) of the names a record goes to on a day.
        The same for every record to those names that day, so computed once per (names, day)."""
        key = (names, day)
        found = self._enriched.get(key)
        if found is not None:
            return found
        catalog = self.policy.catalog
        vendor, destination = None, (names[0] if names else None)
        for name in names:
            vendor = catalog.match_host(name)
            if vendor is not None:
                destination = name
                break
        allowed = bool(self.policy.allow) and any(self.policy.is_allowed(name) for name in names)
        baa, status = self.policy.baa.standing(vendor, destination, day)
        found = (vendor, destination, allowed, baa, status)
        if len(self._enriched) >= MAX_ENRICHED_KEYS:
            self._enriched.clear()
        self._enriched[key] = found
        return found

    def _day(self, ts: float) -> dt.date:
        """_day_of(ts), remembered for the day the last time fell in (captures are in time order)."""
        if self._day_start <= ts < self._day_end:  # False for NaN
            return self._day_value
        day = _day_of(ts)
        if 0.0 <= ts < 1e11:
            # fromtimestamp rounds to the microsecond: every time from midnight to a microsecond
            # before the next one falls on the same day.
            start = ts // _DAY_SECONDS * _DAY_SECONDS
            if day == _EPOCH_DAY + dt.timedelta(days=int(start // _DAY_SECONDS)):
                if day != self._day_value:  # the names remembered were enriched for another day
                    self._by_name.clear()
                self._day_start, self._day_end, self._day_value = start, start + _DAY_SECONDS - 1e-6, day
                self._share_times()
        return day

    def _inspect_http(self, record: HttpRequest, obs: Observation) -> None:
        target = record.target
        # (the scan takes the first Content-Type header itself)
        obs.findings = scan_http(record.method, target, record.headers, record.body, None)
        # match_endpoint leaves out an origin-form target's query and fragment as split_target does
        path = target if target[:1] == "/" else split_target(target)[0]
        match = self.policy.catalog.match_endpoint(record.host or obs.destination or "", path)
        if match is None:
            return
        _vendor, endpoint = match
        payload = decode_tracker(endpoint.decoder, record.method, record.target, record.headers, record.body)
        if payload is not None:
            obs.tracker = payload
            obs.tracker_findings = scan_tracker(payload)
            self.counters.add(f"trackers.{endpoint.decoder}")

    # -- throttle ------------------------------------------------------------------------------
    def _throttle(self, alert: Alert, ts: float, window_seconds: float, out: list[Document]) -> None:
        """Count an alert into its window, appending the documents it makes go out to `out`."""
        obs = alert.observation
        subject = alert.throttle_subject
        key = (alert.rule.id, obs.record.flow.src_ip, subject)
        # only an HTTP request's findings can be health data: lookups and hellos have none
        health_data = bool(alert.findings or obs.findings or obs.tracker_findings) and _carries_health_data(alert)
        windows = self._windows
        window = windows.get(key)
        if window is not None and ts < window.end:
            window.count += 1
            if ts > window.last_seen:
                window.last_seen = ts
            grew = window.see(obs.destination, ts, health_data)
            severity = alert.severity
            counts = self.counters.values  # (Counters.add inline: alerts that join a window are many)
            if SEVERITY_RANK[severity] > SEVERITY_RANK[window.severity]:
                # Stronger evidence (a DNS lookup, then plaintext data) must reach people at once:
                # the window's document is re-sent with the stronger alert under the same id.
                self._keep(window, alert, health_data)
                counts["alerts.escalated"] = counts.get("alerts.escalated", 0) + 1
                if self.immediate:
                    out.append(self._final(window))
                return
            if health_data and severity == window.severity and not window.health_data:
                # the document then shows the request that carried the data
                self._keep(window, alert, True)
            if grew:
                # Where the data went is what an analyst asks first: a new host is re-sent at once.
                counts["alerts.updated"] = counts.get("alerts.updated", 0) + 1
                if self.immediate:
                    out.append(self._final(window))
                return
            counts["alerts.suppressed"] = counts.get("alerts.suppressed", 0) + 1
            return
        if window is not None:
            del windows[key]
            if window.count > window.sent_count:
                out.append(self._final(window))
        # the windows of a source host, or of a subject, share one string of it (a day of traffic
        # holds tens of thousands of windows, their keys made of strings of records)
        key = (key[0], sys.intern(key[1]), sys.intern(subject))
        immediate = self.immediate
        window = windows[key] = _Window(ts, ts + window_seconds, key, health_data, 1, ts, 1 if immediate else 0)
        self._keep(window, alert, health_data)
        destination = obs.destination
        if destination:  # (window.see of a window's first host)
            window.destination = _new_destination(destination, 1, ts, ts, health_data)
        if not immediate and math.isfinite(window.end + self.hold_back):  # else it never closes by time
            opened = self._ends.get(window_seconds)
            if opened is None:
                opened = self._ends[window_seconds] = deque()
            opened.append(window)
        if len(windows) > MAX_THROTTLE_KEYS:
            _, oldest = windows.popitem(last=False)
            if oldest.count > oldest.sent_count:
                out.append(self._final(oldest))
        if immediate:
            out.append(self.build_document(alert, 1, ts, ts, window.event_id, window.hosts()))

    def _keep(self, window: _Window, alert: Alert, health_data: bool) -> None:
        """Keep `alert` as the window's: packed at once live, at the next sweep in a replay."""
        window.keep(alert, health_data)
        if self.immediate:
            window.pack(self._spill)
            self._compact_spill()
        else:
            self._unpacked.append(window)  # (twice if replaced again before then: packed once)

    def _compact_spill(self) -> None:
        if self._spill.size > self._spill.compact_at:
            self._spill = self._spill.compacted(self._windows.values())

    def _final(self, window: _Window) -> Document:
        window.sent_count = window.count
        return self.build_document(
            window.alert(self._spill), window.count, window.start, window.last_seen, window.event_id,
            window.hosts(),
        )


# The request headers an alert document shows (its referrer, MIME type and user agent)
_DOCUMENT_HEADERS = frozenset({"referer", "content-type", "user-agent"})

# How a record is packed, by its class: (index in _PACKABLE, its fields' getter, the index of a
# request's headers, of its body, of a lookup's answers, 0 where none); None for a class that
# cannot be packed
_PackSpec = tuple[int, Callable[[Any], tuple[Any, ...]], int, int, int]
_PACK_SPECS: dict[type, _PackSpec | None] = {}
# (class, constructor from every field in order, index of the answers or 0), by index
_PACKABLE: list[tuple[type, Callable[..., Any], int]] = []
_flow_values = attrgetter("src_ip", "src_port", "dst_ip", "dst_port", "transport")
_answer_values = attrgetter("name", "type", "data", "ttl")
_new_flow = positional_constructor(Flow)
_new_answer = positional_constructor(DnsAnswer)
# what an alert's documents show of its findings, decoded fields and tracker payload, as tuples
_SEQUENCES = (tuple, list)
_finding_values = attrgetter(*[item.name for item in dataclasses.fields(Finding)])
_field_values = attrgetter(*[item.name for item in dataclasses.fields(Field)])
_tracker_values = attrgetter(*[item.name for item in dataclasses.fields(TrackerPayload)])
_new_finding = positional_constructor(Finding)
_new_field = positional_constructor(Field)


def _like(sequence: Sequence[Any], items: list[Any]) -> tuple[Any, ...] | list[Any]:
    """`items` in the kind of sequence `sequence` is (tuple or list), which unpacking gives back."""
    return tuple(items) if type(sequence) is tuple else items


def _pack_spec(cls: type) -> _PackSpec | None:
    """How records of `cls` are packed: every field in order, the flow (always the second) and a
    lookup's answers as plain tuples; None for a class that is not such a record."""
    spec: _PackSpec | None = None
    if dataclasses.is_dataclass(cls) and issubclass(cls, (DnsQuery, TlsHello, HttpRequest)):
        names = [item.name for item in dataclasses.fields(cls)]
        if all(item.init and not item.kw_only for item in dataclasses.fields(cls)) and names[:2] == ["ts", "flow"]:
            def at(name: str) -> int:
                return names.index(name) if name in names else 0
            # the compiled constructor writes a class's own slots: a subclass adding none, or
            # only some, of its fields is built by its class
            own = cls.__dict__.get("__slots__", ())
            make = positional_constructor(cls) if len(own) == len(names) else cls
            _PACKABLE.append((cls, make, at("answers") if issubclass(cls, DnsQuery) else 0))
            request = issubclass(cls, HttpRequest)
            spec = (len(_PACKABLE) - 1, attrgetter(*names), at("headers") if request else 0,
                    at("body") if request else 0, _PACKABLE[-1][2])
    _PACK_SPECS[cls] = spec
    return spec


def _pack(alert: Alert, findings: Sequence[Finding], fields: Sequence[Field],
          tracker: TrackerPayload | None) -> bytes | Alert:
    """An alert's own parts in one bytes object (marshal): its summary, its observation's plain
    values and its record, the record's flow (and its tunnel) and answers as tuples, a request without its body
    and with only the headers a document shows, the `findings`, `fields` and `tracker` payload its
    documents show. The alert itself where its record is of a class that cannot be packed."""
    obs = alert.observation
    record = obs.record
    cls = type(record)
    spec = _PACK_SPECS[cls] if cls in _PACK_SPECS else _pack_spec(cls)
    flow = record.flow
    if spec is None or (type(flow) is not Flow and type(flow) is not TunnelledFlow):
        return alert
    shown = None
    if findings or fields or tracker is not None:
        if not (type(findings) in _SEQUENCES and all(type(finding) is Finding for finding in findings)
                and type(fields) in _SEQUENCES and all(type(field) is Field for field in fields)
                and (tracker is None or type(tracker) is TrackerPayload)):
            return alert
        shown = (_like(findings, [_finding_values(finding) for finding in findings]),
                 _like(fields, [_field_values(field) for field in fields]),
                 None if tracker is None else _tracker_values(tracker))
    index, values_of, headers_at, body_at, answers_at = spec
    values = list(values_of(record))
    # a tunnelled flow's tunnel goes with it (its documents name the tunnel)
    values[1] = (*_flow_values(flow), flow.tunnel) if isinstance(flow, TunnelledFlow) else _flow_values(flow)
    if answers_at:
        values[answers_at] = tuple([_answer_values(answer) for answer in values[answers_at]])
    if headers_at:
        values[headers_at] = tuple(header for header in values[headers_at] if header[0].lower() in _DOCUMENT_HEADERS)
    if body_at:
        values[body_at] = b""
    try:
        packed: Any = (alert.summary, obs.source_record, obs.destination, obs.allowed, obs.baa_status, index, values,
                       shown)
        return marshal.dumps(packed)
    except ValueError:  # a value marshal cannot write
        return alert


def _carries_health_data(alert: Alert) -> bool:
    """Whether the request behind an alert carried health data (plaintext or in a tracker payload)."""
    obs = alert.observation
    return any(is_health_data(found) for found in (alert.findings, obs.findings, obs.tracker_findings) if found)


def _day_of(ts: float) -> dt.date:
    """The UTC day of a capture time; a time no date can name (pcapng times are 64-bit) falls on
    the first or the last day there is."""
    try:
        return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).date()
    except (OverflowError, OSError, ValueError):
        return dt.date.min if ts < 0 else dt.date.max
