"""The report as a page people read: one self-contained HTML file, or Markdown.

The HTML loads nothing: no script at all, CSS and the data-flow picture (SVG) inline, and a
Content-Security-Policy meta that forbids every fetch, so opening it never tells anyone that it
was opened. Both formats render `Inventory.document()`, the same data the JSON format writes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from sensor import __version__

# verdict -> colour of its flows in the picture and its badge in the tables
VERDICT_COLOURS = {
    "tracker without BAA": "#c62828",
    "unreviewed third party": "#ef6c00",
    "covered by BAA": "#2e7d32",
    "allowed": "#1565c0",
    "internal": "#757575",
}
BAA_COLOURS = {"on-file": "#2e7d32", "expired": "#c62828", "not-yet-signed": "#ef6c00", "none": "#9e9e9e"}
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

INVENTORY_COLUMNS = ("phi_host", "phi_host_name", "destination", "category", "baa", "verdict", "health_data",
                     "records", "first_seen", "last_seen")
EXPOSURE_COLUMNS = ("phi_host", "destination", "verdict", "requests_with_health_data", "client_hosts",
                    "distinct_identifiers", "health_data", "first_seen", "last_seen")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#212121;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}
table{border-collapse:collapse;margin:6px 0 12px;width:100%}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f5f5f5}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;font-size:12px;white-space:nowrap}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
ul.plain{margin:2px 0;padding-left:18px;overflow-wrap:anywhere}
pre{white-space:pre-wrap;overflow-wrap:anywhere}.legend span{margin-right:14px}
svg text{font:12px system-ui,sans-serif}
"""


def render(doc: dict, fmt: str) -> str:
    return render_html(doc) if fmt == "html" else render_markdown(doc)


# -- HTML -----------------------------------------------------------------------------------------
def _badge(text: str, colours: dict[str, str]) -> str:
    return f'<span class="badge" style="background:{colours.get(text, "#616161")}">{escape(text)}</span>'


def _cell(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(escape(str(v)) for v in value) or "-"
    return escape(str(value))


def _host_label(row: dict) -> str:
    return f"{row['phi_host']} ({row['phi_host_name']})" if row.get("phi_host_name") else row["phi_host"]


def flow_svg(inventory: Sequence[dict]) -> str:
    """PHI hosts on the left, destinations on the right, one curve per flow in its verdict's colour;
    destination boxes edged with their BAA status."""
    rows = [r for r in inventory if r["verdict"] != "internal"]
    if not rows:
        return '<p class="muted">No PHI host reached a third party.</p>'
    hosts = list(dict.fromkeys(_host_label(r) for r in rows))
    dests: dict[str, dict] = {}
    for row in rows:
        dests.setdefault(row["destination"], row)
    step, box_h, width = 30, 22, 900
    left_x, left_w, right_x, right_w = 10, 300, 590, 300
    height = max(len(hosts), len(dests)) * step + 20
    y_host = {h: 10 + i * step + (height - 20 - len(hosts) * step) / 2 for i, h in enumerate(hosts)}
    y_dest = {d: 10 + i * step + (height - 20 - len(dests) * step) / 2 for i, d in enumerate(dests)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="data flows from PHI hosts to third parties">']
    for row in rows:
        y1 = y_host[_host_label(row)] + box_h / 2
        y2 = y_dest[row["destination"]] + box_h / 2
        x1, x2 = left_x + left_w, right_x
        colour = VERDICT_COLOURS.get(row["verdict"], "#616161")
        stroke = 2 + (2 if row["health_data"] else 0)
        title = f"{_host_label(row)} -> {row['destination']}: {row['verdict']}"
        if row["health_data"]:
            title += "; health data: " + ", ".join(row["health_data"])
        parts.append(f'<path d="M{x1},{y1:.1f} C{x1 + 140},{y1:.1f} {x2 - 140},{y2:.1f} {x2},{y2:.1f}" fill="none" '
                     f'stroke="{colour}" stroke-width="{stroke}" stroke-opacity="0.8"><title>{escape(title)}</title></path>')
    for host in hosts:
        y = y_host[host]
        parts.append(f'<rect x="{left_x}" y="{y:.1f}" width="{left_w}" height="{box_h}" rx="4" fill="#e3f2fd" '
                     f'stroke="#1565c0"/><text x="{left_x + 8}" y="{y + 15:.1f}">{escape(_clip(host, 44))}</text>')
    for dest, row in dests.items():
        y = y_dest[dest]
        fill = VERDICT_COLOURS.get(row["verdict"], "#616161")
        edge = BAA_COLOURS.get(row["baa"], "#9e9e9e")
        parts.append(f'<rect x="{right_x}" y="{y:.1f}" width="{right_w}" height="{box_h}" rx="4" fill="{fill}" '
                     f'fill-opacity="0.15" stroke="{edge}" stroke-width="2"/><text x="{right_x + 8}" y="{y + 15:.1f}">'
                     f'{escape(_clip(dest, 30))} <tspan fill="#555">[BAA: {escape(row["baa"])}]</tspan></text>')
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "\u2026"


def _table(rows: Sequence[dict], columns: Sequence[str], name: str,
           special: dict[str, Callable[[object], str]] | None = None) -> str:
    special = special or {}
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(f'<td data-col="{c}">{special[c](row[c]) if c in special else _cell(row[c])}</td>'
                        for c in columns)
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="{name}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _vendor_sections(inventory: Sequence[dict]) -> str:
    """Per third party (trackers first): what was sent, from where, to which endpoints, when."""
    by_dest: dict[str, list[dict]] = {}
    for row in inventory:
        if row["verdict"] != "internal":
            by_dest.setdefault(row["destination"], []).append(row)
    out = []
    for dest, rows in by_dest.items():
        first = min(r["first_seen"] for r in rows)
        last = max(r["last_seen"] for r in rows)
        health = sorted({t for r in rows for t in r["health_data"]})
        examples = list(dict.fromkeys(e for r in rows for e in r.get("examples", [])))
        endpoints = sorted({e for r in rows for e in r.get("endpoints", [])})
        out.append(
            f"<h3>{escape(dest)} {_badge(rows[0]['verdict'], VERDICT_COLOURS)} {_badge(rows[0]['baa'], BAA_COLOURS)}</h3>"
            f"<p>category {escape(rows[0]['category'])}; from {_cell([_host_label(r) for r in rows])}; "
            f"host names {_cell(sorted({h for r in rows for h in r['hosts']}))}; first seen {escape(first)}, "
            f"last seen {escape(last)}{'; read decrypted' if any(r.get('decrypted') for r in rows) else ''}</p>"
            f"<p><b>Health data sent:</b> {_cell(health)}</p>"
            + ('<p><b>Redacted examples:</b></p><ul class="plain mono">'
               + "".join(f"<li>{escape(e)}</li>" for e in examples) + "</ul>" if examples else "")
            + ('<p><b>Endpoints:</b></p><ul class="plain mono">'
               + "".join(f"<li>{escape(e)}</li>" for e in endpoints) + "</ul>" if endpoints else "")
        )
    return "".join(out) or '<p class="muted">No third party.</p>'


def render_html(doc: dict) -> str:
    inventory = doc["inventory"]
    legend = "".join(f'<span>{_badge(v, VERDICT_COLOURS)}</span>' for v in VERDICT_COLOURS)
    baa_legend = "".join(f'<span><span class="badge" style="background:{c}">BAA {escape(s)}</span></span>'
                         for s, c in BAA_COLOURS.items())
    sections = [
        f"<h1>PHI egress report</h1><p class=\"muted\">phi-egress-sensor {escape(__version__)}: "
        f"{len(inventory)} flow(s) from PHI hosts. Health data values are redacted.</p>",
        "<h2>Data flows</h2>",
        f'<p class="legend">{legend}</p><p class="legend">destination edge: {baa_legend}</p>',
        flow_svg(inventory),
        "<h2>Inventory</h2>",
        _table(inventory, INVENTORY_COLUMNS, "inventory", {
            "verdict": lambda v: _badge(str(v), VERDICT_COLOURS), "baa": lambda v: _badge(str(v), BAA_COLOURS),
        }),
        "<h2>What each third party received</h2>",
        _vendor_sections(inventory),
        "<h2>Suggested egress allow list</h2>",
        _list(doc["allow"], "nothing to allow"),
        "<h2>Trackers reached without a BAA (block candidates)</h2>",
        _list(doc["block"], "none"),
    ]
    if "exposure" in doc:
        sections += ["<h2>Exposure</h2>",
                     "<p class=\"muted\">Per PHI host and destination: requests that carried health data, distinct "
                     "client hosts, distinct identifiers (counted through a keyed hash held in memory only), "
                     "types of health data and time span.</p>",
                     _table(doc["exposure"], EXPOSURE_COLUMNS, "exposure",
                            {"verdict": lambda v: _badge(str(v), VERDICT_COLOURS)})]
    if doc.get("csp"):
        sections.append("<h2>Suggested Content-Security-Policy for web portals</h2>")
        for policy in doc["csp"]:
            sections.append(
                f"<h3>{escape(policy['phi_host'])}</h3><pre class=\"mono\">{escape(policy['header'])}</pre>"
                f"<p>trackers without a BAA left out: {_cell(policy['removed_trackers'])}; seen without a request "
                f"to classify: {_cell(policy['unclassified'])}</p>"
            )
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{PAGE_CSP}">'
        '<meta name="referrer" content="no-referrer"><meta name="viewport" content="width=device-width">'
        f"<title>PHI egress report</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(sections) + "\n</body></html>\n"
    )


def _list(items: Sequence[str], empty: str) -> str:
    if not items:
        return f'<p class="muted">({escape(empty)})</p>'
    return '<ul class="plain mono">' + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


# -- Markdown -------------------------------------------------------------------------------------
def _md(value: object) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return (text or "-").replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def _md_table(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md(row[c]) for c in columns) + " |" for row in rows]
    return lines


def render_markdown(doc: dict) -> str:
    inventory = doc["inventory"]
    lines = ["# PHI egress report", "", f"{len(inventory)} flow(s) from PHI hosts. Health data values are redacted.",
             "", "## Data flows", ""]
    lines += [f"- {_md(_host_label(r))} -> **{_md(r['destination'])}**: {_md(r['verdict'])} (BAA {_md(r['baa'])})"
              + (f"; health data: {_md(r['health_data'])}" if r["health_data"] else "")
              for r in inventory if r["verdict"] != "internal"] or ["(none)"]
    lines += ["", "## Inventory", "", *_md_table(inventory, INVENTORY_COLUMNS), "",
              "## What each third party received", ""]
    for row in inventory:
        if row["verdict"] == "internal" or not (row["health_data"] or row.get("endpoints")):
            continue
        lines += [f"### {_md(row['destination'])} from {_md(_host_label(row))}", "",
                  f"- verdict: {_md(row['verdict'])}; BAA: {_md(row['baa'])}; seen {_md(row['first_seen'])} to "
                  f"{_md(row['last_seen'])}",
                  f"- health data: {_md(row['health_data'])}"]
        lines += [f"- example: `{e.replace('`', chr(39))}`" for e in row.get("examples", [])]
        lines += [f"- endpoint: `{e.replace('`', chr(39))}`" for e in row.get("endpoints", [])]
        lines.append("")
    lines += ["## Suggested egress allow list", ""] + ([f"- {_md(d)}" for d in doc["allow"]] or ["(none)"])
    lines += ["", "## Trackers reached without a BAA", ""] + ([f"- {_md(d)}" for d in doc["block"]] or ["(none)"])
    if "exposure" in doc:
        lines += ["", "## Exposure", "", *_md_table(doc["exposure"], EXPOSURE_COLUMNS)]
    for policy in doc.get("csp", []):
        lines += ["", f"## Suggested Content-Security-Policy for {policy['phi_host']}", "", "```",
                  policy["header"], "```", "",
                  f"Trackers without a BAA left out: {_md(policy['removed_trackers'])}. "
                  f"Seen without a request to classify: {_md(policy['unclassified'])}."]
    return "\n".join(lines) + "\n"
