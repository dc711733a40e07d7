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
