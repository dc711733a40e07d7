"""Condition and medication lexicons and the ICD-10-CM code list: loaded once, matched fast.

Terms come from ``signatures/phi/*.txt`` (see its README). Matching is whole-word and
case-insensitive over ASCII word tokens, through a dictionary keyed by a term's first token, so
the cost is one lookup per token of input whatever the size of the lexicon.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sensor.paths import PHI_LEXICON_DIR

try:  # the compiled gate (sensor/_fast/phi.c); TermMatcher.may_occur_py is its reference
    from sensor._fast import term_may_occur as _term_may_occur
except ImportError:
    _term_may_occur = None

__all__ = [
    "TermMatch",
    "TermMatcher",
    "icd10_codes",
    "icd10_release",
    "is_icd10_code",
    "read_terms",
    "term_matcher",
    "tokenize",
]

_TOKEN = re.compile(r"[A-Za-z]+|\d+")
_LETTERS = re.compile(r"[A-Za-z]+")
# Between the words of one term: a space, hyphen, underscore, plus (form encoding) or apostrophe.
_JOINER = re.compile(r"[\s\-_+'\u2019/]{0,3}")
_PLURAL_ES = ("s", "x", "z", "ch", "sh")

CONDITIONS_FILE = "conditions.txt"
MEDICATIONS_FILE = "medications.txt"
STOPLIST_FILE = "stoplist.txt"


@dataclass(frozen=True, slots=True)
class TermMatch:
    kind: str  # "condition" or "medication"
    term: str  # the lexicon entry that matched, lower case
    start: int
    end: int
    ambiguous: bool  # listed in the stop list: counts only next to health context


@dataclass(frozen=True, slots=True)
class _Entry:
    tokens: tuple[str, ...]
    term: str
    kind: str
    ambiguous: bool


def tokenize(text: str, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """ASCII word tokens of ``text[start:end]`` as (lower-case token, start, end); letters and digits split apart."""
    finder = _TOKEN.finditer(text, start, len(text) if end is None else end)
    return [(m.group().lower(), m.start(), m.end()) for m in finder]


def read_terms(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a lexicon file, lower case."""
    terms = []
    for line in path.read_text(encoding="utf-8").splitlines():
        term = line.split("#", 1)[0].strip().lower()
        if term:
            terms.append(term)
    return terms


def _plural(tokens: tuple[str, ...]) -> tuple[str, ...] | None:
    last = tokens[-1]
    if not last.isalpha() or len(last) < 3:
        return None
    if last.endswith("y") and last[-2] not in "aeiou":
        return tokens[:-1] + (last[:-1] + "ies",)
    if last.endswith(_PLURAL_ES):
        return tokens[:-1] + (last + "es",)
    return tokens[:-1] + (last + "s",)


class TermMatcher:
    """Longest whole-word match of any lexicon term, left to right, without overlaps."""

    def __init__(self, entries: Iterable[tuple[str, str, bool]], plurals_for: frozenset[str] = frozenset()) -> None:
        """``entries``: (term, kind, ambiguous); kinds in ``plurals_for`` also match their plural."""
        by_first: dict[str, dict[tuple[str, ...], _Entry]] = {}
        for term, kind, ambiguous in entries:
            tokens = tuple(token for token, _, _ in tokenize(term))
            if not tokens:
                continue
            variants = [tokens]
            plural = _plural(tokens) if kind in plurals_for else None
            if plural is not None:
                variants.append(plural)
            for variant in variants:
                bucket = by_first.setdefault(variant[0], {})
                bucket.setdefault(variant, _Entry(variant, term, kind, ambiguous))
        self._by_first = {
            first: sorted(bucket.values(), key=lambda entry: -len(entry.tokens)) for first, bucket in by_first.items()
        }
        self.size = sum(len(bucket) for bucket in self._by_first.values())
        # the tokens a term can start with: runs of letters, unless a term starts with digits
        self.digits_lead = any(first.isdigit() for first in self._by_first)
        self._first_tokens = _TOKEN if self.digits_lead else _LETTERS
        self.may_occur: Callable[..., bool] = self.may_occur_py
        if _term_may_occur is not None:
            self.may_occur = functools.partial(_term_may_occur, self._by_first, self.digits_lead, self.may_occur_py)

    def may_occur_py(self, text: str, lowered: str | None = None) -> bool:
        """False when no term can match in ``text``: none of its tokens starts a term.

        Skipping spans only takes tokens away (the first token of a match is a whole run of letters
        or digits, so it is a token of the whole text too): False here means ``find`` finds nothing
        whatever it skips. ``lowered``, ``text.lower()`` when the caller has it, serves ASCII text."""
        if lowered is not None and text.isascii():  # lower() then maps letters to letters only
            return not self._by_first.keys().isdisjoint(self._first_tokens.findall(lowered))
        tokens = self._first_tokens.findall(text)
        return bool(tokens) and not self._by_first.keys().isdisjoint(" ".join(tokens).lower().split())

    def find(self, text: str, skip: Sequence[tuple[int, int]] = ()) -> list[TermMatch]:
        """Matches in ``text``, ignoring the ``skip`` spans (opaque tokens): they are not even tokenized."""
        tokens = [token for start, end in _gaps(len(text), skip) for token in tokenize(text, start, end)]
        matches: list[TermMatch] = []
        index = 0
        while index < len(tokens):
            entry = self._longest_at(text, tokens, index)
            if entry is None:
                index += 1
                continue
            last = index + len(entry.tokens) - 1
            matches.append(TermMatch(entry.kind, entry.term, tokens[index][1], tokens[last][2], entry.ambiguous))
            index = last + 1
        return matches

    def _longest_at(self, text: str, tokens: list[tuple[str, int, int]], index: int) -> _Entry | None:
        for entry in self._by_first.get(tokens[index][0], ()):
            size = len(entry.tokens)
            if index + size > len(tokens):
                continue
            if not all(tokens[index + k][0] == entry.tokens[k] for k in range(1, size)):
                continue
            if not all(_JOINER.fullmatch(text, tokens[index + k - 1][2], tokens[index + k][1]) for k in range(1, size)):
                continue
            if _is_whole_word(text, tokens[index][1], tokens[index + size - 1][2]):
                return entry
        return None


def _is_whole_word(text: str, start: int, end: int) -> bool:
    """Tokens split letters from digits; a term must not be glued to a letter or digit ("hiv2x" is no "hiv")."""
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    return not (before.isalnum() and before.isascii()) and not (after.isalnum() and after.isascii())


def _gaps(length: int, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[0, length)`` that no span covers."""
    if not spans:
        return [(0, length)]
    gaps = []
    cursor = 0
    for start, end in sorted(spans):
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < length:
        gaps.append((cursor, length))
    return gaps


@functools.cache
def term_matcher(directory: Path = PHI_LEXICON_DIR) -> TermMatcher:
    """The matcher over ``conditions.txt`` and ``medications.txt``, built once per directory."""
    stop = set(read_terms(directory / STOPLIST_FILE))
    entries = [(term, "condition", term in stop) for term in read_terms(directory / CONDITIONS_FILE)]
    entries += [(term, "medication", term in stop) for term in read_terms(directory / MEDICATIONS_FILE)]
    return TermMatcher(entries, plurals_for=frozenset({"condition"}))


# The ICD-10-CM code list: the CMS/NCHS release bundled by the simple-icd-10-cm package
# (code-list-<Month>-<Year>.txt, one code per line without its dot, with chapters and blocks).
_ICD10_PACKAGE = "simple_icd_10_cm"
_ICD10_LIST = re.compile(r"code-list-([A-Za-z]+)-(\d{4})\.txt")
_MONTHS = {name: number for number, name in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"), start=1)}


@functools.cache
def _icd10_list() -> tuple[str, frozenset[str]] | None:
    """(release, codes) of the newest code list the package ships; None when it is not installed.

    The file is read straight from the package directory: importing the package parses the whole
    tabular XML (over a second), which the detector does not need.
    """
    spec = importlib.util.find_spec(_ICD10_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    lists = []
    for location in spec.submodule_search_locations:
        for path in (Path(location) / "data").glob("code-list-*.txt"):
            match = _ICD10_LIST.fullmatch(path.name)
            if match and match.group(1).lower() in _MONTHS:
                lists.append(((int(match.group(2)), _MONTHS[match.group(1).lower()]), path))
    if not lists:
        return None
    (year, month), path = max(lists)
    with path.open(encoding="ascii", errors="replace") as handle:
        codes = frozenset(line.strip().upper() for line in handle if line.strip() and "-" not in line)
    return f"{year}-{month:02d}", codes


def icd10_release() -> str | None:
    """The release (year-month, e.g. 2026-04) of the ICD-10-CM code list in use, or None."""
    loaded = _icd10_list()
    return loaded[0] if loaded else None


def icd10_codes() -> frozenset[str] | None:
    """Every ICD-10-CM code (chapters, categories and billable codes) without its dot (``E119``)."""
    loaded = _icd10_list()
    return loaded[1] if loaded else None


def is_icd10_code(code: str) -> bool | None:
    """True/False against the ICD-10-CM list; None when no list is available to say."""
    codes = icd10_codes()
    if codes is None:
        return None
    return code.replace(".", "").upper() in codes
