"""DNS attribution cache: CNAME chains, TTL bounds, caps."""
from __future__ import annotations

from sensor.enrich.dnscache import MIN_TTL, DnsCache
from sensor.records import DnsAnswer, DnsQuery, Flow

FLOW = Flow("10.20.0.5", 50000, "10.0.0.53", 53, "udp")


def query(name: str, answers: list[DnsAnswer], ts: float = 100.0) -> DnsQuery:
    return DnsQuery(ts, FLOW, 1, name, "A", True, "NOERROR", tuple(answers))


def test_cname_chain_is_kept_in_order_even_when_answers_are_shuffled() -> None:
    cache = DnsCache()
    cache.observe(query("metrics.hospital.org", [
        DnsAnswer("edge.sc.omtrdc.net", "A", "203.0.113.7", 300),
        DnsAnswer("hospital.sc.omtrdc.net", "CNAME", "edge.sc.omtrdc.net", 300),
        DnsAnswer("metrics.hospital.org", "CNAME", "hospital.sc.omtrdc.net", 300),
    ]))
    assert cache.names_for("203.0.113.7", 150.0) == (
        "metrics.hospital.org", "hospital.sc.omtrdc.net", "edge.sc.omtrdc.net",
    )


def test_entries_expire_after_ttl_with_a_floor() -> None:
    cache = DnsCache()
    cache.observe(query("api.mixpanel.com", [DnsAnswer("api.mixpanel.com", "A", "192.0.2.9", 5)]))
    assert cache.names_for("192.0.2.9", 100.0 + MIN_TTL - 1) == ("api.mixpanel.com",)
    assert cache.names_for("192.0.2.9", 100.0 + MIN_TTL + 1) == ()
    assert cache.counters.get("dnscache.expired") == 1


def test_cap_evicts_least_recently_used() -> None:
    cache = DnsCache(max_entries=2)
    for i in range(3):
        cache.observe(query(f"h{i}.example", [DnsAnswer(f"h{i}.example", "A", f"192.0.2.{i}", 300)]))
    assert len(cache) == 2
    assert cache.names_for("192.0.2.0", 101.0) == ()
    assert cache.counters.get("dnscache.evicted") == 1


def test_unanswered_queries_store_nothing() -> None:
    cache = DnsCache()
    cache.observe(DnsQuery(1.0, FLOW, 1, "x.example", "A"))
    assert len(cache) == 0


def test_expired_entries_are_let_go_as_the_capture_clock_passes() -> None:
    cache = DnsCache(late=600.0)
    for i in range(50):
        cache.observe(query(f"h{i}.example", [DnsAnswer(f"h{i}.example", "A", f"192.0.2.{i}", 30)]))  # expire at 160
    cache.observe(query("x.example", [DnsAnswer("x.example", "A", "198.51.100.1", 30)], ts=700.0))
    assert len(cache) == 51  # expired, but a record up to 600 s late may still ask: kept
    assert cache.names_for("192.0.2.7", 150.0) == ("h7.example",)
    cache.observe(query("y.example", [DnsAnswer("y.example", "A", "198.51.100.2", 30)], ts=761.0))
    assert len(cache) == 2 and cache.counters.get("dnscache.swept") == 50
    assert cache.names_for("198.51.100.1", 750.0) == ("x.example",)


def test_a_day_of_lookups_holds_the_last_minutes_only() -> None:
    cache, largest = DnsCache(late=600.0), 0
    for second in range(0, 86_400, 2):
        address = f"10.{second >> 16}.{second >> 8 & 255}.{second & 255}"
        cache.observe(query(f"n{second}.example", [DnsAnswer(f"n{second}.example", "A", address, 300)], ts=float(second)))
        largest = max(largest, len(cache))
    # stored within the TTL, the lateness allowed and one sweep period: about 1,000 s of lookups
    assert largest <= (300 + 600 + 60) // 2 + 1
    assert cache.counters.get("dnscache.evicted") == 0


def test_an_unbounded_lateness_keeps_entries_until_they_are_asked_for() -> None:
    cache = DnsCache(late=float("inf"))
    cache.observe(query("a.example", [DnsAnswer("a.example", "A", "192.0.2.1", 30)]))
    cache.observe(query("b.example", [DnsAnswer("b.example", "A", "192.0.2.2", 30)], ts=100_000.0))
    assert len(cache) == 2 and cache.counters.get("dnscache.swept") == 0
