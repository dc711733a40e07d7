"""A day of traffic in flat memory.

- A replay closes a throttle window once no record can join it any more and writes its final
  document then: the same documents as when every window stays open to the end.
- The end-of-run summary and --fail-on read a tally, not every alert document.
"""
from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import pytest

from sensor.app.summary import AlertTally, fail_on_code, print_summary
from sensor.config import parse_config
from sensor.detect.engine import DetectionEngine, RuleSettings
from sensor.enrich.vendors import VendorCatalog, registered_domain
from sensor.errors import EXIT_FAIL_ON, EXIT_OK
from sensor.output.ecs import AlertBuilder, EventBuilder
from sensor.pipeline import Pipeline
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, Record, TlsHello
from sensor.severity import SEVERITY_RANK

T0 = 1705329000.0  # 2024-01-15 14:30:00 UTC
HOSTS = ("10.20.5.23", "10.20.5.24", "10.40.0.9")  # the last one tagged portal: one level more
RESOLVER = "10.0.0.53"
TRACKER_IP = "203.0.113.35"
CONFIG = """
sensor: {name: test-sensor}
phi_hosts:
  - 10.20.0.0/16
  - {cidr: 10.40.0.0/22, name: patient-portal, tags: [portal, authenticated]}
outputs: []
"""
# Tracker names of three vendors, two of them with two names (a second destination host).
NAMES = ("connect.facebook.net", "www.facebook.com", "www.google-analytics.com", "region1.google-analytics.com",
         "api.mixpanel.com", "cdn.example.org")
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def catalog() -> VendorCatalog:
    return VendorCatalog.load()


def engine(catalog: VendorCatalog, *, immediate: bool = False, throttle: float | None = None,
           hold_back: float | None = None) -> DetectionEngine:
    config = parse_config(CONFIG, "test")
    events = EventBuilder(config.sensor.name, registered_domain)
    settings = None
    if throttle is not None:
        settings = {rule: RuleSettings(True, throttle_seconds=throttle)
                    for rule in ("tracker-egress-no-baa", "plaintext-phi", "phi-in-tracker-payload")}
    extra = {} if hold_back is None else {"hold_back": hold_back}
    return DetectionEngine(config.build_policy(catalog), AlertBuilder(events), settings, immediate=immediate, **extra)


def dns(name: str, ts: float, src: str) -> DnsQuery:
    answers = (DnsAnswer(name, "A", TRACKER_IP, 300),)
    return DnsQuery(ts, Flow(src, 53001, RESOLVER, 53, "udp"), next(_ids), name, "A", True, "NOERROR", answers)


def hello(name: str | None, ts: float, src: str, protocol: str = "tls") -> TlsHello:
    flow = Flow(src, 50443, TRACKER_IP, 443, "udp" if protocol == "quic" else "tcp")
    return TlsHello(ts, flow, protocol, name, ("h2",), False, "1.3")


def pixel(ts: float, src: str) -> HttpRequest:
    target = "/tr/?id=1234567890&ev=PageView&dl=https%3A%2F%2Fwww.example-hospital.org%2Fconditions%2Fdiabetes"
    flow = Flow(src, 50080, TRACKER_IP, 80, "tcp")
    return HttpRequest(ts, flow, "GET", target, "1.1", (("Host", "www.facebook.com"),), "www.facebook.com")


def traffic(seconds: int, step: float = 0.5) -> list[Record]:
    """Lookups, hellos (TLS, QUIC, one without a name: attributed through DNS) and now and then a
    plaintext pixel, from three hosts to a few trackers, in time order."""
    records: list[Record] = []
    for index in range(int(seconds / step)):
        ts = T0 + index * step
        src = HOSTS[index % len(HOSTS)]
        name = NAMES[(index // 3) % len(NAMES)]
        kind = index % 7
        if kind in (0, 3):
            records.append(dns(name, ts, src))
        elif kind == 5:
            records.append(hello(None, ts, src))
        elif kind == 6 and index % 21 == 6:
            records.append(pixel(ts, src))
        else:
            records.append(hello(name, ts, src, "quic" if kind == 4 else "tls"))
    return records


def lines(docs: list[dict]) -> list[str]:
    return sorted(json.dumps(doc, sort_keys=True) for doc in docs)


def run(eng: DetectionEngine, records: list[Record]) -> tuple[list[dict], list[dict]]:
    """(documents written while records came, documents written at the end)."""
    during = [doc for record in records for doc in eng.on_record(record)]
    return during, eng.finish()


# --- windows closed in a replay -------------------------------------------------------------------------


def test_replay_windows_close_once_no_record_can_join(catalog) -> None:
    records = traffic(300)
    closing = engine(catalog, throttle=10.0, hold_back=5.0)
    kept = engine(catalog, throttle=10.0, hold_back=math.inf)
    during, at_end = run(closing, records)
    kept_during, kept_at_end = run(kept, records)
    assert lines(during + at_end) == lines(kept_during + kept_at_end)
    assert len(during) > 5 * len(at_end)  # most went out while the replay ran
    # what stays open is the last 15 seconds' windows, not the whole capture's
    peak = 0
    again = engine(catalog, throttle=10.0, hold_back=5.0)
    for record in records:
        again.on_record(record)
        peak = max(peak, len(again._windows))
    assert peak <= len(HOSTS) * 4 * 2
    assert len(kept._windows) == 0 and sum(map(len, again._ends.values())) <= peak + len(HOSTS) * 4 * 4


def test_a_late_record_still_joins_its_window(catalog) -> None:
    """A record that comes after later ones (reassembly held it back) joins the window its time
    falls in, as long as it comes within the hold-back."""
    src = HOSTS[0]
    records = [hello("connect.facebook.net", T0, src), hello("www.google-analytics.com", T0 + 12, src),
               hello("connect.facebook.net", T0 + 9, src), hello("www.google-analytics.com", T0 + 40, src)]
    during, at_end = run(engine(catalog, throttle=10.0, hold_back=5.0), records)
    counts = Counter((doc["phi_egress"]["vendor"]["id"], doc["phi_egress"]["count"]) for doc in during + at_end)
    assert counts == {("meta-pixel", 2): 1, ("google-analytics", 1): 2}
    assert [doc["phi_egress"]["vendor"]["id"] for doc in during] == ["meta-pixel", "google-analytics"]


def test_live_keeps_its_windows_open(catalog) -> None:
    live = engine(catalog, immediate=True, throttle=10.0, hold_back=0.0)
    for record in traffic(120):
        live.on_record(record)
    assert not live._ends and len(live._windows) > 10


def test_final_documents_go_out_one_at_a_time(catalog) -> None:
    eng = engine(catalog)
    for record in traffic(30):
        eng.on_record(record)
    expected = lines(engine_finish_copy(catalog, traffic(30)))
    final = eng.final_documents()
    first = next(final)
    assert not eng._windows  # the engine let go of its windows; the generator holds the rest
    assert lines([first, *final]) == expected


def engine_finish_copy(catalog: VendorCatalog, records: list[Record]) -> list[dict]:
    eng = engine(catalog)
    for record in records:
        eng.on_record(record)
    return eng.finish()


# --- the summary and --fail-on from a tally -------------------------------------------------------------


def _old_summary_rows(docs: list[dict]) -> tuple[int, Counter]:
    """The summary as computed from every document kept (latest document per event.id)."""
    latest = {doc["event"]["id"]: doc for doc in docs}
    tally: Counter = Counter()
    for alert in latest.values():
        pe = alert["phi_egress"]
        key = (
            pe["severity"],
            alert["rule"]["id"],
            f"{alert['source']['ip']} ({pe['phi_host']['name']})" if pe.get("phi_host", {}).get("name")
            else alert["source"]["ip"],
            pe.get("vendor", {}).get("name") or pe.get("destination") or "-",
            pe["baa"]["status"],
            ", ".join(pe.get("phi", {}).get("types", [])) or "-",
        )
        tally[key] += pe.get("count", 1)
    return len(latest), tally


def test_the_tally_gives_the_summary_the_documents_gave(catalog, capsys) -> None:
    docs, final = run(engine(catalog, immediate=True), traffic(90))  # live: updates reuse event ids
    docs += final
    assert len({doc["event"]["id"] for doc in docs}) < len(docs)
    tally = AlertTally()
    for doc in docs:
        tally.add(doc)
    alerts, rows = _old_summary_rows(docs)
    merged: Counter = Counter()
    for key, count in tally.rows.values():
        merged[key] += count
    assert (len(tally), merged) == (alerts, rows)
    assert list(merged) == list(rows)  # the same order too: ties in the table keep it
    print_summary(tally)
    assert f"phi-sensor: {alerts} alert(s)" in capsys.readouterr().err
    print_summary(AlertTally())
    assert "phi-sensor: no alerts" in capsys.readouterr().err


def test_fail_on_reads_the_highest_severity(catalog) -> None:
    tally = AlertTally()
    assert fail_on_code(tally, "low") == EXIT_OK  # no alerts
    docs, final = run(engine(catalog), [hello("connect.facebook.net", T0, HOSTS[0])])
    for doc in docs + final:
        tally.add(doc)
    assert [doc["phi_egress"]["severity"] for doc in final] == ["medium"]
    assert tally.highest == SEVERITY_RANK["medium"]
    assert fail_on_code(tally, None) == EXIT_OK
    assert fail_on_code(tally, "low") == fail_on_code(tally, "medium") == EXIT_FAIL_ON
    assert fail_on_code(tally, "high") == EXIT_OK


def test_the_pipeline_tallies_what_it_ships(catalog) -> None:
    shipped: list[dict] = []

    class Collecting:
        name = "collect"

        def send(self, doc: dict) -> None:
            shipped.append(doc)

    eng = engine(catalog, throttle=10.0, hold_back=5.0)
    pipeline = Pipeline(sinks=[Collecting()], detector=eng)  # type: ignore[list-item]
    pipeline.feed_records(traffic(120))
    pipeline.finish()
    assert shipped and len(pipeline.alerts) == len({doc["event"]["id"] for doc in shipped})
    assert pipeline.alerts.highest == max(SEVERITY_RANK[doc["phi_egress"]["severity"]] for doc in shipped)
    assert sum(pipeline.counters.get("alerts." + rule) for rule in {doc["rule"]["id"] for doc in shipped}) == len(shipped)


def test_a_deep_replay_keeps_its_windows_open_to_the_end(tmp_path, monkeypatch) -> None:
    """The requests a key log decrypts come after their capture, with the capture's times: they
    must find their windows still open."""
    from sensor.app.replay.main import Runner
    from sensor.cli import build_parser
    from sensor.deep import replay as deep

    config = tmp_path / "sensor.yaml"
    config.write_text(CONFIG)
    args = build_parser().parse_args(["replay", "unused.pcap", "--config", str(config), "--quiet"])
    runner = Runner.from_args(args)
    assert runner.pipeline.detector.hold_back < math.inf  # an ordinary replay closes windows
    seen: list[float] = []
    monkeypatch.setattr(deep, "feed_inputs", lambda pipeline, *rest: seen.append(pipeline.detector.hold_back) or [])
    deep.replay_deep(runner, [tmp_path / "unused.pcap"], None, None, "never")
    assert seen == [math.inf]
