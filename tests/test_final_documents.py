"""A final document's common case, written inline (AlertBuilder._line_fast): a window that reached
one host, the one its alert named, keeps the alert's summary; any other host list goes the long
way. Both against the Python builder's line (line_py)."""
from __future__ import annotations

import orjson
import pytest

from sensor.detect.engine import Destination
from sensor.output import ecs
from tests.test_alertdoc_lines import _alert, _builder, _hello

_SEEN = 1705330800.25


@pytest.mark.parametrize("hosts, summary_end, related", [
    (None, "to tracker.example.com", ["tracker.example.com"]),
    ([], "to tracker.example.com", ["tracker.example.com"]),
    (["tracker.example.com"], "to tracker.example.com", ["tracker.example.com"]),
    # one host, not the one the alert named: it takes the named one's place in the summary
    (["other.example"], "to other.example", ["tracker.example.com", "other.example"]),
    (["tracker.example.com", "other.example"], "; also other.example", ["tracker.example.com", "other.example"]),
])
def test_a_windows_hosts_name_its_document_as_the_python_builder_does(hosts, summary_end, related) -> None:
    if ecs._alert_line_fast is None:
        pytest.skip("compiled extension not built")
    builder = _builder()
    destinations = None if hosts is None else [Destination(host, 2, _SEEN, _SEEN + 1, False) for host in hosts]
    args = (_alert(_hello()), 2, _SEEN, _SEEN + 1, "ab" * 20, destinations)
    line, counted = builder.json_line(*args)
    assert type(counted) is tuple  # written by the compiled writer
    assert line == builder.line_py(*args)
    doc = orjson.loads(line)
    assert doc["message"].endswith(summary_end)
    assert doc["related"]["hosts"] == related


def test_a_named_host_the_record_does_not_name_is_added_to_related() -> None:
    if ecs._alert_line_fast is None:
        pytest.skip("compiled extension not built")
    builder = _builder()
    args = (_alert(_hello("cdn.example")), 1, _SEEN, _SEEN, "cd" * 20, None)
    line, _ = builder.json_line(*args)
    assert line == builder.line_py(*args)
    assert orjson.loads(line)["related"]["hosts"] == ["cdn.example", "tracker.example.com"]
