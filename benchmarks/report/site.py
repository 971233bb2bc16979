"""Render an interactive, offline leaderboard page from a plain data spec.

``write_site(spec, out_dir)`` writes ``out_dir/index.html`` plus ``out_dir/plotly.min.js`` (copied
once from the installed ``plotly`` package) and returns the page path. The page needs no network:
tables are sortable and filterable by a small hand-written script (``site.js``, inlined), styles come
from ``site.css`` (inlined), and Pareto plots are drawn by Plotly from the file beside the page.

The spec is a JSON-serializable dict::

    {"title": str, "subtitle": str (optional),
     "sections": [{"id", "title", "notes": [str], "tables": [TABLE], "plots": [PLOT],
                   "images": [{"title", "src"}]}],
     "extra_tables": [TABLE], "extra_title": str (optional, default "more tables")}

    TABLE = {"id", "caption", "columns": [{"key", "label", "type": "text" | "number"}],
             "rows": [{key: CELL}], "footnotes": [str], "row_classes": [str] (optional)}
    CELL  = plain value (shown as is, sorted by value; None is missing)
            | {"display": str, "sort": number | str | None, "title": str, "mark": str}
    PLOT  = {"id", "kind": "pareto", "title", "x_label", "y_label", "log_x": bool,
             "x_better" / "y_better": "lower" (default) | "higher",
             "series": [{"name", "points": [{"x", "y", "x_lo", "x_hi", "y_lo", "y_hi",
                                             "label", "hollow", "hover": {key: value}}]}],
             "published": [{"y", "label", "x": number | None}],
             "reference_lines": [{"y", "label"}]}

Every string from the spec is HTML-escaped; JSON embedded in ``<script>`` has ``<``, ``>`` and ``&``
written as ``\\u`` escapes, so a ``</script>`` inside a string cannot end the element.
Only the standard library is imported at module level; ``plotly`` is imported when the page is written.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote, urlsplit

from ..io import atomic_path

__all__ = ["write_site", "render_page", "pareto_front", "plot_figure"]

ASSET_DIR = Path(__file__).resolve().parent / "assets"
"""Folder holding ``site.js`` and ``site.css`` (inlined into every page)."""

PLOTLY_FILE = "plotly.min.js"
PAGE_FILE = "index.html"
PLOT_HEIGHT_PX = 480
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
PUBLISHED_COLOR = "#6b6b6b"
REFERENCE_COLOR = "#000000"
EXTRA_SECTION_ID = "extra-tables"  # anchor of the section holding spec["extra_tables"]
MISSING_TEXT = "\u2014"  # em dash shown for an absent or None cell
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


# --------------------------------------------------------------------------- public API

def write_site(spec: dict, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` (and ``plotly.min.js`` once) for ``spec``; return the page path.

    The page is rendered completely before anything is written, then written atomically (a
    temporary file in ``out_dir`` replaced into place), so a failure leaves any previous page intact
    and no temporary file behind. ``plotly.min.js`` is only (re)written when missing or different.
    Images named in the spec are linked, not copied: put them beside the page.
    """
    out_dir = Path(out_dir)
    page = render_page(spec).encode("utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    _ensure_plotly_js(out_dir / PLOTLY_FILE)
    target = out_dir / PAGE_FILE
    _atomic_write(target, page)
    return target


def render_page(spec: dict) -> str:
    """The complete HTML text of the page for ``spec`` (raises ValueError on a malformed spec)."""
    _check_spec(spec)
    js, css = _asset("site.js", "</script"), _asset("site.css", "</style")
    sections = list(spec.get("sections") or [])
    extra = list(spec.get("extra_tables") or [])
    if extra:  # the extra tables get a section (and a nav link) of their own, last
        sections.append({"id": EXTRA_SECTION_ID, "title": spec.get("extra_title") or "more tables",
                         "tables": extra})
    nav = [(s["id"], s.get("title") or s["id"]) for s in sections]
    title = str(spec.get("title") or "leaderboard")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>\n{css}</style>",
        "</head>",
        "<body>",
        '<header class="site-header">',
        f"<h1>{_e(title)}</h1>",
    ]
    if spec.get("subtitle"):
        parts.append(f'<p class="subtitle">{_e(spec["subtitle"])}</p>')
    parts.append("</header>")
    parts.append('<nav class="site-nav" aria-label="sections"><ul>')
    parts += [f'<li><a href="#{_frag(i)}">{_e(t)}</a></li>' for i, t in nav]
    parts.append("</ul></nav>")
    parts.append("<main>")
    parts += [_section_html(s) for s in sections]
    parts.append("</main>")
    parts.append(f'<script src="{PLOTLY_FILE}" charset="utf-8"></script>')
    parts.append(f"<script>\n{js}</script>")
    parts.append("</body>")
    parts.append("</html>")
    return "\n".join(parts) + "\n"


def pareto_front(points: Sequence[tuple[float, float]],
                 minimize: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the points no other point dominates, ordered by x ascending (then y, then index).

    A point dominates another if it is no worse in both coordinates and better in at least one;
    ``minimize`` says per coordinate whether lower is better. Identical points do not dominate each
    other, so duplicates on the front are all kept. Coordinates must be finite numbers.
    """
    sign = (1.0 if minimize[0] else -1.0, 1.0 if minimize[1] else -1.0)
    cost = [(sign[0] * float(x), sign[1] * float(y)) for x, y in points]

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])

    front = [i for i, c in enumerate(cost) if not any(dominates(o, c) for o in cost)]
    return sorted(front, key=lambda i: (float(points[i][0]), float(points[i][1]), i))


def plot_figure(plot: dict) -> tuple[dict, list[str]]:
    """Plotly figure (``{"data", "layout", "config"}``) for a Pareto plot spec, and notes on points
    that cannot be drawn (missing or non-finite coordinates, or x <= 0 on a log axis).

    Each trace's ``meta`` says what it is: ``"front"`` (one step line per series, drawn first),
    ``"series"`` (the markers of one series) or ``"published"`` (star markers of published values).
    Labels and hover texts are HTML-escaped, because Plotly renders them as a subset of HTML.
    """
    log_x = bool(plot.get("log_x"))
    minimize = (plot.get("x_better", "lower") != "higher", plot.get("y_better", "lower") != "higher")
    data: list[dict] = []
    fronts: list[dict] = []
    skipped: list[str] = []
    for k, series in enumerate(plot.get("series") or []):
        color = PALETTE[k % len(PALETTE)]
        name = str(series.get("name") or f"series {k + 1}")
        pts = []
        for p in series.get("points") or []:
            x, y = _num(p.get("x")), _num(p.get("y"))
            if x is None or y is None or (log_x and x <= 0):
                why = "x <= 0 on a log axis" if x is not None and y is not None else "no x or y"
                skipped.append(f"{p.get('label', '?')} ({name}): {why}")
                continue
            pts.append((x, y, p))
        trace: dict[str, Any] = {
            "type": "scatter", "mode": "markers+text", "meta": "series", "name": _e(name),
            "legendgroup": f"s{k}",
            "x": [x for x, _, _ in pts], "y": [y for _, y, _ in pts],
            "text": [_e(p.get("label", "")) for _, _, p in pts],
            "textposition": "top right", "textfont": {"size": 11, "color": color},
            "hovertext": [_hover_text(p, plot) for _, _, p in pts], "hoverinfo": "text+name",
            "marker": {"color": color, "size": 10, "line": {"color": color, "width": 2},
                       "symbol": ["circle-open" if p.get("hollow") else "circle" for _, _, p in pts]},
            "cliponaxis": False,
        }
        for axis in ("x", "y"):
            bars = _error_bars(pts, axis, color)
            if bars:
                trace[f"error_{axis}"] = bars
        data.append(trace)
        front = pareto_front([(x, y) for x, y, _ in pts], minimize)
        if front:
            fronts.append({
                "type": "scatter", "mode": "lines", "meta": "front", "name": _e(f"{name}: Pareto front"),
                "legendgroup": f"s{k}", "showlegend": False, "hoverinfo": "skip",
                "x": [pts[i][0] for i in front], "y": [pts[i][1] for i in front],
                "line": {"color": color, "width": 1.5, "shape": "hv"}, "opacity": 0.7,
            })
    shapes, annotations, stars = [], [], []
    for ref, color in [(r, REFERENCE_COLOR) for r in plot.get("reference_lines") or []] + \
                      [(r, PUBLISHED_COLOR) for r in plot.get("published") or [] if r.get("x") is None]:
        y = _num(ref.get("y"))
        if y is None:
            skipped.append(f"{ref.get('label', '?')}: no y")
            continue
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y,
                       "line": {"color": color, "width": 1.5, "dash": "dash"}})
        annotations.append({"xref": "paper", "x": 1, "xanchor": "right", "yref": "y", "y": y,
                            "yanchor": "bottom", "showarrow": False, "text": _e(ref.get("label", "")),
                            "font": {"size": 11, "color": color}})
    for pub in plot.get("published") or []:
        if pub.get("x") is None:
            continue
        x, y = _num(pub.get("x")), _num(pub.get("y"))
        if x is None or y is None or (log_x and x <= 0):
            skipped.append(f"{pub.get('label', '?')} (published): no drawable x or y")
            continue
        stars.append((x, y, pub))
    if stars:
        data.append({
            "type": "scatter", "mode": "markers+text", "meta": "published", "name": "published",
            "x": [x for x, _, _ in stars], "y": [y for _, y, _ in stars],
            "text": [_e(p.get("label", "")) for _, _, p in stars], "textposition": "bottom right",
            "textfont": {"size": 11, "color": PUBLISHED_COLOR}, "cliponaxis": False,
            "hovertext": [f"<b>{_e(p.get('label', ''))}</b><br>{_e(plot.get('y_label') or 'y')}: {_e(y)}"
                          for _, y, p in stars], "hoverinfo": "text",
            "marker": {"symbol": "star", "size": 14, "color": PUBLISHED_COLOR},
        })
    layout = {
        "title": {"text": _e(plot.get("title", "")), "x": 0.0, "xanchor": "left"},
        "xaxis": {"title": {"text": _e(plot.get("x_label", ""))}, "type": "log" if log_x else "linear",
                  "zeroline": False},
        "yaxis": {"title": {"text": _e(plot.get("y_label", ""))}, "zeroline": False},
        "hovermode": "closest", "hoverlabel": {"namelength": -1}, "showlegend": True,
        "legend": {"orientation": "h", "x": 0, "y": -0.18, "yanchor": "top"},
        "margin": {"l": 70, "r": 30, "t": 50, "b": 60},
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif",
                 "size": 12},
        "shapes": shapes, "annotations": annotations,
    }
    # showSendToCloud: Plotly's "Share chart" button uploads to a server; this page stays offline
    config = {"responsive": True, "displaylogo": False, "showSendToCloud": False}
    return {"data": fronts + data, "layout": layout, "config": config}, skipped


# --------------------------------------------------------------------------- HTML pieces

def _section_html(section: dict) -> str:
    sid = section["id"]
    out = [f'<section id="{_e(sid)}" class="dataset">', f"<h2>{_e(section.get('title') or sid)}</h2>"]
    notes = section.get("notes") or []
    if notes:
        out.append('<div class="notes">' + "".join(f"<p>{_e(n)}</p>" for n in notes) + "</div>")
    out += [_table_html(t) for t in section.get("tables") or []]
    out += [_plot_html(p) for p in section.get("plots") or []]
    for img in section.get("images") or []:
        alt = img.get("title") or img["src"]
        out.append(f'<figure class="image"><img src="{_e(_src(img["src"]))}" alt="{_e(alt)}">'
                   f"<figcaption>{_e(img.get('title') or '')}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)


def _table_html(table: dict) -> str:
    tid = table["id"]
    columns = table["columns"]
    rows = table.get("rows") or []
    classes = table.get("row_classes") or [None] * len(rows)
    out = [f'<div class="table-block" data-table="{_e(tid)}">',
           '<div class="table-tools"><label>filter '
           f'<input type="search" class="table-filter" aria-controls="{_e(tid)}" '
           'placeholder="type to filter rows" autocomplete="off" spellcheck="false"></label>'
           f'<span class="row-count" aria-live="polite">{len(rows)} row{"" if len(rows) == 1 else "s"}'
           "</span></div>",
           '<div class="table-scroll">',
           f'<table id="{_e(tid)}" class="sortable">']
    if table.get("caption"):
        out.append(f"<caption>{_e(table['caption'])}</caption>")
    head = []
    for col in columns:
        kind = "num" if col.get("type") == "number" else "text"
        head.append(f'<th scope="col" class="{kind}" data-key="{_e(col["key"])}" aria-sort="none">'
                    f'<button type="button" class="sort">{_e(col.get("label", col["key"]))}'
                    '<span class="arrow" aria-hidden="true"></span></button></th>')
    out.append("<thead><tr>" + "".join(head) + "</tr></thead>")
    out.append("<tbody>")
    for row, cls in zip(rows, classes):
        attr = f' class="{_e(cls)}"' if cls else ""
        cells = "".join(_cell_html(row.get(c["key"]), c.get("type") == "number") for c in columns)
        out.append(f"<tr{attr}>{cells}</tr>")
    out.append("</tbody></table></div>")
    out.append('<p class="no-match" hidden>no row matches the filter</p>')
    notes = table.get("footnotes") or []
    if notes:
        out.append('<div class="footnotes">' + "".join(f"<p>{_e(n)}</p>" for n in notes) + "</div>")
    out.append("</div>")
    return "\n".join(out)


def _cell_html(value: Any, numeric: bool) -> str:
    """One ``<td>``: displayed text, optional marker and tooltip, and the sort key as data attributes."""
    title = mark = None
    if isinstance(value, dict):
        display, sort = value.get("display"), value.get("sort")
        title, mark = value.get("title"), value.get("mark")
        display = "" if display is None else str(display)
    else:
        sort = value
        display = MISSING_TEXT if value is None else str(value)
    classes = ["num"] if numeric else []
    if isinstance(sort, (int, float)) and not isinstance(sort, bool) and math.isfinite(sort):
        key = f' data-sort-type="n" data-sort="{repr(float(sort)) if isinstance(sort, float) else sort}"'
    elif sort is None or isinstance(sort, float):  # None or NaN/inf float: missing
        key = ' data-sort-type="x"'
        classes.append("na")
    else:
        key = f' data-sort-type="s" data-sort="{_e(sort)}"'
    cls = f' class="{" ".join(classes)}"' if classes else ""
    tip = f' title="{_e(title)}"' if title else ""
    marker = f'<span class="mark">{_e(mark)}</span>' if mark else ""
    return f"<td{cls}{key}{tip}>{_e(display)}{marker}</td>"


def _plot_html(plot: dict) -> str:
    figure, skipped = plot_figure(plot)
    pid = plot["id"]
    out = [f'<figure class="plot">',
           f'<div id="{_e(pid)}" class="plotly-plot" style="height:{PLOT_HEIGHT_PX}px" '
           f'role="img" aria-label="{_e(plot.get("title") or pid)}"></div>',
           f'<script type="application/json" class="plot-data" data-target="{_e(pid)}">'
           f"{_script_json(figure)}</script>"]
    if skipped:
        out.append(f"<figcaption class=\"plot-note\">not drawn: {_e('; '.join(skipped))}</figcaption>")
    out.append("</figure>")
    return "\n".join(out)


def _hover_text(point: dict, plot: dict) -> str:
    hover = point.get("hover")
    if not hover:
        hover = {"label": point.get("label", ""), plot.get("x_label") or "x": point.get("x"),
                 plot.get("y_label") or "y": point.get("y")}
    return "<br>".join(f"<b>{_e(k)}</b>: {_e(v)}" for k, v in hover.items())


def _error_bars(pts: list[tuple[float, float, dict]], axis: str, color: str) -> dict | None:
    """Asymmetric Plotly error bars from ``{axis}_lo``/``{axis}_hi``, or None when no point has any.

    A missing end is null in the JSON; site.js turns it into NaN, and Plotly draws no bar for a
    point with neither end (a zero would draw a misleading zero-width cap).
    """
    if not any(_num(p.get(f"{axis}_lo")) is not None or _num(p.get(f"{axis}_hi")) is not None
               for _, _, p in pts):
        return None
    plus, minus = [], []
    for x, y, p in pts:
        v = x if axis == "x" else y
        lo, hi = _num(p.get(f"{axis}_lo")), _num(p.get(f"{axis}_hi"))
        if (lo is not None and lo > v) or (hi is not None and hi < v):
            raise ValueError(f"point {p.get('label', '?')!r}: {axis} interval [{lo}, {hi}] excludes {v}")
        plus.append(None if hi is None else hi - v)
        minus.append(None if lo is None else v - lo)
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
            "color": color, "thickness": 1.2, "width": 3}


# --------------------------------------------------------------------------- spec checks

def _check_spec(spec: dict) -> None:
    """Raise ValueError naming the first malformed part of ``spec`` (ids must be unique and plain)."""
    if not isinstance(spec, dict):
        raise ValueError("spec must be a dict")
    seen: set[str] = set()

    def ident(obj: dict, where: str) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object")
        value = obj.get("id")
        if not isinstance(value, str) or not _ID_RE.match(value):
            raise ValueError(f"{where}: id {value!r} must match {_ID_RE.pattern}")
        if value in seen:
            raise ValueError(f"{where}: id {value!r} is used twice on the page")
        seen.add(value)

    def table(t: dict, where: str) -> None:
        ident(t, where)
        cols = t.get("columns")
        if not cols or not all(isinstance(c, dict) and "key" in c for c in cols):
            raise ValueError(f"{where}: 'columns' must be a non-empty list of objects with a 'key'")
        rows = t.get("rows") or []
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{where}: every row must be an object")
        rc = t.get("row_classes")
        if rc is not None and len(rc) != len(rows):
            raise ValueError(f"{where}: row_classes has {len(rc)} entries for {len(rows)} rows")

    sections = spec.get("sections") or []
    for i, s in enumerate(sections):
        ident(s, f"sections[{i}]")
        for j, t in enumerate(s.get("tables") or []):
            table(t, f"sections[{i}].tables[{j}]")
        for j, p in enumerate(s.get("plots") or []):
            ident(p, f"sections[{i}].plots[{j}]")
            if p.get("kind", "pareto") != "pareto":
                raise ValueError(f"sections[{i}].plots[{j}]: unknown kind {p.get('kind')!r}")
        for j, img in enumerate(s.get("images") or []):
            if not isinstance(img, dict) or not isinstance(img.get("src"), str):
                raise ValueError(f"sections[{i}].images[{j}]: needs a 'src' string")
            _src(img["src"], f"sections[{i}].images[{j}]")
    extra = spec.get("extra_tables") or []
    for j, t in enumerate(extra):
        table(t, f"extra_tables[{j}]")
    if extra and EXTRA_SECTION_ID in seen:
        raise ValueError(f"id {EXTRA_SECTION_ID!r} is reserved for the extra tables section")


def _src(src: str, where: str = "image") -> str:
    """A relative link to a file beside the page; anything that would reach the network is refused."""
    parts = urlsplit(src)
    if not src or parts.scheme or parts.netloc or src.startswith(("/", "\\")):
        raise ValueError(f"{where}: src {src!r} must be a relative path beside the page")
    return src


# --------------------------------------------------------------------------- helpers

def _e(value: Any) -> str:
    """HTML-escape any value as text (quotes too, so the result is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _frag(ident: str) -> str:
    return _e(quote(ident, safe="-_.:"))


def _num(value: Any) -> float | None:
    """A finite float, or None for None, NaN, inf, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _script_json(obj: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">`` (no ``</script>``, no ``<!--``)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _asset(name: str, forbidden: str) -> str:
    text = (ASSET_DIR / name).read_text(encoding="utf-8")
    if forbidden in text.lower():
        raise ValueError(f"{name} must not contain {forbidden!r}: it is inlined into the page")
    return text if text.endswith("\n") else text + "\n"


def _ensure_plotly_js(path: Path) -> None:
    """Write the installed plotly.js bundle to ``path`` unless an identical file is already there."""
    import plotly.offline  # imported here so that rendering alone needs no plotly

    data = plotly.offline.get_plotlyjs().encode("utf-8")
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    _atomic_write(path, data)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place (benchmarks.io);
    the temporary file is removed on any failure, including KeyboardInterrupt."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
