"""`phi-sensor signatures`: validate, look up, list and import vendor signatures.

- ``validate [DIR]``: load a vendor directory (the bundled one by default) the way the sensor
  does, and say what is in it or what is wrong.
- ``lookup DOMAIN|URL``: which vendor a host belongs to and why (the catalog entry that matched,
  and for a URL the collection endpoint and its decoder), the vendor's public BAA stance with its
  source, and what the local BAA registry (``--config``) says.
- ``list``: the catalog as a table or JSON.
- ``import --format hosts|adblock|json FILE --out DIR``: turn a public tracker list the user
  already has into an overlay directory the sensor loads with ``--signatures DIR`` on top of the
  bundled catalog. Every imported entry keeps the list's name and licence. Nothing is downloaded.

Heavy modules load inside the commands, so registering the parser costs nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sensor.errors import EXIT_OK

IMPORT_FORMATS = ("hosts", "adblock", "json")
DEFAULT_LICENCE = "NOASSERTION"  # SPDX: the licence was not stated
# An SPDX licence expression: identifiers joined by AND, OR, WITH, optionally in parentheses.
_SPDX = re.compile(r"\(?[A-Za-z0-9][A-Za-z0-9.+-]*\)?(?:\s+(?:AND|OR|WITH)\s+\(?[A-Za-z0-9][A-Za-z0-9.+-]*\)?)*")
_ADBLOCK_HOST_RULE = re.compile(r"\|\|([a-z0-9_.-]+)\^(?:\$[^/]*)?")
_NOT_HOSTS = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost", "ip6-loopback",
                        "0.0.0.0"})
# How public lists name their categories, mapped onto the catalog's (anything else: --category).
_CATEGORY_WORDS = (
    ("session", "session-replay"), ("replay", "session-replay"), ("tag", "tag-manager"), ("social", "social-pixel"),
    ("analytic", "analytics"), ("audience", "analytics"), ("measurement", "analytics"), ("advert", "advertising"),
    ("fingerprint", "advertising"), ("attribution", "attribution"), ("customer data", "cdp"), ("chat", "chat"),
)


def add_arguments(signatures: argparse.ArgumentParser) -> None:
    """The subcommands of `signatures` (the main parser registers it)."""
    commands = signatures.add_subparsers(dest="signatures_command", required=True)

    validate = commands.add_parser("validate", help="check a vendor signature directory (default: the bundled one)")
    validate.add_argument("directory", nargs="?", type=Path, metavar="DIR")
    validate.set_defaults(handler=_validate)

    lookup = commands.add_parser("lookup", help="which vendor a host or URL belongs to, its BAA stance and local BAA")
    lookup.add_argument("target", metavar="DOMAIN|URL")
    lookup.add_argument("--config", type=Path, help="sensor configuration whose BAA registry to consult")
    lookup.add_argument("--signatures", type=Path, help="vendor signature directory (or an imported overlay)")
    lookup.add_argument("--json", action="store_true", help="print one JSON object")
    lookup.set_defaults(handler=_lookup)

    listing = commands.add_parser("list", help="every vendor in the catalog")
    listing.add_argument("--signatures", type=Path, help="vendor signature directory (or an imported overlay)")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.add_argument("--category", help="only vendors of this category")
    listing.set_defaults(handler=_list)

    imports = commands.add_parser("import", help="turn a local public tracker list into an overlay directory")
    imports.add_argument("file", metavar="FILE")
    imports.add_argument("--format", choices=IMPORT_FORMATS, required=True, dest="list_format")
    imports.add_argument("--source", help="the list's name, kept on every entry (default: the file name)")
    imports.add_argument("--licence", default=DEFAULT_LICENCE, help="the list's licence as an SPDX expression")
    imports.add_argument("--category", default="advertising", help="category for entries the list does not classify")
    imports.add_argument("--out", type=Path, required=True, metavar="DIR", help="new or empty directory to write")
    imports.set_defaults(handler=_import)


def _usage(problem: str):
    from sensor.errors import SensorError

    return SensorError(problem)  # exit code 2: usage


def _catalog(directory: Path | None):
    from sensor.enrich.vendors import VendorCatalog

    return VendorCatalog.with_overlay(directory)


# --- validate, list --------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from sensor.paths import VENDORS_DIR

    directory = args.directory or VENDORS_DIR
    catalog = _catalog(directory)
    vendors = list(catalog)
    decoded = sum(1 for vendor in vendors if vendor.endpoints)
    stances: dict[str, int] = {}
    for vendor in vendors:
        stances[vendor.baa_stance] = stances.get(vendor.baa_stance, 0) + 1
    listed = ", ".join(f"{count} {stance}" for stance, count in sorted(stances.items()))
    print(f"{directory}: ok ({len(vendors)} vendors, {decoded} with collection endpoints; BAA stances: {listed})")
    return EXIT_OK


def _vendor_summary(vendor) -> dict:
    entry = {
        "id": vendor.id, "name": vendor.name, "owner": vendor.owner, "category": vendor.category,
        "domains": list(vendor.domains), "hosts": list(vendor.hosts),
        "endpoints": [{"host": e.host, "path": e.path.pattern, "decoder": e.decoder} for e in vendor.endpoints],
        "baa": {"stance": vendor.baa_stance, "summary": vendor.baa_summary, "source": vendor.baa_source or None},
    }
    if vendor.imported_from:
        entry["imported"] = {"source": vendor.imported_from, "licence": vendor.licence}
    return entry


def _list(args: argparse.Namespace) -> int:
    vendors = [vendor for vendor in _catalog(args.signatures) if args.category in (None, vendor.category)]
    if args.format == "json":
        print(json.dumps([_vendor_summary(vendor) for vendor in vendors], indent=2))
        return EXIT_OK
    rows = [("ID", "NAME", "CATEGORY", "BAA", "DOMAINS/HOSTS")]
    rows += [(v.id, v.name, v.category, v.baa_stance, " ".join((*v.domains, *v.hosts))) for v in vendors]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    print(f"{len(vendors)} vendor(s)", file=sys.stderr)
    return EXIT_OK


# --- lookup ----------------------------------------------------------------------------------------


def _split_target(target: str) -> tuple[str, str | None]:
    """(host, path or None) of a bare host name or a URL."""
    from urllib.parse import urlsplit

    text = target.strip()
    if "://" not in text and "/" not in text:
        return text.rstrip(".").lower(), None
    parts = urlsplit(text if "://" in text else "http://" + text)
    return (parts.hostname or "").lower(), (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _local_baa(config_path: Path | None, catalog, vendor, host: str) -> dict:
    """What the configuration's BAA registry and allow list say about this vendor and host today."""
    if config_path is None:
        return {"status": "not-checked", "note": "no --config given"}
    import datetime as dt

    from sensor.config import load_config

    policy = load_config(config_path).build_policy(catalog)
    today = dt.datetime.now(dt.timezone.utc).date()
    entry = policy.baa.covers(vendor, host, on=today)
    if entry is not None:
        found = {"status": "on-file", "label": entry.label, "scope": entry.scope or None,
                 "signed": entry.signed.isoformat() if entry.signed else None,
                 "expires": entry.expires.isoformat() if entry.expires else None}
    else:
        found = {"status": "none"}
        for other in policy.baa:
            if (vendor is not None and other.vendor is vendor) or any(
                host == domain or host.endswith("." + domain) for domain in other.domains
            ):
                lapsed = other.expires is not None and other.expires < today
                found = {"status": "expired" if lapsed else "not-yet-signed", "label": other.label,
                         "signed": other.signed.isoformat() if other.signed else None,
                         "expires": other.expires.isoformat() if other.expires else None}
                break
    found["allowed"] = policy.is_allowed(host)
    return found


def _lookup(args: argparse.Namespace) -> int:
    from sensor.enrich.vendors import registered_domain

    host, path = _split_target(args.target)
    if not host:
        raise _usage(f"no host name in {args.target!r}")
    catalog = _catalog(args.signatures)
    match = catalog.match_rule(host)
    vendor = match[0] if match else None
    result: dict = {"host": host, "registered_domain": registered_domain(host) or None, "vendor": None}
    if match is not None:
        result["vendor"] = _vendor_summary(vendor)
        result["matched"] = {"key": match[1], "entry": match[2]}
    if path is not None:
        endpoint = catalog.match_endpoint(host, path)
        result["endpoint"] = (
            {"vendor": endpoint[0].id, "path": endpoint[1].path.pattern, "decoder": endpoint[1].decoder}
            if endpoint else None
        )
    result["local_baa"] = _local_baa(args.config, catalog, vendor, host)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for line in _lookup_lines(result):
        print(line)
    return EXIT_OK


def _lookup_lines(result: dict) -> Iterator[str]:
    yield result["host"]
    vendor = result["vendor"]
    if vendor is None:
        yield "  vendor:     not in the catalog"
    else:
        yield f"  vendor:     {vendor['name']} ({vendor['id']}), {vendor['owner']}, {vendor['category']}"
        yield f"  matched:    {result['matched']['key']} entry {result['matched']['entry']}"
        if "imported" in vendor:
            yield f"  imported:   from {vendor['imported']['source']} ({vendor['imported']['licence']})"
        baa = vendor["baa"]
        yield f"  BAA stance: {baa['stance']}: {baa['summary']}"
        yield f"  source:     {baa['source'] or 'none (no public statement found)'}"
    if "endpoint" in result:
        endpoint = result["endpoint"]
        yield ("  endpoint:   none for this path" if endpoint is None
               else f"  endpoint:   {endpoint['vendor']} {endpoint['path']} (decoder {endpoint['decoder']})")
    local = result["local_baa"]
    status = local["status"]
    if status == "not-checked":
        yield "  local BAA:  not checked (no --config given)"
    elif status == "none":
        yield "  local BAA:  none on file"
    else:
        dates = ", ".join(f"{key} {local[key]}" for key in ("signed", "expires") if local.get(key))
        yield f"  local BAA:  {status}: {local['label']}" + (f" ({dates})" if dates else "")
    if local.get("allowed"):
        yield "  allowed:    yes (the configuration's allow list covers this host)"


# --- import ----------------------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    exact: bool  # a hosts-file line names one host; a filter rule or a list domain covers subdomains too
    owner: str | None = None
    category: str | None = None


@dataclass
class _Group:
    domain: str
    owner: str | None = None
    category: str | None = None
    domains: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)


def _hosts_entries(text: str) -> Iterator[_Entry]:
    import ipaddress

    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if tokens:
            try:
                ipaddress.ip_address(tokens[0])
                tokens = tokens[1:]
            except ValueError:
                pass
        for token in tokens:
            yield _Entry(token, exact=True)


def _adblock_entries(text: str) -> Iterator[_Entry]:
    """Host-level network rules (``||host^`` with options only); exceptions, cosmetic and
    path rules are not host facts and are left out."""
    for line in text.splitlines():
        line = line.strip().lower()
        if not line or line.startswith(("!", "[", "@@")) or "#" in line:
            continue
        match = _ADBLOCK_HOST_RULE.fullmatch(line)
        if match:
            yield _Entry(match.group(1), exact=False)


def _category_of(words: Iterable[str]) -> str | None:
    for word in words:
        lowered = word.lower()
        for needle, category in _CATEGORY_WORDS:
            if needle in lowered:
                return category
    return None


def _json_entries(text: str, source: str) -> Iterator[_Entry]:
    """Disconnect's services.json (categories -> organisations -> URL -> domains), a list of
    objects with ``domain``/``host`` (``owner``, ``category``/``categories``), or one such object
    (a Tracker Radar domain file)."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise _usage(f"{source}: not JSON: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("categories"), dict):
        for category_name, organisations in document["categories"].items():
            for organisation in organisations if isinstance(organisations, list) else ():
                for owner, sites in organisation.items() if isinstance(organisation, dict) else ():
                    for domains in sites.values() if isinstance(sites, dict) else ():
                        for domain in domains if isinstance(domains, list) else ():
                            if isinstance(domain, str):
                                yield _Entry(domain, False, str(owner), _category_of([category_name]))
        return
    items = document if isinstance(document, list) else [document]
    for item in items:
        if isinstance(item, str):
            yield _Entry(item, exact=False)
            continue
        if not isinstance(item, dict):
            continue
        name = item.get("domain") or item.get("host")
        owner = item.get("owner")
        if isinstance(owner, dict):
            owner = owner.get("displayName") or owner.get("name")
        categories = item.get("categories") or item.get("category") or []
        categories = [categories] if isinstance(categories, str) else [c for c in categories if isinstance(c, str)]
        if isinstance(name, str):
            yield _Entry(name, False, owner if isinstance(owner, str) else None, _category_of(categories))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _yaml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def _import(args: argparse.Namespace) -> int:
    from sensor.enrich.vendors import (
        CATEGORIES,
        OVERLAY_FILE,
        SHARED_DOMAINS,
        is_hostname,
        normalize_host,
        registered_domain,
    )

    if "://" in args.file:
        raise _usage("give a local file: the sensor downloads nothing (fetch the list yourself)")
    list_file = Path(args.file)
    if args.category not in CATEGORIES:
        raise _usage(f"--category: expected one of {', '.join(sorted(CATEGORIES))}, found {args.category!r}")
    licence = args.licence.strip()
    if not _SPDX.fullmatch(licence):
        raise _usage(f"--licence: expected an SPDX licence expression such as GPL-3.0-only, found {licence!r}")
    try:
        text = list_file.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise _usage(f"{list_file}: cannot read: {exc.strerror}") from None
    source = (args.source or list_file.name).strip()
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _usage(f"--out {out}: expected a new or empty directory")

    parse = {"hosts": _hosts_entries, "adblock": _adblock_entries}.get(args.list_format)
    entries = list(parse(text) if parse else _json_entries(text, str(list_file)))
    catalog = _catalog(None)
    groups: dict[str, _Group] = {}
    skipped = {"invalid": 0, "catalogued": 0}
    for entry in entries:
        name = normalize_host(entry.name).lstrip("*.")
        domain = registered_domain(name) if is_hostname(name) else ""
        if name in _NOT_HOSTS or not domain:
            skipped["invalid"] += 1
            continue
        if catalog.match_host(name) is not None or catalog.get(domain) is not None:
            skipped["catalogued"] += 1
            continue
        group = groups.setdefault(domain, _Group(domain))
        group.owner = group.owner or entry.owner
        group.category = group.category or entry.category
        target = group.hosts if entry.exact or name in SHARED_DOMAINS else group.domains
        if name not in target:
            target.append(name)

    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for domain, group in sorted(groups.items()):
        # a domain claim already covers its subdomains (and a host under it)
        domains = sorted(d for d in group.domains if not any(d.endswith("." + other) for other in group.domains))
        hosts = sorted(h for h in group.hosts if not any(h == d or h.endswith("." + d) for d in domains))
        lines = [
            f"name: {json.dumps(domain)}",
            f"id: imported-{_slug(domain)}",
            f"owner: {json.dumps(group.owner or domain)}",
            f"category: {group.category or args.category}",
        ]
        if domains:
            lines.append(f"domains: {_yaml_list(domains)}")
        if hosts:
            lines.append(f"hosts: {_yaml_list(hosts)}")
        lines += [
            f"imported: {{source: {json.dumps(source)}, licence: {json.dumps(licence)}}}",
            "baa:",
            "  stance: unknown",
            f"  summary: {json.dumps(f'Imported from {source}; the list says nothing about BAAs.')}",
        ]
        (out / f"imported-{_slug(domain)}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written += 1
    marker = [
        "extends: bundled",
        f"source: {json.dumps(source)}",
        f"licence: {json.dumps(licence)}",
        f"format: {args.list_format}",
        f"entries: {written}",
    ]
    (out / OVERLAY_FILE).write_text("\n".join(marker) + "\n", encoding="utf-8")
    _catalog(out)  # what was written must load, with the bundled catalog under it
    print(
        f"{out}: {written} vendor(s) from {len(entries)} entries of {source} ({licence}); skipped "
        f"{skipped['catalogued']} already catalogued, {skipped['invalid']} not a host name. "
        f"Use it with --signatures {out}"
    )
    return EXIT_OK
