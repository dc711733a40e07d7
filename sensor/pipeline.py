"""capture -> decode -> enrich/detect -> output, for replay and live alike."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from sensor.capture.inputs import is_stream
from sensor.capture.pcap import CaptureFile
from sensor.capture.prefilter import AnyPrefilter, open_prefilter, should_prefilter
from sensor.decode.dispatch import DecodeSettings, TrafficDecoder
from sensor.decode.packet import LINKTYPE_NAMES
from sensor.errors import CaptureError
from sensor.output.sinks import Sink
from sensor.records import Counters, Record

log = logging.getLogger("phi_sensor")


class Detector(Protocol):
    def on_record(self, record: Record) -> list[dict]: ...
    def finish(self) -> list[dict]: ...


# Called with (bytes done, bytes total) while a file is replayed.
ProgressCallback = Callable[[int, int], None]
# Takes a packet (timestamp, link type, frame) that another process decodes.
Forward = Callable[[float, int, bytes], None]


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
        self._detector = detector
        self._line_writers: list[Callable[[bytes], object]] | None = None
        self._line_writers_known = False
        self.alerts: list[dict] = []  # kept for the end-of-run summary and --fail-on

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

    def _find_line_writers(self) -> list[Callable[[bytes], object]] | None:
        """The outputs' line writers when events can go out as JSON lines written without a dict:
        the builder writes lines and every output takes lines as they are (plain JSON-lines files
        and stdout, the second worker's spill). A detector still sees every record."""
        writers = None
        if self._sinks and hasattr(self._event_builder, "json_line"):
            found = [getattr(sink, "line_writer", lambda: None)() for sink in self._sinks]
            writers = found if all(found) else None
        self._line_writers, self._line_writers_known = writers, True
        return writers

    # -- live and replay both end up here ----------------------------------------------------
    def feed(self, ts: float, linktype: int, frame: bytes) -> None:
        self.decoder.feed(ts, linktype, frame)
        if self.decoder.records:
            self._drain()

    def feed_records(self, records: Iterable[Record]) -> None:
        """Records read elsewhere (a HAR file, requests tshark decrypted) take the same path."""
        self.decoder.records.extend(records)
        self._drain()

    def _drain(self) -> None:
        records = self.decoder.records
        self.decoder.records = []
        writers = self._line_writers if self._line_writers_known else self._find_line_writers()
        if writers:
            line_of = self._event_builder.json_line  # type: ignore[union-attr]
            detector = self.detector
            for record in records:
                line = line_of(record)
                for write in writers:
                    write(line)
                if detector is not None:
                    self._ship(detector.on_record(record))
            return
        build, detector, sinks = self.event_builder, self.detector, self.sinks
        for record in records:
            if build is not None:
                doc = build(record)
                for sink in sinks:
                    sink.send(doc)
            if detector is not None:
                self._ship(detector.on_record(record))

    def _ship(self, alerts: Iterable[dict]) -> None:
        for alert in alerts:
            self.alerts.append(alert)
            self.counters.add("alerts." + alert["rule"]["id"])
            for sink in self.sinks:
                sink.send(alert)

    def finish(self) -> None:
        self.decoder.finish()
        self._drain()
        if self.detector is not None:
            self._ship(self.detector.finish())
        layers = sys.modules.get("sensor.phi.layers")  # loaded only when something was peeled
        if layers is not None:
            for name, count in layers.take_capped().items():
                self.counters.add(f"phi.capped.{name}", count)

    # -- replay ---------------------------------------------------------------------------
    def replay(
        self, path: Path, prefilter: str = "auto", progress: ProgressCallback | None = None,
        forward: Forward | None = None, started: AnyPrefilter | None = None,
    ) -> list[str]:
        """Feed one capture file; return its problems as one line each (the rest is still processed).

        `forward` splits the work with a second process: packets whose client address (the side
        with the higher port) is odd go there, so a host's DNS, flows and alert windows stay in
        one process. Reassembled IP fragments and tunnelled packets stay here. `started`: this file's prefilter, already
        running (see `prefilter.start_early`)."""
        counters = self.counters
        stream = is_stream(path)
        try:
            total = 0 if stream else path.stat().st_size
        except OSError as exc:
            return [f"{path}: cannot open: {exc.strerror or exc}"]
        if path.is_dir():
            return [f"{path}: no capture files in this directory"]
        runner: AnyPrefilter | None = started
        if stream:  # read once from the front: no probe, no prefilter (its faults come from packets())
            capture = CaptureFile(path)
        elif runner is not None:
            capture = CaptureFile(path, stream=runner.stdout)
            counters.add("capture.prefiltered_files")
        elif should_prefilter(path, "always" if forward is not None else prefilter):
            runner = open_prefilter(path)
            capture = CaptureFile(path, stream=runner.stdout)
            counters.add("capture.prefiltered_files")
        else:
            capture = CaptureFile(path)
            try:
                capture.check()
            except CaptureError as exc:
                return [str(exc)]
        feed, feed_decoded = self.decoder.feed, self.decoder.feed_decoded
        decoder = self.decoder
        packet_decoder = decoder.packets
        decode = packet_decoder.decode
        packets = size = 0
        by_linktype: dict[int, int] = {}
        try:
            for ts, linktype, frame in capture.packets():
                packets += 1
                size += len(frame)
                by_linktype[linktype] = by_linktype.get(linktype, 0) + 1
                if progress is not None and not packets & 0x3FFF:
                    done = runner.bytes_read() if runner is not None else size
                    progress(min(done or 0, total), total)
                if forward is None:
                    feed(ts, linktype, frame)
                else:
                    decoded = decode(ts, linktype, frame)
                    if decoded is None:
                        continue
                    sport, dport = decoded[3], decoded[4]
                    # fragments and tunnels stay here, as the compiled selector's worker_of decides
                    if ((decoded[1] if sport > dport else decoded[2])[-1] & 1 and not packet_decoder.reassembled
                            and not packet_decoder.tunnelled):
                        forward(ts, linktype, frame)
                        continue
                    feed_decoded(ts, decoded)
                if decoder.records:
                    self._drain()
        finally:
            problems = list(capture.errors)
            if runner is not None:
                complaint = runner.close()
                if complaint:
                    problems.append(f"{path}: {complaint}")
        # With the prefilter these are the packets libpcap passed, not every packet of the file.
        counters.add("packets.passed_prefilter" if runner is not None else "packets", packets)
        counters.add("bytes", size)
        counters.add("files", 1)
        if capture.empty_records or capture.late_records:
            counters.add("capture.empty_records", capture.empty_records)
            counters.add("capture.late_records", capture.late_records)
            log.warning(capture.suspicious())  # a second replay worker reports what it saw
        for linktype, count in by_linktype.items():
            counters.add(f"packets.linktype.{LINKTYPE_NAMES.get(linktype, str(linktype))}", count)
        unsupported = capture.linktypes - set(LINKTYPE_NAMES)
        if unsupported:
            problems.append(f"{path}: unsupported link type(s) {sorted(unsupported)}: those packets were skipped")
        if progress is not None:
            progress(total, total)
        return problems
