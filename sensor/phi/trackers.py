"""Decoders for tracker collection requests: what page, which event, and every parameter sent.

Each vendor packs the same facts differently (Meta ``dl``/``ev``/``cd[...]``, GA4 ``dl``/``en``/
``ep.*`` with one event per body line, Mixpanel base64 or URL-encoded JSON in ``data=``, Segment
and Amplitude JSON batches ...). A decoder turns one request into a ``TrackerPayload`` with the
vendor's names kept as parameter paths, so findings point at ``cd[search_string]`` or
``properties.medications.0`` rather than at an anonymous blob. Sans-IO, and never raises: a
request a decoder cannot read yields None or a payload with fewer fields.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from sensor.phi.layers import (
    DEFAULT_LIMITS,
    Field,
    Peeler,
    find_json,
    looks_like_form,
    multipart_boundary,
    query_fields,
    split_form,
    split_multipart,
    split_request_target,
    text_of,
)
from sensor.phi.lzstring import decompress_from_base64
from sensor.phi.recognizers import CONTEXT, Finding, scan_fields
from sensor.records import frozen_record

__all__ = ["DECODERS", "TrackerPayload", "decode_tracker", "scan_tracker"]

_MAX_EVENTS = 256
_NO_PAYLOAD_METHODS = frozenset({"OPTIONS", "CONNECT"})


@frozen_record
class TrackerPayload:
    decoder: str
    event: str | None  # the first event (Meta ev, GA4 en, Mixpanel event, Segment event or type, ...)
    events: tuple[str, ...]  # every event of a batch, in order
    page_url: str | None  # the page the event fired on (Meta/GA4/UA dl, Mixpanel $current_url, ...)
    referrer: str | None
    title: str | None
    params: tuple[Field, ...]  # every decoded parameter: cd[...], ud[...], ep.*, properties.*, traits.*


@frozen_record
class _Request:
    query: str
    content_type: str | None
    body: bytes

    def query_pairs(self) -> list[tuple[str, str]]:
        return split_form(self.query) if self.query else []

    def pair_params(self, pairs: Sequence[tuple[str, str]]) -> tuple[Field, ...]:
        """_pair_params(pairs) of the request's parameters, `pairs` being query_pairs() plus
        body_pairs(): for a request without a body, the fields its URL's scan peeled already."""
        if not self.body and self.query and len(pairs) < DEFAULT_LIMITS.max_fields:
            known = query_fields(self.query)
            if known is not None:
                return known
        return _pair_params(pairs)

    def body_pairs(self) -> list[tuple[str, str]]:
        """Body parameters of a form or multipart body (text parts only); [] for any other body."""
        if not self.body:
            return []
        boundary = multipart_boundary(self.content_type)
        if boundary is not None:
            pairs = []
            for name, content in split_multipart(self.body[: DEFAULT_LIMITS.max_output], boundary):
                text = text_of(content)
                if text is not None:
                    pairs.append((name, text.strip()))
            return pairs
        text = self.body_text()
        return split_form(text) if text is not None and looks_like_form(text) else []

    def body_text(self) -> str | None:
        text = text_of(self.body) if self.body else None
        return text.strip() if text is not None else None

    def body_lines(self) -> list[list[tuple[str, str]]]:
        """A body of several query-string lines (GA4 and UA batches): one pair list per line."""
        text = self.body_text()
        if not text or "\n" not in text:
            return []
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not all(looks_like_form(line) for line in lines):
            return []
        return [split_form(line) for line in lines]

    def json_documents(self, pairs: Sequence[tuple[str, str]], *names: str) -> list[dict]:
        """Event objects from a JSON-carrying parameter (``data=``, ``e=``) or from a JSON body.

        A batch (a list, or an object holding ``batch``/``events``) gives one object per event.
        """
        for name in names:
            value = _first(pairs, name)
            if value:
                documents = _documents(find_json(value))
                if documents:
                    return documents
        return _documents(find_json(self.body)) if self.body else []


def _documents(parsed: object) -> list[dict]:
    """One object per event; a batch envelope's own keys (shared context, api key) come last."""
    if isinstance(parsed, dict):
        for batch_key in ("batch", "events", "data"):
            inner = parsed.get(batch_key)
            if isinstance(inner, list) and inner and all(isinstance(item, dict) for item in inner):
                envelope = {key: value for key, value in parsed.items() if key != batch_key}
                return inner[:_MAX_EVENTS] + ([envelope] if envelope else [])
        return [parsed]
    if isinstance(parsed, list):
        return [item for item in parsed[:_MAX_EVENTS] if isinstance(item, dict)]
    return []


def _first(pairs: Iterable[tuple[str, str]], *names: str) -> str | None:
    for name in names:
        for key, value in pairs:
            if key == name and value:
                return value
    return None


def _lookup(documents: Iterable[dict], *paths: tuple[str, ...]) -> str | None:
    """The first string found at any of ``paths`` (tuples of keys, since keys may contain dots) in any document."""
    for document in documents:
        for path in paths:
            node: object = document
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, str) and node:
                return node
    return None


def _pair_params(pairs: Iterable[tuple[str, str]]) -> tuple[Field, ...]:
    peeler = Peeler()
    for key, value in pairs:
        peeler.value(value, key, 1)
    return tuple(peeler.fields)


def _document_params(documents: Iterable[dict]) -> tuple[Field, ...]:
    peeler = Peeler()
    for document in documents:
        peeler.json(document)
    return tuple(peeler.fields)


def _payload(
    decoder: str,
    events: Iterable[str | None],
    page_url: str | None,
    referrer: str | None,
    title: str | None,
    params: tuple[Field, ...],
) -> TrackerPayload | None:
    named = tuple(event for event in events if event)[:_MAX_EVENTS]
    if not (params or named or page_url):
        return None
    return TrackerPayload(decoder, named[0] if named else None, named, page_url, referrer, title, params)


# --- query-string and form trackers --------------------------------------------------------------


def _simple_pairs(
    event_keys: tuple[str, ...], page_keys: tuple[str, ...], referrer_keys: tuple[str, ...], title_keys: tuple[str, ...] = ()
) -> Callable[[str, _Request], TrackerPayload | None]:
    """A decoder for trackers that send one flat parameter list in the query or a form body."""

    def decode(name: str, request: _Request) -> TrackerPayload | None:
        pairs = request.query_pairs() + request.body_pairs()
        return _payload(
            name,
            [_first(pairs, *event_keys)],
            _first(pairs, *page_keys),
            _first(pairs, *referrer_keys),
            _first(pairs, *title_keys) if title_keys else None,
            request.pair_params(pairs),
        )

    return decode


def _ga4(name: str, request: _Request) -> TrackerPayload | None:
    """GA4 /g/collect: shared parameters in the query, one event per body line (or one in the query)."""
    shared = request.query_pairs()
    lines = request.body_lines() or ([request.body_pairs()] if request.body else [])
    all_pairs = shared + [pair for line in lines for pair in line]
    events = [_first(shared, "en")] + [_first(line, "en") for line in lines]
    return _payload(
        name,
        events,
        _first(all_pairs, "dl", "page_location"),
        _first(all_pairs, "dr", "page_referrer"),
        _first(all_pairs, "dt", "page_title"),
        request.pair_params(all_pairs),
    )


def _ua_event(hit: Sequence[tuple[str, str]]) -> str | None:
    hit_type = _first(hit, "t")
    return _first(hit, "ea") if hit_type == "event" else hit_type


def _universal_analytics(name: str, request: _Request) -> TrackerPayload | None:
    """UA /collect (query or form body) and /batch (one hit per body line)."""
    hits = request.body_lines() or [request.query_pairs() + request.body_pairs()]
    all_pairs = [pair for hit in hits for pair in hit]
    page = _first(all_pairs, "dl")
    if page is None:
        host, path = _first(all_pairs, "dh"), _first(all_pairs, "dp")
        page = f"{host or ''}{path}" if path else None
    return _payload(
        name,
        [_ua_event(hit) for hit in hits],
        page,
        _first(all_pairs, "dr"),
        _first(all_pairs, "dt"),
        request.pair_params(all_pairs),
    )


def _twitter(name: str, request: _Request) -> TrackerPayload | None:
    """X/Twitter adsct: ``events`` is JSON like ``[["pageview", {...}]]``."""
    pairs = request.query_pairs() + request.body_pairs()
    raw_events = _first(pairs, "events")
    parsed = find_json(raw_events) if raw_events else None
    events = []
    if isinstance(parsed, list):
        for entry in parsed[:_MAX_EVENTS]:
            if isinstance(entry, list) and entry and isinstance(entry[0], str):
                events.append(entry[0])
    return _payload(name, events, _first(pairs, "tw_document_href"), None, None, _pair_params(pairs))


def _pinterest(name: str, request: _Request) -> TrackerPayload | None:
    """Pinterest /v3: ``event``, ``ed`` (event data), ``pd`` (hashed ids) and ``ad`` (page: ``loc``, ``ref``)."""
    pairs = request.query_pairs() + request.body_pairs()
    page_data = find_json(_first(pairs, "ad") or "")
    page_documents = [page_data] if isinstance(page_data, dict) else []
    page = _lookup(page_documents, ("loc",), ("url",))
    referrer = _lookup(page_documents, ("ref",))
    return _payload(name, [_first(pairs, "event")], page or _first(pairs, "url"), referrer, None, _pair_params(pairs))


# --- JSON trackers --------------------------------------------------------------------------------


def _mixpanel(name: str, request: _Request) -> TrackerPayload | None:
    """Mixpanel /track, /engage, /import: ``data=`` as base64 or URL-encoded JSON, or a raw JSON body."""
    pairs = request.query_pairs() + request.body_pairs()
    documents = request.json_documents(pairs, "data")
    return _payload(
        name,
        [_lookup([document], ("event",)) for document in documents],
        _lookup(documents, ("properties", "$current_url")),
        _lookup(documents, ("properties", "$referrer")),
        None,
        _document_params(documents),
    )


def _posthog_documents(request: _Request) -> list[dict]:
    """PostHog capture bodies: JSON, a ``data=`` form (base64, or lz-string when the query says
    ``compression=lz64``), or gzip (``compression=gzip-js``, or a gzip Content-Encoding the HTTP
    decoder already undid); one event, a list of events, or ``{"batch": [...]}``."""
    pairs = request.query_pairs() + request.body_pairs()
    if _first(pairs, "compression") == "lz64":
        packed = _first(request.body_pairs(), "data") or request.body_text() or ""
        text = decompress_from_base64(packed.replace(" ", "+"), DEFAULT_LIMITS.max_output)
        documents = _documents(find_json(text)) if text else []
        if documents:
            return documents
    return request.json_documents(pairs, "data")


def _posthog(name: str, request: _Request) -> TrackerPayload | None:
    """PostHog /e/, /i/v0/e/, /batch/, /capture/, /s/ (events) and /decide/, /flags/ (feature flags,
    with ``person_properties``): events are ``event`` with ``properties`` ($current_url, $referrer,
    title, $set)."""
    documents = _posthog_documents(request)
    return _payload(
        name,
        [_lookup([document], ("event",)) for document in documents],
        _lookup(documents, ("properties", "$current_url")),
        _lookup(documents, ("properties", "$referrer")),
        _lookup(documents, ("properties", "title")),
        _document_params(documents),
    )


def _segment(name: str, request: _Request) -> TrackerPayload | None:
    """Segment /v1/*: one message or ``{"batch": [...]}``; the event is ``event`` for track, else ``type``."""
    documents = request.json_documents([])
    return _payload(
        name,
        [_lookup([document], ("event",), ("type",)) for document in documents],
        _lookup(documents, ("context", "page", "url"), ("properties", "url")),
        _lookup(documents, ("context", "page", "referrer"), ("properties", "referrer")),
        _lookup(documents, ("context", "page", "title"), ("properties", "title")),
        _document_params(documents),
    )


def _amplitude(name: str, request: _Request) -> TrackerPayload | None:
    """Amplitude HTTP API v2 (``{"events": [...]}``) or the older form body with ``e=<json>``."""
    pairs = request.query_pairs() + request.body_pairs()
    documents = request.json_documents(pairs, "e")
    page_keys = ("[Amplitude] Page URL", "[Amplitude] Page Location", "page_url", "url")
    return _payload(
        name,
        [_lookup([document], ("event_type",)) for document in documents],
        _lookup(documents, *(("event_properties", key) for key in page_keys)),
        _lookup(documents, ("event_properties", "referrer"), ("event_properties", "[Amplitude] Page Referrer")),
        _lookup(documents, ("event_properties", "[Amplitude] Page Title"), ("event_properties", "title")),
        _document_params(documents),
    )


def _tiktok(name: str, request: _Request) -> TrackerPayload | None:
    """TikTok pixel JSON: ``event``, ``context.page.url``/``referrer``, ``context.user``, ``properties``."""
    documents = request.json_documents([])
    return _payload(
        name,
        [_lookup([document], ("event",)) for document in documents],
        _lookup(documents, ("context", "page", "url")),
        _lookup(documents, ("context", "page", "referrer")),
        None,
        _document_params(documents),
    )


def _linkedin(name: str, request: _Request) -> TrackerPayload | None:
    """LinkedIn Insight: ``url`` in the query of /collect, or ``pageUrl`` in a JSON body."""
    pairs = request.query_pairs() + request.body_pairs()
    documents = [] if pairs else request.json_documents([])
    params = _pair_params(pairs) + _document_params(documents)
    return _payload(
        name,
        [_first(pairs, "conversionId") or _lookup(documents, ("conversionId",), ("eventType",))],
        _first(pairs, "url") or _lookup(documents, ("pageUrl",), ("url",)),
        _first(pairs, "ref") or _lookup(documents, ("referrerUrl",)),
        None,
        params,
    )


_GENERIC_EVENT_KEYS = ("ev", "en", "event", "event_type", "eventName", "event_name", "evt")
_GENERIC_PAGE_KEYS = ("dl", "url", "page_url", "pageUrl", "page_location", "href", "location", "tw_document_href", "pl")
_GENERIC_REFERRER_KEYS = ("rl", "dr", "ref", "referrer", "referrerUrl", "page_referrer", "rf")


def _generic(name: str, request: _Request) -> TrackerPayload | None:
    """Any other collector: peel every layer, take the usual names for event, page and referrer."""
    body_pairs = request.body_pairs()
    pairs = request.query_pairs() + body_pairs
    documents = [] if body_pairs else request.json_documents([])
    params = query_fields(request.query) if request.query and not request.body else None
    if params is None:  # (else the fields the request's URL gave its scan)
        peeler = Peeler()
        if request.query:
            peeler.form(request.query, "", 1)
        if request.body:
            peeler.body(request.body, request.content_type)
        params = tuple(peeler.fields)
    return _payload(
        name,
        [_first(pairs, *_GENERIC_EVENT_KEYS) or _lookup(documents, *((key,) for key in _GENERIC_EVENT_KEYS))],
        _first(pairs, *_GENERIC_PAGE_KEYS)
        or _lookup(documents, *((key,) for key in _GENERIC_PAGE_KEYS), ("context", "page", "url")),
        _first(pairs, *_GENERIC_REFERRER_KEYS) or _lookup(documents, *((key,) for key in _GENERIC_REFERRER_KEYS)),
        _first(pairs, "dt", "title") or _lookup(documents, ("title",)),
        params,
    )


DECODERS: dict[str, Callable[[str, _Request], TrackerPayload | None]] = {
    "meta-pixel": _simple_pairs(("ev",), ("dl",), ("rl",)),
    "ga4": _ga4,
    "ua": _universal_analytics,
    "mixpanel": _mixpanel,
    "posthog": _posthog,
    "segment": _segment,
    "amplitude": _amplitude,
    "bing-uet": _simple_pairs(("ea", "evt"), ("p",), ("r",), ("tl",)),
    "linkedin": _linkedin,
    "tiktok": _tiktok,
    "snap": _simple_pairs(("ev",), ("pl",), ("rf",)),
    "pinterest": _pinterest,
    "twitter": _twitter,
    "generic": _generic,
}


def decode_tracker(
    decoder: str, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
) -> TrackerPayload | None:
    """Decode one collection request with the named decoder.

    None for an unknown decoder name, for requests that carry no payload by definition (CORS
    preflight ``OPTIONS``, ``CONNECT``), and for requests with nothing to decode. Any other method
    is read the same way: trackers put the same parameters in a GET query or a POST body.
    """
    decode = DECODERS.get(decoder)
    if decode is None or method.upper() in _NO_PAYLOAD_METHODS:
        return None
    content_type = next((value for key, value in headers if key.lower() == "content-type"), None)
    return decode(decoder, _Request(split_request_target(target)[1], content_type, body))


_HEALTH_EVENT_WORDS = frozenset(
    {
        "schedule", "appointment", "appointments", "refill", "prescription", "prescriptions", "symptom",
        "symptoms", "diagnosis", "telehealth", "telemedicine", "medication", "medications", "glucose", "insulin",
        "dose", "patient", "doctor", "physician",
    }
)  # fmt: skip
_EVENT_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_HEALTH_EVENT_CONFIDENCE = 0.6


def scan_tracker(payload: TrackerPayload, min_confidence: float = 0.5) -> list[Finding]:
    """Findings in a decoded payload: every parameter scanned, plus health-flavoured event names.

    An event such as Meta's standard ``Schedule`` or an app's ``medication_taken`` says what the
    person did on a health site even when no parameter carries a term.
    """
    findings = scan_fields(payload.params, min_confidence)
    if _HEALTH_EVENT_CONFIDENCE < min_confidence:
        return findings
    health_events = {
        event
        for event in payload.events
        if not _HEALTH_EVENT_WORDS.isdisjoint(word.lower() for word in _EVENT_WORD.findall(event))
    }
    for param in payload.params:
        if param.value in health_events:
            findings.append(
                Finding("health_event", CONTEXT, _HEALTH_EVENT_CONFIDENCE, param.path, 0, len(param.value), param.value)
            )
    return findings
