"""capture -> decode -> enrich/detect -> output, for replay and live alike."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol, Self

from sensor.app.summary import MAX_UPDATABLE_ALERTS, AlertTally
from sensor.decode.dispatch import TrafficDecoder
from sensor.decode.settings import DecodeSettings
from sensor.enrich.dnscache import DnsCache
from sensor.output.sinks import Sink
from sensor.records import Counters, Record

log = logging.getLogger("phi_sensor")


class Detector(Protocol):
    # what a live reload hands over from the detector it replaces (DetectionEngine has them all)
    counters: Counters
    dns_cache: DnsCache
    # the packet decoder's PacketDecoder.tunnel_of, bound here: an alert's record takes its tunnel
    tunnel_of: Callable[[Record], Record] | None

    def on_record(self, record: Record) -> list[dict[str, Any]]: ...
    def finish(self) -> Iterable[dict[str, Any]]: ...
    def adopt_state(self, previous: Self) -> None: ...


# Pipeline.event_blocks: (lines_of, block writers, on_record or None, ship)
EventBlocks = tuple[
    Callable[[list[Record]], bytes],
    list[Callable[[bytes, int], object]],
    Callable[[Record], list[dict[str, Any]]] | None,
    Callable[[Iterable[dict]], None],
]


class Pipeline:
    def __init__(
        self,
        *,
        sinks: list[Sink],
        counters: Counters | None = None,
        settings: DecodeSettings | None = None,
        event_builder: Callable[[Record], dict] | None = None,
        detector: Detector | None = None,
    ) -> None:
        self.counters = counters if counters is not None else Counters()
        self.decoder = TrafficDecoder(self.counters, settings)
        self._sinks = sinks
        self._event_builder = event_builder
        self._line_writers: list[Callable[[bytes], object]] | None = None
        self._line_writers_known = False
        self.alerts = AlertTally()  # what the end-of-run summary and --fail-on need
        self.detector = detector

    # Replacing any of these (the second worker's spill, a live reload) decides the output path again.
    @property
    def sinks(self) -> list[Sink]:
        return self._sinks

    @sinks.setter
    def sinks(self, sinks: list[Sink]) -> None:
        self._sinks = sinks
        self._line_writers_known = False

    @property
    def event_builder(self) -> Callable[[Record], dict] | None:
        return self._event_builder

    @event_builder.setter
    def event_builder(self, event_builder: Callable[[Record], dict] | None) -> None:
        self._event_builder = event_builder
        self._line_writers_known = False

    @property
    def detector(self) -> Detector | None:
        return self._detector

    @detector.setter
    def detector(self, detector: Detector | None) -> None:
        self._detector = detector
        self._line_writers_known = False
        # a detector that writes each window's document once (a replay's) updates none
        self.alerts.updatable = 0 if getattr(detector, "immediate", True) is False else MAX_UPDATABLE_ALERTS
        self._bind_dns_learning()
        if detector is not None and hasattr(detector, "tunnel_of"):
            detector.tunnel_of = self.decoder.packets.tunnel_of

    def _bind_dns_learning(self) -> None:
        """DNS responses teach the detector's attribution cache as they are decoded (also those
        of the other replay worker's clients: sensor.capture.workers)."""
        cache = getattr(self._detector, "dns_cache", None)  # (a detector may keep none)
        self.decoder.learn_dns = cache.learn if cache is not None else None

    def _find_line_writers(self) -> list[Callable[[bytes], object]] | None:
        """The outputs' line writers when events can go out as JSON lines written without a dict:
        the builder writes lines and every output takes lines as they are (plain JSON-lines files
        and stdout, the second worker's spill). A detector still sees every record."""
        writers: list[Callable[[bytes], object]] | None = None
        if self._sinks and hasattr(self._event_builder, "json_line"):
            found = [getattr(sink, "line_writer", lambda: None)() for sink in self._sinks]
            if all(found):
                writers = [writer for writer in found if writer is not None]
        self._line_writers, self._line_writers_known = writers, True
        return writers

    # -- live and replay both end up here ----------------------------------------------------
    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        self.decoder.feed(ts, linktype, frame)
        if self.decoder.records:
            self.drain()

    def feed_records(self, records: Iterable[Record]) -> None:
        """Records read elsewhere (a HAR file, requests tshark decrypted) take the same path."""
        self.decoder.records.extend(records)
        self.drain()

    def detection_only(self) -> tuple[Callable[[Record], list[dict[str, Any]]], Callable[[Iterable[dict]], None]] | None:
        """(on_record, ship) when all `drain` does with a record is the detector's look and the
        shipping of its alerts (no event built or written: a replay's alerts), for a caller that
        drains per record itself; None when drain does more. Valid until the outputs change."""
        detector = self._detector
        if self._event_builder is not None or detector is None:
            return None
        return detector.on_record, self._ship

    def event_blocks(self) -> EventBlocks | None:
        """What `drain` does with records when it writes their events as JSON lines (every output
        takes lines: _find_line_writers) and every output also takes a block of whole lines
        (`send_lines(block, count)`), for a caller that drains itself: (lines_of, block writers,
        the detector's on_record or None, ship). lines_of(records) is their events' lines, one
        block; a caller writes the events of several records at once but any it has yet to write
        before an alert is shipped, and hands records to with_tunnels first as drain does. None
        when drain does otherwise. Valid until the outputs change."""
        writers = self._line_writers if self._line_writers_known else self._find_line_writers()
        lines_of = getattr(self._event_builder, "json_lines", None)
        if not writers or lines_of is None:
            return None
        blocks = [getattr(sink, "send_lines", None) for sink in self._sinks]
        if not all(blocks):
            return None
        detector = self._detector
        return lines_of, blocks, detector.on_record if detector is not None else None, self._ship  # type: ignore[return-value]

    def drain(self) -> None:
        # called per record or two: the attributes are read directly, and alerts shipped only
        # when a record raised any
        records = self.decoder.records
        self.decoder.records = []
        if self._event_builder is not None and self.decoder.packets.tunnels:
            # records of tunnelled flows take their tunnel to their events (the detector's alerts
            # take it as they are raised: DetectionEngine.tunnel_of)
            records = self.decoder.packets.with_tunnels(records)
        writers = self._line_writers if self._line_writers_known else self._find_line_writers()
        detector = self._detector
        if writers:
            line_of = self._event_builder.json_line  # type: ignore[union-attr]
            for record in records:
                line = line_of(record)
                for write in writers:
                    write(line)
                if detector is not None:
                    alerts = detector.on_record(record)
                    if alerts:
                        self._ship(alerts)
            return
        build, sinks = self._event_builder, self._sinks
        for record in records:
            if build is not None:
                doc = build(record)
                for sink in sinks:
                    sink.send(doc)
            if detector is not None:
                alerts = detector.on_record(record)
                if alerts:
                    self._ship(alerts)

    def _ship(self, alerts: Iterable[dict]) -> None:
        tally, count, sinks = self.alerts.add, self.counters.add, self._sinks  # (a replay's end ships thousands)
        for alert in alerts:
            tally(alert)
            count("alerts." + alert["rule"]["id"])
            for sink in sinks:
                sink.send(alert)

    def _ship_lines(self, written: Iterable[tuple[bytes, Any]], writers: list[Callable[[bytes], object]]) -> None:
        """_ship of alerts written as JSON lines, each with its document or the values the
        summary reads of it (AlertTally.add_values)."""
        tally, tally_values = self.alerts.add, self.alerts.add_values
        rules: dict[str, int] = {}  # alerts per rule, counted as `alerts.<rule>` at the end (a few rules, thousands of alerts)
        if len(writers) == 1:
            write = writers[0]
        else:
            def write(line: bytes) -> None:
                for each in writers:
                    each(line)
        try:
            for line, alert in written:
                if type(alert) is dict:
                    tally(alert)
                    rule = alert["rule"]["id"]
                else:
                    tally_values(*alert)
                    rule = alert[2]
                rules[rule] = rules.get(rule, 0) + 1
                write(line)
        finally:
            for rule, count in rules.items():
                self.counters.add("alerts." + rule, count)

    def finish(self) -> None:
        self.decoder.finish()
        self.drain()
        if self.detector is not None:
            # one at a time where the detector can: a day of traffic ends with tens of thousands;
            # as JSON lines where every output takes them and the detector's documents come so
            writers = [getattr(sink, "line_writer", lambda: None)() for sink in self._sinks]
            if (self._sinks and all(writers) and hasattr(self.detector, "final_lines")
                    and hasattr(getattr(self.detector, "build_document", None), "json_line")):
                self._ship_lines(self.detector.final_lines(), writers)  # type: ignore[arg-type]
            else:
                final = getattr(self.detector, "final_documents", self.detector.finish)
                self._ship(final())
        layers = sys.modules.get("sensor.phi.layers")  # loaded only when something was peeled
        if layers is not None:
            for name, count in layers.take_capped().items():
                self.counters.add(f"phi.capped.{name}", count)
