"""frozen_record: the same objects as @dataclass(frozen=True, slots=True), built faster."""
from __future__ import annotations

import contextlib
import dataclasses
import sys

import pytest

from sensor import records
from sensor.records import DnsAnswer, DnsQuery, Flow, HttpRequest, TlsHello, frozen_record, positional_constructor


@frozen_record
class _Sample:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _Reference:
    name: str
    count: int = 0
    tags: tuple[str, ...] = ()


def test_frozen_record_builds_what_the_dataclass_builds() -> None:
    for args, kwargs in [(("a",), {}), (("a", 2), {}), (("a",), {"tags": ("x",)}), ((), {"name": "b", "count": 3})]:
        sample, reference = _Sample(*args, **kwargs), _Reference(*args, **kwargs)
        assert dataclasses.astuple(sample) == dataclasses.astuple(reference)
        assert repr(sample).replace("_Sample", "_Reference") == repr(reference)
    assert _Sample("a", 1) == _Sample("a", 1) != _Sample("a", 2)
    assert hash(_Sample("a", 1)) == hash(_Sample("a", 1))
    assert not hasattr(_Sample("a"), "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Sample("a").count = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        _Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Sample("a", 1, (), "extra")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Sample("a", nope=1)  # type: ignore[call-arg]


def test_frozen_record_refuses_fields_it_cannot_build() -> None:
    with pytest.raises(TypeError):

        @frozen_record
        class _WithFactory:
            items: list[int] = dataclasses.field(default_factory=list)


def test_the_records_are_frozen_records() -> None:
    flow = Flow("10.0.0.1", 50000, "192.0.2.1", 53, "udp")
    query = DnsQuery(1.5, flow, 7, "example.com", "A", True, "NOERROR", (DnsAnswer("example.com", "A", "192.0.2.9", 60),))
    assert query.flow.dst_port == 53 and query.answers[0].data == "192.0.2.9"
    assert DnsQuery(1.5, flow, 7, "example.com", "A").answers == ()
    assert TlsHello(1.0, flow, "tls", "example.com").alpn == ()
    assert HttpRequest(1.0, flow, "GET", "/", "1.1", (("Host", "a"),), "a").header("host") == "a"
    with pytest.raises(dataclasses.FrozenInstanceError):
        flow.src_port = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        query.ts = 0.0  # type: ignore[misc]


def test_positional_constructor_builds_what_the_class_builds() -> None:
    make = positional_constructor(_Sample)
    for fields in [("a", 0, ()), ("b", 3, ("x", "y")), ("", -1, ())]:
        built, reference = make(*fields), _Sample(*fields)
        assert type(built) is _Sample
        assert built == reference and hash(built) == hash(reference) and repr(built) == repr(reference)
    with pytest.raises(dataclasses.FrozenInstanceError):
        make("a", 1, ()).count = 5  # type: ignore[misc]
    flow = positional_constructor(Flow)("10.0.0.1", 50000, "192.0.2.1", 53, "udp")
    assert flow == Flow("10.0.0.1", 50000, "192.0.2.1", 53, "udp")
    fields = (1.0, flow, "POST", "/a?b", "1.1", (("Host", "x"),), "x", b"body", 4, True)  # every field: ten
    assert positional_constructor(HttpRequest)(*fields) == HttpRequest(*fields)


@pytest.mark.skipif(records._record_maker is None, reason="compiled extension not built")
def test_compiled_constructor_takes_every_field_and_only_slotted_classes() -> None:
    make = positional_constructor(_Sample)
    assert make is not _Sample
    for fields in [("a",), ("a", 1, (), "extra"), ()]:
        with pytest.raises(TypeError, match="3 positional arguments"):
            make(*fields)
    with pytest.raises(TypeError):
        make(name="a", count=1, tags=())  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        records._record_maker(object)  # no __slots__
    with pytest.raises(TypeError):
        records._record_maker(len)  # not a class
    # Many records built and dropped: reference counts stay balanced (no leak, no early free).
    name = "shared-" + "x" * 50
    before = sys.getrefcount(name)
    kept = [make(name, n, ()) for n in range(1000)]
    assert sys.getrefcount(name) == before + 1000
    del kept
    assert sys.getrefcount(name) == before


@pytest.mark.skipif(records._record_maker is None, reason="compiled extension not built")
def test_compiled_helpers_refuse_wrong_arguments_without_crashing() -> None:
    """Every compiled entry point added for records and event lines, called with wrong types and
    counts: an exception or a decline (None), never a crash; a failed bind keeps the previous one."""
    import itertools

    import orjson

    from sensor import _fast
    from sensor.decode import dns

    wrong = [None, 0, -1, 2**70, 1.5, float("nan"), "", "x", b"", b"x", (), {}, object(), Flow,
             DnsQuery(1.0, Flow("10.0.0.1", 1, "10.0.0.2", 53, "udp"), 1, "a.example", "A")]  # fmt: skip
    expected = (TypeError, AttributeError, ValueError, OverflowError, RuntimeError)
    try:
        for function, count in ((_fast.dns_event_line, 3), (_fast.tls_event_line, 3), (_fast.event_envelope, 7)):
            for args in itertools.islice(itertools.product(wrong, repeat=count), 0, None, 97):
                with contextlib.suppress(*expected):
                    function(*args)
            for count_given in range(9):
                with contextlib.suppress(*expected):
                    function(*([None] * count_given))
        for value in wrong:
            for function in (_fast.record_maker, _fast.parse_dns):
                with contextlib.suppress(*expected):
                    function(value)
        with pytest.raises(TypeError):
            _fast.bind_dns(dns.DnsMessage, object, dns.TYPE_NAMES, dns.RCODE_NAMES)
        with pytest.raises(TypeError):
            _fast.bind_json(42)
    finally:
        _fast.bind_json(orjson.dumps)
    message = bytes.fromhex("123401000001000000000000") + b"\x07example\x03com\x00" + bytes.fromhex("00010001")
    assert dns.parse_message(message) == dns.parse_message_py(message)  # the DNS binding still holds
