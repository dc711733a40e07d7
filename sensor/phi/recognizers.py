"""Recognizers for health data in decoded fields: identifiers, clinical codes, vitals, terms, page hints.

Each recognizer scores a match the way data-loss-prevention engines do: a base confidence for the
shape, raised by the key name the value sits under (``mrn``, ``ud[em]``, ``ep.medication``) and by
words just before or after it in the text. Bare numbers never count on their shape alone: numeric
ids, timestamps, cache busters and build dates look like NPIs, phones and dates, so those
recognizers fire only with a key name or a context word. Long random-looking tokens (base64,
hex, UUIDs) are masked before matching, so an OCSP request path or a session id cannot spell a
code or a drug name by chance.

Finding types by category:
- identifier: mrn, ssn, dob, npi, member_id, mbi, email, phone, hashed_identifier
- clinical_code: icd10, ndc, cpt, loinc
- vital: glucose, lab_value, blood_pressure, spo2, a1c, heart_rate, insulin_dose
- condition, medication: terms from the lexicons (type equals category)
- context: portal_url, scheduling_url, condition_url, pharmacy_url, health_param, and
  health_event (added by the tracker decoders)
"""
from __future__ import annotations

import functools
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sensor.phi import layers
from sensor.phi.layers import Field, peel_request
from sensor.phi.lexicon import is_icd10_code, term_matcher
from sensor.records import frozen_record

try:  # the compiled steps (sensor/_fast/phi.c); scan_fields_py, _gate_hints_py and scan_http_py are their references
    from sensor._fast import bind_gates as _bind_gates
    from sensor._fast import bind_request as _bind_request
    from sensor._fast import bind_scan as _bind_scan
    from sensor._fast import gate_hints as _gate_hints_fast
    from sensor._fast import scan_fields as _scan_fields_fast
    from sensor._fast import scan_request as _scan_request
except ImportError:
    _bind_gates = _bind_request = _bind_scan = _gate_hints_fast = _scan_fields_fast = _scan_request = None

__all__ = [
    "CATEGORIES",
    "Finding",
    "is_health_data",
    "scan_fields",
    "scan_http",
    "url_findings",
    "summarize",
]

IDENTIFIER = "identifier"
CLINICAL_CODE = "clinical_code"
VITAL = "vital"
CONDITION = "condition"
MEDICATION = "medication"
CONTEXT = "context"
CATEGORIES = (IDENTIFIER, CLINICAL_CODE, VITAL, CONDITION, MEDICATION, CONTEXT)


@frozen_record
class Finding:
    """One recognized span inside the value of the field at ``path``.

    ``value`` is the matched text, kept in memory only so that redaction can find it; it is left
    out of ``repr`` so that logging a finding can never print it.
    """

    type: str
    category: str
    confidence: float
    path: str
    start: int
    end: int
    value: str = field(repr=False)


# --- key names -------------------------------------------------------------------------------

_PATH_SPLIT = re.compile(r"[.\[\]]+")
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_NON_ALNUM = re.compile(r"[^a-z0-9]")


@dataclass(frozen=True, slots=True)
class _Key:
    """The key context of a field: its last path segment and its parent, normalized."""

    last: str  # "patientId" -> "patientid"
    parent: str
    words: frozenset[str]  # words of the last two segments: "cd[search_string]" -> {cd, search, string}

    def named(self, names: frozenset[str]) -> bool:
        return self.last in names or (self.parent + self.last) in names

    def has_word(self, words: frozenset[str]) -> bool:
        return not self.words.isdisjoint(words)


@functools.lru_cache(maxsize=4096)
def _key(path: str) -> _Key:
    segments = [segment for segment in _PATH_SPLIT.split(path) if segment and not segment.isdigit()]
    tail = segments[-2:]
    normalized = [_NON_ALNUM.sub("", segment.lower()) for segment in tail]
    words = frozenset(word.lower() for segment in tail for word in _WORD.findall(segment))
    return _Key(normalized[-1] if normalized else "", normalized[0] if len(normalized) == 2 else "", words)


# --- masking of opaque tokens ------------------------------------------------------------------

_OPAQUE_CANDIDATE = re.compile(r"[A-Za-z0-9+=_-]{16,}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_OPAQUE_SWITCH_RATE = 0.35  # random base64 or hex: ~0.5 class switches per character; words and slugs: < 0.25
_CHARACTER_RUN = re.compile(r"[A-Z]+|[a-z]+|[0-9]+")


def _looks_random(token: str) -> bool:
    """Base64 and hex switch between upper case, lower case and digits far more often than words do."""
    runs = _CHARACTER_RUN.findall(token)
    alnum = sum(len(run) for run in runs)
    return alnum >= 16 and (len(runs) - 1) / alnum >= _OPAQUE_SWITCH_RATE


def _opaque_spans(text: str) -> list[tuple[int, int]]:
    if len(text) < 16:
        return []
    spans = [m.span() for m in _UUID.finditer(text)]
    spans += [m.span() for m in _OPAQUE_CANDIDATE.finditer(text) if _looks_random(m.group())]
    return spans


# --- the per-field scan ----------------------------------------------------------------------

_WINDOW_BEFORE = 40
_WINDOW_AFTER = 24


class _FieldScan:
    """One field being scanned: its text, key context and masked spans; collects findings."""

    __slots__ = ("path", "text", "key", "lowered", "_masked", "findings")

    def __init__(self, item: Field, key: _Key) -> None:
        self.path = item.path
        self.text = item.value
        self.key = key
        self.lowered = item.value.lower()
        self._masked: list[tuple[int, int]] | None = None
        self.findings: list[Finding] = []

    @property
    def masked(self) -> list[tuple[int, int]]:
        """The opaque tokens' spans, found when first asked (most fields never need them)."""
        if self._masked is None:
            self._masked = _opaque_spans(self.text)
        return self._masked

    def mentions(self, *needles: str) -> bool:
        """A cheap substring test that gates a regex pass needing a context word (``near`` confirms it)."""
        lowered = self.lowered
        for needle in needles:  # a loop, not any(): this runs a dozen times per field scanned
            if needle in lowered:
                return True
        return False

    def is_masked(self, start: int, end: int) -> bool:
        for mask_start, mask_end in self.masked:
            if start < mask_end and mask_start < end:
                return True
        return False

    def host_span(self) -> tuple[int, int]:
        """Where the host name is in the value (a Host header, or an absolute URL), else (0, 0)."""
        if self.path == "header.host":
            return 0, len(self.text)
        match = _URL_HOST.match(self.text)
        return match.span(1) if match else (0, 0)

    def near(self, pattern: re.Pattern[str], start: int, end: int) -> bool:
        """Whether a context word occurs just before or after ``[start, end)``."""
        before = self.text[max(0, start - _WINDOW_BEFORE) : start]
        after = self.text[end : end + _WINDOW_AFTER]
        return bool(pattern.search(before) or pattern.search(after))

    def add(self, kind: str, category: str, confidence: float, start: int, end: int, keyed: bool = False) -> None:
        """Record a finding; pattern matches inside an opaque token are dropped unless a key name vouches."""
        if not keyed and self.is_masked(start, end):
            return
        self.findings.append(
            Finding(kind, category, round(min(confidence, 0.99), 2), self.path, start, end, self.text[start:end])
        )

    def whole_value(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """``pattern`` matched against the whole value, surrounding blanks allowed; group 1 is the span."""
        match = pattern.fullmatch(self.text)
        return match if match and match.group(1) else None


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _one_digit_repeated(digits: str) -> bool:
    return len(set(digits)) == 1


# --- identifiers -------------------------------------------------------------------------------

_MRN_KEYS = frozenset(
    {
        "mrn", "medicalrecordnumber", "medicalrecordno", "medicalrecord", "medrecno", "mrnumber", "patientmrn",
        "patientid", "patid", "patientnumber", "patientno", "chart", "chartnumber", "chartno", "chartid",
    }
)  # fmt: skip
_MRN_VALUE = re.compile(r"\s*((?i:[a-z]{0,3}[-_]?\d{6,10}|(?=(?:[a-z]*\d){5})[a-z0-9]{6,10}))\s*")
_MRN_WORDS = ("mrn", "medical record", "chart")  # one of them is in every _MRN_TEXT match
_MRN_TEXT = re.compile(
    r"(?i)\b(?:mrn|medical record(?: number| no\.?)?|chart (?:number|no\.?|#))\s*[:#=]?\s*([a-z]{0,3}\d{6,10})\b"
)


def _mrn(scan: _FieldScan) -> None:
    if scan.key.named(_MRN_KEYS):
        match = scan.whole_value(_MRN_VALUE)
        if match:
            scan.add("mrn", IDENTIFIER, 0.85, *match.span(1), keyed=True)
        return
    if not scan.mentions(*_MRN_WORDS):
        return
    for match in _MRN_TEXT.finditer(scan.text):
        scan.add("mrn", IDENTIFIER, 0.8, *match.span(1))


_SSN = re.compile(r"(?<![\w-])(\d{3})([- .]?)(\d{2})\2(\d{4})(?![\w-])")
_SSN_KEYS = frozenset({"ssn", "socialsecuritynumber", "socialsecurity", "socialsecurityno", "ssnumber", "socsecno"})
_SSN_CONTEXT = re.compile(r"(?i)\bssn\b|social security|soc\.? ?sec")
_SSN_KNOWN_FAKE = frozenset({"123456789", "078051120", "219099999"})
# A number without delimiters counts only under an SSN key or next to a context word: the least of
# each that a finding needs, for the gate (the context without its word bounds, which a window cuts).
_SSN_DELIMITED = re.compile(_SSN.pattern.replace("([- .]?)", "([- .])"))
_SSN_CONTEXT_ANYWHERE = re.compile(_SSN_CONTEXT.pattern.replace(r"\b", ""))


def _ssn(scan: _FieldScan) -> None:
    keyed = scan.key.named(_SSN_KEYS)
    for match in _SSN.finditer(scan.text):
        area, delimiter, group, serial = match.groups()
        digits = area + group + serial
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        if digits in _SSN_KNOWN_FAKE or _one_digit_repeated(digits):
            continue
        if keyed or scan.near(_SSN_CONTEXT, *match.span()):
            scan.add("ssn", IDENTIFIER, 0.9 if delimiter else 0.85, *match.span())
        elif delimiter == "-":
            scan.add("ssn", IDENTIFIER, 0.55, *match.span())
        elif delimiter:
            scan.add("ssn", IDENTIFIER, 0.4, *match.span())


_DOB_KEYS = frozenset(
    {"dob", "dateofbirth", "birthdate", "birthday", "birthdt", "bday", "patientdob", "birth", "dobdate"}
)
_IDENTITY_PARENTS = frozenset({"ud", "pd", "userdata", "user", "traits", "identity", "customer", "advancedmatching"})
_DATE_ISO = re.compile(r"(?<![\d.])((?:19|20)\d{2})([-/.])(0?[1-9]|1[0-2])\2(0?[1-9]|[12]\d|3[01])(?![\d.])")
_DATE_US = re.compile(r"(?<![\d.])(0?[1-9]|1[0-2])([-/.])(0?[1-9]|[12]\d|3[01])\2((?:19|20)?\d{2})(?![\d.])")
_DATE_COMPACT = re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
_DOB_WORDS = ("dob", "d.o.b", "birth", "born")  # one of them is in every _DOB_CONTEXT match
_DOB_CONTEXT = re.compile(r"(?i)\b(?:dob|d\.o\.b\.?|date of birth|birth ?date|birthday|born)\b")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DATE_FORMS = ((_DATE_ISO, 3, 4), (_DATE_US, 1, 3))  # (pattern, month group, day group)


def _dates(text: str, compact: bool) -> Iterator[tuple[int, int]]:
    """Spans of plausible calendar dates; YYYYMMDD only when asked (it is also a build or batch number)."""
    forms = (_DATE_FORMS + ((_DATE_COMPACT, 2, 3),)) if compact else _DATE_FORMS
    for pattern, month_group, day_group in forms:
        for match in pattern.finditer(text):
            if int(match.group(day_group)) <= _DAYS_IN_MONTH[int(match.group(month_group)) - 1]:
                yield match.span()


def _dob(scan: _FieldScan) -> None:
    keyed = scan.key.named(_DOB_KEYS) or (scan.key.last == "db" and scan.key.parent in _IDENTITY_PARENTS)
    if not keyed and not scan.mentions(*_DOB_WORDS):
        return
    for start, end in _dates(scan.text, compact=keyed):
        if keyed:
            scan.add("dob", IDENTIFIER, 0.85, start, end)
        elif scan.near(_DOB_CONTEXT, start, end):
            scan.add("dob", IDENTIFIER, 0.75, start, end)


_NPI = re.compile(r"(?<![\w-])([12]\d{9}|[12]\d{3}[ -]\d{3}[ -]\d{3})(?![\w-])")
_NPI_WORDS = ("npi", "national provider")
_NPI_CONTEXT = re.compile(r"(?i)\bnpi\b|national provider")
_PROVIDER_KEYS = frozenset(
    {"providerid", "provider", "prescriber", "prescriberid", "physician", "physicianid", "doctor", "doctorid", "practitionerid"}
)


def _npi(scan: _FieldScan) -> None:
    keyed_npi = "npi" in scan.key.words or "npi" in scan.key.last
    keyed_provider = scan.key.named(_PROVIDER_KEYS)
    if not (keyed_npi or keyed_provider or scan.mentions(*_NPI_WORDS)):
        return
    for match in _NPI.finditer(scan.text):
        digits = re.sub(r"\D", "", match.group(1))
        if _one_digit_repeated(digits[1:]) or not _luhn_ok("80840" + digits):
            continue
        if keyed_npi:
            scan.add("npi", IDENTIFIER, 0.9, *match.span())
        elif scan.near(_NPI_CONTEXT, *match.span()):
            scan.add("npi", IDENTIFIER, 0.85, *match.span())
        elif keyed_provider:
            scan.add("npi", IDENTIFIER, 0.7, *match.span())


_MEMBER_KEYS = frozenset(
    {
        "memberid", "membernumber", "memberno", "subscriberid", "subscribernumber", "subscriberno", "policynumber",
        "policyno", "policyid", "groupnumber", "groupno", "insuranceid", "insurancememberid", "insurancenumber",
        "healthplanid", "beneficiaryid", "medicaidid", "medicaidnumber", "medicareid", "medicarenumber",
    }
)  # fmt: skip
_MEMBER_VALUE = re.compile(r"\s*((?=(?:[^\d]*\d){3})[A-Za-z0-9][A-Za-z0-9-]{4,19})\s*")
_MEMBER_WORDS = ("member", "subscriber", "policy", "group")
_MEMBER_TEXT = re.compile(
    r"(?i)\b(?:member|subscriber|policy|group)\s*(?:id|#|no\.?|number)\s*[:#=]?\s*((?=(?:[a-z-]*\d){3})[a-z0-9][a-z0-9-]{4,19})\b"
)


def _member_id(scan: _FieldScan) -> None:
    if scan.key.named(_MEMBER_KEYS):
        match = scan.whole_value(_MEMBER_VALUE)
        if match:
            scan.add("member_id", IDENTIFIER, 0.85, *match.span(1), keyed=True)
        return
    if not scan.mentions(*_MEMBER_WORDS):
        return
    for match in _MEMBER_TEXT.finditer(scan.text):
        scan.add("member_id", IDENTIFIER, 0.75, *match.span(1))


_MBI_LETTER = "[AC-HJKMNP-RT-Y]"
_MBI_ALNUM = "[AC-HJKMNP-RT-Y0-9]"
_MBI = re.compile(
    rf"(?<![A-Za-z0-9])([1-9]{_MBI_LETTER}{_MBI_ALNUM}\d(-?){_MBI_LETTER}{_MBI_ALNUM}\d\2{_MBI_LETTER}{{2}}\d{{2}})(?![A-Za-z0-9])"
)
_MBI_CONTEXT = re.compile(r"(?i)medicare|\bmbi\b|beneficiary|\bhicn?\b")
_MBI_KEYS = frozenset({"mbi", "medicareid", "medicarenumber", "medicarebeneficiaryid", "beneficiaryid", "hicn"})


def _mbi(scan: _FieldScan) -> None:
    for match in _MBI.finditer(scan.text):
        if scan.key.named(_MBI_KEYS) or scan.near(_MBI_CONTEXT, *match.span()):
            scan.add("mbi", IDENTIFIER, 0.9, *match.span(1))
        else:
            scan.add("mbi", IDENTIFIER, 0.6 if match.group(2) else 0.4, *match.span(1))


_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}([A-Za-z]{2,24})(?![\w-])")
_FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico", "js", "css", "map", "woff", "woff2"})
_EMAIL_KEYS = frozenset({"email", "emailaddress", "em", "mail", "useremail"})


def _email(scan: _FieldScan) -> None:
    keyed = scan.key.named(_EMAIL_KEYS)
    for match in _EMAIL.finditer(scan.text):
        if match.group(1).lower() in _FILE_SUFFIXES:  # "logo@2x.png" is an asset name, not an address
            continue
        scan.add("email", IDENTIFIER, 0.95 if keyed else 0.9, *match.span())


_PHONE_FORMATTED = re.compile(
    r"(?<![\w+.-])(?:\+?1[ .-]?)?(?:\(([2-9]\d{2})\)[ .-]?|([2-9]\d{2})[ .-])([2-9]\d{2})[ .-](\d{4})(?![\w.-])"
)
_PHONE_E164 = re.compile(r"(?<![\w+])\+1([2-9]\d{2}[2-9]\d{6})(?!\d)")
_PHONE_BARE = re.compile(r"\s*((?:\+?1)?[2-9]\d{2}[2-9]\d{6})\s*")
_PHONE_KEYS = frozenset(
    {"phone", "phonenumber", "tel", "telephone", "mobile", "mobilephone", "cell", "cellphone", "homephone",
     "workphone", "contactnumber", "contactphone", "userphone"}
)  # fmt: skip
_PHONE_CONTEXT = re.compile(r"(?i)phone|\btel\b|mobile|\bcell\b|\bcall\b|\bfax\b")


def _phone(scan: _FieldScan) -> None:
    keyed = scan.key.named(_PHONE_KEYS) or (scan.key.last == "ph" and scan.key.parent in _IDENTITY_PARENTS)
    found = False
    for pattern in (_PHONE_FORMATTED, _PHONE_E164):
        for match in pattern.finditer(scan.text):
            found = True
            context = keyed or scan.near(_PHONE_CONTEXT, *match.span())
            base = 0.6 if pattern is _PHONE_FORMATTED else 0.7
            scan.add("phone", IDENTIFIER, 0.85 if context else base, *match.span())
    if keyed and not found:
        whole = scan.whole_value(_PHONE_BARE)
        if whole:
            scan.add("phone", IDENTIFIER, 0.8, *whole.span(1), keyed=True)


_SHA256_VALUE = re.compile(r"\s*([0-9a-fA-F]{64})\s*")
_HASHED_CONTACT_KEYS = frozenset(
    {"uhem", "uhpn", "hashedemail", "hashedphone", "emailhash", "phonehash", "emailsha256", "sha256email",
     "sha256emailaddress", "sha256phonenumber", "sha256phone", "email", "emailaddress", "phone", "phonenumber",
     "externalid"}
)  # fmt: skip
_HASHED_SHORT_KEYS = frozenset({"em", "ph", "externalid"})
_HASHED_OTHER_KEYS = frozenset({"fn", "ln", "db", "ge", "ct", "st", "zp", "country", "cn", "city", "state", "zip"})


def _hashed_identifier(scan: _FieldScan) -> None:
    match = scan.whole_value(_SHA256_VALUE)
    if not match:
        return
    under_identity = scan.key.parent in _IDENTITY_PARENTS
    if scan.key.last in _HASHED_CONTACT_KEYS or (under_identity and scan.key.last in _HASHED_SHORT_KEYS):
        scan.add("hashed_identifier", IDENTIFIER, 0.9, *match.span(1), keyed=True)
    elif under_identity and scan.key.last in _HASHED_OTHER_KEYS:
        scan.add("hashed_identifier", IDENTIFIER, 0.75, *match.span(1), keyed=True)


# --- clinical codes ------------------------------------------------------------------------------

_ICD10 = re.compile(r"(?<![A-Za-z0-9.])([A-Za-z]\d[0-9A-Za-z](?:\.[0-9A-Za-z]{1,4}|[0-9A-Za-z]{1,4})?)(?![A-Za-z0-9])")
# Any letter leads: U is reserved for codes added by emergency update (U07.1 COVID-19, U09.9).
_ICD10_SHAPE = re.compile(r"[A-Z]\d[0-9A-Z](?:\.?[0-9A-Z]{1,4})?")
_ICD10_KEY_WORDS = frozenset(
    {"icd", "dx", "diagnosis", "diagnoses", "diag", "condition", "conditions", "reason", "problem", "problems", "complaint"}
)
_ICD10_WORDS = ("icd", "dx", "diag")
_ICD10_CONTEXT = re.compile(r"(?i)\bicd(?:[ -]?10)?(?:[ -]?cm)?\b|\bdx\b|diagnos|\bdiag\b")


def _icd10(scan: _FieldScan) -> None:
    keyed = scan.key.has_word(_ICD10_KEY_WORDS)
    if not keyed and not scan.mentions(*_ICD10_WORDS):
        return
    for match in _ICD10.finditer(scan.text):
        code = match.group(1)
        if not keyed and not code.isupper():
            continue
        known = is_icd10_code(code)
        if not _ICD10_SHAPE.fullmatch(code.upper()):
            if not known:
                continue
        elif known is False:
            # A code of the right shape under a diagnosis key that the list lacks (newer than the
            # list, or mistyped) is still told, as weak context: with an identifier it is health data.
            if keyed:
                scan.add("icd10_unlisted", CONTEXT, 0.6, *match.span(1))
            elif scan.near(_ICD10_CONTEXT, *match.span()):
                scan.add("icd10_unlisted", CONTEXT, 0.5, *match.span(1))
            continue
        # Without the code list only the shape vouches for the code: say so in the score.
        penalty = 0.0 if known else 0.1
        if keyed:
            scan.add("icd10", CLINICAL_CODE, 0.9 - penalty, *match.span(1))
        elif scan.near(_ICD10_CONTEXT, *match.span()):
            scan.add("icd10", CLINICAL_CODE, 0.85 - penalty, *match.span(1))


_NDC = re.compile(r"(?<![\w-])(\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|\d{5}-\d{4}-\d{1,2})(?![\w-])")
_NDC_BARE = re.compile(r"\s*(\d{10,11})\s*")
_NDC_KEY_WORDS = frozenset({"ndc", "drug", "drugs", "rx", "medication", "medications", "med", "meds"})
_NDC_CONTEXT = re.compile(r"(?i)\bndc\b|national drug code")


def _ndc(scan: _FieldScan) -> None:
    keyed = scan.key.has_word(_NDC_KEY_WORDS)
    for match in _NDC.finditer(scan.text):
        code = match.group(1)
        if keyed or scan.near(_NDC_CONTEXT, *match.span()):
            scan.add("ndc", CLINICAL_CODE, 0.9, *match.span(1))
        elif not (len(code) == 12 and code[:2] in ("19", "20")):  # 4-4-2 led by a year reads as a date
            scan.add("ndc", CLINICAL_CODE, 0.6, *match.span(1))
    if "ndc" in scan.key.words or "ndc" in scan.key.last:
        whole = scan.whole_value(_NDC_BARE)
        if whole:
            scan.add("ndc", CLINICAL_CODE, 0.85, *whole.span(1), keyed=True)


_CPT = re.compile(r"(?<![\w.-])(\d{4}[0-9FTU])(?![\w.-])")
_CPT_KEY_WORDS = frozenset({"cpt", "hcpcs", "procedure", "procedures", "proc"})
_CPT_WORDS = ("cpt", "hcpcs", "procedure code")
_CPT_CONTEXT = re.compile(r"(?i)\bcpt\b|\bhcpcs\b|procedure code")


def _cpt(scan: _FieldScan) -> None:
    keyed = scan.key.has_word(_CPT_KEY_WORDS)
    if not keyed and not scan.mentions(*_CPT_WORDS):
        return
    for match in _CPT.finditer(scan.text):
        if keyed or scan.near(_CPT_CONTEXT, *match.span()):
            scan.add("cpt", CLINICAL_CODE, 0.8, *match.span(1))


_LOINC = re.compile(r"(?<![\w.-])(\d{3,5})-(\d)(?![\w.-])")
_LOINC_KEY_WORDS = frozenset({"loinc", "lab", "labs", "observation", "observations"})
_LOINC_WORDS = ("loinc",)
_LOINC_CONTEXT = re.compile(r"(?i)\bloinc\b")


def _loinc(scan: _FieldScan) -> None:
    keyed = scan.key.has_word(_LOINC_KEY_WORDS)
    if not keyed and not scan.mentions(*_LOINC_WORDS):
        return
    for match in _LOINC.finditer(scan.text):
        if not _luhn_ok(match.group(1) + match.group(2)):
            continue
        if keyed or scan.near(_LOINC_CONTEXT, *match.span()):
            scan.add("loinc", CLINICAL_CODE, 0.85, *match.span())


# --- vitals ----------------------------------------------------------------------------------------

_GLUCOSE_MGDL = re.compile(r"(?i)(?<![\w.])(\d{2,3}(?:\.\d)?)\s?mg\s?/\s?dl\b")
_MMOL = re.compile(r"(?i)(?<![\w.])(\d{1,2}(?:\.\d{1,2})?)\s?mmol\s?/\s?l\b")
_GLUCOSE_CONTEXT = re.compile(r"(?i)glucose|blood sugar|\bbg\b|\bcgm\b|fasting")
_GLUCOSE_KEY_WORDS = frozenset({"glucose", "bloodglucose", "sugar", "cgm", "bgl"})
_BLOOD_PRESSURE = re.compile(r"(?i)(?<![\w./])(\d{2,3})\s?/\s?(\d{2,3})(\s?mm\s?hg\b)?(?![\w/])")
_BP_CONTEXT = re.compile(r"(?i)\bbp\b|blood pressure|systolic|diastolic")
_BP_KEY_WORDS = frozenset({"bp", "pressure", "systolic", "diastolic", "bloodpressure"})
_SPO2 = re.compile(r"(?i)\b(?:spo2|sp02|sao2|o2\s?sat(?:uration)?|oxygen\s+saturation)\s*(?:was|is|of)?\s*[:=]?\s*(\d{2,3})\s?%")
_SPO2_KEY_WORDS = frozenset({"spo2", "sao2", "saturation", "oxygen", "o2sat"})
_A1C = re.compile(r"(?i)\b(?:hb\s?)?a1c\s*(?:level|was|is|of)?\s*[:=]?\s*(\d{1,2}(?:\.\d)?)\s?%")
_HEART_RATE = re.compile(r"(?i)(?<![\w.])(\d{2,3})\s?bpm\b")
_HEART_CONTEXT = re.compile(r"(?i)heart|pulse|\bhr\b")
_HEART_KEY_WORDS = frozenset({"heart", "pulse", "heartrate", "pulserate"})
_BP_PART_KEY_WORDS = frozenset({"systolic", "diastolic"})
_INSULIN_DOSE = re.compile(r"(?i)(?<![\w.])(\d{1,3}(?:\.\d{1,2})?)\s?(?:units?|iu|u)\b")
_INSULIN_CONTEXT = re.compile(r"(?i)insulin|bolus|basal|lantus|humalog|novolog|tresiba|levemir")
_INSULIN_KEY_WORDS = frozenset({"insulin", "bolus", "basal"})
_INSULIN_WORDS = ("insulin", "bolus", "basal", "lantus", "humalog", "novolog", "tresiba", "levemir")
_BP_WORDS = ("mmhg", "mm hg", "bp", "blood pressure", "systolic", "diastolic")
# Without a vital's key name, a vital needs one of these in its text: a unit, or a word its pass looks for.
_VITAL_WORDS = ("mg", "mmol", "%", "bpm") + _BP_WORDS + _INSULIN_WORDS
_BARE_NUMBER = re.compile(r"\s*(\d{1,3}(?:\.\d{1,2})?)\s*(?:%|mg/dl|mmhg|bpm|units?|u)?\s*", re.IGNORECASE)
_BARE_PRESSURE = re.compile(r"\s*(\d{2,3}\s?/\s?\d{2,3})\s*(?:mm\s?hg)?\s*", re.IGNORECASE)


def _vitals(scan: _FieldScan) -> None:
    text, key = scan.text, scan.key
    # Each unit or label must appear somewhere before its pattern is worth a pass over the text.
    lowered = scan.lowered
    found_before = len(scan.findings)
    glucose_keyed = key.has_word(_GLUCOSE_KEY_WORDS) or key.last in _GLUCOSE_KEY_WORDS
    for match in _GLUCOSE_MGDL.finditer(text) if "mg" in lowered else ():
        value = float(match.group(1))
        if 20 <= value <= 600:
            context = glucose_keyed or scan.near(_GLUCOSE_CONTEXT, *match.span())
            scan.add("glucose", VITAL, 0.9 if context else 0.75, *match.span())
    for match in _MMOL.finditer(text) if "mmol" in lowered else ():
        if 1 <= float(match.group(1)) <= 35:
            if glucose_keyed or scan.near(_GLUCOSE_CONTEXT, *match.span()):
                scan.add("glucose", VITAL, 0.9, *match.span())
            else:
                scan.add("lab_value", VITAL, 0.6, *match.span())
    bp_keyed = key.has_word(_BP_KEY_WORDS) or key.last in _BP_KEY_WORDS
    bp_possible = "/" in text and (bp_keyed or scan.mentions(*_BP_WORDS))
    for match in _BLOOD_PRESSURE.finditer(text) if bp_possible else ():
        systolic, diastolic = int(match.group(1)), int(match.group(2))
        if not (70 <= systolic <= 250 and 40 <= diastolic <= 150 and systolic > diastolic):
            continue
        if match.group(3) or bp_keyed or scan.near(_BP_CONTEXT, *match.span()):
            scan.add("blood_pressure", VITAL, 0.85, *match.span())
    percent = "%" in text
    for match in _SPO2.finditer(text) if percent else ():
        if 50 <= int(match.group(1)) <= 100:
            scan.add("spo2", VITAL, 0.85, *match.span())
    for match in _A1C.finditer(text) if percent and "a1c" in lowered else ():
        if 3 <= float(match.group(1)) <= 20:
            scan.add("a1c", VITAL, 0.85, *match.span())
    heart_keyed = key.has_word(_HEART_KEY_WORDS) or key.last in _HEART_KEY_WORDS
    for match in _HEART_RATE.finditer(text) if "bpm" in lowered else ():
        if 25 <= int(match.group(1)) <= 250:
            context = heart_keyed or scan.near(_HEART_CONTEXT, *match.span())
            scan.add("heart_rate", VITAL, 0.8 if context else 0.45, *match.span())
    insulin_keyed = key.has_word(_INSULIN_KEY_WORDS)
    insulin_possible = insulin_keyed or scan.mentions(*_INSULIN_WORDS)
    for match in _INSULIN_DOSE.finditer(text) if insulin_possible else ():
        if insulin_keyed or scan.near(_INSULIN_CONTEXT, *match.span()):
            scan.add("insulin_dose", VITAL, 0.8, *match.span())
    if len(scan.findings) == found_before:
        _keyed_vital(scan, glucose_keyed, bp_keyed, heart_keyed, insulin_keyed)


def _keyed_vital(scan: _FieldScan, glucose: bool, pressure: bool, heart: bool, insulin: bool) -> None:
    """A bare number under a vital's key name (``{"glucose": 182}``, ``bp=128/82``)."""
    key = scan.key
    if pressure:
        match = scan.whole_value(_BARE_PRESSURE)
        if match:
            scan.add("blood_pressure", VITAL, 0.85, *match.span(1), keyed=True)
            return
    match = scan.whole_value(_BARE_NUMBER)
    if not match:
        return
    value = float(match.group(1))
    checks: tuple[tuple[bool, str, float, float, float], ...] = (
        (glucose, "glucose", 20, 600, 0.8),
        (key.has_word(_BP_PART_KEY_WORDS), "blood_pressure", 40, 250, 0.8),
        (key.has_word(_SPO2_KEY_WORDS), "spo2", 50, 100, 0.8),
        ("a1c" in key.last, "a1c", 3, 20, 0.85),
        (heart, "heart_rate", 25, 250, 0.75),
        (insulin, "insulin_dose", 0.1, 300, 0.75),
    )
    for applies, kind, low, high, confidence in checks:
        if applies and low <= value <= high:
            scan.add(kind, VITAL, confidence, *match.span(1), keyed=True)
            return


# --- condition and medication terms ----------------------------------------------------------------

_TERM_KEY_WORDS = frozenset(
    {
        "condition", "conditions", "diagnosis", "diagnoses", "dx", "medication", "medications", "med", "meds",
        "drug", "drugs", "rx", "prescription", "prescriptions", "symptom", "symptoms", "illness", "disease",
        "diseases", "treatment", "treatments", "health", "search", "query", "q", "keyword", "keywords", "term",
        "kw", "ss", "reason", "specialty", "therapy",
    }
)  # fmt: skip
_TERM_BASE = {"condition": 0.7, "medication": 0.75}
_AMBIGUOUS_ALONE = 0.35
_AMBIGUOUS_IN_CONTEXT = 0.65


def _terms(scan: _FieldScan, page_hint: bool) -> None:
    matches = term_matcher().find(scan.text, scan.masked)
    if not matches:
        return
    keyed = scan.key.has_word(_TERM_KEY_WORDS)
    unambiguous = any(not match.ambiguous for match in matches)
    for match in matches:
        category = CONDITION if match.kind == "condition" else MEDICATION
        if match.ambiguous:
            context = keyed or page_hint or unambiguous
            confidence = _AMBIGUOUS_IN_CONTEXT if context else _AMBIGUOUS_ALONE
        else:
            confidence = _TERM_BASE[match.kind] + (0.15 if keyed else 0.0) + (0.1 if page_hint else 0.0)
        scan.add(match.kind, category, confidence, match.start, match.end)


# --- page and parameter hints ----------------------------------------------------------------------

_URL_LIKE = re.compile(r"(?i)^(?:https?://|/)")
_URL_LIKE_FIRST = "/hH"  # what a value _URL_LIKE matches starts with
_URL_HOST = re.compile(r"(?i)^https?://(?:[^@/?#\s]*@)?([^/?#:\s]+)")
_PAGE_HINTS: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    (
        "portal_url",
        0.7,
        re.compile(r"(?i)/(?:mychart|patient-?portal|myhealth|patient-?login|healthelife|followmyhealth)(?=[/?#]|$)"),
    ),
    ("scheduling_url", 0.7, re.compile(r"(?i)/find-?a-?(?:doctor|provider|physician)(?=[/?#]|$)")),
    (
        "scheduling_url",
        0.65,
        re.compile(r"(?i)/(?:appointments?|book-?(?:an-)?appointment|request-?an?-?appointment)(?=[/?#]|$)"),
    ),
    ("scheduling_url", 0.6, re.compile(r"(?i)/(?:providers|doctors|physicians)/[a-z][a-z'.-]{2,}")),
    ("scheduling_url", 0.5, re.compile(r"(?i)/schedul(?:e|ing)(?=[/?#]|$)")),
    (
        "condition_url",
        0.7,
        re.compile(
            r"(?i)/(?:conditions|diseases-conditions|diseases|conditions-treatments|treatments|symptoms|health-library)/[a-z0-9][a-z0-9-]+"
        ),
    ),
    ("condition_url", 0.7, re.compile(r"(?i)/symptom-?checker(?=[/?#]|$)")),
    ("pharmacy_url", 0.65, re.compile(r"(?i)/(?:refills?|rx-?refill|prescriptions?)(?=[/?#]|$)")),
)
# One search tells whether any of them can match (each is case-blind, as the union is), and each
# needs a "/" first.
assert all(pattern.pattern.startswith("(?i)/") for _, _, pattern in _PAGE_HINTS)
_ANY_PAGE_HINT = re.compile("|".join(f"(?:{pattern.pattern[4:]})" for _, _, pattern in _PAGE_HINTS), re.IGNORECASE)
_PORTAL_HOST_LABELS = ("mychart", "patientportal", "myhealth", "iqhealth", "healtheintent", "followmyhealth")
# A label of the host that starts with one of them: at the host's start or after a dot.
_PORTAL_LABEL_START = re.compile(r"(?:^|(?<=\.))(?:" + "|".join(map(re.escape, _PORTAL_HOST_LABELS)) + ")")
# Parameters that name a doctor or a visit on their own.
_PARAM_HINTS = {
    "physician": 0.65, "doctor": 0.65, "specialty": 0.65, "visittype": 0.65, "appointmenttype": 0.65,
    "symptom": 0.7, "symptoms": 0.7, "diagnosis": 0.7, "reasonforvisit": 0.7,
}  # fmt: skip
# Looser names also carry "timeout", "new" or "google": they count only when the value holds a
# health term, or (provider) reads as a clinician's name.
_LOOSE_PARAM_HINTS = frozenset({"condition", "reason", "provider"})
_CLINICIAN_NAME = re.compile(r"(?i)^\s*dr\.?\s+[a-z]|[a-z],?\s+(?:md|do|np|pa-c|dnp|rn)\.?\s*$")
_PARAM_HINT_CONFIDENCE = 0.6


def _page_hints(scan: _FieldScan) -> bool:
    """Health page and parameter hints; True when the value is a health page URL (context for terms)."""
    text = scan.text
    before = len(scan.findings)
    if _URL_LIKE.match(text) or scan.path in ("url.path", "header.host"):
        host_start, host_end = scan.host_span()
        if _PORTAL_LABEL_START.search(scan.lowered[host_start:host_end]):
            scan.add("portal_url", CONTEXT, 0.7, host_start, host_end, keyed=True)
        for kind, confidence, pattern in _PAGE_HINTS if "/" in text and _ANY_PAGE_HINT.search(text) else ():
            for match in pattern.finditer(text):
                # The span starts after the leading "/", so a redacted path keeps its shape.
                scan.add(kind, CONTEXT, confidence, match.start() + 1, match.end())
    hinted = len(scan.findings) > before
    param_confidence = _PARAM_HINTS.get(scan.key.last)
    if param_confidence is not None and any(ch.isalpha() for ch in text) and not _looks_random(text):
        scan.add("health_param", CONTEXT, param_confidence, 0, len(text), keyed=True)
    return hinted


# --- entry points ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Gate:
    """When a recognizer can find anything in a field: what it needs, tested before it is called.

    It runs when the field's key names it (`keyed`, asked once per key), or its text holds one of
    `words` (lower case), or one of `patterns` matches in it. Each is a condition every finding of
    the recognizer meets (its own checks, or the patterns its findings come from), so a skipped
    recognizer would have found nothing (tests/test_scan_gates.py holds the two equal)."""

    recognizer: Callable[[_FieldScan], None]
    keyed: Callable[[_Key], bool] | None = None
    words: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()


def _vital_keyed(key: _Key) -> bool:
    return (
        key.has_word(_GLUCOSE_KEY_WORDS | _BP_KEY_WORDS | _HEART_KEY_WORDS | _INSULIN_KEY_WORDS)
        or key.has_word(_BP_PART_KEY_WORDS | _SPO2_KEY_WORDS)
        or key.last in _GLUCOSE_KEY_WORDS | _BP_KEY_WORDS | _HEART_KEY_WORDS
        or "a1c" in key.last
    )


# Every one of these needs a digit in the value: a cheap test skips them for plain words.
_DIGIT_GATES: tuple[_Gate, ...] = (
    _Gate(_mrn, lambda key: key.named(_MRN_KEYS), _MRN_WORDS),
    _Gate(_ssn, lambda key: key.named(_SSN_KEYS), patterns=(_SSN_DELIMITED, _SSN_CONTEXT_ANYWHERE)),
    _Gate(_dob, lambda key: key.named(_DOB_KEYS) or (key.last == "db" and key.parent in _IDENTITY_PARENTS), _DOB_WORDS),
    _Gate(_npi, lambda key: "npi" in key.words or "npi" in key.last or key.named(_PROVIDER_KEYS), _NPI_WORDS),
    _Gate(_member_id, lambda key: key.named(_MEMBER_KEYS), _MEMBER_WORDS),
    _Gate(_mbi, patterns=(_MBI,)),
    _Gate(
        _phone,
        lambda key: key.named(_PHONE_KEYS) or (key.last == "ph" and key.parent in _IDENTITY_PARENTS),
        patterns=(_PHONE_FORMATTED, _PHONE_E164),
    ),
    _Gate(
        _hashed_identifier,
        lambda key: key.last in _HASHED_CONTACT_KEYS
        or (key.parent in _IDENTITY_PARENTS and key.last in _HASHED_SHORT_KEYS | _HASHED_OTHER_KEYS),
    ),
    _Gate(_icd10, lambda key: key.has_word(_ICD10_KEY_WORDS), _ICD10_WORDS),
    _Gate(_ndc, lambda key: "ndc" in key.words or "ndc" in key.last, patterns=(_NDC,)),
    _Gate(_cpt, lambda key: key.has_word(_CPT_KEY_WORDS), _CPT_WORDS),
    _Gate(_loinc, lambda key: key.has_word(_LOINC_KEY_WORDS), _LOINC_WORDS),
    _Gate(_vitals, _vital_keyed, _VITAL_WORDS),
)
_DIGIT_RECOGNIZERS: tuple[Callable[[_FieldScan], None], ...] = tuple(gate.recognizer for gate in _DIGIT_GATES)
# Most values hold none of the gates' words (one search says so) and only the pattern gates remain.
_GATE_WORDS = tuple(word for gate in _DIGIT_GATES for word in gate.words)
_ANY_GATE_WORD = re.compile("|".join(map(re.escape, _GATE_WORDS)))
_PATTERN_GATES_ONLY = tuple((gate.recognizer, False, (), gate.patterns) for gate in _DIGIT_GATES if gate.patterns)


def _matches_wherever(pattern: re.Pattern[str]) -> str:
    """The pattern as part of a union: its flags scoped, each back reference to a delimiter group
    replaced by what that group can match (so it matches wherever the pattern does)."""
    text = pattern.pattern
    if text.startswith("(?i)"):
        text = f"(?i:{text[4:]})"
    for group in ("([- .])", "(-?)"):
        if group in text:
            text = text.replace("\\2", group[1:-1])
    if "\\2" in text:
        raise ValueError(f"a back reference the union cannot take: {pattern.pattern}")
    return f"(?:{text})"


# One search tells whether any pattern gate can open.
_ANY_PATTERN_GATE = re.compile("|".join(_matches_wherever(p) for _, _, _, patterns in _PATTERN_GATES_ONLY for p in patterns))
# What every match of that union holds in ASCII text, found by searches without look-arounds a few
# times faster, which turn down most values (host names, paths, ids) before the union is asked: a
# digit, then two digits, a delimiter, two digits and a delimiter or digit-delimiter then a digit
# (SSN, phone), or three digits, "-" and three digits (NDC), or ")" (phone), or an MBI letter; "+1"
# and a digit (E.164); the start of an SSN context word ("ssn", "soc"). In other text \d and a
# case-blind "s" match more than ASCII digits and letters: the union alone decides there.
_PATTERN_GATE_HINT = re.compile(
    r"[0-9](?:[0-9][0-9][- .][0-9][0-9](?:[- .]|[0-9][ .-])[0-9]|[0-9][0-9][0-9]-[0-9][0-9][0-9]|\)|[AC-HJKMNP-RT-Y])|\+1[0-9]"
)


def _gate_hints_py(text: str, lowered: str) -> int:
    """What the gates of a value with a digit say at once: 1 when one of their words is in it (the
    gates then decide one by one), 2 when a pattern gate may open (the hint, or text not ASCII)."""
    hints = 1 if _ANY_GATE_WORD.search(lowered) else 0
    if not text.isascii() or _PATTERN_GATE_HINT.search(text) or "ssn" in lowered or "soc" in lowered:
        hints |= 2
    return hints


_gate_hints: Callable[[str, str], int] = _gate_hints_py
if _bind_gates is not None and _gate_hints_fast is not None:
    _bind_gates(_GATE_WORDS, _gate_hints_py)
    _gate_hints = _gate_hints_fast


_DIGIT = re.compile(r"\d")
_HEALTH_CATEGORIES = frozenset({CONDITION, MEDICATION, CLINICAL_CODE, VITAL})
_HEALTH_IDENTIFIERS = frozenset({"mrn", "mbi", "member_id"})
HEALTH_THRESHOLD = 0.6
_HEALTH_IDENTIFIER_THRESHOLD = 0.7

# What a recognizer can ask of a key (named, has_word, last, parent in _IDENTITY_PARENTS, "npi" in
# words ...) is answered alike by a key reduced to these: fields under "query.tid" and "tid" (a
# tracker decoder's name for the same parameter) then share one scan of their value.
_NAMED_KEYS = frozenset().union(*(value for name, value in list(globals().items()) if name.endswith("_KEYS")))
_KEY_WORDS = frozenset({"npi", "ndc"}).union(
    *(value for name, value in list(globals().items()) if name.endswith("_KEY_WORDS"))
)
_PAGE_PATHS = ("url.path", "header.host")  # the paths _page_hints and host_span tell apart


class _Context:
    """A field's key context, shared by every path that reduces to the same key: the key, the
    recognizers its names turn on, and the first path seen (the findings' path, until moved)."""

    __slots__ = ("key", "gates", "any_keyed", "pages", "path")

    def __init__(self, key: _Key, path: str) -> None:
        self.key = key
        # (recognizer, named by the key, words, patterns), in the order findings are listed
        self.gates = tuple(
            (gate.recognizer, gate.keyed is not None and gate.keyed(key), gate.words, gate.patterns)
            for gate in _DIGIT_GATES
        )
        self.any_keyed = any(keyed for _, keyed, _, _ in self.gates)
        # whether _page_hints looks at every value here, or only at values like a URL
        self.pages = path in _PAGE_PATHS or key.last in _PARAM_HINTS
        self.path = path


_CONTEXTS: dict[tuple[_Key, str], _Context] = {}
_MAX_CONTEXTS = 4096


@functools.lru_cache(maxsize=4096)
def _context(path: str) -> _Context:
    key = _key(path)
    parent = key.parent if key.parent in _IDENTITY_PARENTS or key.parent + key.last in _NAMED_KEYS else ""
    reduced = _Key(key.last, parent, key.words & _KEY_WORDS)
    kind = path if path in _PAGE_PATHS else ""
    context = _CONTEXTS.get((reduced, kind))
    if context is None:
        if len(_CONTEXTS) >= _MAX_CONTEXTS:
            _CONTEXTS.clear()  # a context is only a cache key: one made again scans the same
        context = _CONTEXTS[(reduced, kind)] = _Context(reduced, path)
    return context


# Query parameters, paths and headers repeat across requests (asset paths, event names, versions);
# short values are scanned once. The length bound keeps the cache small.
_CACHED_VALUE_CHARS = 256
_CACHED_FIELDS = 8192


# Long values that repeat (padding, a page's fixed blob) are rarer: a few are remembered, up to a bound.
_CACHED_LONG_VALUE_CHARS = 16384
_CACHED_LONG_FIELDS = 64


def _scan_field(item: Field) -> tuple[Finding, ...]:
    size = len(item.value)
    if size <= _CACHED_VALUE_CHARS:
        found = _scan_short_field(_context(item.path), item.value)
    elif size <= _CACHED_LONG_VALUE_CHARS:
        found = _scan_long_field(_context(item.path), item.value)
    else:
        return _scan_field_uncached(item)
    if found and found[0].path != item.path:
        path = item.path
        found = tuple(Finding(f.type, f.category, f.confidence, path, f.start, f.end, f.value) for f in found)
    return found


def _scan_field_uncached(item: Field) -> tuple[Finding, ...]:
    return _scan(item, _context(item.path))


@functools.lru_cache(maxsize=_CACHED_FIELDS)
def _scan_short_field(context: _Context, value: str) -> tuple[Finding, ...]:
    return _scan(Field(context.path, value), context)


_scan_long_field = functools.lru_cache(maxsize=_CACHED_LONG_FIELDS)(_scan_short_field.__wrapped__)


# A number, or two numbers around a dot (ids, timestamps, versions): the most common fresh values.
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _scan(item: Field, context: _Context) -> tuple[Finding, ...]:
    text = item.value
    if not text:
        return ()
    if not context.pages and not context.any_keyed and _NUMBER.fullmatch(text) and not term_matcher().may_occur(text, text):
        # Nothing can be found in a number no key names and no page hint reads: no gate word is in
        # it (each has a letter), no pattern gate matches (each needs a letter, a "+", a "-" or two
        # delimiters), no "@", no term; a loose parameter hint needs a finding, or for a provider
        # a clinician's name, which has letters.
        return ()
    scan = _FieldScan(item, context.key)
    page_hint = _page_hints(scan) if context.pages or text[0] in _URL_LIKE_FIRST else False
    if _DIGIT.search(text):
        lowered = scan.lowered
        hints = 1 if context.any_keyed else _gate_hints(text, lowered)
        if hints & 1:
            gates = context.gates
        elif hints:  # a pattern gate may open: one search of their union says whether one does
            gates = _PATTERN_GATES_ONLY if _ANY_PATTERN_GATE.search(text) else ()
        else:
            gates = ()
        for recognizer, keyed, words, patterns in gates:
            if keyed:
                recognizer(scan)
                continue
            for word in words:
                if word in lowered:
                    recognizer(scan)
                    break
            else:
                for pattern in patterns:
                    if pattern.search(text):
                        recognizer(scan)
                        break
    if "@" in text:
        _email(scan)
    if term_matcher().may_occur(text, scan.lowered):  # most values: no opaque tokens looked for, no matching
        _terms(scan, page_hint)
    last = scan.key.last
    if last in _LOOSE_PARAM_HINTS and (
        any(f.category in (CONDITION, MEDICATION) and f.confidence >= HEALTH_THRESHOLD for f in scan.findings)
        or (last == "provider" and _CLINICIAN_NAME.search(text))
    ):
        scan.add("health_param", CONTEXT, _PARAM_HINT_CONFIDENCE, 0, len(text), keyed=True)
    return tuple(scan.findings)


def scan_fields(fields: Iterable[Field], min_confidence: float = 0.5) -> list[Finding]:
    """Every finding in ``fields`` at or above ``min_confidence``, in field order."""
    if _scan_fields_fast is not None:
        found = _scan_fields_fast(fields, min_confidence, not term_matcher().digits_lead)
        if found is not None:
            return found
    return scan_fields_py(fields, min_confidence)


def scan_fields_py(fields: Iterable[Field], min_confidence: float = 0.5) -> list[Finding]:
    """scan_fields in Python (the reference of the compiled loop)."""
    findings: list[Finding] = []
    numbers_plain = not term_matcher().digits_lead
    for item in fields:
        value = item.value
        if len(value) <= _CACHED_VALUE_CHARS:
            context = _context(item.path)
            if numbers_plain and not context.pages and not context.any_keyed and _NUMBER.fullmatch(value):
                continue  # what _scan says at once of a number (an id, a time), without a cache entry
            # most fields: a short value in which nothing is found, which one cache lookup tells
            found = _scan_short_field(context, value)
            if not found:
                continue
            if found[0].path != item.path:  # (as _scan_field gives it)
                path = item.path
                found = tuple(Finding(f.type, f.category, f.confidence, path, f.start, f.end, f.value) for f in found)
        else:
            found = _scan_field(item)
            if not found:
                continue
        findings.extend(finding for finding in found if finding.confidence >= min_confidence)
    return findings


if _bind_scan is not None:
    _bind_scan(_context, _scan_short_field, _scan_field, _CACHED_VALUE_CHARS)


def scan_http(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    content_type: str | None,
    min_confidence: float = 0.5,
) -> list[Finding]:
    """Findings in one HTTP request: path, query, Referer, Host and the body decoded by content type.

    A CONNECT target names a host and port, not a page, so it is not read as a path.
    """
    if min_confidence == _URL_CONFIDENCE and _scan_request is not None:
        found = _scan_request(method, target, headers, body, content_type)
        if found is not None:
            return found
    return scan_http_py(method, target, headers, body, content_type, min_confidence)


def scan_http_py(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    content_type: str | None,
    min_confidence: float = 0.5,
) -> list[Finding]:
    """scan_http in Python (the reference of the compiled scan_request)."""
    original = target
    if method.upper() == "CONNECT":
        target = ""
    findings: list[Finding] = []
    parts, page, referrer, exact = peel_request(target, headers, body, content_type)
    for part in parts:
        found = part.findings.get(min_confidence)
        if found is None:  # a part seen before keeps what was found in it
            found = part.findings[min_confidence] = tuple(scan_fields(part.fields, min_confidence))
        findings.extend(found)
    if exact and min_confidence == _URL_CONFIDENCE and len(original) + len(referrer or "") <= _URL_CHARS:
        found = ()
        for part in page:
            found += part.findings[_URL_CONFIDENCE]
        _remember_url_findings((method, original, referrer or None), found)
    return findings


# What url_findings returns for recent requests, found while the whole request was scanned: an
# alert's document (built when its window closes, maybe at the end of a replay) masks its URLs
# with it, long after the peeler's part cache has let those parts go.
_URL_FINDINGS: OrderedDict[tuple[str, str, str | None], tuple[Finding, ...]] = OrderedDict()
_MAX_URL_FINDINGS = 4096
_URL_CHARS = 2048
_URL_CONFIDENCE = 0.5


def _remember_url_findings(key: tuple[str, str, str | None], found: tuple[Finding, ...]) -> None:
    memo = _URL_FINDINGS
    if key in memo:
        memo.move_to_end(key)
        return
    memo[key] = found
    if len(memo) > _MAX_URL_FINDINGS:
        memo.popitem(last=False)


def _bind_scan_request() -> None:
    """Give the compiled scan_request what it reads and keeps (as these modules hold them now)."""
    if _bind_request is not None:
        _bind_request(layers._PARTS, layers._peel_alone, layers._peel_on, scan_fields, _URL_FINDINGS,
                      _MAX_URL_FINDINGS, layers.DEFAULT_LIMITS, layers._CACHED_PART_CHARS, _URL_CONFIDENCE,
                      _URL_CHARS, layers._new_part, layers._unquote, layers._MAX_PARTS, layers._CACHED_PART_SPENT,
                      layers._QUERY_FIELDS, layers._MAX_QUERY_FIELDS)


_bind_scan_request()


def url_findings(method: str, target: str, referrer: str | None) -> tuple[Finding, ...]:
    """What scan_http finds in a request's target and Referer alone (at its default confidence)."""
    found = _URL_FINDINGS.get((method, target, referrer or None))
    if found is None:
        found = tuple(scan_http(method, target, (("referer", referrer),) if referrer else (), b"", None))
    return found


def summarize(findings: Iterable[Finding]) -> dict[str, int]:
    """Counts by finding type, most frequent first (ties alphabetical)."""
    counts = Counter(finding.type for finding in findings)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def is_health_data(findings: Iterable[Finding]) -> bool:
    """Whether findings amount to health data about a person, the threshold the detection rules use.

    True for a condition, medication, clinical code or vital at ``HEALTH_THRESHOLD``; for a
    health-plan or medical-record identifier (MRN, MBI, member id), which says on its own that the
    person is a patient or beneficiary; or for any identifier together with health context (a
    portal, condition or scheduling page, a health parameter or event) at the same threshold.
    """
    has_identifier = has_context = False
    for finding in findings:
        if finding.category in _HEALTH_CATEGORIES and finding.confidence >= HEALTH_THRESHOLD:
            return True
        if finding.category == IDENTIFIER:
            if finding.type in _HEALTH_IDENTIFIERS and finding.confidence >= _HEALTH_IDENTIFIER_THRESHOLD:
                return True
            has_identifier = has_identifier or finding.confidence >= 0.5
        elif finding.category == CONTEXT and finding.confidence >= HEALTH_THRESHOLD:
            has_context = True
    return has_identifier and has_context
