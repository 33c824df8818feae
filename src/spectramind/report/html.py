"""The leaderboard as one self-contained HTML file: inline CSS and a small script that sorts by any column."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.text { text-align: left; }
td.error { white-space: normal; min-width: 20em; }
tr.best { background: #e6f6e6; font-weight: bold; }
tr.failed { background: #fbe9e9; color: #8a1f1f; }
"""

# Sorts the body rows by the clicked header's column: numbers as numbers, text in natural order, empty
# cells last in either direction; a second click on the same header reverses the order.
SCRIPT = """
(function () {
  const table = document.getElementById("leaderboard");
  const heads = Array.from(table.tHead.rows[0].cells);
  function value(row, col, numeric) {
    const v = row.cells[col].dataset.v;
    return numeric ? (v === "" ? NaN : parseFloat(v)) : v;
  }
  function compare(x, y, numeric, asc) {
    const xe = numeric ? isNaN(x) : x === "", ye = numeric ? isNaN(y) : y === "";
    if (xe || ye) return xe - ye;
    const c = numeric ? x - y : x.localeCompare(y, undefined, {numeric: true});
    return asc ? c : -c;
  }
  function sortBy(col) {
    const th = heads[col], numeric = th.dataset.type === "number";
    const asc = th.getAttribute("aria-sort") !== "ascending";
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => compare(value(a, col, numeric), value(b, col, numeric), numeric, asc));
    heads.forEach(h => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    rows.forEach(r => body.appendChild(r));
  }
  heads.forEach((th, col) => th.addEventListener("click", () => sortBy(col)));
  window.sortLeaderboard = sortBy;
})();
"""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _td(shown: str, sort_value, *classes: str) -> str:
    css = f' class="{" ".join(classes)}"' if classes else ""
    sort = "" if sort_value is None else escape(str(sort_value), quote=True)
    return f'<td{css} data-v="{sort}">{shown}</td>'


def figures(plots: list[Path]) -> str:
    """The score plots inlined as data URIs, so the page stays one file."""
    images = (f'<img alt="{escape(p.stem)}" src="data:image/png;base64,'
              f'{base64.b64encode(p.read_bytes()).decode("ascii")}">' for p in plots)
    return "<h2>Score against each swept parameter</h2>\n" + "\n".join(images) if plots else ""


def render(rows: list[dict], params: list[str], metrics: list[tuple[str, str, str]],
           plots: list[Path]) -> str:
    """The page: one table, a header per column (click to sort), the best row and failed rows marked."""
    param_numeric = {p: all(_is_number(r["params"][p]) for r in rows if r["params"].get(p)) for p in params}
    heads = [("rank", "number"), ("run", "text"), ("status", "text"),
             *((title, "number") for _, title, _ in metrics),
             *((p, "number" if param_numeric[p] else "text") for p in params), ("error", "text")]
    head_html = "".join(f'<th data-type="{kind}">{escape(title)}</th>' for title, kind in heads)
    body = []
    for i, row in enumerate(rows, 1):
        run = (f'<a href="{escape(row["link"], quote=True)}">{escape(row["run_hash"])}</a>'
               if row["link"] else f'{escape(row["run_hash"] or "")} (no folder)')
        cells = [_td(f"{i}{' &#9733;' if row['best'] else ''}", i), _td(run, row["run_hash"] or "", "text"),
                 _td(escape(row["status"]), row["status"], "text")]
        for key, _, fmt in metrics:
            value = row.get(key)
            cells.append(_td("" if value is None else escape(fmt.format(value)), value))
        for p in params:
            value = row["params"].get(p, "")
            cells.append(_td(escape(value), value, *(() if param_numeric[p] else ("text",))))
        cells.append(_td(escape(row.get("error") or ""), row.get("error") or "", "text", "error"))
        css = "best" if row["best"] else "failed" if row["status"] == "failed" else ""
        run_attr = escape(row["run_hash"] or "", quote=True)
        body.append(f'<tr class="{css}" data-run="{run_attr}">' + "".join(cells) + "</tr>")
    best = next((r["run_hash"] for r in rows if r["best"]), None)
    note = f"best run: {escape(best)}" if best else "no run has a score yet"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>SpectraMind ablation leaderboard</title><style>{STYLE}</style></head><body>\n"
            f"<h1>Ablation leaderboard</h1>\n<p>{len(rows)} runs; {note} (&#9733;); "
            f"click a column header to sort.</p>\n"
            f'<table id="leaderboard"><thead><tr>{head_html}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody></table>\n"
            + f"{figures(plots)}\n<script>{SCRIPT}</script>\n</body></html>\n")
