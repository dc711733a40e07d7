"""Pipeline: events go out as JSON lines written without a dict when every output takes them so."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import CollectingSink

from sensor.app.replay.files import replay_file
from sensor.enrich.vendors import registered_domain
from sensor.output.ecs import EventBuilder
from sensor.output.jsonl import JsonlSink
from sensor.output.sinks import AlertsOnly
from sensor.pipeline import Pipeline

PCAPS = Path(__file__).resolve().parent.parent / "pcaps"
CAPTURES = sorted(PCAPS.glob("*.pcap"))


class _NoDetections:
    def on_record(self, record: object) -> list[dict]:
        return []

    def finish(self) -> list[dict]:
        return []


def _replay(path: Path, sinks: list, detector: object = None) -> Pipeline:
    pipeline = Pipeline(sinks=sinks, event_builder=EventBuilder("sensor-1", registered_domain), detector=detector)
    replay_file(pipeline, path, prefilter="never")
    pipeline.finish()
    for sink in sinks:
        sink.flush()
    return pipeline


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda path: path.name)
def test_lines_written_without_dicts_are_the_documents(tmp_path: Path, capture: Path) -> None:
    """The same events through the line path (a plain JSON-lines file) and the dict path (a sink
    that takes documents, beside a second file): byte for byte what orjson makes of the documents."""
    fast, slow = JsonlSink(tmp_path / "fast.jsonl"), JsonlSink(tmp_path / "slow.jsonl")
    assert _replay(capture, [fast])._line_writers == [fast.send_line]
    collecting = CollectingSink()
    assert _replay(capture, [slow, collecting])._line_writers is None
    documents = b"".join(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE) for doc in collecting.docs)
    assert (tmp_path / "fast.jsonl").read_bytes() == (tmp_path / "slow.jsonl").read_bytes() == documents
    assert documents  # every story capture has events


def test_the_line_path_needs_every_output_to_take_lines(tmp_path: Path) -> None:
    plain = JsonlSink(tmp_path / "a.jsonl")
    pipeline = Pipeline(sinks=[plain], event_builder=EventBuilder("s", registered_domain))
    assert pipeline._find_line_writers() == [plain.send_line]
    for sinks in ([JsonlSink(tmp_path / "b.jsonl", min_severity="high")], [AlertsOnly(plain)], [plain, CollectingSink()], []):
        pipeline.sinks = sinks
        assert not pipeline._find_line_writers(), sinks
    pipeline.sinks = [plain]
    pipeline.detector = _NoDetections()
    assert pipeline._find_line_writers() == [plain.send_line]  # a detector sees the records all the same
    pipeline.detector = None
    pipeline.event_builder = lambda record: {}  # a builder of documents only
    assert pipeline._find_line_writers() is None


def test_replacing_the_outputs_decides_again(tmp_path: Path) -> None:
    capture = PCAPS / "demo.pcap"
    first, second = JsonlSink(tmp_path / "1.jsonl"), CollectingSink()
    pipeline = Pipeline(sinks=[first], event_builder=EventBuilder("s", registered_domain))
    replay_file(pipeline, capture, prefilter="never")
    pipeline.sinks = [second]  # as the second replay worker does with its spill
    replay_file(pipeline, capture, prefilter="never")
    pipeline.finish()
    first.flush()
    assert second.docs and (tmp_path / "1.jsonl").read_bytes().count(b"\n") > 0


class _Recording:
    """A detector that raises one alert per record, so alerts interleave with events."""

    def __init__(self) -> None:
        self.seen = 0

    def on_record(self, record: object) -> list[dict]:
        self.seen += 1
        return [{"event": {"kind": "alert"}, "rule": {"id": "test"}, "n": self.seen}]

    def finish(self) -> list[dict]:
        return []


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda path: path.name)
def test_events_as_lines_beside_a_detector_are_the_documents_in_the_same_order(tmp_path: Path, capture: Path) -> None:
    """--emit all: events go out as lines while the detector sees each record and its alerts
    follow the record's event, byte for byte what the document path writes."""
    lines_sink = JsonlSink(tmp_path / "lines.jsonl")
    by_lines, by_docs = _Recording(), _Recording()
    _replay(capture, [lines_sink], by_lines)
    collected = CollectingSink()
    _replay(capture, [collected], by_docs)
    lines_sink.flush()
    expected = b"".join(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE) for doc in collected.docs)
    assert by_lines.seen == by_docs.seen > 0
    assert (tmp_path / "lines.jsonl").read_bytes() == expected
