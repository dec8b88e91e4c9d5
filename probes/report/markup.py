"""HTML building blocks of the report: escaping, number formatting, tables, the page shell.

Every string that comes from data goes through :func:`esc` (names can hold ``<``, ``&`` and
quotes). Numbers are only formatted here, never derived. The page shell carries its CSS and
the few lines of table-sorting JavaScript inline, so a page opens from disk with no network.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

__all__ = ["Cell", "esc", "fmt", "fmt_ci", "fmt_p", "generic", "href", "page", "prose", "table"]

MAX_LIST = 24
MAX_ROWS = 300


def esc(value) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def prose(text) -> str:
    """A sentence from data, escaped, with its `backtick` spans shown as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def fmt(value, digits: int = 4) -> str:
    """A value as short text: floats to ``digits`` decimals (small ones in 3 significant digits)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 10 ** (-digits + 1):
            return f"{value:.3g}"
        if abs(value) >= 1e6:
            return f"{value:.4g}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_p(value) -> str:
    """A p-value: three significant digits."""
    return "–" if value is None else (f"{value:.3g}" if isinstance(value, (int, float)) else str(value))


def fmt_ci(ci) -> str:
    """``[lo, hi]`` or a dash when the interval is not a pair of numbers."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"[{fmt(ci[0])}, {fmt(ci[1])}]"
    return "–" if ci is None else esc(json.dumps(ci))


def href(target: str | Path, *, start: Path) -> str:
    """A relative, URL-quoted link from the folder ``start`` to ``target`` (works from disk)."""
    rel = os.path.relpath(Path(target).resolve(), Path(start).resolve())
    return quote(rel.replace(os.sep, "/"))


class Cell:
    """A table cell: ready HTML plus the value the sorting script sorts by."""

    __slots__ = ("html", "sort")

    def __init__(self, html_text: str, sort=None) -> None:
        self.html = html_text
        self.sort = sort


def _cell(value) -> tuple[str, str]:
    if isinstance(value, Cell):
        sort = value.sort
        return value.html, "" if sort is None else (repr(sort) if isinstance(sort, float) else str(sort))
    if isinstance(value, (dict, list)):
        return generic(value), ""
    sort = "" if value is None else (repr(value) if isinstance(value, float) else str(value))
    return esc(fmt(value)), sort


def table(header: Sequence[str], rows: Iterable[Sequence], *, sortable: bool = True, cls: str = "") -> str:
    """An HTML table; header strings and plain cell values are escaped, :class:`Cell` is trusted."""
    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    out = [f'<table class="{classes}">' if classes else "<table>", "<thead><tr>"]
    out += [f'<th title="{"click to sort" if sortable else ""}">{esc(h)}</th>' for h in header]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for value in row:
            text, sort = _cell(value)
            out.append(f'<td data-v="{esc(sort)}">{text}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values()) and len(v) <= 8:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def generic(value, *, depth: int = 0) -> str:
    """Any JSON value as HTML: scalars as text, lists of records as tables, dicts as key/value
    tables. Used for every key the report does not know yet, so new results show up unchanged."""
    if _is_scalar(value):
        return esc(fmt(value))
    if depth > 3:
        return f"<pre>{esc(json.dumps(value, indent=1, default=str)[:4000])}</pre>"
    if isinstance(value, list):
        if not value:
            return "(empty)"
        if all(_is_scalar(v) for v in value):
            shown = ", ".join(esc(fmt(v)) for v in value[:MAX_LIST])
            more = f" … ({len(value)} values)" if len(value) > MAX_LIST else ""
            return shown + more
        if all(isinstance(v, dict) for v in value):
            flat = [_flatten(v) for v in value[:MAX_ROWS]]
            cols: list[str] = []
            for f in flat:
                cols += [k for k in f if k not in cols]
            body = table(cols, ([Cell(generic(f.get(c), depth=depth + 1)) for c in cols] for f in flat))
            more = f"<p class='note'>first {MAX_ROWS} of {len(value)} rows</p>" if len(value) > MAX_ROWS else ""
            return body + more
        return "<ul>" + "".join(f"<li>{generic(v, depth=depth + 1)}</li>" for v in value[:MAX_ROWS]) + "</ul>"
    if isinstance(value, dict):
        if not value:
            return "(empty)"
        if depth >= 1 and len(value) <= 10 and all(_is_scalar(v) for v in value.values()):
            # A small record inside a table reads better on one line than as a nested table.
            return " · ".join(f"<code>{esc(k)}</code> {esc(fmt(v))}" for k, v in value.items())
        rows = [(Cell(f"<code>{esc(k)}</code>"), Cell(generic(v, depth=depth + 1))) for k, v in value.items()]
        return table(("key", "value"), rows, sortable=False, cls="kv")
    return esc(str(value))


CSS = """
:root { --fg:#1d2430; --muted:#5b6573; --line:#d8dde3; --accent:#1f77b4; --bad:#b3261e; --bg:#ffffff; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0; }
header { background: #f4f6f8; border-bottom: 1px solid var(--line); padding: 14px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { color: var(--muted); }
nav.toc { margin-top: 8px; font-size: 13px; }
nav.toc a { margin-right: 14px; }
main { padding: 8px 28px 48px; max-width: 1480px; }
h2 { font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 30px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
a { color: var(--accent); }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
.scroll { overflow-x: auto; max-width: 100%; }
table.wide { font-size: 12.5px; }
table.wide td { white-space: nowrap; }
.ci { color: var(--muted); font-size: 11.5px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[data-order="asc"]::after { content: " ▲"; }
table.sortable th[data-order="desc"]::after { content: " ▼"; }
table.kv td:first-child { white-space: nowrap; }
td.num, .num { font-variant-numeric: tabular-nums; }
.sig { color: #0b6e2e; font-weight: 600; }
.ns { color: var(--muted); }
.note { color: var(--muted); font-size: 13px; }
.missing { color: var(--muted); font-style: italic; }
.warn { color: var(--bad); }
img.fig { max-width: 100%; height: auto; border: 1px solid var(--line); }
.gallery { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0 12px; }
.gallery figure { margin: 0; width: 116px; font-size: 11px; text-align: center; color: var(--muted); }
.gallery img { width: 112px; height: 112px; object-fit: cover; border: 2px solid #2e7d32; display: block; }
.gallery.wrong img { border-color: var(--bad); }
.gallery figcaption { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { background: #f4f6f8; padding: 8px; overflow: auto; max-height: 420px; font-size: 12px; }
table.heat td { text-align: center; min-width: 30px; padding: 3px 4px; }
table.heat td.diag { outline: 2px solid #2e7d32; outline-offset: -2px; }
table.heat th.rot { vertical-align: bottom; padding: 4px 2px; }
table.heat th.rot span { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap;
                         max-height: 150px; overflow: hidden; text-overflow: ellipsis; display: inline-block; }
.bar { display: inline-block; height: 11px; vertical-align: middle; }
.bar.true { background: #8a939e; }
.bar.pred { background: var(--accent); }
.headline { font-size: 15px; background: #f4f6f8; border-left: 4px solid var(--accent); padding: 8px 12px; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 20px; }
.pair h4 { margin: 4px 0; font-size: 13px; font-weight: 600; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
"""

# Sort a table by the clicked column: numbers numerically (data-v holds the raw value), text otherwise.
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  var heads = t.tHead ? t.tHead.rows[0].cells : [];
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-order') !== 'asc';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('data-order'); });
      th.setAttribute('data-order', asc ? 'asc' : 'desc');
      function key(r) { var c = r.cells[col]; return c ? (c.getAttribute('data-v') || c.textContent) : ''; }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny) && isFinite(x) && isFinite(y)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def page(title: str, body: str, *, subtitle: str = "", toc: Sequence[tuple[str, str]] = ()) -> str:
    """A whole page: ``title`` and the ``toc`` labels are escaped; ``subtitle`` and ``body`` are
    HTML built from escaped parts."""
    nav = ""
    if toc:
        nav = '<nav class="toc">' + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in toc) + "</nav>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><div class=\"sub\">{subtitle}</div>{nav}</header>"
        f"<main>{body}</main><script>{SORT_JS}</script></body></html>\n"
    )
