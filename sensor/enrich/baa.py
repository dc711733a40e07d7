"""The organisation's Business Associate Agreements: which vendors and domains may receive PHI, when.

An agreement covers a request when it names the request's vendor (by catalog name or id) or one
of its domains covers the host (the domain itself or any subdomain), and the day falls between
the signing date and the expiry date, both inclusive.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from sensor.config_base import as_date, describe_value
from sensor.enrich.vendors import Vendor, VendorCatalog, domain_suffixes, is_hostname, normalize_host, registered_domain
from sensor.errors import ConfigError

_ENTRY_KEYS = ("vendor", "domains", "scope", "signed", "expires")


@dataclass(frozen=True, slots=True)
class BaaEntry:
    label: str  # the vendor's catalog name, else the first domain
    vendor: Vendor | None
    domains: tuple[str, ...]
    scope: str = ""
    signed: dt.date | None = None
    expires: dt.date | None = None

    def in_effect(self, day: dt.date) -> bool:
        return (self.signed is None or self.signed <= day) and (self.expires is None or day <= self.expires)


class BaaRegistry:
    def __init__(self, entries: Sequence[BaaEntry]) -> None:
        self._entries = tuple(entries)
        self._by_vendor: dict[str, list[BaaEntry]] = {}
        self._by_domain: dict[str, list[BaaEntry]] = {}
        for entry in self._entries:
            if entry.vendor is not None:
                self._by_vendor.setdefault(entry.vendor.id, []).append(entry)
            for domain in entry.domains:
                self._by_domain.setdefault(domain, []).append(entry)

    @classmethod
    def from_config(cls, entries: Sequence[object] | None, catalog: VendorCatalog, source: str, key: str = "baa") -> BaaRegistry:
        if entries is None:
            return cls(())
        if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
            raise ConfigError(source, key, f"expected a list of agreements, found {describe_value(entries)}")
        return cls([_entry(item, catalog, source, f"{key}[{index}]") for index, item in enumerate(entries)])

    def covers(self, vendor: Vendor | None, host: str, on: dt.date | None = None) -> BaaEntry | None:
        """The agreement in effect on a day (default: today, UTC) for this vendor or host, if any.

        Pass the record's own date when replaying captures, so old traffic is judged by the
        agreements in force at the time.
        """
        day = on if on is not None else dt.datetime.now(dt.UTC).date()
        candidates: list[BaaEntry] = list(self._by_vendor.get(vendor.id, ())) if vendor is not None else []
        for suffix in domain_suffixes(normalize_host(host)):
            candidates.extend(self._by_domain.get(suffix, ()))
        return next((entry for entry in candidates if entry.in_effect(day)), None)

    def standing(self, vendor: Vendor | None, host: str | None, on: dt.date) -> tuple[BaaEntry | None, str]:
        """The agreement in effect on a day for a destination, and its BAA status: on-file, or why
        none covers (the first agreement naming the vendor or host has lapsed, is not yet signed,
        or there is none at all)."""
        if not self._entries:  # none on file (the default)
            return None, "none"
        covering = self.covers(vendor, host, on=on) if host else None
        if covering is not None:
            return covering, "on-file"
        for entry in self._entries:
            by_vendor = vendor is not None and entry.vendor is vendor
            by_domain = host is not None and any(host == domain or host.endswith("." + domain) for domain in entry.domains)
            if by_vendor or by_domain:
                if entry.expires is not None and entry.expires < on:
                    return None, "expired"
                if entry.signed is not None and entry.signed > on:
                    return None, "not-yet-signed"
        return None, "none"

    def __iter__(self) -> Iterator[BaaEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _date(value: object, source: str, key: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return as_date(value)  # type: ignore[return-value]
    except ValueError as exc:
        raise ConfigError(source, key, str(exc)) from None


def _entry(item: object, catalog: VendorCatalog, source: str, key: str) -> BaaEntry:
    if not isinstance(item, Mapping):
        raise ConfigError(
            source, key, f"expected a mapping with vendor, domains, scope, signed, expires; found {describe_value(item)}"
        )
    for name in item:
        if name not in _ENTRY_KEYS:
            raise ConfigError(source, f"{key}.{name}", f"unknown key (expected one of: {', '.join(_ENTRY_KEYS)})")
    vendor = None
    vendor_name = item.get("vendor")
    if vendor_name is not None:
        if not isinstance(vendor_name, str) or not vendor_name.strip():
            raise ConfigError(
                source, f"{key}.vendor", f"expected a vendor name or id from the catalog, found {describe_value(vendor_name)}"
            )
        vendor = catalog.get(vendor_name)
        if vendor is None:
            close = catalog.suggest(vendor_name)
            if close:
                hint = f" (did you mean {', '.join(repr(name) for name in close)}?)"
            else:
                hint = " (see signatures/vendors/ for names and ids)"
            raise ConfigError(source, f"{key}.vendor", f"unknown vendor {vendor_name.strip()!r}{hint}")
    raw_domains = item.get("domains", [])
    if raw_domains is None:
        raw_domains = []
    if not isinstance(raw_domains, list):
        raise ConfigError(source, f"{key}.domains", f"expected a list of domains, found {describe_value(raw_domains)}")
    domains: list[str] = []
    for index, raw in enumerate(raw_domains):
        domain = normalize_host(raw) if isinstance(raw, str) else ""
        if not is_hostname(domain):
            raise ConfigError(
                source, f"{key}.domains[{index}]", f"expected a domain such as example.com, found {describe_value(raw)}"
            )
        if not registered_domain(domain):
            raise ConfigError(
                source, f"{key}.domains[{index}]", f"{domain!r} is a public suffix: it would cover every site under it"
            )
        domains.append(domain)
    if vendor is None and not domains:
        raise ConfigError(source, key, "expected a vendor, domains, or both")
    scope = item.get("scope", "")
    if scope is None:
        scope = ""
    if not isinstance(scope, str):
        raise ConfigError(source, f"{key}.scope", f"expected text, found {describe_value(scope)}")
    signed = _date(item.get("signed"), source, f"{key}.signed")
    expires = _date(item.get("expires"), source, f"{key}.expires")
    if signed is not None and expires is not None and expires < signed:
        raise ConfigError(
            source, f"{key}.expires", f"expected a date on or after signed ({signed.isoformat()}), found {expires.isoformat()}"
        )
    label = vendor.name if vendor is not None else domains[0]
    return BaaEntry(label, vendor, tuple(dict.fromkeys(domains)), scope.strip(), signed, expires)
