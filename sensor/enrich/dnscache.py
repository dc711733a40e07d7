"""IP -> names from observed DNS answers, to attribute flows that carry no usable name
(no SNI, an ECH cover name, HTTP without Host, QUIC whose hello was not seen).

For each address the names are kept in chain order: the name the client asked for first, then
every CNAME target down to the address record. A first-party alias that points at a tracker
(`metrics.hospital.org CNAME x.sc.omtrdc.net`) is attributed through the chain.
Entries live for the record's TTL (bounded below and above), counted from when the response was
seen, and the table is capped (LRU); expired entries are let go as the capture's clock passes them
(a look every SWEEP_SECONDS of capture time), so a long capture holds the answers of its last
minutes, not of all of it. The cache learns from responses as they are decoded, so the second
replay worker learns every answer too (sensor.capture.workers), from the response alone.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sensor.decode.dns import DnsError, parse_message_py
from sensor.records import Counters, DnsAnswer

if TYPE_CHECKING:
    from sensor.decode.dns import DnsMessage

try:  # responses (addresses, CNAME chains of ASCII names) stored in one compiled call; DnsCache._learn_py is the reference
    from sensor._fast import dns_learn as _learn_fast
    from sensor._fast import share_decoder as _share_decoder
except ImportError:  # built without a C compiler
    _learn_fast = _share_decoder = None

MIN_TTL = 60.0  # resolvers and clients keep using addresses a little past short TTLs
MAX_TTL = 86_400.0
SWEEP_SECONDS = 60.0  # capture seconds between two looks for expired entries


class DnsCache:
    def __init__(self, max_entries: int = 100_000, counters: Counters | None = None, late: float = 0.0) -> None:
        """`late`: capture seconds a record may come after later ones (and still ask for names):
        an entry is let go that long after it expired."""
        self.max_entries = max_entries
        self.counters = counters if counters is not None else Counters()
        self.late = late
        # address -> (expiry, names in chain order)
        self._entries: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._move_to_end = self._entries.move_to_end
        self._sweep_at = -math.inf if late < math.inf else math.inf  # (nothing to let go of then)

    def learn(self, ts: float, message: DnsMessage, counted: bool = True) -> None:
        """Store what a DNS response seen at `ts` answers, for each of its questions in turn (as
        the record of each would). `counted`: False for a response another replay worker counts."""
        if ts >= self._sweep_at:  # (never for a time that is not a number)
            self._sweep(ts)
        stored = None
        entries = self._entries
        if _learn_fast is not None:
            stored = _learn_fast(entries, self._move_to_end, ts, message, MIN_TTL, MAX_TTL)
        if stored is None:
            stored = self._learn_py(ts, message)
        if stored:
            if len(entries) > self.max_entries:
                self._stored(stored, counted)
            elif counted:  # _stored's common case (nothing to let go), for every response
                counts = self.counters.values
                counts["dnscache.stored"] = counts.get("dnscache.stored", 0) + stored

    def shared_decoder(self, shared_route: int) -> Callable[[int, bytes, float], Any] | None:
        """The compiled decode (linktype, frame, ts) of a replay worker that learns the DNS answers
        routed `shared_route` (another worker's) into this cache, uncounted, as it decodes them
        (sensor.decode.dispatch.shared_decode_py is the reference); None without the extension."""
        if _share_decoder is None:
            return None
        decode: Callable[[int, bytes, float], Any] = _share_decoder(shared_route, self, MIN_TTL, MAX_TTL)
        return decode

    def _learn_py(self, ts: float, message: DnsMessage) -> int:
        """learn's stores, in Python: the reference of the compiled dns_learn. How many."""
        answers = message.answers
        if not answers or not message.is_response:
            return 0
        return sum(self._store_py(ts, name, answers) for name, _qtype in message.questions)

    def learn_wire_py(self, ts: float, data: bytes) -> int | None:
        """What the compiled dns_learn_wire stores of the DNS message `data` seen at `ts` (the
        reference of its walk of the wire format): what _learn_py stores of the message the
        Python parser reads, how many; None where it reads none."""
        try:
            message = parse_message_py(data)
        except DnsError:
            return None
        return self._learn_py(ts, message)

    def observe(self, ts: float, name: str, answers: Sequence[DnsAnswer], counted: bool = True) -> None:
        """Store the addresses `answers` give for the question `name`, as of `ts`."""
        if ts >= self._sweep_at:
            self._sweep(ts)
        stored = self._store_py(ts, name, answers)
        if stored:
            self._stored(stored, counted)

    def _stored(self, stored: int, counted: bool) -> None:
        """After `stored` addresses were stored: the oldest let go past the cap, both counted."""
        entries, evicted = self._entries, 0
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            evicted += 1
        if counted:
            self.counters.add("dnscache.stored", stored)
            if evicted:
                self.counters.add("dnscache.evicted", evicted)

    def _store_py(self, ts: float, name: str, answers: Sequence[DnsAnswer]) -> int:
        """Store the addresses of `answers`, each moved to the end; how many."""
        # Without CNAMEs every address record is attributed to the name asked for; at the first
        # CNAME the chains are followed and every address stored again (in the same order) with
        # the chain that leads to it.
        asked = (name.lower(),)
        entries, chain = self._entries, None
        while True:
            stored = 0
            for answer in answers:
                kind = answer.type
                if kind == "A" or kind == "AAAA":
                    ttl = answer.ttl
                    expiry = ts + (MIN_TTL if ttl < MIN_TTL else MAX_TTL if ttl > MAX_TTL else ttl)
                    address = answer.data
                    entries[address] = (expiry, asked if chain is None else chain.get(answer.name.lower(), asked))
                    entries.move_to_end(address)
                    stored += 1
                elif kind == "CNAME" and chain is None:
                    chain = _chain(answers, asked)
                    break
            else:
                return stored

    def _sweep(self, now: float) -> None:
        """Let go of the entries no record can ask for any more."""
        self._sweep_at = now + SWEEP_SECONDS
        horizon = now - self.late
        entries = self._entries
        gone = [address for address, (expiry, _names) in entries.items() if expiry < horizon]
        for address in gone:
            del entries[address]
        if gone:
            self.counters.add("dnscache.swept", len(gone))

    def names_for(self, address: str, now: float) -> tuple[str, ...]:
        """Names that resolved to `address` and are still valid at `now` (capture time)."""
        entry = self._entries.get(address)
        if entry is None:
            return ()
        expiry, names = entry
        if now > expiry:
            del self._entries[address]
            self.counters.add("dnscache.expired")
            return ()
        self._entries.move_to_end(address)
        return names

    def clear(self) -> None:
        """Forget every answer (the end of a run: no record asks any more)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _chain(answers: Sequence[DnsAnswer], asked: tuple[str]) -> dict[str, tuple[str, ...]]:
    """For every owner name in the answer section, the path of names from the question (`asked`,
    lowered) to it."""
    paths: dict[str, tuple[str, ...]] = {asked[0]: asked}
    # CNAME answers may come in any order: follow them until nothing new is reachable, each pass
    # trying again only those whose owner was not reachable yet (in order, so the first path
    # found to a name stays). Most come in order and take one pass.
    pending = []
    for answer in answers:
        if answer.type == "CNAME":
            owner, target = answer.name.lower(), answer.data.lower().rstrip(".")
            path = paths.get(owner)
            if path is None:
                pending.append((owner, target))
            elif target not in paths and len(path) < 16:
                paths[target] = path + (target,)
    while pending:
        deferred = []
        for owner, target in pending:
            path = paths.get(owner)
            if path is None:
                deferred.append((owner, target))
            elif target not in paths and len(path) < 16:
                paths[target] = path + (target,)
        if len(deferred) == len(pending):
            break
        pending = deferred
    return paths
