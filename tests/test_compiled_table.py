"""sensor.compiled lists every entry point of the compiled extension, each with a reference that imports."""
from __future__ import annotations

import importlib

import pytest

from sensor import compiled


def extension() -> object:
    fast = pytest.importorskip("sensor._fast", reason="compiled extension not built")
    if getattr(fast, "__file__", None) is None:  # the folder of its sources, not a built extension
        pytest.skip("compiled extension not built")
    return fast


def resolve(reference: str) -> object:
    module_name, _, qualname = reference.partition(":")
    target: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def test_every_exported_entry_point_is_in_the_table() -> None:
    fast = extension()
    exported = {name for name in dir(fast) if not name.startswith("_") and callable(getattr(fast, name))}
    assert exported - compiled.entry_points().keys() == set(), "add these to sensor/compiled.py"
    assert compiled.entry_points().keys() - exported == set(), "the extension no longer exports these"


def test_the_kinds_do_not_overlap() -> None:
    kinds = (compiled.TWINS, compiled.BINDERS, compiled.HELD_BY_TOOLS)
    assert sum(len(kind) for kind in kinds) == len(compiled.entry_points())


@pytest.mark.parametrize("entry, reference", sorted(compiled.entry_points().items()))
def test_every_reference_imports(entry: str, reference: str) -> None:
    assert resolve(reference) is not None


@pytest.mark.parametrize("entry, reference", sorted(compiled.TWINS.items()))
def test_every_twin_names_a_python_reference(entry: str, reference: str) -> None:
    assert reference.endswith("_py"), f"{entry}: the Python reference's name ends in _py"
    assert callable(resolve(reference))


def test_a_missing_entry_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above would catch a new export: without one of the table's rows it reports it."""
    fast = extension()
    monkeypatch.delitem(compiled.TWINS, "parse_dns")
    exported = {name for name in dir(fast) if not name.startswith("_") and callable(getattr(fast, name))}
    assert exported - compiled.entry_points().keys() == {"parse_dns"}


def test_a_reference_that_does_not_import_fails() -> None:
    with pytest.raises(AttributeError):
        resolve("sensor.decode.dns:parse_message_missing_py")
    with pytest.raises(ImportError):
        resolve("sensor.decode.no_such_module:parse_py")


def test_binders_refuse_bad_values_and_keep_what_was_bound() -> None:
    """The constants the selector and the record loop apply come from Python; a bad bind changes nothing."""
    import struct

    from sensor.capture import pcap, prefilter

    fast = extension()
    bad_binds = [
        lambda: fast.bind_select(8, 0, [], [], []),
        lambda: fast.bind_select(pcap.MAX_FRAME, -1, [], [], []),
        lambda: fast.bind_select(pcap.MAX_FRAME, 0, [70000], [], []),
        lambda: fast.bind_select(pcap.MAX_FRAME, 0, [80], ["x"], []),
        lambda: fast.bind_select(pcap.MAX_FRAME, 0, [80], [], [-1]),
        lambda: fast.bind_pcap(0),
        lambda: fast.bind_pcap("x"),
    ]
    for bind in bad_binds:
        with pytest.raises((ValueError, TypeError)):
            bind()
    # one record stamped two hours before the one ahead of it: late for TIME_JUMP (an hour) as bound
    records = b"".join(struct.pack("<IIII", second, 0, 1, 1) + b"\x00" for second in (10_000, 10_000 - 7200))
    assert fast.pcap_records(records, 0, 1, False, False, float("-inf"))[3] == 1
    assert pcap.pcap_records_py(records, 0, 1, False, False, float("-inf"))[3] == 1
    try:
        fast.bind_pcap(3 * 3600.0)
        assert fast.pcap_records(records, 0, 1, False, False, float("-inf"))[3] == 0
    finally:
        fast.bind_pcap(pcap.TIME_JUMP)
    assert prefilter._select_pcap is not None
