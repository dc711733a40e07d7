"""A disk-backed FIFO in front of every remote sink, and the delivery thread that drains it.

Documents are written to an SQLite file (WAL mode) the moment they are sent, and removed only
after the remote end confirmed them, so an outage or a crash loses nothing: the next run delivers
what is left, oldest first (at-least-once; deterministic ids make it exactly-once in Elasticsearch).
The file is bounded; on overflow the oldest document of the lowest severity goes first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sensor.errors import ConfigError, SensorError
from sensor.output.documents import severity_rank
from sensor.output.files import create_private, open_append, private_dir
from sensor.severity import SEVERITIES

log = logging.getLogger(__name__)

# Spool ranks: events (no severity) are the first to go on overflow, then low ... critical.
RANK_NAMES = ("event", *SEVERITIES)

DEFAULT_MAX_ITEMS = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# A server asking for a longer pause than this is retried after this long anyway.
MAX_RETRY_AFTER = 600.0
IDLE_POLL_SECONDS = 1.0
# Jitter has its own generator: delivery threads leave the global random state alone.
_jitter = random.Random()


class SpoolError(SensorError):
    """The spool file cannot be opened or created (directory missing or not writable)."""


def with_event_id(doc: dict[str, Any]) -> dict[str, Any]:
    """Give a document without `event.id` (an event; alerts have theirs) one derived from its
    content, as alerts do, so a bulk retried after a lost answer cannot index it twice."""
    event = doc.get("event")
    if isinstance(event, dict) and not event.get("id"):
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return {**doc, "event": {**event, "id": hashlib.sha1(canonical.encode()).hexdigest()}}
    return doc


@dataclass(frozen=True, slots=True)
class SpoolItem:
    seq: int
    doc: dict[str, Any]


class Spool:
    """Bounded, persistent FIFO of JSON documents, shared by the sending and the delivering thread."""

    def __init__(self, path: Path, *, max_items: int = DEFAULT_MAX_ITEMS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("spool bounds must be positive")
        self.path = path
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._dropped = dict.fromkeys(RANK_NAMES, 0)
        self._corrupt = 0
        self._conn = self._open(path)
        count, size = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM items").fetchone()
        self._count: int = count
        self._bytes: int = size

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # Autocommit mode: every statement commits at once unless wrapped in an explicit BEGIN.
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL survives a killed process (the WAL is on disk); only a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS items ("
                "seq INTEGER PRIMARY KEY AUTOINCREMENT, rank INTEGER NOT NULL, body BLOB NOT NULL)"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS items_by_rank ON items (rank, seq)")
            conn.execute("SELECT COUNT(*) FROM items").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            private_dir(path.parent, "spool")
            create_private(path)  # SQLite gives its -wal and -shm files the database file's mode
        except (ConfigError, OSError) as exc:
            raise SpoolError(f"spool {path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not path.exists():
                raise SpoolError(f"spool {path}: {exc}") from None
        # Not a database (or damaged beyond use): keep it aside for inspection and start afresh
        # rather than refusing to deliver anything new.
        aside = path.with_name(path.name + ".corrupt")
        log.warning("spool %s is unreadable; moved to %s and started empty", path, aside)
        try:
            path.replace(aside)
            for suffix in ("-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            return self._connect(path)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise SpoolError(f"spool {path}: {exc}") from None

    def put(self, doc: dict[str, Any]) -> bool:
        """Store a document; False when it was dropped because the spool is full of more important ones."""
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        rank = severity_rank(doc)
        with self._lock:
            if len(body) > self.max_bytes:
                self._dropped[RANK_NAMES[rank]] += 1
                return False
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                while self._count + 1 > self.max_items or self._bytes + len(body) > self.max_bytes:
                    victim = self._conn.execute(
                        "SELECT seq, rank, LENGTH(body) FROM items ORDER BY rank, seq LIMIT 1"
                    ).fetchone()
                    if victim is None or victim[1] > rank:
                        # Everything spooled matters more than the newcomer: the newcomer is the one to lose.
                        self._conn.execute("COMMIT")
                        self._dropped[RANK_NAMES[rank]] += 1
                        return False
                    self._conn.execute("DELETE FROM items WHERE seq = ?", (victim[0],))
                    self._count -= 1
                    self._bytes -= victim[2]
                    self._dropped[RANK_NAMES[victim[1]]] += 1
                self._conn.execute("INSERT INTO items (rank, body) VALUES (?, ?)", (rank, body))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                self._recount()
                raise
            self._count += 1
            self._bytes += len(body)
        return True

    def _recount(self) -> None:
        self._count, self._bytes = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM items"
        ).fetchone()

    def peek(self, limit: int) -> list[SpoolItem]:
        """The oldest `limit` documents, in order, still spooled until acknowledged."""
        items: list[SpoolItem] = []
        unreadable: list[int] = []
        with self._lock:
            rows = self._conn.execute("SELECT seq, body FROM items ORDER BY seq LIMIT ?", (limit,)).fetchall()
        for seq, body in rows:
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                unreadable.append(seq)
                continue
            if isinstance(doc, dict):
                items.append(SpoolItem(seq, doc))
            else:
                unreadable.append(seq)
        if unreadable:
            self._corrupt += len(unreadable)
            self.ack(unreadable)
        return items

    def ack(self, seqs: Iterable[int]) -> None:
        """Remove delivered (or permanently refused) documents."""
        wanted = list(seqs)
        if not wanted:
            return
        with self._lock:
            removed = removed_bytes = 0
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(wanted), 500):
                    chunk = wanted[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    count, size = self._conn.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM items WHERE seq IN ({marks})", chunk
                    ).fetchone()
                    self._conn.execute(f"DELETE FROM items WHERE seq IN ({marks})", chunk)
                    removed += count
                    removed_bytes += size
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                self._recount()
                raise
            self._count -= removed
            self._bytes -= removed_bytes

    @property
    def dead_letter_path(self) -> Path:
        """Where documents the remote end refused for good are kept: beside the spool."""
        return self.path.with_name(self.path.stem + ".dead-letter.jsonl")

    def dead_letter(self, docs: Sequence[dict[str, Any]]) -> None:
        """Append refused documents (as spooled: redacted like every output) as JSON lines."""
        if not docs:
            return
        lines = b"".join(
            json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode() + b"\n" for doc in docs
        )
        with self._lock, open_append(self.dead_letter_path, what="dead-letter") as out:
            out.write(lines)

    def depth(self) -> int:
        with self._lock:
            return self._count

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = {"spool_depth": self._count, "spool_bytes": self._bytes, "dropped": sum(self._dropped.values())}
            out.update({f"dropped_{name}": n for name, n in self._dropped.items()})
            out["spool_corrupt"] = self._corrupt
            return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: the n-th consecutive failure waits about base * 2**(n-1), capped."""

    base: float = 1.0
    maximum: float = 60.0

    def delay(self, failures: int) -> float:
        ceiling = min(self.maximum, self.base * 2 ** min(max(failures - 1, 0), 32))
        # "Equal jitter": never less than half the ceiling, so a fleet does not retry in lockstep
        # and a failing server is not hammered by near-zero waits.
        return ceiling / 2 + _jitter.uniform(0, ceiling / 2)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What the remote end did with a batch. Items in neither list stay spooled and are retried."""

    delivered: Sequence[int] = ()
    rejected: Sequence[int] = ()
    duplicates: int = 0  # among delivered: already present (an earlier attempt had landed)
    retry_after: float | None = None  # pause the server asked for
    problem: str | None = None  # short reason for the retries or rejections, safe to log (no content)


@dataclass
class _Counters:
    values: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


class SpooledSink(ABC):
    """Base of the remote sinks: `send` only appends to the spool; one thread per sink delivers in order.

    Subclasses implement `_deliver(batch) -> DeliveryResult` and may extend `_wants(doc)`. The delivery
    thread starts in `__init__`, so a subclass sets up its transport before calling it.
    """

    name: str

    def __init__(
        self,
        name: str,
        spool: Spool,
        *,
        min_severity: str | None = None,
        events: bool = False,
        batch_size: int = 1,
        backoff: Backoff = Backoff(),
    ) -> None:
        if min_severity is not None and min_severity not in SEVERITIES:
            raise ValueError(f"unknown severity {min_severity!r}")
        self.name = name
        self._spool = spool
        self._min_rank = SEVERITIES.index(min_severity) + 1 if min_severity else 1
        self._events = events
        self._batch_size = batch_size
        self._backoff = backoff
        self._counters = _Counters(
            {k: 0 for k in ("sent", "duplicates", "retries", "failed", "dead_lettered", "filtered", "spool_errors")}
        )
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    # -- caller side -------------------------------------------------------------------------
    def send(self, doc: dict[str, Any]) -> None:
        if not self._wants(doc):
            return
        try:
            self._spool.put(with_event_id(doc))
        except sqlite3.Error as exc:
            # Disk full or the like: count the loss, never let it reach packet processing.
            self._counters.add("spool_errors")
            log.error("%s: cannot spool a document: %s", self.name, type(exc).__name__)
            return
        self._wake.set()

    def _wants(self, doc: dict[str, Any]) -> bool:
        rank = severity_rank(doc)
        if (rank == 0 and not self._events) or (rank != 0 and rank < self._min_rank):
            self._counters.add("filtered")
            return False
        return True

    def refused_note(self) -> str | None:
        """One line when the remote end refused documents for good during this run (exit 4)."""
        refused = self._counters.snapshot().get("dead_lettered", 0)
        if not refused:
            return None
        return f"{self.name}: {refused} document(s) refused for good, kept in {self._spool.dead_letter_path}"

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._progress:
            while self._spool.depth() > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._progress.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._stopping.set()
        self._wake.set()
        self._thread.join(max(deadline - time.monotonic(), 0.1))
        if self._thread.is_alive():
            # Stuck in a network call: it is a daemon thread; what it holds is still in the spool.
            return
        self._close_transport()
        self._spool.close()

    def stats(self) -> dict[str, int]:
        out = self._counters.snapshot()
        out.update(self._spool.stats())
        return out

    # -- delivery thread ---------------------------------------------------------------------
    @abstractmethod
    def _deliver(self, batch: list[SpoolItem]) -> DeliveryResult:
        """Try to deliver a batch (oldest first); never raises for server or network failures."""

    def _close_transport(self) -> None:
        """Release connections once the delivery thread has stopped."""

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                batch = self._spool.peek(self._batch_size)
            except sqlite3.Error as exc:
                self._counters.add("spool_errors")
                log.error("%s: cannot read the spool: %s", self.name, type(exc).__name__)
                self._stopping.wait(self._backoff.maximum)
                continue
            if not batch:
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()
                continue
            try:
                result = self._deliver(batch)
            except Exception as exc:  # an unexpected client error must not end delivery for this run
                log.debug("%s: unexpected delivery error", self.name, exc_info=True)
                result = DeliveryResult(problem=f"unexpected {type(exc).__name__}")
            settled = [*result.delivered, *result.rejected]
            if result.rejected:
                refused = set(result.rejected)
                try:  # kept before it leaves the spool: a crash in between writes it twice, never loses it
                    self._spool.dead_letter([item.doc for item in batch if item.seq in refused])
                    self._counters.add("dead_lettered", len(refused))
                except (OSError, SensorError) as exc:
                    log.error("%s: cannot write the dead-letter file: %s", self.name, exc)
                    settled = list(result.delivered)  # the refused stay spooled, retried next time
                    self._stopping.wait(self._backoff.maximum)
            try:
                self._spool.ack(settled)
            except sqlite3.Error as exc:
                # Delivered but still spooled: it will go again, after a pause rather than in a tight loop.
                self._counters.add("spool_errors")
                log.error("%s: cannot update the spool: %s", self.name, type(exc).__name__)
                self._stopping.wait(self._backoff.maximum)
            self._counters.add("sent", len(result.delivered))
            self._counters.add("duplicates", result.duplicates)
            if result.rejected:
                self._counters.add("failed", len(result.rejected))
                log.error("%s: %d document(s) refused for good: %s", self.name, len(result.rejected), result.problem)
            with self._progress:
                self._progress.notify_all()
            pending = len(batch) - len(settled)
            if not pending:
                if failures:
                    log.info("%s: delivering again after %d failed attempt(s)", self.name, failures)
                failures = 0
                continue
            failures += 1
            self._counters.add("retries", pending)
            if failures == 1:
                log.warning("%s: delivery failed, retrying with backoff: %s", self.name, result.problem)
            delay = self._backoff.delay(failures)
            if result.retry_after is not None:
                delay = min(max(result.retry_after, 0.0), MAX_RETRY_AFTER)
            self._stopping.wait(delay)
