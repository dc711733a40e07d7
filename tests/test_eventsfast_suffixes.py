"""registered_domain (the eTLD+1 the events and rules use) against the publicsuffixlist library over
the same ICANN rules: generated names under every rule (wildcards and exceptions among them), in
any case, with a trailing dot, internationalized in Unicode and in punycode, and real names."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from publicsuffixlist import PublicSuffixList

from sensor.enrich import catalog_cache, vendors
from sensor.enrich.vendors import VendorCatalog, icann_rules, normalize_host, registered_domain

CORPUS = Path("../shared/corpus/expected.jsonl")


@cache
def _library() -> PublicSuffixList:
    return PublicSuffixList(only_icann=True, accept_unknown=False)


def _expected(host: str) -> str:
    """What the library makes of `host` normalized as registered_domain normalizes it."""
    labels = [label for label in normalize_host(host).split(".") if label]
    return (_library().privatesuffix(".".join(labels)) or "") if labels else ""


def _ours(host: str) -> str:
    return registered_domain.__wrapped__(host)  # not the memo: every call computes


@cache
def _rules() -> list[str]:
    return sorted(set(icann_rules()))


_LABELS = [
    "www", "a", "b-2", "_dmarc", "city", "www2", "xn--80ak6aa92e",
    "\u043f\u0440\u0438\u043c\u0435\u0440", "M\u00fcnchen", "*", "!x",
]


def _spelled(name: str, upper: list[bool], dot: bool) -> str:
    labels = name.split(".")
    labels = [label.upper() if up else label for label, up in zip(labels, upper + [False] * len(labels))]
    return ".".join(labels) + ("." if dot else "")


@settings(max_examples=1500, deadline=None)
@given(
    rule=st.sampled_from(_rules()),
    prefix=st.lists(st.sampled_from(_LABELS) | st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True), max_size=3),
    upper=st.lists(st.booleans(), max_size=6),
    dot=st.booleans(),
    keep=st.booleans(),
)
def test_names_under_every_rule_have_the_librarys_registered_domain(
    rule: str, prefix: list[str], upper: list[bool], dot: bool, keep: bool
) -> None:
    """Under plain, wildcard ("*.ck") and exception ("!www.ck") rules, ASCII, Unicode and
    punycode, the rule's own name (a public suffix) and names below it."""
    body = rule if keep else rule.lstrip("!").replace("*", "x")  # also the rule's text as a name
    host = _spelled(".".join([*prefix, body]), upper, dot)
    assert _ours(host) == _expected(host)


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab.-*!xn\u00fc\u0440ACK"), max_size=16) | st.text(max_size=20))
def test_any_text_has_the_librarys_registered_domain(host: str) -> None:
    assert _ours(host) == _expected(host)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.example.co.uk", "example.co.uk"),
        ("WWW.Example.COM.", "example.com"),
        ("x.ck", ""),  # *.ck: any name under ck is public
        ("a.x.ck", "a.x.ck"),
        ("www.ck", "www.ck"),  # !www.ck: the exception is registrable
        ("a.www.ck", "www.ck"),
        ("a.city.kobe.jp", "city.kobe.jp"),
        ("b.c.kobe.jp", "b.c.kobe.jp"),
        ("foo.github.io", "github.io"),  # a private-section suffix is not public here
        ("a.\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444", "\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444"),
        ("a.xn--e1afmkfd.xn--p1ai", "xn--e1afmkfd.xn--p1ai"),
        ("localhost", ""),
        ("corp", ""),
        ("10.1.2.3", ""),
        ("", ""),
        ("..", ""),
        ("a..example.com", "example.com"),
    ],
)
def test_known_answers(host: str, expected: str) -> None:
    assert _ours(host) == expected == _expected(host)


def test_real_names_have_the_librarys_registered_domain() -> None:
    """The catalog's hosts and domains, and the names of the corpus's captures when present."""
    names = {name for vendor in VendorCatalog.load() for name in (*vendor.domains, *vendor.hosts)}
    if CORPUS.exists():
        for line in CORPUS.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            names.update(entry.get("dns_queries") or ())
            names.update(entry.get("sni") or ())
    assert len(names) > 250  # the catalog's own (the corpus adds about a hundred more)
    assert [name for name in sorted(names) if _ours(name) != _expected(name)] == []


def test_the_suffix_table_is_the_rules_own_and_comes_back_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(catalog_cache.CACHE_ENV, str(tmp_path))
    built = vendors._ascii_suffix_kinds.__wrapped__()
    assert built == vendors._suffix_kinds(vendors._icann_lines()[0])
    assert built["com"] == vendors._EXACT and built["ck"] == vendors._WILDCARD and built["www.ck"] == vendors._EXCEPTION
    assert list(tmp_path.glob("suffixes-*.marshal"))
    monkeypatch.setattr(vendors, "_suffix_kinds", None)  # from the cache now, or a TypeError
    assert vendors._ascii_suffix_kinds.__wrapped__() == built
