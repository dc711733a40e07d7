"""The records every stage after decode consumes: small frozen dataclasses, never packets."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, dataclass_transform

try:  # the compiled constructor (see sensor/_fast/records.c)
    from sensor._fast import record_maker as _record_maker
except ImportError:  # built without a C compiler
    _record_maker = None

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def frozen_record(cls: type[_T]) -> type[_T]:
    """`@dataclass(frozen=True, slots=True)`, cheaper to build.

    A frozen dataclass's __init__ assigns every field through `object.__setattr__`; the one made
    here writes each slot through its descriptor, which costs about 40% less. Decode builds these
    objects by the hundred thousand per capture. Instances are the same in every other way (still
    immutable, hashable, equal by value). Field defaults must be immutable values, not factories.
    """
    cls = dataclass(frozen=True, slots=True)(cls)
    params: list[str] = []
    body: list[str] = []
    scope: dict[str, object] = {}
    for item in dataclasses.fields(cast(Any, cls)):  # a dataclass now, which type[_T] cannot say
        if item.default_factory is not dataclasses.MISSING or not item.init or item.kw_only:
            raise TypeError(f"{cls.__name__}.{item.name}: frozen_record takes plain fields only")
        scope[f"_set_{item.name}"] = getattr(cls, item.name).__set__  # a slot, maybe a base class's
        if item.default is dataclasses.MISSING:
            params.append(item.name)
        else:
            scope[f"_default_{item.name}"] = item.default
            params.append(f"{item.name}=_default_{item.name}")
        body.append(f"    _set_{item.name}(self, {item.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"]), scope)  # noqa: S102
    init: Any = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)  # replaces the dataclass's own __init__
    return cls


def positional_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A function building a `frozen_record` class from every field, positionally and in order.

    Compiled, it writes the slots directly (about 4x cheaper than the class call), for the records
    decode builds per packet; without the extension it is the class itself.
    """
    return _record_maker(cls) if _record_maker is not None else positional_constructor_py(cls)


def positional_constructor_py(cls: type[_T]) -> Callable[..., _T]:
    """positional_constructor in Python: the class itself (its __init__ made by frozen_record)."""
    return cls


@frozen_record
class Flow:
    """The 5-tuple seen from the side that started the exchange (client -> server)."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    transport: str  # "tcp" or "udp"


# what the documents of a tunnelled flow say of its tunnel: (phi_egress.tunnel, outer VLAN, inner VLAN)
TunnelValue = tuple[dict[str, Any], int | None, int | None]


@frozen_record
class TunnelledFlow(Flow):
    """A flow whose packets came through a tunnel (sensor.decode.packet.PacketDecoder.tunnels),
    carrying the tunnel so that documents built long after the record (a throttle window's) still
    name it. Equal and hashed as its 5-tuple; `tunnel` is one value shared by the tunnel's flows."""

    tunnel: TunnelValue = field(compare=False)


@frozen_record
class DnsAnswer:
    name: str
    type: str  # "A", "AAAA", "CNAME", "HTTPS", "SVCB", ...
    data: str  # address, target name, or a short text form of the record
    ttl: int


@frozen_record
class DnsQuery:
    """One DNS question with the answers of its response when the response was seen."""

    ts: float
    flow: Flow
    id: int
    name: str
    qtype: str
    response_seen: bool = False
    rcode: str | None = None
    answers: tuple[DnsAnswer, ...] = ()


@frozen_record
class TlsHello:
    """A ClientHello seen over TCP (protocol "tls") or in a QUIC Initial (protocol "quic")."""

    ts: float
    flow: Flow
    protocol: str  # "tls" or "quic"
    server_name: str | None
    alpn: tuple[str, ...] = ()
    ech: bool = False  # encrypted_client_hello (0xfe0d) present: server_name is only the outer cover name
    version: str | None = None  # e.g. "1.3" from supported_versions, else the legacy version


@frozen_record
class LocalNameQuery(DnsQuery):
    """A name asked or announced on the local link: multicast DNS, LLMNR, NetBIOS name service.

    These name hosts of the local network, not destinations, so they never feed DNS attribution
    and never raise an alert by themselves.
    """

    protocol: str = "mdns"  # "mdns", "llmnr" or "netbios-ns"


@frozen_record
class UpgradedHello(TlsHello):
    """A ClientHello that followed a plaintext start on the same connection."""

    preamble: str = "unknown"  # what came before: "smtp", "imap", "http-connect", "websocket", ...
    tunnel_target: str | None = None  # the CONNECT authority (or Upgrade target) the hello went through


@frozen_record
class HttpRequest:
    ts: float
    flow: Flow
    method: str
    target: str  # the request target exactly as sent
    version: str  # "1.0" / "1.1"
    headers: tuple[tuple[str, str], ...]
    host: str | None  # Host header without port
    body: bytes = b""  # decoded (de-chunked, decompressed), at most the configured cap
    body_bytes: int = 0  # body length on the wire
    body_truncated: bool = False

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


Record = DnsQuery | TlsHello | HttpRequest


@dataclass(slots=True)
class Counters:
    """Named counters; every stage adds to one shared instance for --stats."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, amount: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + amount

    def get(self, name: str) -> int:
        return self.values.get(name, 0)


def split_target(target: str) -> tuple[str, str]:
    """Split a request target (origin or absolute form) into path and query, fragment dropped."""
    rest = target.split("#", 1)[0]
    if rest.lower().startswith(("http://", "https://")):
        after_scheme = rest.split("://", 1)[1]
        slash = after_scheme.find("/")
        question = after_scheme.find("?")
        if slash == -1 or (question != -1 and question < slash):
            rest = "/" + after_scheme[question:] if question != -1 else "/"
        else:
            rest = after_scheme[slash:]
    path, _, query = rest.partition("?")
    return path, query
