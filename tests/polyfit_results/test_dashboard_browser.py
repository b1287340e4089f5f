"""``polyfit dashboard`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) against a real ``polyfit dashboard`` process serving a
database that a real sweep filled. It checks what only a browser can: the sweep list updates
while jobs train (no reload: a mark set on the page survives), a new sweep appears, the charts
draw their data (read back from the plotly graph divs) and answer hover and legend clicks, the
job table's filter form works, and markup in a sweep name stays text (nothing it holds runs,
also where the page's script adds the row). It saves screenshots of the main pages
(``POLYFIT_SCREENSHOTS=DIR`` keeps them, e.g. ``docs``). Skipped, saying why, where Chromium or
chromedriver is missing (``.ci/run`` installs them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from store import make_engine
from store.reads import list_jobs, loss_curves
from tests.support import ROOT
from tests.support.processes import polyfit_env
from tests.support.servers import wait_port
from tests.support.sweeps import finished_sweep, record_sweep, train

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(  # slow: a browser and a live server
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason="the browser tests need headless Chromium and its driver at /usr/bin/chromium and "
           "/usr/bin/chromedriver (apt-get install chromium chromium-driver; .ci/run does)")]

# Every variant; numpy over lr x degree, with a cell where every job diverges at once and one
# where they diverge late (their curves end with a cross). 30 jobs. Not tests/support's
# EVERY_VARIANT: numpy at lr 2e-6 is the cell LONGER is compared on, module at two learning
# rates fills its map, and the screenshots and counts (30/30) are of this grid.
GRID = [
    {"variant": ["numpy"], "lr": [1e-6, 2e-6, 3.6e-6, 1e-4], "degree": [2, 3], "seed": [0, 1],
     "epochs": [400]},
    {"variant": ["tensor", "autograd", "legendre"], "lr": [1e-6], "degree": [3],
     "seed": [0, 1], "epochs": [200]},
    {"variant": ["module"], "optimizer": ["adam"], "lr": [1e-3, 1e-2], "degree": [3],
     "seed": [0, 1], "epochs": [200]},
    {"variant": ["dynamic"], "optimizer": ["momentum"], "lr": [1e-8], "degree": [4, 5],
     "seed": [0, 1], "epochs": [200]},
]
# A second sweep to compare with: other learning rates, longer runs. 6 jobs.
LONGER = [
    {"variant": ["numpy", "autograd"], "lr": [2e-6], "degree": [3], "seed": [0, 1],
     "epochs": [400]},
    {"variant": ["module"], "optimizer": ["adam"], "lr": [1e-2], "degree": [3], "seed": [0, 1],
     "epochs": [400]},
]
LIVE = [{"variant": ["numpy"], "lr": [1e-6], "degree": [3], "seed": ["0-7"], "epochs": [300]}]
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
HOSTILE_TOO = '"><svg onload="window.__pwned=3">'
WAIT_S = 60


class Dashboard:
    """A real ``polyfit dashboard`` process on a free port, polled every 0.3 s by its pages."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "dashboard", "--port", "0", "--refresh", "0.3",
             "--db", db_url], env=polyfit_env(), cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        if match is None:
            self.stop()
            raise AssertionError(f"the dashboard did not start: {line!r} "
                                 f"{self.proc.stderr.read()}")
        self.port = int(match.group(1))
        wait_port(self.port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'results.sqlite'}"
    demo = finished_sweep(url, GRID, name="demo")
    longer = finished_sweep(url, LONGER, name="longer")
    dashboard = Dashboard(url)
    dashboard.demo, dashboard.longer = demo, longer
    yield dashboard
    dashboard.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def wait(driver, script: str, what: str, timeout: float = WAIT_S):
    """Poll a JavaScript expression in the page until it is truthy, and return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(f"return {script};"), message=f"waiting for {what}")


def no_alert(driver) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def row_text(driver, sweep_id: str, field: str) -> str | None:
    return driver.execute_script(
        "const row = Array.from(document.querySelectorAll('#sweeps tbody tr'))"
        "  .find(r => r.dataset.id === arguments[0]);"
        "if (!row) return null;"
        "const cell = row.querySelector('[data-field=\"' + arguments[1] + '\"]');"
        "return cell.tagName === 'PROGRESS' ? String(cell.value) : cell.textContent;",
        sweep_id, field)


def severe_logs(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# -- the sweep list, live ------------------------------------------------------------------------

def test_the_sweep_list_updates_while_a_sweep_trains_without_a_reload(served, browser):
    browser.get(served.url("/"))
    assert row_text(browser, served.demo, "progress") == "30/30"
    assert row_text(browser, served.demo, "name") == "demo"
    browser.execute_script("window.__mark = 'same page';")
    # A sweep recorded now appears on the open page, with nothing of it trained yet.
    live, jobs = record_sweep(served.db_url, LIVE, name="live")
    wait(browser, f"document.querySelector('#sweeps tr[data-id=\"{live}\"]')", "the new row")
    assert row_text(browser, live, "progress") == "0/8"
    train(served.db_url, live, jobs[:3])
    wait(browser, f"Array.from(document.querySelectorAll('#sweeps tr[data-id=\"{live}\"] "
                  "[data-field=progress]')).some(c => c.textContent === '3/8')", "3/8")
    assert float(row_text(browser, live, "percent")) == pytest.approx(37.5)
    # The sweep page follows too: its bar, its counts and its charts, drawn again.
    browser.get(served.url(f"/sweeps/{live}"))
    browser.execute_script("window.__mark = 'sweep page';")
    wait(browser, "document.getElementById('chart-losses').dataset.drawn === '1'", "charts")
    assert browser.find_element("css selector", "#progress [data-field=progress]").text == "3/8"
    assert wait(browser, "document.getElementById('chart-losses').data.length", "curves") == 3
    train(served.db_url, live, jobs[3:])
    wait(browser, "document.querySelector('#progress [data-field=progress]').textContent "
                  "=== '8/8'", "8/8 on the sweep page")
    wait(browser, "document.getElementById('chart-losses').data.length === 8",
         "the loss chart drawn again with every curve")
    assert "8 succeeded" in browser.find_element("css selector", "#progress .detail").text
    assert browser.execute_script("return window.__mark;") == "sweep page"
    assert severe_logs(browser) == []


# -- charts ----------------------------------------------------------------------------------------

def _traces(browser, chart: str) -> list[dict]:
    return browser.execute_script(
        "return document.getElementById(arguments[0]).data.map(t => ({name: t.name, "
        "mode: t.mode || null, type: t.type, x: t.x, y: t.y, z: t.z || null, "
        "meta: t.meta || null, visible: t.visible === undefined ? true : t.visible}));", chart)


def test_the_charts_draw_the_sweeps_data(served, browser):
    browser.get(served.url(f"/sweeps/{served.demo}"))
    for chart in ("chart-fits", "chart-losses", "chart-maps"):
        wait(browser, f"document.getElementById('{chart}').dataset.drawn", chart)
        # Drawn, not just a div: plotly's SVG holds a path or a heatmap image per series.
        assert browser.execute_script(
            f"return document.querySelectorAll('#{chart} .main-svg .trace').length") > 0
    engine = make_engine(served.db_url)
    jobs = {j.id: j for j in list_jobs(engine, served.demo)}
    curves = loss_curves(engine, served.demo, list(jobs))
    engine.dispose()
    fits = _traces(browser, "chart-fits")
    target = fits[0]
    assert target["name"] == "target sin(x)" and len(target["x"]) == 400
    assert np.allclose(target["y"], np.sin(target["x"]), atol=1e-6)
    losses = [t for t in _traces(browser, "chart-losses") if t["mode"] == "lines"]
    bold = [t for t in losses if t["meta"]["best"]]
    assert [t["name"] for t in bold] == ["numpy", "tensor", "autograd", "legendre", "module",
                                         "dynamic"]
    for trace in losses:  # every point of the stored curve, on one scale (loss per point)
        job = jobs[trace["meta"]["job"]]
        assert trace["x"] == [e for e, _ in curves[job.id]]
        per_point = 2000 if job.variant in ("numpy", "tensor", "autograd", "legendre") else 1
        assert trace["y"] == pytest.approx([v / per_point for _, v in curves[job.id]])
    crosses = [t for t in _traces(browser, "chart-losses") if t["mode"] == "markers"]
    assert crosses and all(jobs[t["meta"]["job"]].status == "diverged" for t in crosses)
    heatmaps = [t for t in _traces(browser, "chart-maps") if t["type"] == "heatmap"]
    assert heatmaps[0]["name"] == "numpy"
    assert heatmaps[0]["y"] == ["1e-06", "2e-06", "3.6e-06", "0.0001"]
    assert heatmaps[0]["z"][3] == [None, None]  # all diverged at lr 1e-4
    assert severe_logs(browser) == []


def test_charts_answer_hover_and_legend_clicks(served, browser):
    browser.get(served.url(f"/sweeps/{served.demo}"))
    wait(browser, "document.getElementById('chart-fits').dataset.drawn", "the fits")
    # Hover: plotly's own hover on a point of the numpy fit shows its values.
    browser.execute_script("Plotly.Fx.hover('chart-fits', [{curveNumber: 1, pointNumber: 200}]);")
    label = wait(browser, "document.querySelector('#chart-fits .hoverlayer .hovertext') && "
                          "document.querySelector('#chart-fits .hoverlayer').textContent",
                 "a hover label")
    x, fit = (browser.execute_script(
        f"return document.getElementById('chart-fits').data[1].{axis}[200];") for axis in "xy")
    assert label.startswith("numpy lr ") and f"x {x:.4g}" in label and f"fit {fit:.4g}" in label
    # A click on a legend entry hides that series, a second shows it again.
    wait(browser, "document.getElementById('chart-losses').dataset.drawn", "the losses")
    entry = browser.find_elements("css selector", "#chart-losses .legend .traces")[0]
    entry.click()
    wait(browser, "document.getElementById('chart-losses').data.filter(t => t.legendgroup === "
                  "'numpy').every(t => t.visible === 'legendonly')", "numpy hidden")
    browser.find_elements("css selector", "#chart-losses .legend .traces")[0].click()
    wait(browser, "document.getElementById('chart-losses').data.filter(t => t.legendgroup === "
                  "'numpy').every(t => t.visible === true)", "numpy shown again")
    # Zoom: the mode bar is there, and a relayout narrows the axis.
    assert browser.find_elements("css selector", "#chart-fits .modebar-btn[data-val='zoom']") \
        or browser.find_elements("css selector", "#chart-fits .modebar-btn")
    browser.execute_script("Plotly.relayout('chart-fits', {'xaxis.range': [-1, 1]});")
    assert browser.execute_script(
        "return document.getElementById('chart-fits').layout.xaxis.range;") == [-1, 1]


# -- the job table -------------------------------------------------------------------------------

def _column(browser, name: str) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#job-table tbody td[data-col=\"' + "
        "arguments[0] + '\"]')).map(td => td.textContent.trim());", name)


def test_the_job_table_filters_and_sorts_from_its_form(served, browser):
    browser.get(served.url(f"/sweeps/{served.demo}"))
    assert len(_column(browser, "id")) == 30
    browser.find_element("css selector", "input[name=variant][value=numpy]").click()
    browser.find_element("css selector", "input[name=status][value=succeeded]").click()
    browser.find_element("css selector", "#apply-filter").click()
    wait(browser, "location.search.includes('variant=numpy')", "the filtered page")
    engine = make_engine(served.db_url)
    expected = list_jobs(engine, served.demo, variants=["numpy"],
                                    statuses=["succeeded"])
    engine.dispose()
    assert _column(browser, "variant") == ["numpy"] * len(expected)
    assert _column(browser, "id") == [j.id for j in expected]
    assert browser.find_element("id", "jobs-total").text == str(len(expected))
    # A click on a column's header sorts by it, a second reverses, the filter stays.
    browser.find_element("link text", "lr").click()
    wait(browser, "location.search.includes('sort=lr')", "sorted by lr")
    lrs = [float(v) for v in _column(browser, "lr")]
    assert lrs == sorted(lrs) and _column(browser, "variant") == ["numpy"] * len(expected)
    browser.find_element("partial link text", "lr ▲").click()
    wait(browser, "location.search.includes('desc=1')", "sorted by lr, descending")
    assert [float(v) for v in _column(browser, "lr")] == sorted(lrs, reverse=True)


# -- screenshots ---------------------------------------------------------------------------------

def test_screenshots_of_the_main_pages(served, browser, tmp_path):
    from matplotlib import image as mpimg
    from PIL import Image

    keep = os.environ.get("POLYFIT_SCREENSHOTS")
    folder = Path(keep) if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    engine = make_engine(served.db_url)
    job = list_jobs(engine, served.demo, variants=["numpy"], statuses=["succeeded"])[0]
    engine.dispose()
    shots = {
        "dashboard-sweeps.png": ("/", 1280, 560),
        "dashboard-sweep.png": (f"/sweeps/{served.demo}", 1280, 2200),
        "dashboard-job.png": (f"/sweeps/{served.demo}/jobs/{job.id}", 1280, 1250),
        "dashboard-compare.png": (f"/compare?a={served.demo}&b={served.longer}", 1280, 1500),
    }
    try:
        for name, (path, width, height) in shots.items():
            browser.set_window_size(width, height)
            browser.get(served.url(path))
            wait(browser, "Array.from(document.querySelectorAll('.chart')).every("
                          "c => c.dataset.drawn)", f"the charts of {path}")
            time.sleep(0.5)
            browser.save_screenshot(str(folder / name))
            pixels = mpimg.imread(folder / name)
            assert pixels.shape[1] == width and pixels.std() > 0.05, name
            if keep:  # for docs/dashboard.md: 256 colours, a third of the bytes, all to see
                Image.open(folder / name).convert("RGB").quantize(
                    256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE,
                ).save(folder / name, optimize=True)
            assert (folder / name).stat().st_size < 600_000, name
    finally:
        browser.set_window_size(1280, 900)


# -- markup in a sweep name ----------------------------------------------------------------------

def test_a_hostile_sweep_name_is_shown_as_text_and_never_runs(served, browser):
    hostile = finished_sweep(served.db_url, [{"variant": ["numpy"], "lr": [1e-6], "degree": [3],
                                              "seed": [0, 1], "epochs": [100]}], name=HOSTILE)
    browser.get(served.url("/"))
    assert row_text(browser, hostile, "name") == HOSTILE
    # One more, recorded while the page is open: the page's script adds its row.
    added = finished_sweep(served.db_url, [{"variant": ["numpy"], "lr": [1e-6], "degree": [2],
                                            "seed": [0], "epochs": [100]}], name=HOSTILE_TOO)
    wait(browser, f"document.querySelector('#sweeps tr[data-id=\"{added}\"]')", "the new row")
    assert row_text(browser, added, "name") == HOSTILE_TOO
    for path in ("/", f"/sweeps/{hostile}", f"/sweeps/{added}",
                 f"/compare?a={served.demo}&b={hostile}"):
        browser.get(served.url(path))
        time.sleep(0.5)  # a few refreshes of the live parts
        assert browser.execute_script("return window.__pwned;") is None, path
        assert no_alert(browser), path
        assert not browser.find_elements("css selector", "main img, main svg[onload]"), path
    browser.get(served.url(f"/sweeps/{hostile}"))
    assert browser.find_element("id", "sweep-name").text == HOSTILE
    assert HOSTILE in browser.title
    browser.get(served.url(f"/compare?a={served.demo}&b={hostile}"))
    wait(browser, "document.getElementById('chart-compare').dataset.drawn", "the comparison")
    legend = browser.execute_script(
        "return document.querySelector('#chart-compare .legend').textContent;")
    assert HOSTILE in legend  # plotly shows the escaped name as the text it is
    assert browser.execute_script("return window.__pwned;") is None
