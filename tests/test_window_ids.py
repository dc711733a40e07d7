"""A throttle window's event.id: the compiled window_event_id against its reference event_id_py."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.detect import engine
from sensor.detect.engine import _Window, event_id_py

# times near the capture times the ids are made of, and any double at all (its bits drawn)
_STARTS = st.floats(min_value=0, max_value=4e11) | st.floats(allow_nan=True, allow_infinity=True) | st.builds(
    lambda bits: struct.unpack("<d", bits.to_bytes(8, "little"))[0], st.integers(0, 2**64 - 1)) | st.builds(
    lambda whole, half: (whole + half) / 1e6, st.integers(0, 10**15), st.sampled_from([0.5, 0.4999999, 0.5000001]))
_TEXT = st.text(max_size=90) | st.sampled_from(["tracker-egress-no-baa", "10.20.12.84", "fd00:20::3dc", ""])


@pytest.fixture(scope="module")
def compiled():
    if engine._event_id_fast is None:
        pytest.skip("compiled extension not built")
    return engine._event_id_fast


@settings(max_examples=3000, deadline=None)
@given(rule=_TEXT, source=_TEXT, subject=_TEXT, start=_STARTS)
def test_compiled_window_id_equals_the_reference(compiled, rule: str, source: str, subject: str, start: float) -> None:
    try:
        expected = event_id_py(rule, source, subject, start)
    except UnicodeEncodeError:  # a lone surrogate: the reference's own error, the compiled one declines
        assert compiled(rule, source, subject, start) is None
        return
    made = compiled(rule, source, subject, start)
    assert made == expected and len(made) == 40


@pytest.mark.parametrize("start", [0.0078125, 0.0234375, 1705330802.264281, -0.0, 2.0**53, 1e300, 5e-324])
def test_times_rounded_as_the_text_is(compiled, start: float) -> None:
    """Six decimals of the exact binary value, half to even (0.0078125 -> 0.007812, 0.0234375 -> 0.023438)."""
    assert compiled("r", "s", "t", start) == event_id_py("r", "s", "t", start)


def test_the_compiled_writer_declines_what_is_not_text_and_a_float(compiled) -> None:
    assert compiled("r", "s", "t", 1) is None  # an int start: the reference's format
    assert compiled("r", b"s", "t", 1.0) is None
    assert compiled("r", "s", "\ud800", 1.0) is None


def test_a_window_id_is_the_same_either_way(monkeypatch) -> None:
    window = _Window(1705330800.25, 1705334400.25, ("rule", "10.1.2.3", "vendor"), False)
    made = window.event_id
    monkeypatch.setattr(engine, "_event_id_fast", None)
    assert window.event_id == made == event_id_py("rule", "10.1.2.3", "vendor", 1705330800.25)
