"""The decoder's limits and their defaults: what the configuration's `decode:` section sets.

The one home of these defaults: the schema, the configuration without a file and the decoder
all read them here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DecodeSettings:
    tcp_stream_cap: int = 262_144  # bytes kept per TCP direction
    http_body_cap: int = 65_536  # decoded body bytes kept per request
    max_flows: int = 200_000
    # seconds of capture time a connection may idle before the decoder forgets it: its TCP
    # stream, its key once parsed (or found unparsable), the segments held for one seen
    # mid-stream, its QUIC Initials' state
    flow_idle_timeout: float = 120.0
    dns_timeout: float = 5.0  # seconds to wait for the response to a query
