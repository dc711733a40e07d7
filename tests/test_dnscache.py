"""DNS attribution cache: CNAME chains, TTL bounds, caps."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.decode.dns import DnsMessage
from sensor.enrich.dnscache import MIN_TTL, DnsCache
from sensor.records import DnsAnswer


def query(name: str, answers: list[DnsAnswer], ts: float = 100.0) -> tuple[float, DnsMessage]:
    """A response seen at `ts`, as DnsCache.learn takes it."""
    return ts, DnsMessage(1, True, 0, "NOERROR", ((name, "A"),), tuple(answers))


def test_cname_chain_is_kept_in_order_even_when_answers_are_shuffled() -> None:
    cache = DnsCache()
    cache.learn(*query("metrics.hospital.org", [
        DnsAnswer("edge.sc.omtrdc.net", "A", "203.0.113.7", 300),
        DnsAnswer("hospital.sc.omtrdc.net", "CNAME", "edge.sc.omtrdc.net", 300),
        DnsAnswer("metrics.hospital.org", "CNAME", "hospital.sc.omtrdc.net", 300),
    ]))
    assert cache.names_for("203.0.113.7", 150.0) == (
        "metrics.hospital.org", "hospital.sc.omtrdc.net", "edge.sc.omtrdc.net",
    )


def test_entries_expire_after_ttl_with_a_floor() -> None:
    cache = DnsCache()
    cache.learn(*query("api.mixpanel.com", [DnsAnswer("api.mixpanel.com", "A", "192.0.2.9", 5)]))
    assert cache.names_for("192.0.2.9", 100.0 + MIN_TTL - 1) == ("api.mixpanel.com",)
    assert cache.names_for("192.0.2.9", 100.0 + MIN_TTL + 1) == ()
    assert cache.counters.get("dnscache.expired") == 1


def test_cap_evicts_least_recently_used() -> None:
    cache = DnsCache(max_entries=2)
    for i in range(3):
        cache.learn(*query(f"h{i}.example", [DnsAnswer(f"h{i}.example", "A", f"192.0.2.{i}", 300)]))
    assert len(cache) == 2
    assert cache.names_for("192.0.2.0", 101.0) == ()
    assert cache.counters.get("dnscache.evicted") == 1


def test_unanswered_queries_store_nothing() -> None:
    cache = DnsCache()
    cache.learn(*query("x.example", []))
    answer = DnsAnswer("x.example", "A", "192.0.2.1", 300)
    cache.learn(1.0, DnsMessage(1, False, 0, "NOERROR", (("x.example", "A"),), (answer,)))  # not a response
    assert len(cache) == 0


def test_a_response_teaches_each_question_and_counts_only_where_owned() -> None:
    """Each question stores the answers as its record would; a copy another replay worker owns
    (counted=False) stores the same entries without counting them."""
    answers = (DnsAnswer("b.example", "A", "192.0.2.1", 300),)
    message = DnsMessage(1, True, 0, "NOERROR", (("A.example", "A"), ("b.example", "A")), answers)
    owned, copy = DnsCache(), DnsCache()
    owned.learn(100.0, message)
    copy.learn(100.0, message, counted=False)
    assert list(owned._entries.items()) == list(copy._entries.items()) == [("192.0.2.1", (400.0, ("b.example",)))]
    assert owned.counters.get("dnscache.stored") == 2 and copy.counters.get("dnscache.stored") == 0


_names = st.sampled_from(["a.example", "B.Example", "c.example.", "x.TRACKER.net", "é.example"])
_answers = st.lists(st.one_of(
    st.builds(DnsAnswer, _names, st.sampled_from(["A", "AAAA"]),
              st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1"]),
              st.one_of(st.integers(0, 200_000), st.just(2**80))),
    st.builds(DnsAnswer, _names, st.sampled_from(["CNAME", "HTTPS", "TXT"]), _names, st.integers(0, 100)),
), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(_names, max_size=3), _answers, st.floats(0, 2e9), st.booleans()), max_size=8))
def test_the_compiled_learning_equals_the_python_one(responses) -> None:  # type: ignore[no-untyped-def]
    """DnsCache.learn (through the compiled dns_learn where it takes the answers) stores what
    _learn_py stores, in the same order, over caches that already hold some of the addresses
    (never swept here: the sweep is learn's own, and the same for both)."""
    compiled, python = DnsCache(late=float("inf")), DnsCache(late=float("inf"))
    for names, answers, ts, response in responses:
        message = DnsMessage(1, response, 0, "NOERROR", tuple((name, "A") for name in names), tuple(answers))
        compiled.learn(ts, message)
        stored = python._learn_py(ts, message)
        if stored:
            python.counters.add("dnscache.stored", stored)
        assert list(compiled._entries.items()) == list(python._entries.items())
    assert compiled.counters.get("dnscache.stored") == python.counters.get("dnscache.stored")


def test_expired_entries_are_let_go_as_the_capture_clock_passes() -> None:
    cache = DnsCache(late=600.0)
    for i in range(50):
        cache.learn(*query(f"h{i}.example", [DnsAnswer(f"h{i}.example", "A", f"192.0.2.{i}", 30)]))  # expire at 160
    cache.learn(*query("x.example", [DnsAnswer("x.example", "A", "198.51.100.1", 30)], ts=700.0))
    assert len(cache) == 51  # expired, but a record up to 600 s late may still ask: kept
    assert cache.names_for("192.0.2.7", 150.0) == ("h7.example",)
    cache.learn(*query("y.example", [DnsAnswer("y.example", "A", "198.51.100.2", 30)], ts=761.0))
    assert len(cache) == 2 and cache.counters.get("dnscache.swept") == 50
    assert cache.names_for("198.51.100.1", 750.0) == ("x.example",)


def test_a_day_of_lookups_holds_the_last_minutes_only() -> None:
    cache, largest = DnsCache(late=600.0), 0
    for second in range(0, 86_400, 2):
        address = f"10.{second >> 16}.{second >> 8 & 255}.{second & 255}"
        cache.learn(*query(f"n{second}.example", [DnsAnswer(f"n{second}.example", "A", address, 300)], ts=float(second)))
        largest = max(largest, len(cache))
    # stored within the TTL, the lateness allowed and one sweep period: about 1,000 s of lookups
    assert largest <= (300 + 600 + 60) // 2 + 1
    assert cache.counters.get("dnscache.evicted") == 0


def test_an_unbounded_lateness_keeps_entries_until_they_are_asked_for() -> None:
    cache = DnsCache(late=float("inf"))
    cache.learn(*query("a.example", [DnsAnswer("a.example", "A", "192.0.2.1", 30)]))
    cache.learn(*query("b.example", [DnsAnswer("b.example", "A", "192.0.2.2", 30)], ts=100_000.0))
    assert len(cache) == 2 and cache.counters.get("dnscache.swept") == 0


_chain_names = st.sampled_from(["q.example", "Q.example", "c1.example", "c2.Example.", "c3.example..", "c1.example",
                                "q.example", "c2.example", "é.example"])
_chained = st.lists(st.one_of(
    st.builds(DnsAnswer, _chain_names, st.just("CNAME"), _chain_names, st.just(60)),
    st.builds(DnsAnswer, _chain_names, st.sampled_from(["A", "AAAA"]), st.sampled_from(["192.0.2.1", "192.0.2.2"]),
              st.integers(0, 100_000)),
), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(_chain_names, min_size=1, max_size=2), _chained), min_size=1, max_size=4))
def test_the_compiled_chains_equal_the_python_ones(responses) -> None:  # type: ignore[no-untyped-def]
    """CNAME chains in any order, loops, trailing dots, case: the compiled dns_learn stores the
    paths _learn_py stores, or declines (a name not ASCII) having stored nothing."""
    from sensor.enrich.dnscache import MAX_TTL, _learn_fast

    if _learn_fast is None:
        return
    compiled, python = DnsCache(late=float("inf")), DnsCache(late=float("inf"))
    for ts, (names, answers) in enumerate(responses):
        message = DnsMessage(1, True, 0, "NOERROR", tuple((name, "A") for name in names), tuple(answers))
        before = list(compiled._entries.items())
        stored = _learn_fast(compiled._entries, compiled._move_to_end, float(ts), message, MIN_TTL, MAX_TTL)
        expected = python._learn_py(float(ts), message)
        if stored is None:
            assert list(compiled._entries.items()) == before
            assert any(not (a.name + a.data + "".join(names)).isascii() for a in answers)
            compiled._learn_py(float(ts), message)
        else:
            assert stored == expected
        assert list(compiled._entries.items()) == list(python._entries.items())


def test_a_cname_chain_is_stored_by_the_compiled_learning() -> None:
    from sensor.enrich.dnscache import MAX_TTL, _learn_fast

    if _learn_fast is None:
        return
    cache = DnsCache()
    message = DnsMessage(1, True, 0, "NOERROR", (("Metrics.Hospital.org", "A"),), (
        DnsAnswer("x.sc.omtrdc.net", "A", "192.0.2.9", 300),
        DnsAnswer("metrics.hospital.org", "CNAME", "X.sc.omtrdc.net.", 300),
    ))
    assert _learn_fast(cache._entries, cache._move_to_end, 100.0, message, MIN_TTL, MAX_TTL) == 1
    assert cache.names_for("192.0.2.9", 100.0) == ("metrics.hospital.org", "x.sc.omtrdc.net")
