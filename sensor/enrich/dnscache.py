"""IP -> names from observed DNS answers, to attribute flows that carry no usable name
(no SNI, an ECH cover name, HTTP without Host, QUIC whose hello was not seen).

For each address the names are kept in chain order: the name the client asked for first, then
every CNAME target down to the address record. A first-party alias that points at a tracker
(`metrics.hospital.org CNAME x.sc.omtrdc.net`) is attributed through the chain.
Entries live for the record's TTL (bounded below and above) and the table is capped (LRU);
expired entries are let go as the capture's clock passes them (a look every SWEEP_SECONDS of
capture time), so a long capture holds the answers of its last minutes, not of all of it.
"""
from __future__ import annotations

import math
from collections import OrderedDict

from sensor.records import Counters, DnsQuery, LocalNameQuery

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
        self._sweep_at = -math.inf if late < math.inf else math.inf  # (nothing to let go of then)

    def observe(self, query: DnsQuery) -> None:
        answers = query.answers
        if not answers or isinstance(query, LocalNameQuery):  # local-link answers: anyone may send one
            return
        # Without CNAMEs every address record is attributed to the name asked for; at the first
        # CNAME the chains are followed and every address stored again (in the same order) with
        # the chain that leads to it.
        asked = (query.name.lower(),)
        entries, ts, chain = self._entries, query.ts, None
        if ts >= self._sweep_at:  # (never for a time that is not a number)
            self._sweep(ts)
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
                    chain = _chain(query, asked)
                    break
            else:
                break
        if stored:
            counts = self.counters.values  # counted in place: once per answered lookup
            counts["dnscache.stored"] = counts.get("dnscache.stored", 0) + stored
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
                self.counters.add("dnscache.evicted")

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

    def __len__(self) -> int:
        return len(self._entries)


def _chain(query: DnsQuery, asked: tuple[str]) -> dict[str, tuple[str, ...]]:
    """For every owner name in the answer section, the path of names from the question (`asked`,
    lowered) to it."""
    paths: dict[str, tuple[str, ...]] = {asked[0]: asked}
    # CNAME answers may come in any order: follow them until nothing new is reachable, each pass
    # trying again only those whose owner was not reachable yet (in order, so the first path
    # found to a name stays). Most come in order and take one pass.
    pending = []
    for answer in query.answers:
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
