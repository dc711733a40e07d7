"""Peel the encodings that wrap request data into flat ``Field(path, value)`` pairs.

Tracker payloads nest encodings freely: a form parameter holding URL-encoded JSON, base64 JSON
inside a query string, gzip inside base64, a page URL whose own query carries a search term.
Recognizers need the innermost text together with the key names that led to it, so every layer
is undone here, bounded by depth, total output and a decompression ratio so that hostile input
costs little. Sans-IO: bytes or text in, fields out; nothing here raises on bad input.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus

from sensor.records import frozen_record, positional_constructor, split_target

try:  # the compiled steps (sensor/_fast/phi.c); _plain_py, Peeler.form_py and .json_py are their references
    from sensor._fast import bind_phi as _bind_phi
    from sensor._fast import bytes_text as _bytes_text
    from sensor._fast import peel_form as _peel_form
    from sensor._fast import peel_json as _peel_json
    from sensor._fast import plain_text as _plain_text
except ImportError:
    _bind_phi = _bytes_text = _peel_form = _peel_json = _plain_text = None

__all__ = [
    "DEFAULT_LIMITS",
    "Field",
    "LayerLimits",
    "Peeler",
    "decompress",
    "find_json",
    "join_path",
    "looks_like_form",
    "media_type",
    "multipart_boundary",
    "peel",
    "peel_request",
    "query_fields",
    "request_fields",
    "request_parts",
    "split_form",
    "split_multipart",
    "split_request_target",
    "split_target",
    "text_of",
]


@frozen_record
class Field:
    """One decoded value and the key path that led to it (``properties.medications.0``, ``dl.q``)."""

    path: str
    value: str


@dataclass(frozen=True, slots=True)
class LayerLimits:
    max_depth: int = 5  # nested encodings (form in base64 in JSON ...) followed before a value is taken as text
    max_output: int = 256 * 1024  # characters of field values emitted per peel, and bytes read from any input
    max_ratio: int = 100  # decompressed/compressed size above which data is treated as a bomb and dropped
    max_fields: int = 4096
    max_json_nesting: int = 32


DEFAULT_LIMITS = LayerLimits()
_field = positional_constructor(Field)  # every emitted value is one: the compiled maker where there is one

_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_BLANK = re.compile(r"\s")  # what str.isspace() calls blank
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_BASE64_URLSAFE = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_HEX_OR_DIGITS = re.compile(r"[0-9A-Fa-f]+")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=_-]")
_FORM_KEY = re.compile(r"[\w.\[\]$%:+~-]+")  # any length: a long key must not hide a form
_LONG_KEY = 128
_ABSOLUTE_URL = re.compile(r"(?i)^https?://[^\s/?#]+")
_BOUNDARY = re.compile(r'(?i)boundary="?([^";,]{1,200})"?')
_PART_NAME = re.compile(rb'(?i)\bname="([^"]{0,200})"')
_MIN_BASE64_CHARS = 8
_PRINTABLE_SHARE = 0.9
_SAMPLE_CHARS = 4096
_RATIO_FLOOR_BYTES = 1024  # inputs under 1 KiB may inflate to max_ratio KiB: their headers skew the ratio


# Escaped values come back request after request (a page URL, a search): short ones are unescaped once.
_UNQUOTED_CHARS = 256


@functools.lru_cache(maxsize=4096)
def _unquote_plus_short(text: str) -> str:
    return unquote_plus(text, errors="replace")


@functools.lru_cache(maxsize=4096)
def _unquote_short(text: str) -> str:
    return unquote(text, errors="replace")


def _unquote_plus(text: str) -> str:
    """unquote_plus(text, errors="replace")"""
    return _unquote_plus_short(text) if len(text) <= _UNQUOTED_CHARS else unquote_plus(text, errors="replace")


def _unquote(text: str) -> str:
    """unquote(text, errors="replace")"""
    return _unquote_short(text) if len(text) <= _UNQUOTED_CHARS else unquote(text, errors="replace")


class _Caps(Counter[str]):
    """A Counter that counts its own changes too: whether a peel met a cap is then one comparison
    of `changes` before and after (caps are rare, the question is asked of every new value)."""

    changes = 0

    def __setitem__(self, key: str, value: int) -> None:
        self.changes += 1
        super().__setitem__(key, value)


# Every time a bound stopped peeling (what was left unread is then not seen by the detectors):
# fields (too many keys), output (budget spent), json_nesting (nested too deep), long_keys (seen,
# not a bound). The pipeline adds them to its counters as phi.capped.* (see take_capped).
_CAPS = _Caps()
CAPPED: Counter[str] = _CAPS


def take_capped() -> dict[str, int]:
    """The caps hit since the last call (and reset)."""
    out = dict(CAPPED)
    CAPPED.clear()
    return out


def join_path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def split_form(text: str, max_pairs: int = DEFAULT_LIMITS.max_fields) -> list[tuple[str, str]]:
    """``a=b&c=d`` -> decoded pairs (plus and percent escapes undone); keys without ``=`` get ``""``."""
    pairs: list[tuple[str, str]] = []
    for piece in text.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        # unquote_plus gives back what has neither "+" nor "%": most keys and values
        if "%" in key or "+" in key:
            key = _unquote_plus(key)
        if "%" in value or "+" in value:
            value = _unquote_plus(value)
        pairs.append((key, value))
        if len(pairs) >= max_pairs:
            break
    return pairs


def decompress(
    data: bytes, max_ratio: int = DEFAULT_LIMITS.max_ratio, max_output: int = DEFAULT_LIMITS.max_output
) -> bytes | None:
    """Inflate gzip or zlib data; None when it is neither, is corrupt, or expands past ``max_ratio``.

    The ratio is measured on what was actually inflated (output against the input consumed to
    produce it), so a bomb is recognized after at most ``max_output`` bytes of work. Honest data
    longer than ``max_output`` is cut there.
    """
    if not _is_compressed(data):
        return None
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: accept both gzip and zlib headers
    try:
        out = inflater.decompress(data, max_output + 1)
    except zlib.error:
        return None
    consumed = len(data) - len(inflater.unconsumed_tail)
    if len(out) > max_ratio * max(consumed, _RATIO_FLOOR_BYTES):
        return None
    return out[:max_output]


def _is_compressed(data: bytes) -> bool:
    if data[:2] == b"\x1f\x8b":
        return True
    return len(data) >= 2 and data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and ((data[0] << 8) | data[1]) % 31 == 0


def _decode_base64(text: str) -> bytes | None:
    if len(text) < _MIN_BASE64_CHARS or _HEX_OR_DIGITS.fullmatch(text) or text.isalpha():
        return None
    decoder: Callable[[str], bytes]
    if _BASE64.fullmatch(text):
        decoder = base64.b64decode
    elif _BASE64_URLSAFE.fullmatch(text):
        decoder = base64.urlsafe_b64decode
    else:
        return None
    unpadded = text.rstrip("=")
    if len(unpadded) % 4 == 1:
        return None
    try:
        return decoder(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        return None


def _plain_py(text: str) -> bool:
    """No JSON, URL, base64, form, lines or escapes: none of the characters those need one of
    ({ [ / = % and a line break), and a character no base64 alphabet has (or too short, or all
    letters, or all hex digits for base64). The peel takes it as it is (most ids, hosts, words)."""
    # substring tests, not a search for a character class: as fast on short values, far faster on long ones
    if "/" in text or "=" in text or "%" in text or "{" in text or "[" in text or "\n" in text:
        return False
    if text.isdigit() and text.isascii():  # a number (an id, a time): all hex digits, asked faster
        return True
    return bool(
        len(text) < _MIN_BASE64_CHARS
        or text.isalpha()  # what _decode_base64 turns down at once
        or _NOT_BASE64.search(text)
        or _HEX_OR_DIGITS.fullmatch(text)
    )


_LINE_BLANKS = str.maketrans("", "", "\t\r\n")
# The printable ASCII, tabs and line breaks too: what is left when translate() deletes these is
# the ASCII that is not
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n\r"


def _printable_share(text: str) -> float:
    """The share of printable characters (tabs and line breaks count, U+FFFD does not)."""
    sample = text[:_SAMPLE_CHARS]
    if not sample:
        return 0.0
    if sample.isascii() and not sample.encode("ascii").translate(None, _PRINTABLE_ASCII):
        return 1.0  # all printable, found faster than isprintable() or a search
    rest = sample.translate(_LINE_BLANKS)
    if rest.isprintable():  # the common case, answered without a loop over the characters
        good = len(sample) - rest.count("\ufffd")
    else:
        good = sum(1 for ch in sample if (ch.isprintable() and ch != "\ufffd") or ch in "\t\r\n")
    return good / len(sample)


def _bytes_to_text_py(data: bytes) -> str | None:
    """The bytes as text when mostly printable, else None (binary: images, DER, protobuf)."""
    text = data.decode("utf-8", errors="replace")
    # U+FFFD never counts as printable: too many of them (random bytes, as base64 of an id gives)
    # say no without the count of the rest
    size = min(len(text), _SAMPLE_CHARS)
    if size and (size - text.count("\ufffd", 0, size)) / size < _PRINTABLE_SHARE:
        return None
    return text if _printable_share(text) >= _PRINTABLE_SHARE else None


def text_of(data: bytes, limits: LayerLimits = DEFAULT_LIMITS) -> str | None:
    """A body as text: inflated when compressed, None when binary."""
    data = data[: limits.max_output]
    inflated = decompress(data, limits.max_ratio, limits.max_output)
    return _bytes_to_text(inflated if inflated is not None else data)


def split_multipart(body: bytes, boundary: str, max_parts: int = DEFAULT_LIMITS.max_fields) -> list[tuple[str, bytes]]:
    """multipart/form-data -> (part name, part content) in order; malformed parts are skipped."""
    parts: list[tuple[str, bytes]] = []
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--") or len(parts) >= max_parts:
            break
        head, separator, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            head, separator, content = part.lstrip(b"\n").partition(b"\n\n")
        if not separator:
            continue
        name = _PART_NAME.search(head)
        key = name.group(1).decode("utf-8", "replace") if name else ""
        parts.append((key, content.removesuffix(b"\r\n").removesuffix(b"\n")))
    return parts


def multipart_boundary(content_type: str | None) -> str | None:
    if media_type(content_type) != "multipart/form-data":
        return None
    match = _BOUNDARY.search(content_type or "")
    return match.group(1) if match else None


def _parse_json(text: str) -> object | None:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        return json.loads(stripped)
    except (ValueError, RecursionError):
        return None


def looks_like_form(text: str) -> bool:
    """``key=value&...`` with plausible key names and no blanks (so not prose that contains "=")."""
    if "=" not in text or _BLANK.search(text, 0, _SAMPLE_CHARS):
        return False
    pieces = text.split("&", 64)
    first_key, equals, _ = pieces[0].partition("=")
    if not equals or not _FORM_KEY.fullmatch(first_key):
        return False
    return all(not piece or _FORM_KEY.fullmatch(piece.partition("=")[0]) for piece in pieces[1:64])


def _is_url(text: str) -> bool:
    """An absolute URL (blanks allowed: decoded search terms), or a path with no blanks (not prose)."""
    if _ABSOLUTE_URL.match(text):
        return True
    return text.startswith("/") and not _BLANK.search(text, 0, _SAMPLE_CHARS)


def _is_structured_line(line: str) -> bool:
    return _parse_json(line) is not None or looks_like_form(line)


# Values peeled before (texts not plain, form values escaped), by (text, path, depth, escaped):
# (fields, budget spent, budget needed, budget an inflation needed). Page URLs, event payloads and
# search terms come back request after request; the ids and timestamps beside them are plain and
# never get here. Longer values and paths (whole bodies, base64 payloads, which carry an id or a
# time) are seldom sent twice: they are peeled each time, as is a value that gives more fields or
# characters than the bounds below (an inflation, a packed list), so that the table stays at
# about 20 MB whatever requests come (a few hundred kilobytes for tracker traffic).
_PEELED: dict[tuple[str, str, int, bool], tuple[tuple[Field, ...], int, int, int]] = {}
_MAX_PEELED = 2048
_PEELED_CHARS = 256
_PEELED_FIELDS = 16
_PEELED_SPENT = 1024

# The compiled steps, given what they need from here (sensor/_fast/phi.c)
_plain: Callable[[str], bool] = _plain_py
_bytes_to_text: Callable[[bytes], str | None] = _bytes_to_text_py
if _bind_phi is not None and _plain_text is not None and _bytes_text is not None:
    _bind_phi(_field, _plain_py, _bytes_to_text_py, _PEELED, DEFAULT_LIMITS, _PEELED_CHARS)
    _plain, _bytes_to_text = _plain_text, _bytes_text


class Peeler:
    """Accumulates fields from any number of values under one shared budget.

    One instance per request: the limits bound the whole request, not each parameter.
    """

    def __init__(self, limits: LayerLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.fields: list[Field] = []
        self._budget = limits.max_output
        # Whether a limit decided anything (a value cut, a field dropped, an inflation stopped or
        # refused), and the most budget an inflation needed: while no limit decided, the same
        # peel from any budget above both gives the same fields (see request_parts).
        self.bound = False
        self.reach = 0

    @property
    def exhausted(self) -> bool:
        if self._budget <= 0 or len(self.fields) >= self.limits.max_fields:
            self.bound = True
            return True
        return False

    def emit(self, path: str, value: str) -> None:
        budget = self._budget
        if budget <= 0 or len(self.fields) >= self.limits.max_fields:  # exhausted, inline: every field passes here
            self.bound = True
            CAPPED["output" if budget <= 0 else "fields"] += 1
            return
        if len(value) > budget:
            CAPPED["output"] += 1
            self.bound = True
            value = value[:budget]
        self._budget = budget - len(value)
        self.fields.append(_field(path, value))

    def _inflate(self, data: bytes) -> bytes | None:
        """decompress() within the remaining budget, noting whether the budget decided the outcome."""
        if not _is_compressed(data):
            return None
        budget = self._budget
        inflated = decompress(data, self.limits.max_ratio, budget)
        if inflated is None or len(inflated) >= budget:  # refused (a bomb, corrupt) or maybe cut
            self.bound = True
        else:
            self.reach = max(self.reach, self.limits.max_output - budget + len(inflated))
        return inflated

    def value(self, data: bytes | str, path: str = "", depth: int = 0) -> None:
        """Peel one value of unknown encoding, emitting its innermost fields under ``path``."""
        if self.exhausted:
            return
        if isinstance(data, bytes):
            data = data[: self.limits.max_output]
            if depth < self.limits.max_depth and _is_compressed(data):
                inflated = self._inflate(data)
                if inflated is not None:
                    self.value(inflated, path, depth + 1)
                    return
            text = _bytes_to_text(data)
            if text is None:
                return
        else:
            text = data[: self.limits.max_output]
        self._text(text, path, depth)

    def _text(self, text: str, path: str, depth: int) -> None:
        stripped = text.strip()
        if not stripped:
            return
        if depth >= self.limits.max_depth or _plain(stripped):
            self.emit(path, stripped)
            return
        self._reused(stripped, path, depth, False)

    def _reused(self, text: str, path: str, depth: int, escaped: bool) -> None:
        """_layers(text, path, depth), of the text unescaped first when `escaped` (a form value),
        or the fields an earlier peel of the same text at the same path and depth gave.

        As for a part (see _part): a value peeled where no limit decided anything and no cap was
        counted gives the same fields at any point of a peel that has more budget left than the
        value spent and needed, and room for its fields (and for the one a form's rest would take)."""
        limits = self.limits
        if limits is not DEFAULT_LIMITS or len(text) > _PEELED_CHARS or len(path) > _PEELED_CHARS:
            self._peel_afresh(text, path, depth, escaped)
            return
        key = (text, path, depth, escaped)
        budget = self._budget
        known = _PEELED.get(key)
        if known is not None:
            fields, spent, need, reach = known
            if budget > need and len(self.fields) + len(fields) < limits.max_fields - 1:
                self.fields.extend(fields)
                self._budget = budget - spent
                if reach:
                    self.reach = max(self.reach, limits.max_output - budget + reach)
                return
        before, bound, outer_reach, capped = len(self.fields), self.bound, self.reach, _CAPS.changes
        self.bound, self.reach = False, 0
        self._peel_afresh(text, path, depth, escaped)
        spent = budget - self._budget
        if (
            not self.bound
            and spent <= _PEELED_SPENT
            and len(self.fields) - before <= _PEELED_FIELDS
            and _CAPS.changes == capped
        ):
            # the budget an inflation needed, counted from where this value started
            reach = self.reach - (limits.max_output - budget) if self.reach else 0
            if len(_PEELED) >= _MAX_PEELED:
                _PEELED.clear()
            _PEELED[key] = (tuple(self.fields[before:]), spent, max(spent, reach), reach)
        self.bound = bound or self.bound
        self.reach = max(outer_reach, self.reach)

    def _peel_afresh(self, text: str, path: str, depth: int, escaped: bool) -> None:
        if escaped:
            self._text(_unquote_plus(text), path, depth)
        else:
            self._layers(text, path, depth)

    def _layers(self, stripped: str, path: str, depth: int) -> None:
        """Undo the outermost encoding of a text that is not plain and peel what it held."""
        parsed = _parse_json(stripped)
        if parsed is not None:
            self.json(parsed, path, depth + 1)
            return
        if _is_url(stripped):
            self.url(stripped, path, depth + 1)
            return
        decoded = _decode_base64(stripped)
        if decoded is not None and self._accept_base64(decoded, path, depth):
            return
        if looks_like_form(stripped):
            self.form(stripped, path, depth + 1)
            return
        if "\n" in stripped and self._lines(stripped, path, depth):
            return
        if _PERCENT_ESCAPE.search(stripped):
            unescaped = unquote(stripped, errors="replace")
            if unescaped != stripped:
                self._text(unescaped, path, depth + 1)
                return
        self.emit(path, stripped)

    def _accept_base64(self, decoded: bytes, path: str, depth: int) -> bool:
        """Follow base64 only into JSON, compressed data or mostly printable text (never into DER or noise)."""
        if _is_compressed(decoded):
            inflated = self._inflate(decoded)
            if inflated is None:
                return False
            self.value(inflated, path, depth + 2)
            return True
        if len(decoded) < 4:
            return False
        text = _bytes_to_text(decoded)
        if text is None:
            return False
        self._text(text, path, depth + 1)
        return True

    def _lines(self, text: str, path: str, depth: int) -> bool:
        """Bodies with one record per line (GA4 batches, NDJSON): peel each line when all are structured."""
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2 or not all(_is_structured_line(line.strip()) for line in lines[:256]):
            return False
        for line in lines:
            if self.exhausted:
                break
            self._text(line, path, depth + 1)
        return True

    def form(self, text: str, prefix: str = "", depth: int = 0) -> None:
        """``a=b&c=d`` -> each value peeled under ``prefix.a``, ``prefix.c``."""
        pieces = text.split("&")
        start = 0
        if _peel_form is not None:  # the simple pieces compiled, the loop below goes on from the first other
            start = _peel_form(self, pieces, prefix, depth, self.limits.max_fields, depth >= self.limits.max_depth)
        if start < len(pieces):
            self._form_pieces(pieces, start, prefix, depth)

    def form_py(self, text: str, prefix: str = "", depth: int = 0) -> None:
        """form in Python alone (the reference of the compiled peel_form)."""
        self._form_pieces(text.split("&"), 0, prefix, depth)

    def _form_pieces(self, pieces: list[str], start: int, prefix: str, depth: int) -> None:
        """form's loop over the pieces from `start` on."""
        fields = self.fields
        max_fields = self.limits.max_fields
        plain_depth = depth >= self.limits.max_depth
        last = len(pieces) - 1
        for index in range(start, len(pieces)):
            piece = pieces[index]
            if not piece:
                continue
            if len(fields) >= max_fields - 1 and index < last:
                # one field left and more keys: what is unread goes out whole, so padding with
                # thousands of keys cannot hide the last one
                CAPPED["fields"] += 1
                self.emit(join_path(prefix, "_rest"), unquote_plus("&".join(pieces[index:]), errors="replace"))
                return
            budget = self._budget
            if budget <= 0 or len(fields) >= max_fields:  # (self.exhausted, inline)
                self.bound = True
                CAPPED["fields"] += 1
                return
            key, _, value = piece.partition("=")
            if len(key) > _LONG_KEY:
                CAPPED["long_keys"] += 1
            # unquote_plus gives back what has neither "+" nor "%": most keys and values
            if "%" in key or "+" in key:
                key = _unquote_plus(key)
            path = f"{prefix}.{key}" if prefix else key
            if "%" in value or "+" in value:  # an escaped value: a page URL, JSON, a search term
                self._reused(value, path, depth, True)
                continue
            # self._text(value, path, depth), inline for the common value: an id, a number, a word
            stripped = value.strip()
            if not stripped:
                continue
            if not (plain_depth or _plain(stripped)):
                self._reused(stripped, path, depth, False)
            elif len(stripped) <= budget:  # (self.emit, inline: the budget and the fields have room)
                self._budget = budget - len(stripped)
                fields.append(_field(path, stripped))
            else:
                self.emit(path, stripped)

    def json(self, obj: object, prefix: str = "", depth: int = 0, nesting: int = 0) -> None:
        """Flatten parsed JSON: objects and arrays to ``key.path``, string leaves peeled further."""
        limits = self.limits
        if _peel_json is None or not _peel_json(
            self, obj, prefix, depth, nesting, limits.max_json_nesting, limits.max_fields, depth >= limits.max_depth
        ):
            self.json_py(obj, prefix, depth, nesting)

    def json_py(self, obj: object, prefix: str = "", depth: int = 0, nesting: int = 0) -> None:
        """json in Python (the reference of the compiled peel_json)."""
        if self.exhausted:
            return
        if nesting >= self.limits.max_json_nesting:
            # deeper than the cap: the rest of the document goes out whole, as text
            CAPPED["json_nesting"] += 1
            self.emit(prefix, json.dumps(obj, ensure_ascii=False)[: self._budget])
            return
        if isinstance(obj, dict):
            for key, child in obj.items():
                if len(key) > _LONG_KEY:
                    CAPPED["long_keys"] += 1
                self.json_py(child, join_path(prefix, str(key)), depth, nesting + 1)
        elif isinstance(obj, list):
            for index, child in enumerate(obj):
                self.json_py(child, join_path(prefix, str(index)), depth, nesting + 1)
        elif isinstance(obj, str):
            self._text(obj, prefix, depth)
        elif isinstance(obj, bool):
            self.emit(prefix, "true" if obj else "false")
        elif isinstance(obj, (int, float)):
            self.emit(prefix, repr(obj))

    def url(self, text: str, path: str, depth: int = 0) -> None:
        """A URL or path: the part before ``?`` (percent-decoded) at ``path``, query parameters below it."""
        base, question, rest = text.partition("?")
        query, hash_mark, fragment = rest.partition("#")
        if not question:
            base, hash_mark, fragment = text.partition("#")
        shown = _unquote(base) + (hash_mark + _unquote(fragment) if hash_mark else "")
        self.emit(path, shown)
        if query:
            self.form(query, path, depth)

    def multipart(self, body: bytes, boundary: str, prefix: str = "", depth: int = 0) -> None:
        """multipart/form-data: each part's content peeled under its ``name``."""
        for name, content in split_multipart(body[: self.limits.max_output], boundary, self.limits.max_fields):
            if self.exhausted:
                return
            self.value(content, join_path(prefix, name), depth + 1)

    def body(self, body: bytes, content_type: str | None, prefix: str = "") -> None:
        """A request body, dispatched on its media type, with the generic peel as the fallback."""
        boundary = multipart_boundary(content_type)
        if boundary is not None:
            self.multipart(body, boundary, prefix)
            return
        if media_type(content_type) == "application/x-www-form-urlencoded":
            text = _bytes_to_text(body[: self.limits.max_output])
            # declared a form: taken as one whatever its keys look like (an odd key hides nothing)
            if text is not None and "=" in text:
                self.form(text.strip(), prefix, 1)
                return
        self.value(body, prefix)


def peel(data: bytes | str, path: str = "", limits: LayerLimits = DEFAULT_LIMITS) -> list[Field]:
    """Every innermost field of one value of unknown encoding."""
    peeler = Peeler(limits)
    peeler.value(data, path)
    return peeler.fields


def request_fields(
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    content_type: str | None = None,
    limits: LayerLimits = DEFAULT_LIMITS,
) -> list[Field]:
    """The fields of one HTTP request: ``url.path``, ``query.*``, ``header.referer``/``header.host``, ``body.*``.

    The path is kept whole (it is where portal and condition-page hints live); the Referer is the
    page the request came from, the most common carrier of a health page URL besides the query.
    """
    return [item for part in request_parts(target, headers, body, content_type, limits) for item in part.fields]


@dataclass(slots=True)
class Part:
    """The fields of one part of a request (its URL, its Referer, its Host, its body).

    `findings` is the recognizers' memo of what they found in these fields, per minimum confidence:
    a part seen again (the same page URL in many requests, the same URL in an alert's event and
    its redaction) is peeled and scanned once."""

    fields: tuple[Field, ...]
    spent: int  # budget the fields used
    reach: int  # budget the peel needed (inflations included)
    findings: dict[float, tuple] = field(default_factory=dict)


_new_part = positional_constructor(Part)  # (fields, spent, reach, findings)

# Parts remembered: inputs up to _CACHED_PART_CHARS whose fields take up to _CACHED_PART_SPENT.
_PARTS: dict[tuple, Part] = {}
_MAX_PARTS = 2048
_CACHED_PART_CHARS = 8192
_CACHED_PART_SPENT = 16384


# The query strings of recent URL parts and their fields under "query.", when no limit decided
# them and no key is empty: a tracker decoder reads the same parameters (see query_fields).
_QUERY_FIELDS: dict[str, tuple[Field, ...]] = {}
_MAX_QUERY_FIELDS = 2048
_QUERY_PREFIX = "query."


def split_request_target(target: str) -> tuple[str, str]:
    """split_target(target), an origin-form target (most) split here without a lower-cased copy."""
    if target[:1] != "/":  # (an absolute URL never starts so)
        return split_target(target)
    path, _, query = (target.partition("#")[0] if "#" in target else target).partition("?")
    return path, query


def _peel_url(peeler: Peeler, path: str, query: str) -> None:
    if path:
        peeler.emit("url.path", _unquote(path))
    if not query:
        return
    if peeler.limits is not DEFAULT_LIMITS or len(query) > _CACHED_PART_CHARS or query[0] == "=" or "&=" in query:
        peeler.form(query, "query", 1)
        return
    before, bound, capped = len(peeler.fields), peeler.bound, _CAPS.changes
    peeler.bound = False
    peeler.form(query, "query", 1)
    if not peeler.bound and _CAPS.changes == capped:
        if len(_QUERY_FIELDS) >= _MAX_QUERY_FIELDS:
            _QUERY_FIELDS.clear()
        _QUERY_FIELDS[query] = tuple(peeler.fields[before:])
    peeler.bound = bound or peeler.bound


def query_fields(query: str) -> tuple[Field, ...] | None:
    """The fields of a query string peeled alone as a form of parameters (``Peeler().form(query,
    "", 1)``, what a tracker decoder peels), when a recent request's URL part had that query;
    else None. Every key there was non-empty, so the URL part's fields are these under "query."
    (nested paths too), and no limit decided anything, so a fresh peel gives the same."""
    found = _QUERY_FIELDS.get(query)
    if found is None:
        return None
    cut = len(_QUERY_PREFIX)
    return tuple(_field(item.path[cut:], item.value) for item in found)


def _peel_host(peeler: Peeler, value: str) -> None:
    peeler.emit("header.host", value.strip())


def _peel_referer(peeler: Peeler, value: str) -> None:
    peeler.value(value, "header.referer")


def _peel_body(peeler: Peeler, body: bytes, content_type: str | None) -> None:
    peeler.body(body, content_type, "body")


_PEEL_PARTS: dict[str, Callable[..., None]] = {"url": _peel_url, "host": _peel_host, "referer": _peel_referer, "body": _peel_body}


def _input_chars(inputs: tuple) -> int:
    total = 0
    for item in inputs:
        if item:
            total += len(item)
    return total


def _alone(kind: str, inputs: tuple) -> Part | None:
    """The part of `inputs` peeled once on its own with the default limits (remembered), or None
    when a limit decided anything there or the input is too large to be remembered."""
    key = (kind, *inputs)
    # (a part remembered was within the size bound: a part seen before is not measured again)
    part = _PARTS.get(key)
    if part is None and _input_chars(inputs) <= _CACHED_PART_CHARS:
        part = _peel_alone(key)
    return part


def _peel_alone(key: tuple) -> Part | None:
    """_alone of a part not remembered, `key` being (kind, *inputs)."""
    if key[0] == "host":  # (a Host header: one field, the value stripped, within every limit)
        value = key[1].strip()
        part = _new_part((_field("header.host", value),), len(value), 0, {})
    else:
        alone = Peeler(DEFAULT_LIMITS)
        _PEEL_PARTS[key[0]](alone, *key[1:])
        if alone.bound:
            return None
        part = _new_part(tuple(alone.fields), DEFAULT_LIMITS.max_output - alone._budget, alone.reach, {})
    if part.spent <= _CACHED_PART_SPENT:
        if len(_PARTS) >= _MAX_PARTS:
            _PARTS.clear()
        _PARTS[key] = part
    return part


def _part(peeler: Peeler, kind: str, *inputs: Any) -> Part:
    """Peel one part of a request into `peeler`, reusing an earlier peel of the same input.

    The fields of a part depend on where the shared budget stands only through the limits. A
    part is peeled once on its own with the whole budget; when no limit decided anything there,
    and the request has more budget left than that peel spent and needed, its fields are exactly
    the ones peeling it here would give. Otherwise (a huge part, a request near its limits, other
    limits than the defaults) it is peeled here, as one request."""
    limits = peeler.limits
    part = _alone(kind, inputs) if limits is DEFAULT_LIMITS else None
    if part is not None and peeler._budget > part.spent and peeler._budget >= part.reach and (
        len(peeler.fields) + len(part.fields) < limits.max_fields
    ):
        peeler.fields.extend(part.fields)
        peeler._budget -= part.spent
        return part
    before, budget = len(peeler.fields), peeler._budget
    _PEEL_PARTS[kind](peeler, *inputs)
    return Part(tuple(peeler.fields[before:]), budget - peeler._budget, 0)


def request_parts(
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    content_type: str | None = None,
    limits: LayerLimits = DEFAULT_LIMITS,
) -> list[Part]:
    """request_fields part by part, in the same order, each part peeled once per distinct input."""
    return peel_request(target, headers, body, content_type, limits)[0]


def peel_request(
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    content_type: str | None = None,
    limits: LayerLimits = DEFAULT_LIMITS,
) -> tuple[list[Part], list[Part], str | None, bool]:
    """request_parts; the parts of the target and of the first Referer (the page parts); that
    Referer; and whether no limit decided anything. When none did, every part's fields are the
    ones it gives peeled alone, so a request of the target and first Referer alone has the page
    parts' fields (and findings)."""
    wanted: list[tuple[tuple, int, bool]] = []  # ((kind, *inputs), input characters, a page part)
    referrer = None
    path, query = split_request_target(target)
    if path or query:
        wanted.append((("url", path, query), len(path) + len(query), True))
    for name, value in headers:
        lowered = name.lower()
        if lowered == "referer":
            wanted.append((("referer", value), len(value), referrer is None))
            if referrer is None:
                referrer = value
        elif lowered == "host":
            wanted.append((("host", value), len(value), False))
        elif lowered == "content-type" and content_type is None:
            content_type = value
    if body:
        wanted.append((("body", body, content_type), len(body) + len(content_type or ""), False))
    parts: list[Part] = []
    # the parts reused while every one is (most requests), only their fields and budget counted;
    # from the first one that is not, _peel_on
    budget, count, max_fields = limits.max_output, 0, limits.max_fields
    remembered = limits is DEFAULT_LIMITS
    exact = True
    for index, (key, chars, _) in enumerate(wanted):
        found = None
        if remembered:  # (_alone, inline)
            found = _PARTS.get(key)
            if found is None and chars <= _CACHED_PART_CHARS:
                found = _peel_alone(key)
        if found is not None and budget > found.spent and budget >= found.reach and count + len(found.fields) < max_fields:
            budget -= found.spent
            count += len(found.fields)
            parts.append(found)
        else:
            exact = _peel_on(parts, [item[0] for item in wanted[index:]], budget, limits)
            break
    page = [part for part, (_, _, in_page) in zip(parts, wanted) if in_page]
    return parts, page, referrer, exact


def _peel_on(parts: list[Part], keys: list[tuple], budget: int, limits: LayerLimits) -> bool:
    """peel_request from its first part not reused: the parts of `keys` ((kind, *inputs) each)
    peeled by _part into one peeler that holds the fields of `parts` and has `budget` left (the
    first peeled there), appended to `parts`; whether no limit decided anything."""
    peeler = Peeler(limits)
    peeler.fields = [item for earlier in parts for item in earlier.fields]
    peeler._budget = budget
    kind, *inputs = keys[0]
    count = len(peeler.fields)
    _PEEL_PARTS[kind](peeler, *inputs)
    parts.append(Part(tuple(peeler.fields[count:]), budget - peeler._budget, 0))
    for key in keys[1:]:
        parts.append(_part(peeler, *key))
    return not peeler.bound


def find_json(data: bytes | str, limits: LayerLimits = DEFAULT_LIMITS) -> object | None:
    """The JSON document under URL-encoding, base64 and gzip layers, or None.

    Used where a parameter is known to carry JSON (Mixpanel ``data=``, Amplitude ``e=``).
    """
    current: bytes | str = data[: limits.max_output]
    for _ in range(limits.max_depth + 1):
        if isinstance(current, bytes):
            inflated = decompress(current, limits.max_ratio, limits.max_output)
            if inflated is not None:
                current = inflated
                continue
            text = _bytes_to_text(current)
            if text is None:
                return None
            current = text
        stripped = current.strip()
        parsed = _parse_json(stripped)
        if parsed is not None:
            return parsed
        # Query strings turn an unescaped base64 "+" into a space; put it back before decoding.
        decoded = _decode_base64(stripped.replace(" ", "+"))
        if decoded is not None:
            current = decoded
            continue
        if _PERCENT_ESCAPE.search(stripped):
            current = unquote_plus(stripped, errors="replace")
            continue
        return None
    return None
