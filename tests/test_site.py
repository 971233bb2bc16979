"""Tests of the interactive leaderboard page (benchmarks/report/site.py): unit tests of the rendered HTML,
plus browser tests in headless Chromium through selenium and Debian's chromedriver.

The browser tests are skipped (with the reason) when selenium, chromium or chromedriver is absent.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from benchmarks.report import site as sitemod

EVIL = "</script><b>x"


# --------------------------------------------------------------------------- fixtures and helpers

def _png(path: Path) -> None:
    """A valid 2x2 grey PNG, so that the page loads its image without a console error."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * 2 for _ in range(2))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _cell(value: float | None, text: str | None = None, **extra) -> dict:
    return {"display": text if text is not None else ("n/a" if value is None else f"{value:.2f}"),
            "sort": value, **extra}


def _point(label: str, x: float, y: float, *, hollow: bool = False, dx: float = 0.1, dy: float = 0.5) -> dict:
    return {"x": x, "x_lo": x * (1 - dx), "x_hi": x * (1 + dx), "y": y, "y_lo": y - dy, "y_hi": y + dy,
            "label": label, "hollow": hollow,
            "hover": {"method": label, "seeds": 3, "\u0394 NLL vs avi": f"{y - 129.7:+.2f}",
                      "converged": "no" if hollow else "yes", "config": "a1b2c3"}}


# rows of the main leaderboard: method, test NLL sort key (None: missing)
MNIST_ROWS = [("avi", 129.71), ("savi", 127.4), ("iwae", 128.05), ("VAE-Flow", 126.9),
              (EVIL, 131.2), ("ladder", None), ("hvae", 128.05)]


def demo_spec() -> dict:
    """A spec with two dataset sections, plots, images, an extra table and hostile strings."""
    rows, classes = [], []
    for i, (method, nll) in enumerate(MNIST_ROWS):
        rows.append({
            "method": method,
            "test_nll": _cell(nll, text=None if nll is not None else "missing",
                              **({"mark": "\u2020", "title": "budget 60 epochs"} if method == "savi" else {})),
            "elbo": -nll - 3.0 if nll is not None else None,          # plain numeric cell
            "converged": "no" if method == "iwae" else "yes",          # plain text cell
        })
        classes.append("missing" if nll is None else ("reference" if method == "avi" else None))
    leaderboard = {
        "id": "leaderboard-mnist5k", "caption": "mnist5k: mean \u00b1 std over 3 seeds",
        "columns": [{"key": "method", "label": "method", "type": "text"},
                    {"key": "test_nll", "label": "test NLL", "type": "number"},
                    {"key": "elbo", "label": "test ELBO", "type": "number"},
                    {"key": "converged", "label": "converged", "type": "text"}],
        "rows": rows, "row_classes": classes,
        "footnotes": ["\u2020 budget differs from the dataset's policy"],
    }
    cpu = [_point("avi", 0.006, 129.71), _point("savi", 0.9, 127.4), _point("iwae", 0.05, 128.05, hollow=True),
           _point("VAE-Flow", 3.0, 126.9), _point(EVIL, 0.02, 131.2)]
    gpu = [_point("avi", 0.001, 129.71), _point("savi", 0.2, 127.4), _point("VAE-Flow", 0.3, 126.9),
           {"x": None, "y": 128.0, "label": "ladder"}]                # not drawable: listed under the plot
    mnist = {
        "id": "mnist5k", "title": "mnist5k",
        "notes": ["budget policy: 30 epochs per method", "Dynamically binarized, 5k training images."],
        "tables": [leaderboard],
        "plots": [{
            "id": "pareto-mnist5k", "kind": "pareto", "title": "mnist5k: test NLL vs inference time",
            "x_label": "inference time per example (ms)", "y_label": "test NLL (nats)", "log_x": True,
            "series": [{"name": "Intel Xeon (1 thread), batch 100", "points": cpu},
                       {"name": "NVIDIA H200, batch 100", "points": gpu}],
            "published": [{"y": 125.5, "label": "SA-VAE (Kim et al. 2018, Table 1)", "x": None},
                          {"y": 126.2, "label": "IAF (Kingma et al. 2016)", "x": 1.5}],
            "reference_lines": [{"y": 124.9, "label": "true NLL"}],
        }],
        "images": [{"title": "training curves", "src": "curves_mnist5k.png"}],
    }
    toy = {
        "id": "toy2d", "title": "toy 2-d",
        "notes": [],
        "tables": [{"id": "leaderboard-toy2d", "caption": "toy",
                    "columns": [{"key": "method", "label": "method"},
                                {"key": "test_nll", "label": "test NLL", "type": "number"}],
                    "rows": [{"method": "avi", "test_nll": 2.5}, {"method": "savi", "test_nll": 2.25}]}],
        "plots": [{"id": "pareto-toy2d", "kind": "pareto", "title": "toy", "x_label": "ms", "y_label": "nats",
                   "log_x": False,
                   "series": [{"name": "cpu", "points": [{"x": 1.0, "y": 2.5, "label": "avi"},
                                                         {"x": 2.0, "y": 2.25, "label": "savi"}]}]}],
    }
    stages = {"id": "stage-cost", "caption": "per-stage cost",
              "columns": [{"key": "stage", "label": "stage"},
                          {"key": "seconds", "label": "seconds", "type": "number"}],
              "rows": [{"stage": "train", "seconds": 1200.5}, {"stage": "evaluate", "seconds": 300}]}
    empty = {"id": "empty", "title": "no results yet",
             "tables": [{"id": "leaderboard-empty", "columns": [{"key": "method", "label": "method"}], "rows": []}],
             "plots": [{"id": "pareto-empty", "title": "nothing to draw", "series": [{"name": "cpu", "points": []}],
                        "reference_lines": [{"y": 1.0, "label": "true NLL"}]}]}
    return {"title": "amortbench leaderboard", "subtitle": "commit abc123, 3 seeds",
            "sections": [mnist, toy, empty], "extra_tables": [stages]}


class Tags(HTMLParser):
    """Collects start tags with their attributes, and the text inside each <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(page: str) -> Tags:
    p = Tags()
    p.feed(page)
    p.close()
    return p


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- unit tests

def test_pareto_front_hand_checked():
    pts = [(1, 10), (2, 8), (3, 9), (2, 8), (4, 5), (4, 6), (0.5, 12), (5, 5), (10, 1), (0.5, 13)]
    # (3,9) beaten by (2,8); (4,6) by (4,5); (5,5) by (4,5); (0.5,13) by (0.5,12); the two (2,8) tie
    assert sitemod.pareto_front(pts) == [6, 0, 1, 3, 4, 8]
    assert sitemod.pareto_front([]) == []
    assert sitemod.pareto_front([(3.0, 1.0)]) == [0]
    # higher y better (e.g. an ELBO): the front is the upper-left staircase
    assert sitemod.pareto_front([(1, 1), (2, 3), (3, 2), (0.5, 0.5)], minimize=(True, False)) == [3, 0, 1]


def test_plot_figure_traces():
    plot = demo_spec()["sections"][0]["plots"][0]
    fig, skipped = sitemod.plot_figure(plot)
    fronts = [t for t in fig["data"] if t["meta"] == "front"]
    markers = [t for t in fig["data"] if t["meta"] == "series"]
    assert len(fronts) == len(markers) == 2
    cpu = markers[0]
    assert cpu["marker"]["symbol"] == ["circle", "circle", "circle-open", "circle", "circle"]
    assert cpu["error_x"]["array"][0] == pytest.approx(0.0006) and cpu["error_y"]["arrayminus"][0] == 0.5
    # cpu front by hand: avi (0.006, 129.71) -> iwae (0.05, 128.05) -> savi (0.9, 127.4) -> VAE-Flow (3, 126.9)
    assert fronts[0]["x"] == [0.006, 0.05, 0.9, 3.0]
    assert fronts[0]["line"]["color"] == cpu["marker"]["color"]
    assert fig["layout"]["xaxis"]["type"] == "log"
    dashes = [(s["y0"], s["line"]["color"], s["line"]["dash"]) for s in fig["layout"]["shapes"]]
    assert dashes == [(124.9, "#000000", "dash"), (125.5, sitemod.PUBLISHED_COLOR, "dash")]
    stars = [t for t in fig["data"] if t["meta"] == "published"]
    assert stars[0]["x"] == [1.5] and stars[0]["marker"]["symbol"] == "star"
    assert stars[0]["text"] == ["IAF (Kingma et al. 2016)"]
    assert fig["config"]["showSendToCloud"] is False  # no upload button on an offline page
    assert skipped == ["ladder (NVIDIA H200, batch 100): no x or y"]
    assert "<b>converged</b>: no" in cpu["hovertext"][2]


def test_escaping_and_script_safety():
    spec = demo_spec()
    spec["title"] = EVIL
    spec["sections"][0]["notes"].append(EVIL)
    spec["sections"][0]["tables"][0]["footnotes"].append(EVIL)
    spec["sections"][0]["tables"][0]["row_classes"][1] = 'x" onmouseover="alert(1)'
    spec["sections"][0]["images"][0]["title"] = EVIL
    spec["sections"][0]["plots"][0]["title"] = EVIL + "\u2028"
    page = sitemod.render_page(spec)
    tags = parse(page)
    names = [t for t, _ in tags.tags]
    assert "b" not in names
    assert not any("onmouseover" in attrs for _, attrs in tags.tags)
    # three plot data blocks, plotly.min.js and the inlined site.js: nothing else opened a <script>
    assert names.count("script") == 5
    assert page.count("</script>") == 5
    assert "&lt;/script&gt;&lt;b&gt;x" in page
    blocks = [s for s, (_, a) in zip(tags.scripts, [t for t in tags.tags if t[0] == "script"])
              if a.get("type") == "application/json"]
    assert len(blocks) == 3
    for block in blocks:
        assert "<" not in block and ">" not in block and "\u2028" not in block
        json.loads(block)
    fig = json.loads(blocks[0])
    # Plotly renders its labels as pseudo-HTML, so they carry HTML-escaped text
    assert fig["layout"]["title"]["text"].startswith("&lt;/script&gt;&lt;b&gt;x")
    assert any("&lt;/script&gt;&lt;b&gt;x" in t for tr in fig["data"] for t in tr.get("text", []))


def test_no_external_resources_and_assets_inlined():
    page = sitemod.render_page(demo_spec())
    tags = parse(page)
    srcs = [a["src"] for t, a in tags.tags if "src" in a]
    assert srcs == ["curves_mnist5k.png", "plotly.min.js"]
    hrefs = [a["href"] for t, a in tags.tags if "href" in a]
    assert hrefs == ["#mnist5k", "#toy2d", "#empty", "#extra-tables"]
    ids = {a.get("id") for _, a in tags.tags}
    assert {h[1:] for h in hrefs} <= ids
    assert {"pareto-mnist5k", "pareto-toy2d", "leaderboard-mnist5k", "stage-cost"} <= ids
    assert "<link" not in page and "http://" not in page and "https://" not in page
    assert (sitemod.ASSET_DIR / "site.js").read_text().strip() in page
    assert (sitemod.ASSET_DIR / "site.css").read_text().strip() in page


def test_cells_carry_sort_keys():
    page = sitemod.render_page(demo_spec())
    cells = [a for t, a in parse(page).tags if t == "td"]
    nll = [c for c in cells if c.get("data-sort") == "129.71"]
    assert nll and nll[0]["data-sort-type"] == "n"
    assert {"data-sort-type": "x", "class": "num na"} in cells  # the missing NLL / ELBO of "ladder"
    assert any(c.get("data-sort-type") == "n" and c.get("data-sort") == "300" for c in cells)
    assert any(c.get("data-sort-type") == "s" and c.get("data-sort") == EVIL for c in cells)
    assert any(c.get("title") == "budget 60 epochs" for c in cells)
    nan = sitemod._cell_html(float("nan"), True)
    assert 'data-sort-type="x"' in nan and ">nan<" in nan


def test_render_is_deterministic():
    assert sitemod.render_page(demo_spec()) == sitemod.render_page(demo_spec())


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["sections"][1].update(id="mnist5k"), "used twice"),
    (lambda s: s["sections"][0]["plots"][0].update(id="leaderboard-toy2d"), "used twice"),
    (lambda s: s["sections"][0].update(id="has space"), "must match"),
    (lambda s: s["sections"][0]["images"][0].update(src="https://example.org/a.png"), "relative"),
    (lambda s: s["sections"][0]["images"][0].update(src="/etc/a.png"), "relative"),
    (lambda s: s["sections"][0]["tables"][0]["row_classes"].pop(), "row_classes"),
    (lambda s: s["sections"][0]["tables"][0].update(columns=[]), "columns"),
    (lambda s: s["sections"][0]["plots"][0]["series"][0]["points"][0].update(y_lo=140.0), "excludes"),
    (lambda s: s["sections"][0]["plots"][0].update(kind="bars"), "unknown kind"),
])
def test_malformed_spec_is_refused(mutate, message, tmp_path):
    spec = demo_spec()
    mutate(spec)
    with pytest.raises(ValueError, match=message):
        sitemod.write_site(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_atomic_write_success_leaves_no_temp(tmp_path):
    page = sitemod.write_site(demo_spec(), tmp_path)
    assert page == tmp_path / "index.html"
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "plotly.min.js"]
    assert oct(page.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _HalfWriter:
    """Stands in for the file object: writes half of the data, then fails like a full disk."""

    def __init__(self, fh):
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fault", ["mid-write", "replace", "interrupt"])
def test_atomic_write_failure_keeps_old_page(tmp_path, monkeypatch, fault):
    old = sitemod.write_site(demo_spec(), tmp_path).read_bytes()
    spec = demo_spec()
    spec["title"] = "new title"
    if fault == "mid-write":
        monkeypatch.setattr(sitemod, "open", lambda path, mode: _HalfWriter(open(path, mode)), raising=False)
        expected = OSError
    elif fault == "replace":
        def boom(src, dst):
            raise OSError("rename failed")
        monkeypatch.setattr(sitemod.os, "replace", boom)
        expected = OSError
    else:
        def interrupt(fd):
            raise KeyboardInterrupt
        monkeypatch.setattr(sitemod.os, "fsync", interrupt)
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        sitemod.write_site(spec, tmp_path)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert (tmp_path / "index.html").read_bytes() == old


def test_atomic_write_failure_in_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sitemod, "open", lambda path, mode: _HalfWriter(open(path, mode)), raising=False)
    with pytest.raises(OSError):
        sitemod.write_site(demo_spec(), tmp_path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_plotly_js_written_once(tmp_path, monkeypatch):
    import plotly.offline

    sitemod.write_site(demo_spec(), tmp_path)
    js = tmp_path / "plotly.min.js"
    expected = plotly.offline.get_plotlyjs().encode("utf-8")
    assert js.read_bytes() == expected
    before = js.stat()
    writes: list[str] = []
    real = sitemod._atomic_write
    monkeypatch.setattr(sitemod, "_atomic_write", lambda p, d: (writes.append(p.name), real(p, d)))
    sitemod.write_site(demo_spec(), tmp_path)
    after = js.stat()
    assert writes == ["index.html"]
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    js.write_bytes(b"// some other plotly\n")  # a stale or different copy is replaced
    sitemod.write_site(demo_spec(), tmp_path)
    assert writes == ["index.html", "plotly.min.js", "index.html"]
    assert js.read_bytes() == expected
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- browser tests

from tests.browser import browser, driver, hover_point as _hover_point, load, problems, row_methods  # noqa: E402,F401


@pytest.fixture(scope="module")
def page_url(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("site")
    _png(out / "curves_mnist5k.png")
    return sitemod.write_site(demo_spec(), out).as_uri()


@browser
def test_browser_console_is_clean_and_offline(driver, page_url):
    driver.get_log("browser")  # drop anything logged before
    driver.get_log("performance")
    load(driver, page_url)
    driver.execute_script("return new Promise(function (r) { setTimeout(r, 300); });")
    assert problems(driver.get_log("browser")) == []
    # every request the page made (DevTools network events) was for a file beside it
    events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    urls = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    base = page_url.rsplit("/", 1)[0] + "/"
    assert sorted(u[len(base):] for u in urls if u.startswith(base)) == [
        "curves_mnist5k.png", "index.html", "plotly.min.js"]
    assert [u for u in urls if u.split(":", 1)[0].lower() in ("http", "https", "ws", "wss", "ftp")] == []
    # the log check is not vacuous: a console error or warning on this page is seen
    driver.execute_script("console.error('probe-error'); console.warn('probe-warning');")
    seen = " ".join(e["message"] for e in problems(driver.get_log("browser")))
    assert "probe-error" in seen and "probe-warning" in seen


@browser
def test_browser_sort_by_clicking_header(driver, page_url):
    from selenium.webdriver.common.by import By

    load(driver, page_url)
    table = "leaderboard-mnist5k"
    assert row_methods(driver, table) == [m for m, _ in MNIST_ROWS]
    header = driver.find_element(
        By.XPATH, f"//table[@id='{table}']/thead//th[normalize-space(.//button)='test NLL']")
    present = [(m, v) for m, v in MNIST_ROWS if v is not None]
    missing = [m for m, v in MNIST_ROWS if v is None]
    ascending = [m for m, _ in sorted(present, key=lambda r: r[1])] + missing  # stable: iwae before hvae
    descending = [m for m, _ in sorted(present, key=lambda r: -r[1])] + missing
    header.click()
    assert row_methods(driver, table) == ascending
    assert header.get_attribute("aria-sort") == "ascending"
    assert header.find_element(By.CSS_SELECTOR, ".arrow").text == "\u25B2"
    header.click()
    assert row_methods(driver, table) == descending
    assert header.get_attribute("aria-sort") == "descending"
    assert header.find_element(By.CSS_SELECTOR, ".arrow").text == "\u25BC"
    # the markup of the hostile method name is shown as text, not parsed
    assert EVIL in row_methods(driver, table)
    # a plain-number column sorts numerically too (toy table: 2.25 before 2.5)
    driver.find_element(By.CSS_SELECTOR, "#leaderboard-toy2d th[data-key='test_nll'] button").click()
    assert row_methods(driver, "leaderboard-toy2d") == ["savi", "avi"]


@browser
def test_browser_filter_hides_rows(driver, page_url):
    from selenium.webdriver.common.by import By

    load(driver, page_url)
    block = driver.find_element(By.CSS_SELECTOR, ".table-block[data-table='leaderboard-mnist5k']")
    box = block.find_element(By.CSS_SELECTOR, "input.table-filter")
    rows = block.find_elements(By.CSS_SELECTOR, "tbody tr")

    def visible() -> list[str]:
        return [r.find_element(By.CSS_SELECTOR, "td").text for r in rows if r.is_displayed()]

    box.send_keys("AVI")
    assert visible() == ["avi", "savi"]
    assert block.find_element(By.CSS_SELECTOR, ".row-count").text == "2 of 7 rows"
    box.clear()
    box.send_keys("flow")  # case-insensitive on both sides
    assert visible() == ["VAE-Flow"]
    box.clear()
    box.send_keys("</SCRIPT>")
    assert visible() == [EVIL]
    box.send_keys("zzz")
    assert visible() == []
    assert block.find_element(By.CSS_SELECTOR, ".no-match").is_displayed()
    for _ in range(len("</SCRIPT>zzz")):
        box.send_keys("\b")
    assert len(visible()) == len(MNIST_ROWS)


@browser
def test_browser_hover_shows_point_details(driver, page_url):
    load(driver, page_url)
    text = _hover_point(driver, "pareto-mnist5k", "Intel Xeon (1 thread), batch 100", 3)
    assert "method: VAE-Flow" in text and "converged: yes" in text and "config: a1b2c3" in text
    assert "Intel Xeon (1 thread), batch 100" in text  # the series name, not cut short
    text = _hover_point(driver, "pareto-mnist5k", "Intel Xeon (1 thread), batch 100", 4)
    assert f"method: {EVIL}" in text  # shown literally, not as markup


@browser
def test_browser_plot_is_drawn(driver, page_url):
    from selenium.webdriver.common.by import By

    load(driver, page_url)
    spec = demo_spec()
    for section in spec["sections"]:
        for plot in section["plots"]:
            fig, skipped = sitemod.plot_figure(plot)
            div = driver.find_element(By.ID, plot["id"])
            drawn = [p for s in plot["series"] for p in s["points"] if p["x"] is not None]
            stars = [p for p in plot.get("published", []) if p.get("x") is not None]
            assert len(div.find_elements(By.CSS_SELECTOR, ".scatterlayer path.point")) == len(drawn) + len(stars)
            assert len(div.find_elements(By.CSS_SELECTOR, ".scatterlayer path.js-line")) == sum(
                1 for s in plot["series"] if s["points"])
            labels = [t.text for t in div.find_elements(By.CSS_SELECTOR, ".scatterlayer .textpoint")]
            assert sorted(labels) == sorted(p["label"] for p in drawn + stars)
            lines = len(plot.get("reference_lines", [])) + len(plot.get("published", [])) - len(stars)
            assert len(div.find_elements(By.CSS_SELECTOR, ".shapelayer path")) == lines
            axis = driver.execute_script("return arguments[0]._fullLayout.xaxis.type;", div)
            assert axis == ("log" if plot.get("log_x") else "linear")
            fronts = driver.execute_script(
                "return arguments[0].data.filter(function (t) { return t.meta === 'front'; })"
                ".map(function (t) { return t.x; });", div)
            assert fronts == [t["x"] for t in fig["data"] if t["meta"] == "front"]
            hollow = driver.execute_script(
                "return Array.prototype.map.call(arguments[0].querySelectorAll('.scatterlayer path.point'),"
                " function (p) { return p.style.fill; });", div)
            open_points = sum(bool(p.get("hollow")) for p in drawn)
            assert sum(f in ("", "none", "transparent", "rgba(0, 0, 0, 0)") for f in hollow) == open_points
            titles = [b.get_attribute("data-title") for b in div.find_elements(By.CSS_SELECTOR, ".modebar-btn")]
            assert titles and not any("share" in (t or "").lower() for t in titles)  # no cloud upload
    # the undrawable point is named under its plot
    note = driver.find_element(By.CSS_SELECTOR, "#pareto-mnist5k + script + figcaption").text
    assert "ladder" in note


@browser
def test_browser_every_section_reachable(driver, page_url):
    from selenium.webdriver.common.by import By

    load(driver, page_url)
    for link in driver.find_elements(By.CSS_SELECTOR, ".site-nav a"):
        target = link.get_attribute("href").split("#", 1)[1]
        link.click()
        top = driver.execute_script(
            "return document.getElementById(arguments[0]).getBoundingClientRect().top;", target)
        nav = driver.execute_script("return document.querySelector('.site-nav').getBoundingClientRect().bottom;")
        assert driver.execute_script("return location.hash;") == "#" + target
        assert top >= nav - 1 and top < 200 or driver.execute_script(
            "return window.scrollY + window.innerHeight >= document.body.scrollHeight - 1;")
