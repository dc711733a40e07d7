"""Which hosts handle PHI: an inventory of networks with names and tags, longest prefix wins.

Entries are IP addresses or CIDRs only; host names are refused because resolving them would
mean DNS lookups, which the sensor never makes. Without configuration every private address
(RFC 1918 and IPv6 unique-local fc00::/7) counts as a PHI host. Carrier-grade NAT space
(100.64.0.0/10), loopback and link-local do not: CGNAT addresses usually belong to a provider or
an overlay VPN, so a network that uses them for clinical hosts lists them explicitly.

Exclusions carve ranges out (guest Wi-Fi inside a clinical range). Between an inventory entry and
an exclusion the longer prefix decides; at equal length the exclusion wins.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

from sensor.config_base import describe_value
from sensor.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PHI_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
_ENTRY_KEYS = ("cidr", "name", "tags")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_Value = TypeVar("_Value")


@dataclass(frozen=True, slots=True)
class PhiHost:
    network: Network
    name: str | None = None
    tags: tuple[str, ...] = ()


class _PrefixTable(Generic[_Value]):
    """Longest-prefix match with one dict per prefix length: probes = distinct prefix lengths."""

    def __init__(self) -> None:
        self._tables: dict[tuple[int, int], dict[int, _Value]] = {}  # (version, prefix length) -> network -> value
        # (version, address bits) -> (prefix length, shift, its table) of that version, longest first
        self._probes: dict[tuple[int, int], tuple[tuple[int, int, dict[int, _Value]], ...]] = {}

    def add(self, network: Network, value: _Value) -> None:
        """Store a value for a network; the first value stored for a network stays."""
        version, bits = network.version, network.max_prefixlen
        self._tables.setdefault((version, network.prefixlen), {}).setdefault(int(network.network_address), value)
        lengths = sorted((length for of, length in self._tables if of == version), reverse=True)
        self._probes[version, bits] = tuple((length, bits - length, self._tables[version, length]) for length in lengths)

    def longest_number(self, version: int, bits: int, number: int) -> tuple[int, _Value] | None:
        """The longest prefix holding the address with this version, width in bits and value, and its value."""
        for length, shift, table in self._probes.get((version, bits), ()):
            value = table.get(number >> shift << shift)
            if value is not None:
                return length, value
        return None


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _parse_address(text: str) -> tuple[int, int, int] | None:
    """(version, bits, value) of an address, an IPv4-mapped IPv6 one as IPv4; None if not an address.

    Addresses as the decoder writes them (the canonical form inet_ntop gives) skip ipaddress;
    any other spelling goes through it."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
        canonical = socket.inet_ntop(family, packed) == text
    except (OSError, ValueError):  # ValueError: a NUL byte
        canonical = False
    if canonical:
        if len(packed) == 4:
            return 4, 32, int.from_bytes(packed, "big")
        if packed[:12] == _V4_MAPPED:
            return 4, 32, int.from_bytes(packed[12:], "big")
        return 6, 128, int.from_bytes(packed, "big")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.version, address.max_prefixlen, int(address)


class AssetInventory:
    def __init__(self, hosts: Iterable[PhiHost], exclude: Iterable[Network] = ()) -> None:
        self._hosts = tuple(hosts)
        self._exclude = tuple(exclude)
        self._included: _PrefixTable[PhiHost] = _PrefixTable()
        self._excluded: _PrefixTable[Network] = _PrefixTable()
        for host in self._hosts:
            self._included.add(host.network, host)
        for network in self._exclude:
            self._excluded.add(network, network)
        self._lookup_cached = lru_cache(maxsize=65536)(self._lookup)
        # lookup(ip): the most specific inventory entry for an address, None when excluded, unknown
        # or not an IP; remembered per address as written (detection asks once per record, so
        # the cache is called directly)
        self.lookup: Callable[[str], PhiHost | None] = self._lookup_cached

    @classmethod
    def default(cls) -> AssetInventory:
        return cls(_default_hosts())

    @classmethod
    def from_config(
        cls,
        entries: Sequence[object] | None,
        source: str,
        exclude: Sequence[object] | None = None,
        key: str = "phi_hosts",
        exclude_key: str = "phi_hosts_exclude",
    ) -> AssetInventory:
        """Build from configuration values; entries None means the documented default."""
        hosts = _default_hosts() if entries is None else _host_entries(entries, source, key)
        if exclude is None:
            exclude = ()
        if not isinstance(exclude, Sequence) or isinstance(exclude, str | bytes):
            raise ConfigError(source, exclude_key, f"expected a list of addresses or CIDRs, found {describe_value(exclude)}")
        excluded: dict[Network, int] = {}
        for index, item in enumerate(exclude):
            _reject_duplicate(_network(item, source, f"{exclude_key}[{index}]"), excluded, source, exclude_key, index, "")
        return cls(hosts, excluded)

    def is_phi_host(self, ip: str) -> bool:
        return self._lookup_cached(ip) is not None

    def _lookup(self, ip: str) -> PhiHost | None:
        parsed = _parse_address(ip.strip())
        if parsed is None:
            return None
        included = self._included.longest_number(*parsed)
        if included is None:
            return None
        if self._exclude:
            excluded = self._excluded.longest_number(*parsed)
            if excluded is not None and excluded[0] >= included[0]:
                return None
        return included[1]

    @property
    def hosts(self) -> tuple[PhiHost, ...]:
        return self._hosts

    @property
    def exclusions(self) -> tuple[Network, ...]:
        return self._exclude

    def __len__(self) -> int:
        return len(self._hosts)


def _network(value: object, source: str, key: str) -> Network:
    if not isinstance(value, str):
        raise ConfigError(source, key, f"expected an IP address or CIDR, found {describe_value(value)}")
    text = value.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        hint = " (host names are not accepted: the sensor never resolves names)" if re.search(r"[g-z]", text, re.I) else ""
        raise ConfigError(source, key, f"expected an IP address or CIDR, found {describe_value(value)}{hint}") from None
    raise ConfigError(
        source, key, f"expected a network address, found {text!r} with host bits set (did you mean {str(loose)!r}?)"
    )


def _host_entry(entry: object, source: str, key: str) -> PhiHost:
    if isinstance(entry, str):
        return PhiHost(_network(entry, source, key))
    if not isinstance(entry, Mapping):
        raise ConfigError(
            source, key, f"expected an address, a CIDR or a mapping with cidr, name, tags; found {describe_value(entry)}"
        )
    for name in entry:
        if name not in _ENTRY_KEYS:
            raise ConfigError(source, f"{key}.{name}", f"unknown key (expected one of: {', '.join(_ENTRY_KEYS)})")
    if "cidr" not in entry:
        raise ConfigError(source, f"{key}.cidr", "required key missing")
    network = _network(entry["cidr"], source, f"{key}.cidr")
    label = entry.get("name")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ConfigError(source, f"{key}.name", f"expected a non-empty string, found {describe_value(label)}")
    tags = entry.get("tags", [])
    if tags is None:
        tags = []
    if not isinstance(tags, list):
        raise ConfigError(source, f"{key}.tags", f"expected a list of tags, found {describe_value(tags)}")
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise ConfigError(
                source, f"{key}.tags[{index}]", f"expected a tag (letters, digits, _ . : -), found {describe_value(tag)}"
            )
    return PhiHost(network, label.strip() if label else None, tuple(dict.fromkeys(tags)))


def _default_hosts() -> tuple[PhiHost, ...]:
    return tuple(PhiHost(ipaddress.ip_network(cidr), "private address space", ("default",)) for cidr in DEFAULT_PHI_NETWORKS)


def _host_entries(entries: object, source: str, key: str) -> tuple[PhiHost, ...]:
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise ConfigError(source, key, f"expected a list of addresses or CIDRs, found {describe_value(entries)}")
    if not entries:
        raise ConfigError(
            source, key, "expected at least one address or CIDR (omit the key to treat every private address as a PHI host)"
        )
    hosts: list[PhiHost] = []
    networks: dict[Network, int] = {}
    for index, entry in enumerate(entries):
        host = _host_entry(entry, source, f"{key}[{index}]")
        _reject_duplicate(host.network, networks, source, key, index, "" if isinstance(entry, str) else ".cidr")
        hosts.append(host)
    return tuple(hosts)


def _reject_duplicate(network: Network, seen: dict[Network, int], source: str, key: str, index: int, suffix: str) -> None:
    """Record where a network is listed, refusing one listed before (a copy-paste slip)."""
    if network in seen:
        raise ConfigError(source, f"{key}[{index}]{suffix}", f"{str(network)!r} is already listed at {key}[{seen[network]}]")
    seen[network] = index


# Address space an organisation uses inside its own network (documentation and benchmark ranges,
# which `ipaddress` also calls private, are deliberately not here: they stand for the Internet).
_INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fe80::/10")
)


def is_internal(ip: str) -> bool:
    """True for RFC 1918, carrier-grade NAT, unique-local and link-local addresses."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in _INTERNAL_NETWORKS)


_INTERNAL_SUFFIXES = (".local", ".internal", ".lan", ".home.arpa", ".corp", ".intranet", ".arpa")


def is_internal_name(name: str) -> bool:
    """Single-label names and private-use suffixes never leave the organisation."""
    return "." not in name or name.endswith(_INTERNAL_SUFFIXES)
