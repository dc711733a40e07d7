"""The records every stage after decode consumes: small frozen dataclasses, never packets."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Flow:
    """The 5-tuple seen from the side that started the exchange (client -> server)."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    transport: str  # "tcp" or "udp"


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    name: str
    type: str  # "A", "AAAA", "CNAME", "HTTPS", "SVCB", ...
    data: str  # address, target name, or a short text form of the record
    ttl: int


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class TlsHello:
    """A ClientHello seen over TCP (protocol "tls") or in a QUIC Initial (protocol "quic")."""

    ts: float
    flow: Flow
    protocol: str  # "tls" or "quic"
    server_name: str | None
    alpn: tuple[str, ...] = ()
    ech: bool = False  # encrypted_client_hello (0xfe0d) present: server_name is only the outer cover name
    version: str | None = None  # e.g. "1.3" from supported_versions, else the legacy version


@dataclass(frozen=True, slots=True)
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
