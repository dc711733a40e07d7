"""Building outputs: JSON-lines files and stdout straight from the command line, anything else
validated first (sensor/output/specs.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from sensor.errors import ConfigError
from sensor.output.factory import build_sinks
from sensor.output.jsonl import JsonlSink
from sensor.output.sinks import AlertsOnly, parse_output_spec
from sensor.output.specs import build_validated

EVENT = {"event": {"kind": "event"}, "n": 1}
ALERT = {"event": {"kind": "alert"}, "phi_egress": {"severity": "high"}, "n": 2}


def _written(sinks: list, path: Path) -> list[str]:
    for sink in sinks:
        sink.send(EVENT)
        sink.send(ALERT)
        sink.close(1.0)
    return path.read_text().splitlines()


@pytest.mark.parametrize("events", [None, True, False])
def test_plain_json_lines_outputs_build_as_validation_would(tmp_path: Path, events: bool | None) -> None:
    spec = parse_output_spec(str(tmp_path / "fast.jsonl"))
    reference = {**spec, "path": str(tmp_path / "checked.jsonl")}
    if events is not None:
        spec["events"] = reference["events"] = events
    fast = build_sinks([spec], spool_dir=tmp_path, observer="s")
    checked = build_validated([reference], spool_dir=tmp_path, observer="s", source="test")
    assert [type(sink) for sink in fast] == [type(sink) for sink in checked]
    assert isinstance(fast[0], AlertsOnly if events is False else JsonlSink)
    assert _written(fast, tmp_path / "fast.jsonl") == _written(checked, tmp_path / "checked.jsonl")


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"type": "jsonl", "path": "-", "min_severity": "urgent"}, "outputs[0].min_severity"),
        ({"type": "jsonl", "path": "-", "events": "yes please"}, "outputs[0].events"),
        ({"type": "jsonl", "path": 7}, "outputs[0].path"),
        ({"type": "jsonl", "path": "-", "colour": "red"}, "outputs[0].colour"),
    ],
)
def test_anything_beyond_a_plain_file_is_validated(tmp_path: Path, spec: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_sinks([spec], spool_dir=tmp_path, observer="s", source="cfg")
    assert caught.value.key == key
