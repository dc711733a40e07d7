"""What an open throttle window keeps: its alert packed (shared parts by reference, its own text
and record in one bytes object, written to the engine's spill file), the same size however many
records it absorbed, and documents built from it equal to those built from the alert the rule
made."""
from __future__ import annotations

import gc
import math
import os
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import parse_config
from sensor.deep import DecryptedHttpRequest, HttpsRequest
from sensor.detect import engine as engine_module
from sensor.detect.base import RuleInfo
from sensor.detect.engine import Destination, DetectionEngine, RuleSettings, _Window
from sensor.detect.rules import ALL_RULES
from sensor.enrich.assets import PhiHost
from sensor.enrich.baa import BaaEntry
from sensor.enrich.vendors import Vendor, VendorCatalog, registered_domain
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, Record, TlsHello, UpgradedHello

T0 = 1_705_330_800.0  # 2024-01-15 15:00 UTC
CONFIG = """
sensor: {name: test-sensor}
phi_hosts:
  - {cidr: 10.20.0.0/16, name: clinic}
  - {cidr: 10.30.0.0/16, name: portal, tags: [patient-portal]}
rules: {unreviewed-vendor: {enabled: true}}
outputs: []
"""
TRACKERS = ["www.google-analytics.com", "connect.facebook.net", "static.hotjar.com", "api.mixpanel.com",
            "o152.ingest.sentry.io", "intake.example.org"]


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def _engine(catalog: VendorCatalog, throttle: float = 3600.0) -> DetectionEngine:
    config = parse_config(CONFIG, "test")
    rules = {rule.INFO.id: RuleSettings(True, throttle_seconds=throttle) for rule in ALL_RULES}
    return DetectionEngine(config.build_policy(catalog), AlertBuilder(EventBuilder("s", registered_domain)), rules,
                           immediate=False)


# -- documents from a packed alert ------------------------------------------------------------------

_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40)
_flows = st.builds(Flow, st.sampled_from(["10.20.5.23", "10.30.1.5", "10.20.7.7"]), st.integers(1, 65535),
                   st.sampled_from(["203.0.113.35", "203.0.113.36"]), st.sampled_from([53, 80, 443, 8080]),
                   st.sampled_from(["tcp", "udp"]))
_answers = st.lists(st.builds(DnsAnswer, st.sampled_from(TRACKERS), st.sampled_from(["A", "AAAA", "CNAME", "HTTPS"]),
                              st.sampled_from(["203.0.113.35", "2001:db8::35", "edge.example.net"]),
                              st.integers(0, 2**31 - 1)), max_size=4)
_times = st.floats(T0, T0 + 86_400.0)
_lookups = st.builds(DnsQuery, _times, _flows, st.integers(0, 65535), st.sampled_from(TRACKERS),
                     st.sampled_from(["A", "AAAA", "HTTPS"]), st.booleans(), st.sampled_from([None, "NOERROR"]),
                     _answers.map(tuple))
_hellos = st.one_of(
    st.builds(TlsHello, _times, _flows, st.sampled_from(["tls", "quic"]), st.sampled_from(TRACKERS),
              st.lists(st.sampled_from(["h2", "h3", "http/1.1"]), max_size=2).map(tuple), st.booleans(),
              st.sampled_from([None, "1.2", "1.3"])),
    st.builds(UpgradedHello, _times, _flows, st.just("tls"), st.sampled_from(TRACKERS), st.just(()), st.booleans(),
              st.just("1.3"), st.sampled_from(["http-connect", "websocket"]), st.sampled_from([None, "proxy:3128"])),
)
_header_names = st.sampled_from(["Host", "User-Agent", "user-agent", "Referer", "REFERER", "Content-Type", "Cookie",
                                 "X-Other"])
_headers = st.lists(st.tuples(_header_names, _text), max_size=6).map(tuple)
_targets = st.one_of(
    st.sampled_from(["/g/collect?v=2&tid=G-X&en=page_view&dl=https%3A%2F%2Fportal.example%2Fconditions%2Fdiabetes"
                     "&ep.email=jane%40example.org", "/tr/?id=1234567890&ev=PageView&cd[mrn]=12345678",
                     "/submit?dx=E11.9&dob=1970-01-01", "/"]),
    _text.map(lambda text: "/" + text),
)
_bodies = st.sampled_from([b"", b"email=jane%40example.org&dob=1970-01-01&dx=E11.9", b'{"note": "type 2 diabetes"}'])
_requests = st.builds(
    lambda cls, ts, flow, method, target, headers, host, body: cls(ts, flow, method, target, "1.1", headers, host,
                                                                  body, len(body)),
    st.sampled_from([HttpRequest, DecryptedHttpRequest, HttpsRequest]), _times, _flows,
    st.sampled_from(["GET", "POST"]), _targets, _headers, st.sampled_from([*TRACKERS, None]), _bodies,
)


@settings(max_examples=300, deadline=None)
@given(record=st.one_of(_lookups, _hellos, _requests), count=st.integers(1, 5), hosts=st.integers(0, 3))
def test_a_packed_alert_builds_the_documents_its_alert_builds(catalog, record: Record, count: int, hosts: int) -> None:
    eng = _engine(catalog)
    builders = [AlertBuilder(EventBuilder("s", registered_domain)),
                AlertBuilder(EventBuilder("s", registered_domain, redact_urls=False), unredacted=True)]
    obs = eng._observe(record, eng.policy.assets.lookup(record.flow.src_ip))
    if obs is None:
        return
    destinations = [Destination(f"h{index}.example", index + 1, record.ts, record.ts + index, index == 1)
                    for index in range(hosts)]
    for rule in ALL_RULES:
        alert = rule.evaluate(obs)
        if alert is None:
            continue
        window = _Window(record.ts, record.ts + 3600.0, (rule.INFO.id, record.flow.src_ip, alert.throttle_subject),
                         False)
        window.keep(alert, False)
        assert window.alert(eng._spill) is alert  # until packed
        window.pack(eng._spill)
        assert isinstance(window.packed, int)
        kept = window.alert(eng._spill)
        assert type(kept.observation.record) is type(record) and kept.observation.record.flow == record.flow
        for build in builders:
            assert (build(kept, count, record.ts, record.ts + 5, "id", destinations)
                    == build(alert, count, record.ts, record.ts + 5, "id", destinations))


# -- the size of what a window keeps -----------------------------------------------------------------

def _hello(ts: float, src: str, name: str) -> TlsHello:
    return TlsHello(ts, Flow(src, 50443, "203.0.113.35", 443, "tcp"), "tls", name, ("h2",), False, "1.3")


def _request(ts: float, src: str) -> HttpRequest:
    target = f"/tr/?id=1234567890&ev=PageView&n={int(ts * 1000)}&dl=https%3A%2F%2Fportal.example%2Fdiabetes"
    headers = (("Host", "www.facebook.com"), ("User-Agent", "Mozilla/5.0"), ("Cookie", "c=" + "x" * 300))
    return HttpRequest(ts, Flow(src, 50080, "203.0.113.35", 80, "tcp"), "GET", target, "1.1", headers,
                       "www.facebook.com", b"x" * 2000, 2000)


_SHARED = (RuleInfo, Vendor, PhiHost, BaaEntry, type)  # held by the catalog and the policy, not by windows


def _held_by_windows(eng: DetectionEngine) -> int:
    """Bytes the engine's open windows hold: everything each window reaches but the shared
    catalog and policy objects (a string two windows share is counted twice)."""
    total = 0
    for window in eng._windows.values():
        seen: set[int] = set()
        todo: list[object] = [window]
        while todo:
            thing = todo.pop()
            if id(thing) in seen or isinstance(thing, _SHARED):
                continue
            seen.add(id(thing))
            total += sys.getsizeof(thing)
            todo.extend(gc.get_referents(thing))
    return total


def _fill(catalog: VendorCatalog, records_per_window: int, sources: int) -> tuple[DetectionEngine, int]:
    """An engine whose windows (one per source host and vendor) each absorbed `records_per_window`
    records; the number of windows."""
    eng = _engine(catalog)
    names = ["connect.facebook.net", "www.google-analytics.com", "static.hotjar.com"]
    for index in range(records_per_window):
        ts = T0 + index * 0.25  # all within the hour: no window closes
        for source in range(sources):
            src = f"10.20.{source // 250}.{source % 250 + 1}"
            for name in names:
                eng.on_record(_hello(ts, src, name))
            eng.on_record(_request(ts, src))
    eng._close_passed(T0 + records_per_window * 0.25 + 10.0)  # a sweep: every window packed
    return eng, len(eng._windows)


def test_an_open_window_keeps_the_same_size_however_many_records_it_absorbed(catalog) -> None:
    few, windows = _fill(catalog, 3, 1)
    held_few = _held_by_windows(few)
    many, windows_many = _fill(catalog, 10_000, 1)
    held_many = _held_by_windows(many)
    assert windows == windows_many >= 4
    assert held_many <= held_few + 64 * windows  # counts past the small-int cache, no more
    assert held_few / windows < 1_000  # a request's body, cookie and its scan's own findings are not kept


def test_many_windows_hold_a_few_hundred_bytes_each(catalog) -> None:
    once, windows = _fill(catalog, 1, 400)
    held_once = _held_by_windows(once)
    often, windows_often = _fill(catalog, 25, 400)
    held_often = _held_by_windows(often)
    assert windows == windows_often >= 1_600
    assert held_once / windows < 1_000  # (about 850: 1,135 before the alert was spilled)
    assert held_often <= held_once + 64 * windows


# -- windows closed on the capture's clock -------------------------------------------------------------

def test_windows_opened_out_of_order_close_as_if_all_were_kept_to_the_end(catalog) -> None:
    """Records up to the hold-back late open windows behind later ones: each still closes, after
    its own end, with the document it has when every window stays open to the end."""
    shuffle = random.Random(7)
    records: list[Record] = []
    for index in range(2_000):
        ts = T0 + index * 0.5 + shuffle.uniform(-4.0, 0.0)  # at most 4 s late
        src = f"10.20.0.{index % 13 + 1}"
        name = TRACKERS[index % 5]
        records.append(_hello(ts, src, name) if index % 4 else _request(ts, src))

    def run(hold_back: float) -> tuple[list[str], DetectionEngine]:
        config = parse_config(CONFIG, "test")
        rules = {rule.INFO.id: RuleSettings(True, throttle_seconds=20.0) for rule in ALL_RULES}
        eng = DetectionEngine(config.build_policy(catalog), AlertBuilder(EventBuilder("s", registered_domain)), rules,
                              immediate=False, hold_back=hold_back)
        docs, queued = [], 0
        for record in records:
            docs += eng.on_record(record)
            queued = max(queued, sum(map(len, eng._ends.values())))
        keys = len({doc["phi_egress"]["alert_key"] for doc in docs})
        assert queued <= (3 * keys if hold_back < math.inf else 0)  # closed and replaced windows let go
        docs += eng.finish()
        return sorted(map(repr, docs)), eng

    closing, eng = run(5.0)
    kept, _ = run(float("inf"))
    assert closing == kept
    assert not eng._windows and not any(eng._ends.values()) and not eng._unpacked


# -- the spill file of packed alerts ---------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * engine_module._SPILL_BLOCK), max_size=12), order=st.randoms())
def test_the_spill_gives_back_what_was_put_wherever_it_lies(sizes: list[int], order: random.Random) -> None:
    spill = engine_module._Spill()
    kept = [(spill.put(bytes([index % 251]) * size), bytes([index % 251]) * size) for index, size in enumerate(sizes)]
    assert spill.size == sum(sizes)
    order.shuffle(kept)
    assert all(spill.get(place) == data for place, data in kept)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(1, 40_000), st.integers(0, 3)), min_size=1, max_size=40),
       kept_blocks=st.sampled_from([1, 2, 16]), seed=st.randoms())
def test_the_spill_reads_back_between_writes(steps: list[tuple[int, int]], kept_blocks: int,
                                             seed: random.Random) -> None:
    """Reads between writes, from the blocks kept read back (a block read while the file ended
    inside it is read again once more of it was written)."""
    spill = engine_module._Spill()
    spill.read_blocks = kept_blocks
    kept: list[tuple[int, bytes]] = []
    for index, (size, reads) in enumerate(steps):
        data = bytes([index % 251, (index * 7) % 251]) * (size // 2) + bytes(size % 2)
        kept.append((spill.put(data), data))
        for place, expected in [kept[-1]] + [seed.choice(kept) for _ in range(reads)]:  # the newest, then any
            assert spill.get(place) == expected
        assert len(spill._blocks) <= kept_blocks
    assert all(spill.get(place) == data for place, data in kept)


def test_a_block_read_while_the_file_ended_inside_it_is_read_again() -> None:
    """After each write of the file: the first alert it wrote (in the block the last write ended
    inside, read then), and the newest alert written (in the block this write ends inside)."""
    spill = engine_module._Spill()
    kept: list[tuple[int, bytes]] = []
    written, first_new = 0, 0
    for index in range(3_000):
        data = index.to_bytes(4, "big") * 25
        kept.append((spill.put(data), data))
        if spill._written != written:
            newest = max(at for at, (place, _) in enumerate(kept) if place >> 32 < spill._written)
            for place, expected in (kept[first_new], kept[newest]):
                assert spill.get(place) == expected
            written, first_new = spill._written, newest + 1
    assert written >= 3 * engine_module._SPILL_BLOCK
    assert all(spill.get(place) == data for place, data in kept)


def test_the_spill_file_holds_no_health_data_readable_without_the_process() -> None:
    """What reaches the disk is sealed under a key of the process's own: the same alerts put in
    two spills read back alike and leave files that share none of their text."""
    text = b'{"condition":"type 2 diabetes","medication":"metformin 500 mg","dob":"1961-04-02"}'
    spills = [engine_module._Spill(), engine_module._Spill()]
    places = [[spill.put(text) for _ in range(2 * engine_module._SPILL_BLOCK // len(text))] for spill in spills]
    for spill, kept in zip(spills, places):
        assert spill._fd >= 0 and spill._written >= engine_module._SPILL_BLOCK
        on_disk = os.pread(spill._fd, spill._written, 0)
        assert b"diabetes" not in on_disk and b"metformin" not in on_disk and b"1961" not in on_disk
        assert all(spill.get(place) == text for place in kept)
    first, second = (os.pread(spill._fd, 4096, 0) for spill in spills)
    assert first != second


def test_the_spill_stays_in_memory_where_no_file_can_be_made(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("read-only")

    monkeypatch.setattr(engine_module.tempfile, "mkstemp", refuse)
    spill = engine_module._Spill()
    kept = [(spill.put(bytes([index]) * 40_000), bytes([index]) * 40_000) for index in range(10)]
    assert spill._fd == -1 and all(spill.get(place) == data for place, data in kept)


def test_a_forked_process_writes_a_spill_of_its_own() -> None:
    """Both processes go on writing after a fork: neither overwrites what the other reads back."""
    spill = engine_module._Spill()
    before = [(spill.put(b"a" * 50_000), b"a" * 50_000) for _ in range(3)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes other bytes than the parent, then checks all it put
        os.close(read)
        after = [(spill.put(b"c" * 50_000), b"c" * 50_000) for _ in range(3)]
        ok = all(spill.get(place) == data for place, data in before + after)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    after = [(spill.put(b"p" * 50_000), b"p" * 50_000) for _ in range(3)]
    child_ok = os.read(read, 1)
    os.waitpid(pid, 0)
    os.close(read)
    assert child_ok == b"1"
    assert all(spill.get(place) == data for place, data in before + after)


def test_the_spill_is_rewritten_once_mostly_alerts_of_windows_let_go(catalog, monkeypatch) -> None:
    config = parse_config(CONFIG, "test")
    rules = {rule.INFO.id: RuleSettings(True, throttle_seconds=20.0) for rule in ALL_RULES}

    def documents(compact_bytes: int, immediate: bool) -> tuple[list[str], int]:
        monkeypatch.setattr(engine_module, "_SPILL_COMPACT_BYTES", compact_bytes)
        eng = DetectionEngine(config.build_policy(catalog), AlertBuilder(EventBuilder("s", registered_domain)), rules,
                              immediate=immediate, hold_back=5.0)
        docs, largest = [], 0
        for index in range(6_000):  # a window of 20 s per source and vendor: most are let go on the way
            ts = T0 + index * 0.5
            src = f"10.20.0.{index % 13 + 1}"
            docs += eng.on_record(_request(ts, src) if index % 3 else _hello(ts, src, TRACKERS[index % 5]))
            largest = max(largest, eng._spill.size)
        docs += eng.finish()
        return sorted(map(repr, docs)), largest

    for immediate in (False, True):
        rewritten, largest = documents(100_000, immediate)
        kept, everything = documents(1 << 40, immediate)
        assert rewritten == kept
        assert largest < 300_000 < everything


def test_the_end_of_a_run_lets_go_of_what_attributed_and_enriched_records(catalog) -> None:
    """The windows' documents need neither the DNS answers nor the enrichment of names: a day
    of traffic fills both, and their memory serves the documents instead."""
    eng = _engine(catalog)
    eng.dns_cache.observe(T0, "connect.facebook.net", [DnsAnswer("connect.facebook.net", "A", "203.0.113.35", 300)])
    no_name = TlsHello(T0 + 1, Flow("10.20.0.1", 50443, "203.0.113.35", 443, "tcp"), "tls", None, (), False, "1.3")
    assert eng.on_record(no_name) == [] and eng.on_record(_hello(T0 + 2, "10.20.0.1", "static.hotjar.com")) == []
    assert len(eng.dns_cache) and eng._enriched and eng._by_name
    docs = eng.finish()
    assert sorted(doc["phi_egress"]["source_record"] for doc in docs) == ["dns-attribution", "tls"]
    assert not len(eng.dns_cache) and not eng._enriched and not eng._by_name
