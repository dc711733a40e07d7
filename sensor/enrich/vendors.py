"""The tracker vendor catalog: host -> vendor, (host, path) -> collection endpoint.

One YAML file per vendor in ``sensor/data/signatures/vendors/`` (format in its ``README.md``). Loading
validates every file and reports the first problem as a ConfigError naming the file and key.

Matching never touches the network: registered domains come from the public suffix list snapshot
bundled with the publicsuffixlist package (its ICANN section, as browsers and tldextract read it),
and host lookups are a handful of dict probes (one per label), cached.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from publicsuffixlist import PSLFILE, PublicSuffixList, encode_idn

from sensor import config_base
from sensor.config_base import describe_value, parse_yaml
from sensor.enrich import catalog_cache
from sensor.errors import ConfigError
from sensor.paths import VENDORS_DIR

CATEGORIES = frozenset({
    "advertising", "analytics", "session-replay", "tag-manager", "social-pixel",
    "attribution", "rum", "cdp", "marketing-automation", "ab-testing", "chat",
})
DECODERS = frozenset({
    "meta-pixel", "ga4", "ua", "mixpanel", "posthog", "segment", "amplitude", "bing-uet", "linkedin",
    "tiktok", "snap", "pinterest", "twitter", "generic",
})
BAA_STANCES = frozenset({"no", "yes", "yes-enterprise", "terms-prohibit-phi", "unknown"})
# Checked in this order, so a parameter listed as an identifier wins over a broad custom pattern.
PAYLOAD_ROLES = ("identifiers", "page_url", "referrer", "event", "custom")

# Registered domains that carry first-party services or shared infrastructure. Claiming one whole
# would attribute ordinary browsing or cloud traffic to a tracker, so vendors list exact hosts
# (or a narrower domain such as ads.linkedin.com) under them instead.
SHARED_DOMAINS = frozenset({
    "akamai.net", "akamaiedge.net", "akamaihd.net", "akamaized.net", "akamaitechnologies.com",
    "edgekey.net", "edgesuite.net", "amazonaws.com", "cloudfront.net", "amazon.com",
    "azure.com", "azureedge.net", "azurewebsites.net", "windows.net", "microsoft.com",
    "bing.com", "msn.com", "live.com", "office.com", "fastly.net", "fastlylb.net",
    "cloudflare.com", "cloudflare.net", "google.com", "googleapis.com", "gstatic.com",
    "googleusercontent.com", "youtube.com", "facebook.com", "fbcdn.net", "instagram.com",
    "linkedin.com", "licdn.com", "twitter.com", "x.com", "twimg.com", "t.co", "tiktok.com",
    "snapchat.com", "pinterest.com", "pinimg.com", "reddit.com", "redditstatic.com",
    "yahoo.com", "yimg.com", "apple.com", "icloud.com", "github.com", "githubusercontent.com",
    "salesforce.com", "force.com", "hubspot.com", "yandex.ru", "yandex.com", "nextdoor.com",
})

_TOP_KEYS = ("name", "id", "owner", "category", "domains", "hosts", "endpoints", "payload", "baa", "imported")
_IMPORTED_KEYS = ("source", "licence")
# A directory holding this file is an overlay: its vendors are added to the bundled catalog.
OVERLAY_FILE = "overlay.yaml"
_OVERLAY_KEYS = ("extends", "source", "licence", "format", "entries")
_ENDPOINT_KEYS = ("host", "path", "decoder")
_BAA_KEYS = ("stance", "summary", "source")
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_FILE_BYTES = 256 * 1024

def normalize_host(host: str) -> str:
    """Lower case without surrounding blanks or the trailing root dot."""
    return host.strip().rstrip(".").lower()


def is_hostname(value: str) -> bool:
    """A DNS name of at least two labels (letters, digits, '-', '_'), at most 253 characters."""
    if not value or len(value) > 253:
        return False
    labels = value.split(".")
    return len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)


def domain_suffixes(host: str) -> Iterator[str]:
    """The host itself, then each parent domain that still has two labels or more."""
    yield host
    # each parent is what follows a dot, while a dot follows it too (sliced: no list of labels to join)
    start = host.find(".") + 1
    while start:
        after = host.find(".", start) + 1
        if not after:
            return
        yield host[start:]
        start = after


@cache
def _public_suffixes() -> PublicSuffixList:
    """The bundled snapshot's ICANN section as the publicsuffixlist library reads it: the
    reference registered_domain gives the same answers as (tests hold them equal)."""
    return PublicSuffixList(icann_rules(), accept_unknown=False, accept_encoded_idn=False)


# What a suffix of a name is to the rules, in the order the library checks them at one depth:
# "!suffix" listed (an exception), "*.suffix" listed (a wildcard), the suffix itself listed.
_EXCEPTION, _WILDCARD, _EXACT = 1, 2, 3


def _suffix_kinds(rules: list[str]) -> dict[str, int]:
    """Every label-wise suffix a matching rule can start from, with what the rules make of it (0:
    nothing, it only leads to longer rules). A name's suffix not in here has no longer suffix that
    any rule matches, so a lookup walks a name's labels from the right and stops at the first miss:
    one probe per label of the public part and one more, where the library joins and probes three
    strings per label of the whole name."""
    listed = frozenset(rules)
    suffixes = set()
    for rule in listed:
        suffixes.add(rule)
        if rule[0] == "!":
            suffixes.add(rule[1:])
        at = rule.find(".")
        while at != -1:
            suffixes.add(rule[at + 1:])
            at = rule.find(".", at + 1)
    return {
        suffix: _EXCEPTION if "!" + suffix in listed else _WILDCARD if "*." + suffix in listed
        else _EXACT if suffix in listed else 0
        for suffix in suffixes
    }


@cache
def _ascii_suffix_kinds() -> dict[str, int]:
    """The suffixes of the ICANN rules written in ASCII alone, which decide every name in ASCII
    without an internationalized label ("xn--"): no other rule can match one. These are nearly all
    the names a sensor sees, and the rest of the list (the IDNA codec over each non-ASCII rule, the
    slow part of start-up) is then read only if an internationalized name comes along. Kept in the
    cache beside the rules (made from them in about as long as the library takes to read them)."""
    key = _psl_key()
    cached = catalog_cache.load("suffixes", key) if key else None
    if type(cached) is dict and all(type(suffix) is str and type(kind) is int for suffix, kind in cached.items()):
        return cached
    kinds = _suffix_kinds(_icann_lines()[0])
    if key:
        catalog_cache.store("suffixes", key, kinds)
    return kinds


@cache
def _all_suffix_kinds() -> dict[str, int]:
    return _suffix_kinds(icann_rules())


def icann_rules() -> list[str]:
    """The ICANN section's rules, the non-ASCII ones followed by their punycode forms: what
    `PublicSuffixList(only_icann=True)` builds, with the IDNA codec run only on the few hundred
    rules that need it."""
    ascii_rules, other_rules = _icann_lines()
    encoded = [("!" + encode_idn(rule[1:])) if rule.startswith("!") else encode_idn(rule) for rule in other_rules]
    return ascii_rules + other_rules + encoded


@cache
def _icann_lines() -> tuple[list[str], list[str]]:
    """The ICANN section's rules as written: (those in ASCII, the others), kept in the cache
    under the list's bytes."""
    data = Path(PSLFILE).read_bytes()
    key = _psl_key(data)
    cached = catalog_cache.load("psl", key) if key else None
    if (
        type(cached) is tuple and len(cached) == 2 and all(type(rules) is list for rules in cached)
        and all(type(rule) is str for rules in cached for rule in rules)
    ):
        return cached
    rules = _parse_icann(data.decode("utf-8"))
    if key:
        catalog_cache.store("psl", key, rules)
    return rules


def _psl_key(data: bytes | None = None) -> str | None:
    """The cache key of what is made of the bundled list (its bytes, and this file's code)."""
    return catalog_cache.catalog_key([("psl", Path(PSLFILE).read_bytes() if data is None else data)], (__file__,))


def _parse_icann(text: str) -> tuple[list[str], list[str]]:
    begin, end = text.find(_ICANN_BEGIN), text.find(_ICANN_END)
    # a rule is a line's first word; comment lines start with "//" (a rule never does)
    words = [line.split(" ", 1)[0].rstrip() for line in text[begin:end].lower().splitlines() if line[:2] != "//"]
    rules = [word for word in words if word and word[:2] != "//"]
    return [rule for rule in rules if rule.isascii()], [rule for rule in rules if not rule.isascii()]


_ICANN_BEGIN, _ICANN_END = "// ===BEGIN ICANN DOMAINS===", "// ===END ICANN DOMAINS==="


@lru_cache(maxsize=65536)
def registered_domain(host: str) -> str:
    """eTLD+1 of a host name ("" for IP addresses, single labels, bare public suffixes and names
    under no ICANN suffix): the library's `privatesuffix` over the ICANN rules, without the library."""
    labels = [label for label in normalize_host(host).split(".") if label]
    if not labels:
        return ""
    name = ".".join(labels)
    kinds = _ascii_suffix_kinds() if name.isascii() and "xn--" not in name else _all_suffix_kinds()
    count = len(labels)
    suffix = labels[-1]
    depth = public = kind = 0
    while True:  # the longest suffix a rule matches decides (see _suffix_kinds)
        found = kinds.get(suffix)
        if found is None:
            break
        depth += 1
        if found:
            public, kind = depth, found
        if depth == count:
            break
        suffix = labels[-depth - 1] + "." + suffix
    if kind == _EXCEPTION:
        public -= 1  # the exception's own name is registrable
    elif kind == _WILDCARD and public < count:
        public += 1  # the label the wildcard stands for is public too
    if not public or count <= public:
        return ""
    return ".".join(labels[-public - 1:])


@lru_cache(maxsize=1024)
def _payload_pattern(pattern: str) -> re.Pattern[str]:
    # Only two characters are special: '*' is any run of characters, '#' one or more digits.
    parts = {"*": ".*", "#": r"\d+"}
    return re.compile("".join(parts.get(char, re.escape(char)) for char in pattern))


# The endpoints' path expressions, compiled once each, on first use: a run meets few of them.
_path_regex = cache(re.compile)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A collection endpoint. host: an exact host, "*.domain" (the domain and its subdomains) or "*"."""

    host: str
    pattern: str  # the path's regular expression, anchored with ^
    decoder: str

    @property
    def path(self) -> re.Pattern[str]:
        return _path_regex(self.pattern)


@dataclass(frozen=True, slots=True)
class Vendor:
    id: str
    name: str
    owner: str
    category: str
    domains: tuple[str, ...]
    hosts: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    payload: Mapping[str, tuple[str, ...]] = field(hash=False)
    baa_stance: str
    baa_summary: str
    baa_source: str
    imported_from: str = ""  # the public list an imported entry came from, and its licence (SPDX)
    licence: str = ""

    def role_of(self, parameter: str) -> str | None:
        """Which payload role (page_url, referrer, event, custom, identifiers) a parameter plays."""
        for role in PAYLOAD_ROLES:
            for pattern in self.payload.get(role, ()):
                if _payload_pattern(pattern).fullmatch(parameter):
                    return role
        return None


class VendorCatalog:
    """All vendors, indexed for host and endpoint matching."""

    def __init__(
        self, vendors: tuple[Vendor, ...], source: str = "vendor catalog", files: Mapping[str, Path] | None = None
    ) -> None:
        """`files`: each vendor's file by id, for messages (else `source`/id.yaml)."""
        self._vendors = vendors
        self._files = files or {}
        self._by_key: dict[str, Vendor] = {}
        self._by_host: dict[str, Vendor] = {}
        self._by_domain: dict[str, Vendor] = {}
        self._endpoints_by_host: dict[str, list[tuple[Vendor, Endpoint]]] = {}
        self._endpoints_by_domain: dict[str, list[tuple[Vendor, Endpoint]]] = {}
        self._endpoints_any_host: list[tuple[Vendor, Endpoint]] = []
        for vendor in vendors:
            self._index(vendor, source)
        self._match_host_cached = lru_cache(maxsize=65536)(self._match_host)
        self._endpoints_of = lru_cache(maxsize=4096)(self._endpoints_for)
        self._anywhere_of = lru_cache(maxsize=4096)(self._match_anywhere)
        self._anywhere: tuple[re.Pattern[str] | None, tuple[tuple[Vendor, Endpoint, re.Pattern[str]], ...]] | None = None

    def _index(self, vendor: Vendor, source: str) -> None:
        where = str(self._files.get(vendor.id) or f"{source}/{vendor.id}.yaml")
        for key, label in ((vendor.id, "id"), (vendor.name.lower(), "name")):
            other = self._by_key.get(key)
            if other is not None and other is not vendor:
                raise ConfigError(where, label, f"{key!r} is already used by vendor {other.id!r}")
            self._by_key[key] = vendor
        for table, names, label in ((self._by_host, vendor.hosts, "hosts"), (self._by_domain, vendor.domains, "domains")):
            for index, name in enumerate(names):
                other = table.get(name)
                if other is not None:
                    raise ConfigError(where, f"{label}[{index}]", f"{name!r} is already claimed by vendor {other.id!r}")
                table[name] = vendor
        for endpoint in vendor.endpoints:
            if endpoint.host == "*":
                self._endpoints_any_host.append((vendor, endpoint))
            elif endpoint.host.startswith("*."):
                self._endpoints_by_domain.setdefault(endpoint.host[2:], []).append((vendor, endpoint))
            else:
                self._endpoints_by_host.setdefault(endpoint.host, []).append((vendor, endpoint))

    @classmethod
    def load(cls, directory: Path = VENDORS_DIR) -> VendorCatalog:
        """Read and validate every ``*.yaml`` file of one directory."""
        return cls._from_files(_vendor_files(directory), str(directory))

    @classmethod
    def with_overlay(cls, overlay: Path | None) -> VendorCatalog:
        """The bundled catalog with an operator's directory merged over it: a file there replaces
        the bundled vendor of the same id (file name) or adds a vendor. A directory holding a
        ``vendors/`` subdirectory (a copy of the whole signatures tree) is read from there; one
        written by ``phi-sensor signatures import`` has its ``overlay.yaml`` checked first."""
        if overlay is None:
            return cls.load()
        if (overlay / "vendors").is_dir():
            overlay = overlay / "vendors"
        if (overlay / OVERLAY_FILE).is_file():
            read_overlay(overlay / OVERLAY_FILE)
        files = _vendor_files(VENDORS_DIR) | _vendor_files(overlay)
        return cls._from_files(files, f"{overlay} over the bundled signatures")

    @classmethod
    def _from_files(cls, files: dict[str, Path], source: str) -> VendorCatalog:
        """The vendors of `files`, each parsed and validated, but those of the bundled directory
        taken from the cache when it holds the same bundled files (catalog_cache)."""
        bundled = _BundledFiles() if any(path.parent == VENDORS_DIR for path in files.values()) else None
        cached = (bundled.cached() if bundled is not None else None) or {}
        contents = (bundled.contents if bundled is not None else None) or {}
        vendors = []
        parsed: dict[str, Vendor] = {}
        for stem, path in sorted(files.items()):
            is_bundled = path.parent == VENDORS_DIR
            vendor = cached.get(stem) if is_bundled else None
            if vendor is None:
                data = contents.get(stem) if is_bundled else None
                vendor = vendor_from_yaml(_read(path) if data is None else data, str(path), expected_id=stem)
                if is_bundled:
                    parsed[stem] = vendor
            vendors.append(vendor)
        if bundled is not None and not cached:
            bundled.store(parsed)
        return cls(tuple(vendors), source, files)

    def match_rule(self, host: str) -> tuple[Vendor, str, str] | None:
        """Why a host belongs to a vendor: (vendor, "hosts" or "domains", the entry that matched)."""
        name = normalize_host(host)
        vendor = self._by_host.get(name)
        if vendor is not None:
            return vendor, "hosts", name
        for suffix in domain_suffixes(name):
            vendor = self._by_domain.get(suffix)
            if vendor is not None:
                return vendor, "domains", suffix
        return None

    def match_host(self, host: str) -> Vendor | None:
        """The vendor a host name belongs to: an exact host first, then the narrowest domain claim."""
        return self._match_host_cached(host)

    def _match_host(self, host: str) -> Vendor | None:
        name = normalize_host(host)
        vendor = self._by_host.get(name)
        if vendor is not None:
            return vendor
        # Domain entries sit at or below a registered domain (checked at load), so walking from
        # the most specific suffix finds the narrowest claim, e.g. ads.linkedin.com before any parent.
        for suffix in domain_suffixes(name):
            vendor = self._by_domain.get(suffix)
            if vendor is not None:
                return vendor
        return None

    def match_endpoint(self, host: str, path: str) -> tuple[Vendor, Endpoint] | None:
        """The collection endpoint a request goes to; path may carry a query string (ignored).

        Exact hosts are tried first, then "*.domain" patterns from the narrowest domain, then
        endpoints valid on any host (first-party proxies of GA4, Adobe, ...), whose decoder still
        has to confirm the parameters look like that vendor's.
        """
        path = path.partition("?")[0].partition("#")[0]
        for vendor, endpoint, regex in self._endpoints_of(host):
            if regex.search(path):
                return vendor, endpoint
        return self._anywhere_of(path)

    def _match_anywhere(self, path: str) -> tuple[Vendor, Endpoint] | None:
        """The first endpoint valid on any host whose path matches (remembered per path: requests
        to many hosts share a few paths)."""
        gate, anywhere = self._anywhere or self._endpoints_anywhere()
        if gate is not None and gate.search(path) is None:  # most requests: one search says none matches
            return None
        for vendor, endpoint, regex in anywhere:
            if regex.search(path):
                return vendor, endpoint
        return None

    def _endpoints_anywhere(self) -> tuple[re.Pattern[str] | None, tuple[tuple[Vendor, Endpoint, re.Pattern[str]], ...]]:
        """The endpoints valid on any host, tried after a host's own, with their compiled paths,
        and one expression that matches wherever one of them does (None when they cannot be joined)."""
        anywhere = tuple((vendor, endpoint, endpoint.path) for vendor, endpoint in self._endpoints_any_host)
        patterns = [endpoint.pattern for _, endpoint in self._endpoints_any_host]
        gate = None
        # a group reference or a named group would mean something else inside a union
        if patterns and not any(re.search(r"\\[1-9]|\(\?P|\(\?\(", pattern) for pattern in patterns):
            try:
                gate = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
            except re.error:
                gate = None
        self._anywhere = (gate, anywhere)
        return self._anywhere

    def _endpoints_for(self, host: str) -> tuple[tuple[Vendor, Endpoint, re.Pattern[str]], ...]:
        """The endpoints of `host` itself (not those valid on any host), in the order match_endpoint
        tries them, with their compiled paths (remembered per host: every request to a tracker asks again)."""
        name = normalize_host(host)
        candidates: list[tuple[Vendor, Endpoint]] = list(self._endpoints_by_host.get(name, ()))
        for suffix in domain_suffixes(name):
            candidates.extend(self._endpoints_by_domain.get(suffix, ()))
        return tuple((vendor, endpoint, endpoint.path) for vendor, endpoint in candidates)

    @staticmethod
    def registered_domain(host: str) -> str:
        return registered_domain(host)

    def get(self, name_or_id: str) -> Vendor | None:
        return self._by_key.get(name_or_id.strip().lower())

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Vendor names close to a misspelt name or id, for "did you mean" hints."""
        import difflib

        names = {vendor.name.lower(): vendor.name for vendor in self._vendors}
        names.update({vendor.id: vendor.name for vendor in self._vendors})
        close = difflib.get_close_matches(name.strip().lower(), list(names), n=limit * 2, cutoff=0.6)
        return list(dict.fromkeys(names[key] for key in close))[:limit]

    def __iter__(self) -> Iterator[Vendor]:
        return iter(self._vendors)

    def __len__(self) -> int:
        return len(self._vendors)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None


class _BundledFiles:
    """The bundled vendor files' bytes, and the cache entry of the catalog they make."""

    def __init__(self) -> None:
        self.contents: dict[str, bytes] | None = {}
        self.key: str | None = None
        try:
            for name in sorted(os.listdir(VENDORS_DIR)):
                if name.endswith(".yaml") and name != OVERLAY_FILE:
                    with open(os.path.join(VENDORS_DIR, name), "rb") as file:
                        self.contents[name[: -len(".yaml")]] = file.read()
        except OSError:
            self.contents = None  # each file is read (and its problem reported) as it is parsed
            return
        self.key = catalog_cache.catalog_key(self.contents.items(), (__file__, config_base.__file__, PSLFILE))

    def cached(self) -> dict[str, Vendor] | None:
        """Every bundled vendor by file name, from the cache; None when it holds no valid entry."""
        if self.key is None or self.contents is None:
            return None
        records = catalog_cache.load("catalog", self.key)
        if type(records) is not dict:
            return None
        try:
            vendors = {stem: _vendor_of_record(record) for stem, record in records.items()}
        except (TypeError, ValueError):  # not what store() writes
            return None
        return vendors if vendors.keys() == self.contents.keys() else None

    def store(self, parsed: dict[str, Vendor]) -> None:
        """Cache the catalog when every bundled file was parsed (none replaced by an overlay)."""
        if self.key is not None and self.contents is not None and parsed.keys() == self.contents.keys():
            catalog_cache.store("catalog", self.key, {stem: _record_of_vendor(vendor) for stem, vendor in parsed.items()})


def _record_of_vendor(vendor: Vendor) -> tuple[Any, ...]:
    """A vendor as plain data (what the cache holds)."""
    return (
        vendor.id, vendor.name, vendor.owner, vendor.category, vendor.domains, vendor.hosts,
        tuple((endpoint.host, endpoint.pattern, endpoint.decoder) for endpoint in vendor.endpoints),
        tuple((role, patterns) for role, patterns in vendor.payload.items()),
        vendor.baa_stance, vendor.baa_summary, vendor.baa_source, vendor.imported_from, vendor.licence,
    )


def _vendor_of_record(record: tuple[Any, ...]) -> Vendor:
    """The vendor `_record_of_vendor` wrote; TypeError or ValueError when `record` is not one."""
    (vendor_id, name, owner, category, domains, hosts, endpoints, payload,
     stance, summary, source, imported_from, licence) = record
    texts = [vendor_id, name, owner, category, stance, summary, source, imported_from, licence, *domains, *hosts]
    for part in endpoints:
        texts.extend(part)
    for role, patterns in payload:
        texts.extend((role, *patterns))
    if not all(type(text) is str for text in texts) or any(type(part) is not tuple for part in (domains, hosts)):
        raise TypeError("not a cached vendor")
    return Vendor(
        id=vendor_id, name=name, owner=owner, category=category, domains=domains, hosts=hosts,
        endpoints=tuple(Endpoint(*endpoint) for endpoint in endpoints),
        payload=MappingProxyType({role: tuple(patterns) for role, patterns in payload}),
        baa_stance=stance, baa_summary=summary, baa_source=source, imported_from=imported_from, licence=licence,
    )


def read_overlay(path: Path) -> Mapping[str, Any]:
    """The overlay marker: ``extends: bundled`` plus where the entries came from."""
    data = _read(path)
    reader = _VendorReader(str(path))
    document = reader.mapping(parse_yaml(data, str(path)), "", _OVERLAY_KEYS)
    if document.get("extends") != "bundled":
        raise reader.fail("extends", f"expected 'bundled', found {describe_value(document.get('extends'))}")
    return document


def vendor_from_yaml(data: bytes, source: str, expected_id: str | None = None) -> Vendor:
    """Parse and validate one vendor file; raises ConfigError naming the key at fault."""
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(source, "", f"file larger than {_MAX_FILE_BYTES} bytes")
    document = parse_yaml(data, source)
    return _VendorReader(source).vendor(document, expected_id)


class _VendorReader:
    """Field-by-field validation with error keys in the file's own terms (endpoints[2].path)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, key, problem)

    def mapping(self, value: object, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, found {describe_value(value)}")
        for name in value:
            if name not in allowed:
                import difflib

                close = difflib.get_close_matches(str(name), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (expected one of: {', '.join(allowed)})"
                raise self.fail(f"{key}.{name}" if key else str(name), f"unknown key{hint}")
        return value

    def text(self, mapping: Mapping[str, Any], name: str, key: str, required: bool = True) -> str:
        value = mapping.get(name)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not value.strip():
            found = "nothing (the key is missing)" if name not in mapping else describe_value(value)
            raise self.fail(key, f"expected a non-empty string, found {found}")
        return value.strip()

    def choice(self, mapping: Mapping[str, Any], name: str, key: str, choices: frozenset[str]) -> str:
        value = mapping.get(name)
        if isinstance(value, bool):
            word = "yes" if value else "no"
            found = str(value).lower()
            raise self.fail(
                key,
                f"expected one of {', '.join(sorted(choices))}, found {found}"
                f" (YAML reads a bare {word} as {found}: write '{word}' in quotes)",
            )
        if not isinstance(value, str) or value not in choices:
            import difflib

            close = difflib.get_close_matches(str(value), sorted(choices), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.fail(key, f"expected one of {', '.join(sorted(choices))}, found {describe_value(value)}{hint}")
        return str(value)

    def strings(self, mapping: Mapping[str, Any], name: str, key: str) -> tuple[str, ...]:
        value = mapping.get(name, [])
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, found {describe_value(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(f"{key}[{index}]", f"expected a non-empty string, found {describe_value(item)}")
        return tuple(item.strip() for item in value)

    def hostnames(self, mapping: Mapping[str, Any], name: str) -> tuple[str, ...]:
        names = tuple(normalize_host(item) for item in self.strings(mapping, name, name))
        for index, host in enumerate(names):
            key = f"{name}[{index}]"
            if not is_hostname(host):
                raise self.fail(key, f"expected a host name such as example.com, found {host!r}")
            if not registered_domain(host):
                raise self.fail(key, f"{host!r} is a public suffix or has none: name a registered domain or a host below one")
            if name == "domains" and host in SHARED_DOMAINS:
                raise self.fail(
                    key, f"{host!r} also serves first-party or infrastructure traffic: list exact hosts under it in hosts"
                )
            if host in names[:index]:
                raise self.fail(key, f"{host!r} is listed twice")
        return names

    def endpoint(self, value: object, key: str) -> Endpoint:
        entry = self.mapping(value, key, _ENDPOINT_KEYS)
        host = normalize_host(self.text(entry, "host", f"{key}.host"))
        bare = host[2:] if host.startswith("*.") else host
        if host != "*" and not is_hostname(bare):
            raise self.fail(f"{key}.host", f"expected a host, *.domain or *, found {host!r}")
        pattern = self.text(entry, "path", f"{key}.path")
        if not pattern.startswith("^"):
            raise self.fail(f"{key}.path", f"expected a regular expression anchored with ^, found {pattern!r}")
        try:
            _path_regex(pattern)
        except re.error as exc:
            raise self.fail(f"{key}.path", f"invalid regular expression: {exc}") from None
        decoder = self.choice(entry, "decoder", f"{key}.decoder", DECODERS)
        return Endpoint(host, pattern, decoder)

    def vendor(self, document: object, expected_id: str | None) -> Vendor:
        top = self.mapping(document, "", _TOP_KEYS)
        vendor_id = self.text(top, "id", "id")
        if not _SLUG.fullmatch(vendor_id):
            raise self.fail("id", f"expected a lower-case slug such as meta-pixel, found {vendor_id!r}")
        if expected_id is not None and vendor_id != expected_id:
            raise self.fail("id", f"expected {expected_id!r} (the file name), found {vendor_id!r}")
        domains = self.hostnames(top, "domains")
        hosts = self.hostnames(top, "hosts")
        if not domains and not hosts:
            raise self.fail("domains", "expected at least one entry in domains or hosts")
        raw_endpoints = top.get("endpoints", [])
        if raw_endpoints is not None and not isinstance(raw_endpoints, list):
            raise self.fail("endpoints", f"expected a list, found {describe_value(raw_endpoints)}")
        endpoints = tuple(self.endpoint(item, f"endpoints[{index}]") for index, item in enumerate(raw_endpoints or ()))
        raw_payload = top.get("payload")
        payload_map = self.mapping({} if raw_payload is None else raw_payload, "payload", PAYLOAD_ROLES)
        payload = {role: self.strings(payload_map, role, f"payload.{role}") for role in PAYLOAD_ROLES if role in payload_map}
        baa = self.mapping(top.get("baa"), "baa", _BAA_KEYS)
        stance = self.choice(baa, "stance", "baa.stance", BAA_STANCES)
        source = self.text(baa, "source", "baa.source", required=stance != "unknown")
        if source and not source.startswith("https://"):
            raise self.fail("baa.source", f"expected an https:// URL, found {source!r}")
        imported: Mapping[str, Any] = {}
        if top.get("imported") is not None:
            imported = self.mapping(top["imported"], "imported", _IMPORTED_KEYS)
            for key in _IMPORTED_KEYS:
                self.text(imported, key, f"imported.{key}")
        return Vendor(
            id=vendor_id,
            name=self.text(top, "name", "name"),
            owner=self.text(top, "owner", "owner"),
            category=self.choice(top, "category", "category", CATEGORIES),
            domains=domains,
            hosts=hosts,
            endpoints=endpoints,
            payload=MappingProxyType(payload),
            baa_stance=stance,
            baa_summary=self.text(baa, "summary", "baa.summary"),
            baa_source=source,
            imported_from=str(imported.get("source", "")).strip(),
            licence=str(imported.get("licence", "")).strip(),
        )


def _vendor_files(directory: Path) -> dict[str, Path]:
    """A signature directory's vendor files by id (file name without .yaml)."""
    if not directory.is_dir():
        raise ConfigError(str(directory), "", "vendor signature directory not found")
    paths = {path.stem: path for path in directory.glob("*.yaml") if path.name != OVERLAY_FILE}
    if not paths:
        raise ConfigError(str(directory), "", "no vendor files (*.yaml) in this directory")
    return paths
