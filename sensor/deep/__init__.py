"""Deep mode: requests whose content the wire hides (HTTPS, HTTP/3), read from a HAR export or
decrypted with a TLS key log, become the same `HttpRequest` records the decoder makes and take
the same enrich -> detect -> output path.

`DecryptedHttpRequest` (and `HttpsRequest` for those that were encrypted on the wire) marks
them, so that their alerts can say `phi_egress.decrypted: true`
while everything else about them (rules, throttle, ids) stays as for plaintext HTTP.
"""
from __future__ import annotations

from collections.abc import Callable

from sensor.records import HttpRequest


class DecryptedHttpRequest(HttpRequest):
    """An HTTP request read from a HAR file or decrypted with a key log."""

    __slots__ = ()


class HttpsRequest(DecryptedHttpRequest):
    """One that travelled inside TLS or QUIC (an https URL in a HAR, or decrypted): no plaintext
    on the wire, so the plaintext rule does not apply to it."""

    __slots__ = ()


def mark_decrypted(build: Callable[..., dict], record_of: Callable[..., object]) -> Callable[..., dict]:
    """Wrap a document builder: documents of decrypted requests get `phi_egress.decrypted: true`.
    `record_of(*args)` names the record the document is about."""

    def build_marked(*args):
        doc = build(*args)
        if isinstance(record_of(*args), DecryptedHttpRequest):
            doc["phi_egress"] = {**doc.get("phi_egress", {}), "decrypted": True}
        return doc

    return build_marked
