"""Mask findings before anything leaves the sensor: typed placeholders, never the value or a hash.

A finding's span locates it in the value it came from; the same value can also recur elsewhere
(in the raw URL, in another parameter, in a different case), so every occurrence of a finding's
value is masked as well, not only the span. Output shows ``[REDACTED:condition]`` where the
text said "diabetes".
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from sensor.phi import recognizers
from sensor.phi.layers import Field
from sensor.phi.recognizers import Finding

try:  # the compiled fast path (sensor/_fast/redact.c); identifier_hints_py is the reference
    from sensor._fast import bind_hints as _bind_hints
    from sensor._fast import bind_query as _bind_query
    from sensor._fast import identifier_hints as _hints_fast
    from sensor._fast import redact_query as _query_fast
except ImportError:  # built without a C compiler
    _hints_fast = _bind_query = _query_fast = None

__all__ = ["EXCERPT_CHARS", "evidence", "identifier_spans", "placeholder", "redact", "redact_url"]

EXCERPT_CHARS = 80
_TYPE_LABEL = re.compile(r"[^a-z0-9_]")
_URL_SAFE = "/:@!$&'()*+,;=-._~[]"  # keep a URL readable; placeholders keep their brackets


def placeholder(finding_type: str) -> str:
    return f"[REDACTED:{_TYPE_LABEL.sub('_', finding_type.lower())}]"


# What looks like an identifier is masked whether or not a recognizer believed it (a number on
# its list of known test values, a failed check digit, a confidence below the rules' threshold):
# redaction is a superset of detection. These are the recognizers' shapes without their
# validation; each alternative names the type of the value it captures. Every text of every
# event passes here, so each family runs only where a cheap hint says it may match.
_NUMERIC = re.compile(
    r"(?<![\w-])(?P<ssn>\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}|\d{3}\.\d{2}\.\d{4})(?![\w-])"
    r"|(?<![\w+.-])(?P<phone>(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4})(?![\w.-])"
    r"|(?<![\w+])(?P<phone_>\+\d{10,15})(?!\d)"
)
_NUMERIC_HINT = re.compile(r"\d\d\d[- .)]|\+\d{10}")  # a numeric shape starts at most 5 characters before
_MBI_L, _MBI_A = "[AC-HJKMNP-RT-Y]", "[AC-HJKMNP-RT-Y0-9]"
_MBI = re.compile(
    rf"(?<![A-Za-z0-9])([1-9]{_MBI_L}{_MBI_A}\d(?:{_MBI_L}{_MBI_A}\d|-{_MBI_L}{_MBI_A}\d-){_MBI_L}{{2}}\d{{2}})(?![A-Za-z0-9])"
)
_MBI_HINT = re.compile(rf"[1-9]{_MBI_L}{_MBI_A}\d[{_MBI_L[1:-1]}-]")
_WORDED = re.compile(
    r"(?i:\bssn|social security(?: number| no\.?)?|soc\.? ?sec)\W{0,5}(?P<ssn_>\d{9})(?!\d)"
    r"|(?i:\b(?:mrn|medical record(?: number| no\.?)?|chart (?:number|no\.?|#))\s*[:#=]?\s*(?P<mrn>[a-z]{0,3}\d{6,10})\b)"
    r"|(?i:\b(?:member|subscriber|policy|group)\s*(?:id|#|no\.?|number)\s*[:#=]?\s*"
    r"(?P<member_id>(?=(?:[a-z-]*\d){3})[a-z0-9][a-z0-9-]{4,19})\b)"
    r"|(?i:(?:\bnpi|national provider(?: identifier)?)\W{0,5}(?P<npi>\d{10})(?!\d))"
)
_WORD_HINTS = ("ssn", "soc", "mrn", "medical rec", "chart", "member", "subscriber", "policy", "group", "npi", "national")
_WORD_HINT = re.compile("|".join(map(re.escape, _WORD_HINTS)))  # one search of the lowered text for any of them
_WORD_STARTS = re.compile(f"(?={_WORD_HINT.pattern})")  # every place one starts, overlapping too
# Apart, and only where there is an "@": its local part would be tried at every position.
_EMAIL = re.compile(r"(?<![\w.%+-])([A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24})(?![\w-])")
_FILE_SUFFIXES = recognizers._FILE_SUFFIXES  # "logo@2x.png" names an asset, not a mailbox


# Families of identifier shapes, as bits of identifier_hints.
_NUMERIC_BIT, _MBI_BIT, _WORDED_BIT, _EMAIL_BIT = 1, 2, 4, 8
# in every match of _NUMERIC, hinted or not: two groups of digits after a separator (or the
# ")" of an area code), the last of four; a number with one separator (a client id
# "609311563.1700476380", "UA-6064393-1") has none
_NUMERIC_NEED = re.compile(r"[-. )]\d{2,3}[-. ]\d{4}|\+\d{10}")

if _hints_fast is not None:
    _bind_hints(_WORD_HINTS, _NUMERIC_BIT, _MBI_BIT, _WORDED_BIT, _EMAIL_BIT)


def identifier_hints_py(text: str) -> int:
    """The families of identifier shapes that may occur in `text` (the bits above): each family's
    hint, and for the numeric shapes what every one of them holds. Most text has none."""
    return (
        (_NUMERIC_BIT if _NUMERIC_HINT.search(text) and _NUMERIC_NEED.search(text) else 0)
        | (_MBI_BIT if _MBI_HINT.search(text) else 0)
        | (_WORDED_BIT if _WORD_HINT.search(text.lower()) else 0)
        | (_EMAIL_BIT if "@" in text else 0)
    )


def identifier_spans(text: str) -> list[tuple[int, int, str]]:
    """Every identifier-shaped span of `text`, believed or not (may repeat a span)."""
    spans: list[tuple[int, int, str]] = []
    hints = _hints_fast(text) if _hints_fast is not None else None
    if hints is None:
        hints = identifier_hints_py(text)
    if not hints:
        return spans
    if hints & _NUMERIC_BIT:
        for hint in _NUMERIC_HINT.finditer(text):  # a window around each hint: never the whole text
            start = max(0, hint.start() - 5)
            for match in _NUMERIC.finditer(text, start, start + 48):
                group = match.lastgroup or ""
                spans.append((match.start(group), match.end(group), group.rstrip("_")))
    if hints & _MBI_BIT:
        spans.extend((match.start(1), match.end(1), "mbi") for match in _MBI.finditer(text))
    if hints & _WORDED_BIT:
        for match in _worded_matches(text):
            group = match.lastgroup or ""
            spans.append((match.start(group), match.end(group), group.rstrip("_")))
    if hints & _EMAIL_BIT:
        for match in _EMAIL.finditer(text):
            if match.group(1).rsplit(".", 1)[-1].lower() not in _FILE_SUFFIXES:
                spans.append((match.start(1), match.end(1), "email"))
    return spans


def _worded_matches(text: str) -> Iterator[re.Match[str]]:
    """_WORDED.finditer(text), the pattern tried only where a hint word starts: each worded
    identifier starts with one (in any case), and trying every place of a long text costs tens
    of microseconds. ASCII only, where lowering keeps every place; other text is searched whole."""
    if not text.isascii():
        yield from _WORDED.finditer(text)
        return
    end = 0
    for start in _WORD_STARTS.finditer(text.lower()):
        if start.start() >= end:  # as finditer, the next match after the end of the last
            match = _WORDED.match(text, start.start())  # (\b looks before the start, as in a search)
            if match:
                end = match.end()
                yield match


# Parameters named as an identifier are masked whole, whatever their value looks like.
_KEYED = (
    ("ssn", recognizers._SSN_KEYS), ("mrn", recognizers._MRN_KEYS), ("dob", recognizers._DOB_KEYS),
    ("email", recognizers._EMAIL_KEYS), ("phone", recognizers._PHONE_KEYS),
    ("member_id", recognizers._MEMBER_KEYS), ("mbi", recognizers._MBI_KEYS),
    ("npi", frozenset({"npi", "npinumber", "providernpi", "prescribernpi"})),
)


def _keyed_type(key: str) -> str | None:
    named = recognizers._key(key)
    return next((kind for kind, names in _KEYED if named.named(names)), None)


@functools.lru_cache(maxsize=512)  # as many as the re module keeps
def _value_pattern(value: str) -> re.Pattern[str]:
    """Every occurrence of a finding's value, in any case."""
    return re.compile(re.escape(value), re.IGNORECASE)


def _intervals(text: str, findings: Iterable[Finding]) -> list[tuple[int, int, str]]:
    """Merged spans to mask, each with the type of the finding that opened it."""
    raw: list[tuple[int, int, str]] = identifier_spans(text)
    # ASCII against ASCII, "in" on lowered text is exactly what the case-blind pattern finds (or
    # not): the pattern runs only where the value occurs. Other text may fold case beyond ASCII.
    lowered = text.lower() if findings and text.isascii() else None
    for finding in findings:
        value = finding.value
        if 0 <= finding.start < finding.end <= len(text) and text[finding.start : finding.end] == value:
            raw.append((finding.start, finding.end, finding.type))
        if not value or (lowered is not None and value.isascii() and value.lower() not in lowered):
            continue
        raw.extend((match.start(), match.end(), finding.type) for match in _value_pattern(value).finditer(text))
    if not raw:
        return raw
    raw.sort(key=lambda span: (span[0], -span[1]))
    merged: list[tuple[int, int, str]] = []
    for start, end, kind in raw:
        if merged and start < merged[-1][1]:
            last_start, last_end, last_kind = merged[-1]
            merged[-1] = (last_start, max(last_end, end), last_kind)
        else:
            merged.append((start, end, kind))
    return merged


def _redact_mapped(text: str, findings: Iterable[Finding]) -> tuple[str, list[tuple[int, int, int, int]]]:
    """The redacted text and, per mask, (start, end) in the input and (start, end) in the output."""
    return _masked(text, _intervals(text, findings))


def _masked(text: str, intervals: list[tuple[int, int, str]]) -> tuple[str, list[tuple[int, int, int, int]]]:
    pieces: list[str] = []
    mapping: list[tuple[int, int, int, int]] = []
    cursor = written = 0
    for start, end, kind in intervals:
        pieces.append(text[cursor:start])
        written += start - cursor
        label = placeholder(kind)
        pieces.append(label)
        mapping.append((start, end, written, written + len(label)))
        written += len(label)
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces), mapping


def redact(text: str, findings: Iterable[Finding]) -> str:
    """``text`` with each finding's span, and every other occurrence of its value, replaced by a
    placeholder; identifier-shaped values are masked even without a finding (see _redact_mapped)."""
    if not findings and _hints_fast is not None and _hints_fast(text) == 0:
        return text  # the common case: no finding, no identifier shape
    intervals = _intervals(text, findings)
    return _masked(text, intervals)[0] if intervals else text


# (finding, its value lowered) of each finding with a value, or None where a value is not ASCII
_Needles = tuple[tuple[Finding, str], ...] | None


def _needles(findings: Sequence[Finding]) -> _Needles:
    """What _redact_part needs of `findings`, computed once per URL. None when a value is not
    ASCII: a case-blind pattern can match it beyond ASCII ("\u212a", the Kelvin sign, matches "k")."""
    needles = tuple([(finding, finding.value.lower()) for finding in findings if finding.value])
    return needles if all(finding.value.isascii() for finding, _ in needles) else None


def _redact_part(text: str, findings: Sequence[Finding], needles: _Needles) -> str:
    """redact(text, findings) of a part of a URL, `needles` being _needles(findings).

    Only a finding whose value occurs in the text masks anything (its own span holds its value),
    and most parts hold none: with ASCII on both sides, "in" on lowered text tells which do. The
    parts that do are few and recur (a page URL in every tracker request): remembered with them.
    """
    if needles is None or not text.isascii():
        return redact(text, findings)
    lowered = text.lower()
    relevant = tuple([finding for finding, needle in needles if needle in lowered])
    if not relevant:
        return redact(text, ())
    if len(text) <= _CACHED_URL_CHARS:
        return _redact_cached(text, relevant)
    return redact(text, relevant)


_redact_cached = functools.lru_cache(maxsize=1024)(redact)


@functools.lru_cache(maxsize=1024)
def _quoted_value(redacted: str) -> str:
    """A masked query value encoded again; the masked values of a capture are few (see _redact_part)."""
    return quote_plus(redacted, safe="[]:/")


@functools.lru_cache(maxsize=4096)
def _query_key(raw_key: str) -> tuple[str, str, str | None]:
    """A query parameter's name decoded, as written out (re-encoded only if it carried an
    identifier, which is masked), and the identifier type it names, if any. Names repeat."""
    key = unquote_plus(raw_key, errors="replace")
    masked_key = redact(key, ())  # a key can carry an identifier as well as a value
    return key, raw_key if masked_key == key else quote_plus(masked_key, safe="[]:/"), _keyed_type(key)


def _unquoted(raw_value: str) -> str:
    """A query value decoded."""
    if len(raw_value) <= _CACHED_KEY_CHARS:
        return _unquoted_cached(raw_value)
    return unquote_plus(raw_value, errors="replace")


@functools.lru_cache(maxsize=4096)
def _unquoted_cached(raw_value: str) -> str:
    return unquote_plus(raw_value, errors="replace")


_PATH_MARKS = re.compile(r"[.\[]")


def _carriers(findings: Iterable[Finding]) -> dict[str, Finding]:
    """Per query parameter, the first finding decoded out of it: a finding at path ``query.p`` (or
    ``query.p.x``, ``query.p[x]``) was decoded out of parameter ``p`` (or ``p.x``)."""
    carriers: dict[str, Finding] = {}
    for finding in findings:
        path = finding.path.removeprefix("query.")
        carriers.setdefault(path, finding)
        for mark in _PATH_MARKS.finditer(path):
            carriers.setdefault(path[: mark.start()], finding)
    return carriers


def redact_url(url: str, findings: Sequence[Finding]) -> str:
    """A URL with findings masked in its host, path, query values and fragment.

    A query value whose findings were decoded out of an encoding (base64, nested URL encoding)
    cannot be masked piecewise: the whole value is replaced, with the type of its first finding.
    """
    if len(url) <= _CACHED_URL_CHARS:  # an alert masks its request's URL for the event and again for the alert
        return _redact_url_cached(url, tuple(findings))
    return _redact_url(url, findings)


_CACHED_URL_CHARS = 2048
_CACHED_KEY_CHARS = 256


def _redact_url(url: str, findings: Sequence[Finding]) -> str:
    rest, hash_mark, fragment = url.partition("#")
    base, question, query = rest.partition("?")
    authority = ""
    if "://" in base:
        scheme, _, after = base.partition("://")
        host, slash, path = after.partition("/")
        authority, base = f"{scheme}://{host}", slash + path
    key = findings if type(findings) is tuple else tuple(findings)
    masks = _url_masks(key) if len(key) <= _CACHED_FINDINGS else _url_masks.__wrapped__(key)
    needles = masks[0]
    parts = [_redact_component(authority, findings, needles), _redact_component(base, findings, needles)]
    if question:
        parts.append("?" + _redact_query(query, findings, needles, masks))
    if hash_mark:
        parts.append("#" + _redact_component(fragment, findings, needles))
    return "".join(parts)


_redact_url_cached = functools.lru_cache(maxsize=1024)(_redact_url)


def _redact_component(raw: str, findings: Sequence[Finding], needles: _Needles) -> str:
    """A URL component, decoded, masked and re-encoded; untouched (as sent) when nothing was masked."""
    if needles is not None and len(raw) <= _CACHED_KEY_CHARS:  # hosts and paths recur
        lowered, masked = _plain_component(raw)
        if lowered is not None and not any(needle in lowered for _, needle in needles):
            return masked  # no finding's value in it: masked as without findings
    decoded = unquote(raw, errors="replace")
    redacted = _redact_part(decoded, findings, needles)
    return raw if redacted == decoded else quote(redacted, safe=_URL_SAFE)


@functools.lru_cache(maxsize=4096)
def _plain_component(raw: str) -> tuple[str | None, str]:
    """A URL component decoded and lowered (None: not ASCII), and _redact_component's result for
    it without findings."""
    decoded = unquote(raw, errors="replace")
    redacted = redact(decoded, ())
    return (decoded.lower() if decoded.isascii() else None), raw if redacted == decoded else quote(redacted, safe=_URL_SAFE)


def _redact_query(query: str, findings: Sequence[Finding], needles: _Needles, masks: _Masks | None = None) -> str:
    """A query with findings masked in its values and identifiers in its names; `needles` is
    _needles(findings), `masks` _url_masks(findings). By the compiled loop where it takes the query."""
    if _query_fast is not None:
        if masks is None:
            key = tuple(findings)
            masks = _url_masks(key) if len(key) <= _CACHED_FINDINGS else _url_masks.__wrapped__(key)
        written = _query_fast(query, masks[1], masks[2], findings, needles)
        if written is not None:
            return written
    return _redact_query_py(query, findings, needles)


_CACHED_FINDINGS = 16
# _url_masks: _needles, the needles' lowered values alone, the carriers' masked values written out
_Masks = tuple[_Needles, tuple[str, ...] | None, dict[str, str]]


@functools.lru_cache(maxsize=1024)
def _url_masks(findings: tuple[Finding, ...]) -> _Masks:
    """What masking a URL takes of its findings: _needles; for the compiled query loop the
    needles' lowered values (None: a value not ASCII, see _needles) and, per carrying parameter
    (_carriers), its masked value written out. The findings of a capture's alerts are few and recur."""
    needles = _needles(findings)
    lowered = None if needles is None else tuple([needle for _, needle in needles])
    return needles, lowered, {key: _quoted(placeholder(finding.type)) for key, finding in _carriers(findings).items()}


def _redact_query_py(query: str, findings: Sequence[Finding], needles: _Needles) -> str:
    """_redact_query in Python: the reference of the compiled loop (sensor/_fast/redact.c)."""
    pieces = []
    carriers: dict[str, Finding] | None = None
    for piece in query.split("&"):
        known = _query_piece(piece) if len(piece) <= _CACHED_PIECE_CHARS else _query_piece.__wrapped__(piece)
        if isinstance(known, str):  # a value under an identifier's name: masked whatever the findings
            pieces.append(known)
            continue
        key, head, as_sent, value, lowered, masked = known
        # most values hold no finding's value: then masked as without findings, known already
        if needles is not None and lowered is not None and not any(needle in lowered for _, needle in needles):
            redacted = masked
        else:
            redacted = _redact_part(value, findings, needles)
        if redacted == value:
            if carriers is None:
                carriers = _carriers(findings)
            carried = carriers.get(key)
            if carried is None:
                pieces.append(as_sent)
                continue
            redacted = placeholder(carried.type)
        pieces.append(head + _quoted(redacted))
    return "&".join(pieces)


_CACHED_PIECE_CHARS = 1024


@functools.lru_cache(maxsize=4096)
def _query_piece(piece: str) -> str | tuple[str, str, str, str, str | None, str]:
    """What _redact_query_py needs of a `name=value` piece whatever the findings: the piece written
    out where its name names an identifier (its value masked), else the name decoded, the name
    as written out with the "=" if any, the piece as written out with its value as sent, the
    value decoded, lowered (None: not ASCII) and masked without findings. Pieces recur."""
    raw_key, equals, raw_value = piece.partition("=")
    key, written_key, keyed = _query_key(raw_key) if len(raw_key) <= _CACHED_KEY_CHARS else _query_key.__wrapped__(raw_key)
    # unquote_plus gives back what has neither; encoded values (page URLs) recur
    value = _unquoted(raw_value) if "%" in raw_value or "+" in raw_value else raw_value
    head = written_key + equals
    if keyed is not None and value.strip():
        return head + _quoted(placeholder(keyed))
    return key, head, head + raw_value, value, value.lower() if value.isascii() else None, redact(value, ())


def _quoted(redacted: str) -> str:
    """A masked query value encoded again."""
    return _quoted_value(redacted) if len(redacted) <= _CACHED_URL_CHARS else quote_plus(redacted, safe="[]:/")


if _bind_query is not None:
    _bind_query(_query_piece, _query_piece.__wrapped__, _CACHED_PIECE_CHARS, _redact_part, _quoted)


def evidence(findings: Iterable[Finding], fields: Iterable[Field], unredacted: bool = False) -> list[dict[str, object]]:
    """Per finding: type, category, confidence, path and a short excerpt (at most ``EXCERPT_CHARS``).

    The excerpt is the finding in its surrounding text with every finding masked, unless
    ``unredacted`` is set (for an operator who chose to see raw evidence).
    """
    findings = list(findings)
    by_path: dict[str, list[str]] = {}
    for item in fields:
        by_path.setdefault(item.path, []).append(item.value)
    records = []
    masked: dict[str, tuple[str, list[tuple[int, int, int, int]]]] = {}  # per source: findings often share one
    for finding in findings:
        source = _source_value(finding, by_path.get(finding.path, ()))
        if unredacted:
            excerpt = _raw_excerpt(source, finding) if source is not None else finding.value[:EXCERPT_CHARS]
        elif source is not None:
            if source not in masked:
                masked[source] = _redact_mapped(source, findings)
            excerpt = _redacted_excerpt(masked[source], finding)
        else:
            excerpt = placeholder(finding.type)
        records.append(
            {
                "type": finding.type,
                "category": finding.category,
                "confidence": finding.confidence,
                "path": finding.path if unredacted else redact(finding.path, ()),
                "excerpt": excerpt,
            }
        )
    return records


def _source_value(finding: Finding, candidates: Sequence[str]) -> str | None:
    for value in candidates:
        if value[finding.start : finding.end] == finding.value:
            return value
    return None


def _window(length: int, start: int, end: int, room: int) -> tuple[int, int]:
    """Up to ``room`` characters around ``[start, end)``, split evenly, within ``[0, length)``."""
    left = max(0, start - room // 2)
    right = min(length, end + room - (start - left))
    left = max(0, start - (room - (right - end)))  # room the right side could not use goes left
    return left, right


def _raw_excerpt(source: str, finding: Finding) -> str:
    room = max(0, EXCERPT_CHARS - (finding.end - finding.start))
    left, right = _window(len(source), finding.start, finding.end, room)
    return source[left:right][:EXCERPT_CHARS]


def _redacted_excerpt(masked: tuple[str, list[tuple[int, int, int, int]]], finding: Finding) -> str:
    """The excerpt around `finding` of its source as _redact_mapped masked it."""
    redacted, mapping = masked
    own = next((out for out in mapping if out[0] <= finding.start < out[1]), None)
    if own is None:  # an empty finding masks nothing: show its label alone
        return placeholder(finding.type)
    out_start, out_end = own[2], own[3]
    left, right = _window(len(redacted), out_start, out_end, max(0, EXCERPT_CHARS - (out_end - out_start)))
    # Never cut a neighbouring placeholder in half: drop it from the excerpt instead.
    for _, _, other_start, other_end in mapping:
        if other_start < left < other_end:
            left = other_end
        if other_start < right < other_end:
            right = other_start
    return redacted[left:right]
