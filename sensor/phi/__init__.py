"""The health-data detector: peel payload encodings, recognize PHI, decode tracker requests, redact.

Entry points: ``scan_http`` for any HTTP request, ``decode_tracker`` + ``scan_tracker`` for a
request to a known collector, ``is_health_data`` for the rule threshold, and ``redact``,
``redact_url`` and ``evidence`` before anything is written out.
"""
from sensor.phi.layers import Field, LayerLimits, peel, request_fields
from sensor.phi.recognizers import Finding, is_health_data, scan_fields, scan_http, summarize
from sensor.phi.redact import evidence, placeholder, redact, redact_url
from sensor.phi.trackers import DECODERS, TrackerPayload, decode_tracker, scan_tracker

__all__ = [
    "DECODERS",
    "Field",
    "Finding",
    "LayerLimits",
    "TrackerPayload",
    "decode_tracker",
    "evidence",
    "is_health_data",
    "peel",
    "placeholder",
    "redact",
    "redact_url",
    "request_fields",
    "scan_fields",
    "scan_http",
    "scan_tracker",
    "summarize",
]
