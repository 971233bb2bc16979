"""Browser plumbing shared by the page tests: headless Chromium driven by selenium through Debian's
chromedriver (a real browser, not HTML inspection). Skipped, with the reason, where any piece is absent."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

CHROMIUM = os.environ.get("AMORTBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AMORTBENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000"]


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import plotly  # noqa: F401
    except ImportError:
        return "plotly is not installed (pip install plotly)"
    return None


browser = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
    profile = tempfile.mkdtemp(prefix="amortbench-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def load(driver, url: str) -> None:
    """Open the page and wait until every plot is drawn."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "var s = document.querySelectorAll('script.plot-data');"
        "return s.length > 0 && Array.prototype.every.call(s, function (x) {"
        "  var d = document.getElementById(x.dataset.target);"
        "  return d && d.getAttribute('data-drawn') === 'true'; });"))


def row_methods(driver, table_id: str) -> list[str]:
    return driver.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('#' + arguments[0] + ' tbody tr'),"
        " function (tr) { return tr.cells[0].textContent; });", table_id)


def problems(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["level"] in ("SEVERE", "WARNING")]


def hover_point(driver, plot_id: str, trace_name: str, index: int) -> str:
    """Move the real mouse onto one marker and return the hover label's text."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    div = driver.find_element(By.ID, plot_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", div)
    traces = driver.execute_script(
        "return arguments[0]._fullData.filter(function (t) { return t.meta !== 'front'; })"
        ".map(function (t) { return t.name; });", div)
    markers = div.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace")
    # the scatter layer holds the line-only traces first, then the marker traces in data order
    trace = markers[len(markers) - len(traces) + traces.index(trace_name)]
    point = trace.find_elements(By.CSS_SELECTOR, "path.point")[index]
    ActionChains(driver).move_to_element(point).perform()
    return WebDriverWait(driver, 5).until(
        lambda d: d.execute_script(
            "var h = arguments[0].querySelector('.hoverlayer .hovertext');"
            "return h ? h.textContent : null;", div))


