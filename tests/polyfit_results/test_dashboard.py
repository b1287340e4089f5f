"""``polyfit dashboard`` without a browser: every page and chart answers from a real trained
sweep; the job table filters, sorts and pages as ``polyfit results`` does and the best tables
pick what ``polyfit best`` picks; the charts hold the stored models and curves; and each
guarantee meets an attacker: a hostile sweep name is shown as text everywhere, a non-loopback
address is refused without a token, a token is asked of every request, a foreign Host is
refused on loopback, a foreign or read-only database file is left byte-identical, and a
password in the database URL never reaches a page. The browser tests are in
``test_dashboard_browser.py``."""

from __future__ import annotations

import hashlib
import html
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import markupsafe
import numpy as np
import pytest
from click.testing import CliRunner

from polyfit_models import VARIANTS
from polyfit_models.describe import formula
from polyfit_results import plot
from polyfit_results.dashboard import create_app
from polyfit_results.dashboard.app import COOKIE, CSP, is_loopback_host
from scheduler.cli import cli
from scheduler.cli.dashboard import is_loopback
from store import make_engine
from store.claims import claim_jobs
from store.reads import list_jobs, loss_curves
from tests.support import ROOT
from tests.support.database import query
from tests.support.processes import polyfit_env
from tests.support.servers import pg_schema, wait_port
from tests.support.sweeps import EVERY_VARIANT, finished_sweep, record_sweep
from tests.support.waiting import wait_for

# Markup in a sweep name (user input): it must be shown as text, never run.
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
SMALL = [{"variant": ["numpy"], "lr": [1e-6], "degree": [3], "seed": [0, 1], "epochs": [100]}]


class Site:
    def __init__(self, url: str, demo: str, hostile: str, waiting: str) -> None:
        self.url, self.demo, self.hostile, self.waiting = url, demo, hostile, waiting
        self.app = create_app(url)
        self.client = self.app.test_client()

    def get(self, path: str, status: int = 200, **kw):
        r = self.client.get(path, **kw)
        assert r.status_code == status, (path, r.status_code, r.text[:500])
        return r

    def cli_json(self, *args: str):
        r = CliRunner().invoke(cli, [*args, "--format", "json", "--db", self.url],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'results.sqlite'}"
    demo = finished_sweep(url, EVERY_VARIANT, name="demo")
    hostile = finished_sweep(url, SMALL, name=HOSTILE)
    # 60 queued jobs, nothing trained: a sweep waiting for workers, long enough to page.
    waiting, _ = record_sweep(url, [{"variant": ["numpy", "module"], "lr": [1e-6, 1e-5, 1e-4],
                                     "seed": ["0-9"], "epochs": [150]}], name="waiting")
    return Site(url, demo, hostile, waiting)


def _table_ids(page: str) -> list[str]:
    table = page[page.index('id="job-table"'):]
    table = table[: table.index("</table>")]
    return re.findall(r'<tr data-id="([0-9a-f]+)">', table)


def _best_ids(page: str, css: str) -> list[str]:
    table = page[page.index(f'class="grid {css}"'):]
    table = table[: table.index("</table>")]
    return re.findall(r'/jobs/([0-9a-f]+)"', table)


# -- pages ---------------------------------------------------------------------------------------

def test_every_page_and_chart_answers(site):
    jobs = site.cli_json("results", site.demo)
    job = jobs[0]["id"]
    for path in ["/", "/api/sweeps", f"/sweeps/{site.demo}", "/sweeps/demo",
                 f"/sweeps/{site.waiting}", f"/api/sweeps/{site.demo}/progress",
                 f"/sweeps/{site.demo}/jobs/{job}", f"/compare?a=demo&b={site.hostile}",
                 "/compare", f"/api/compare?a=demo&b={site.hostile}",
                 *(f"/api/sweeps/{s}/charts/{c}" for s in (site.demo, site.waiting)
                   for c in ("fits", "losses", "maps")),
                 *(f"/api/sweeps/demo/jobs/{job}/charts/{c}" for c in ("curve", "fit"))]:
        r = site.get(path)
        assert r.headers["Content-Security-Policy"] == CSP
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert site.get("/assets/plotly.min.js").data.startswith(b"/**")


def test_the_sweep_list_shows_counts_progress_and_best_mse(site):
    sweeps = {s["id"]: s for s in site.get("/api/sweeps").json["sweeps"]}
    listed = {s["id"]: s for s in site.cli_json("sweeps")}
    assert set(sweeps) == set(listed) == {site.demo, site.hostile, site.waiting}
    for sweep_id, line in sweeps.items():
        assert (line["jobs"], line["ended"], line["failed"]) == (
            listed[sweep_id]["jobs"], listed[sweep_id]["ended"], listed[sweep_id]["failed"])
        assert line["progress"] == f"{line['ended']}/{line['jobs']}"
    assert sweeps[site.demo]["best_mse"] == f"{listed[site.demo]['best_mse']:.6g}"
    assert sweeps[site.demo]["done"] and not sweeps[site.waiting]["done"]
    assert sweeps[site.waiting]["progress"] == "0/60"
    page = site.get("/").text
    assert f'<tr data-id="{site.waiting}">' in page and "0/60" in page


def test_the_sweep_list_shows_tags_and_keeps_to_one_when_asked(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    ids = {name: record_sweep(url, SMALL, name=name)[0] for name in ("alpha", "beta", "gamma")}
    for args in (["tag", "alpha", "baseline,paper"], ["tag", "gamma", "paper"],
                 ["note", "gamma", "the run for figure 2"]):
        r = CliRunner().invoke(cli, ["sweep", *args, "--db", url], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    site = Site(url, ids["alpha"], ids["beta"], ids["gamma"])
    lines = {s["name"]: s for s in site.get("/api/sweeps").json["sweeps"]}
    assert lines["alpha"]["tags"] == ["baseline", "paper"] and lines["beta"]["tags"] == []
    assert lines["gamma"]["note"] == "the run for figure 2"
    page = site.get("/").text
    assert 'href="/?tag=paper"' in page and 'title="the run for figure 2"' in page
    tagged = site.get("/?tag=paper").text
    assert "2 tagged" in tagged, tagged[tagged.index("<h1"):][:300]
    assert 'data-live="/api/sweeps?page=1&amp;tag=paper"' in tagged
    assert {s["name"] for s in site.get("/api/sweeps?tag=paper").json["sweeps"]} == {
        "alpha", "gamma"}
    assert site.get("/api/sweeps?tag=paper").json["total"] == 2
    assert [s["name"] for s in site.get("/api/sweeps?tag=baseline").json["sweeps"]] == ["alpha"]
    assert "No sweep carries the tag" in site.get("/?tag=nothing").text
    assert site.get("/api/sweeps?tag=nothing").json == {"total": 0, "sweeps": []}
    sweep_page = site.get("/sweeps/gamma").text
    assert 'href="/?tag=paper"' in sweep_page and "the run for figure 2" in sweep_page
    for bad in ("two%20words", "a,b", "x" * 300):
        assert "tag" in site.get(f"/?tag={bad}", status=400).text


def test_the_sweep_page_shows_progress_like_polyfit_status(site):
    status = CliRunner().invoke(cli, ["status", site.demo, "--json", "--db", site.url])
    expected = json.loads(status.stdout)
    progress = site.get(f"/api/sweeps/{site.demo}/progress").json
    assert progress["counts"] == expected["counts"] and progress["done"]
    assert progress["progress"] == "24/24" and progress["percent"] == 100.0
    assert "succeeded" in progress["detail"] and "diverged" in progress["detail"]


@pytest.mark.parametrize("query_args, flags", [
    ("", []),
    ("variant=numpy&sort=lr&desc=1", ["--variant", "numpy", "--sort", "lr", "--desc"]),
    ("status=diverged", ["--status", "diverged"]),
    ("status=succeeded,diverged&variant=numpy&variant=dynamic&sort=final_loss",
     ["--status", "succeeded,diverged", "--variant", "numpy,dynamic", "--sort", "final_loss"]),
    ("degree=2-3&lr_min=1e-6&lr_max=1e-5&sort=seed&desc=1",
     ["--degree", "2-3", "--lr-min", "1e-6", "--lr-max", "1e-5", "--sort", "seed", "--desc"]),
    ("degree=4&degree=5", ["--degree", "4,5"]),
    ("sort=diverged_at_epoch", ["--sort", "diverged_at_epoch"]),
], ids=["all", "variant-lr-desc", "status", "lists", "ranges", "degrees", "missing-last"])
def test_the_job_table_filters_and_sorts_like_polyfit_results(site, query_args, flags):
    page = site.get(f"/sweeps/{site.demo}?{query_args}&per_page=100").text
    expected = [r["id"] for r in site.cli_json("results", site.demo, *flags)]
    assert _table_ids(page) == expected
    assert f'<span id="jobs-total">{len(expected)}</span>' in page


def test_the_job_table_sorts_by_gap_with_missing_values_last(site):
    page = site.get(f"/sweeps/{site.demo}?sort=gap&desc=1&per_page=100").text
    rows = {r["id"]: r for r in site.cli_json("results", site.demo)}
    expected = sorted(rows, key=lambda i: (rows[i]["mse"] is None,
                                           -(rows[i]["mse"] - rows[i]["optimum_mse"]), i))
    assert _table_ids(page) == expected


def test_the_job_table_pages_in_sql_and_its_pages_add_up(site):
    every = [r["id"] for r in site.cli_json("results", site.waiting, "--sort", "id")]
    assert len(every) == 60
    seen = []
    for page in (1, 2, 3):
        text = site.get(f"/sweeps/{site.waiting}?sort=id&per_page=25&page={page}").text
        assert f'page <span id="job-page">{page}</span> of 3' in text
        seen += _table_ids(text)
    assert seen == every
    # A page past the end shows the last one; a page that is not a number is refused.
    assert _table_ids(site.get(f"/sweeps/{site.waiting}?sort=id&per_page=25&page=99").text) \
        == every[50:]


def test_the_best_tables_pick_what_polyfit_best_picks(site):
    page = site.get(f"/sweeps/{site.demo}").text
    by_variant = site.cli_json("best", site.demo)
    by_degree = site.cli_json("best", site.demo, "--by", "variant,degree")
    assert _best_ids(page, "best") == [r["id"] for r in by_variant]
    assert _best_ids(page, "best-by-degree") == [r["id"] for r in by_degree]
    assert [r["variant"] for r in by_variant] == list(VARIANTS)
    for r in by_variant:
        assert html.escape(r["formula"]) in page


def test_the_job_page_shows_settings_formula_curve_and_outcome(site):
    engine = make_engine(site.url)
    diverged = list_jobs(engine, site.demo, statuses=["diverged"], lr_max=1e-5)[0]
    legendre = list_jobs(engine, site.demo, variants=["legendre"])[0]
    curves = loss_curves(engine, site.demo, [diverged.id, legendre.id])
    engine.dispose()
    assert curves[diverged.id] and curves[diverged.id][-1][0] < diverged.diverged_at_epoch
    for job in (diverged, legendre):
        page = site.get(f"/sweeps/{site.demo}/jobs/{job.id}").text
        assert f'<p class="formula big" id="formula">{html.escape(formula(job.monomial))}' in page
        for key in ("variant", "optimizer", "status"):
            assert f'<td data-key="{key}">{getattr(job, key)}</td>' in page
        assert f'<td data-key="lr">{job.lr:.6g}</td>' in page
        assert f'<td data-key="mse">{job.mse:.6g}</td>' in page
        curve = site.get(f"/api/sweeps/{site.demo}/jobs/{job.id}/charts/curve").json
        assert curve["data"][0]["x"] == [e for e, _ in curves[job.id]]
        assert curve["data"][0]["y"] == [v for _, v in curves[job.id]]
    assert f'<td data-key="diverged_at_epoch">{diverged.diverged_at_epoch}</td>' in \
        site.get(f"/sweeps/{site.demo}/jobs/{diverged.id}").text
    marks = site.get(f"/api/sweeps/{site.demo}/jobs/{diverged.id}/charts/curve").json["data"]
    assert marks[-1]["marker"]["symbol"] == "x"


def test_fits_chart_draws_each_variants_stored_model(site):
    figure = site.get(f"/api/sweeps/{site.demo}/charts/fits").json
    engine = make_engine(site.url)
    best = {j["variant"]: j for j in site.cli_json("best", site.demo)}
    jobs = {j.id: j for j in list_jobs(engine, site.demo)}
    engine.dispose()
    target = figure["data"][0]
    assert np.allclose(target["y"], np.sin(target["x"]), rtol=1e-6, atol=1e-6)
    fits = [t for t in figure["data"] if t.get("yaxis") == "y" and t is not target]
    assert [t["legendgroup"] for t in fits] == [best[v]["id"] for v in VARIANTS]
    for trace in fits:  # the model, on the job's interval (drawn to 7 significant digits)
        job = jobs[trace["legendgroup"]]
        x = np.linspace(job.x_start, job.x_stop, len(trace["x"]))
        assert np.allclose(trace["x"], x, rtol=1e-6)
        assert np.allclose(trace["y"], plot.fitted_values(job, x), rtol=1e-6, atol=1e-9)
    residuals = [t for t in figure["data"] if t.get("yaxis") == "y2"]
    assert any("least-squares optimum" in t["name"] for t in residuals)


def test_loss_chart_marks_the_best_bold_and_divergence(site):
    figure = site.get(f"/api/sweeps/{site.demo}/charts/losses").json
    best = {j["id"]: j for j in site.cli_json("best", site.demo)}
    lines = [t for t in figure["data"] if t["mode"] == "lines"]
    bold = [t for t in lines if t["meta"]["best"]]
    assert sorted(t["meta"]["job"] for t in bold) == sorted(best)
    assert all(t["line"]["width"] > 2 and t["showlegend"] for t in bold)
    assert all(t["opacity"] < 1 and not t["showlegend"] for t in lines if not t["meta"]["best"])
    # A cross at the end of each diverged job's curve (those that diverged before their first
    # recorded loss have none to end).
    crosses = {t["meta"]["job"]: t for t in figure["data"] if t["mode"] == "markers"}
    ends = {t["meta"]["job"]: (t["x"][-1], t["y"][-1]) for t in lines}
    diverged = site.cli_json("results", site.demo, "--status", "diverged")
    late = [r["id"] for r in diverged if r["lr"] < 1e-5]
    assert len(late) == 2 and sorted(crosses) == sorted(late)
    assert all((t["x"][0], t["y"][0]) == ends[job] for job, t in crosses.items())
    # Loss per point: the sum-of-squares variants' curves are divided by the points.
    engine = make_engine(site.url)
    numpy_best = next(t for t in bold if t["name"] == "numpy")
    curve = loss_curves(engine, site.demo, [numpy_best["meta"]["job"]])
    engine.dispose()
    stored = [v for _, v in curve[numpy_best["meta"]["job"]]]
    assert numpy_best["y"] == pytest.approx([v / 2000 for v in stored])


def test_maps_chart_counts_every_job_and_crosses_the_diverged_cells(site):
    figure = site.get(f"/api/sweeps/{site.demo}/charts/maps").json
    heatmaps = [t for t in figure["data"] if t["type"] == "heatmap"]
    assert [t["name"] for t in heatmaps] == list(VARIANTS)
    numpy_map = heatmaps[0]
    assert numpy_map["y"] == ["1e-06", "3.6e-06", "0.0001"] and numpy_map["x"] == ["2", "3"]
    # Every job at lr 1e-4, and at 3.6e-6 of degree 3, diverged: no colour there.
    assert numpy_map["z"][2] == [None, None] and numpy_map["z"][1][1] is None
    assert None not in numpy_map["z"][0] and numpy_map["z"][1][0] is not None
    counted = sum(int(re.match(r"(\d+) job", cell).group(1))
                  for t in heatmaps for row in t["text"] for cell in row if cell != "no job")
    assert counted == 24
    crosses = [t for t in figure["data"] if t["type"] == "scatter"]
    assert crosses[0]["name"] == "numpy: diverged"
    assert sorted(zip(crosses[0]["y"], crosses[0]["x"])) == [
        ("0.0001", "2"), ("0.0001", "3"), ("3.6e-06", "3")]


def test_compare_puts_two_sweeps_side_by_side(site):
    page = site.get(f"/compare?a={site.demo}&b={site.hostile}").text
    a = {r["variant"]: r for r in site.cli_json("best", site.demo)}
    b = {r["variant"]: r for r in site.cli_json("best", site.hostile)}
    assert re.findall(r'<tr data-variant="(\w+)">', page) == list(VARIANTS)
    assert f"{a['numpy']['mse']:.6g}" in page and f"{b['numpy']['mse']:.6g}" in page
    assert page.count("no result") == len(VARIANTS) - 1  # the hostile sweep has numpy only
    bars = site.get(f"/api/compare?a={site.demo}&b={site.hostile}").json["data"]
    assert [t["x"] for t in bars] == [list(VARIANTS)] * 2
    assert bars[0]["y"] == [a[v]["mse"] for v in VARIANTS]


# -- escaping ------------------------------------------------------------------------------------

def test_a_hostile_sweep_name_is_text_on_every_page(site):
    escaped = str(markupsafe.escape(HOSTILE))
    pages = ["/", f"/sweeps/{site.hostile}", f"/compare?a={site.demo}&b={site.hostile}",
             f"/sweeps/{site.hostile}/jobs/{site.cli_json('results', site.hostile)[0]['id']}"]
    for path in pages:
        page = site.get(path).text
        assert HOSTILE not in page and "<img" not in page, path
        assert escaped in page, path
    # Looked up by its name (the URL quotes it), and as an unknown name: text both times.
    assert site.get("/sweeps/" + urllib.request.quote(HOSTILE, safe="")).status_code == 200
    missing = site.get("/sweeps/" + urllib.request.quote(HOSTILE + "x", safe=""), 404).text
    assert "<img" not in missing and "&lt;img" in missing
    # JSON carries it as it is (the page's script sets it as text), never served as HTML.
    r = site.get("/api/sweeps")
    assert r.mimetype == "application/json"
    assert HOSTILE in [s["name"] for s in r.json["sweeps"]]
    # plotly reads a few tags in text: the chart's legend gets the name escaped.
    bars = site.get(f"/api/compare?a={site.demo}&b={site.hostile}").json["data"]
    assert bars[1]["name"] == html.escape(HOSTILE, quote=False)


def test_no_page_has_an_inline_script(site):
    for path in ["/", f"/sweeps/{site.demo}", "/compare", f"/compare?a=demo&b={site.hostile}",
                 "/sweeps/nope"]:
        page = site.client.get(path).text
        scripts = re.findall(r"<script\b[^>]*>", page)
        assert scripts and all(re.search(r'\bsrc="/assets/[\w.]+"', s) for s in scripts)
        assert not re.search(r"<[^>]+\son\w+=", page), path  # no event handler attributes
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP.split("style-src")[0]


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, status, words", [
    ("/sweeps/demo?variant=nope", 400, "variant 'nope' is not one of"),
    ("/sweeps/demo?status=done", 400, "status 'done' is not one of"),
    ("/sweeps/demo?degree=x", 400, "degree 'x'"),
    ("/sweeps/demo?lr_min=abc", 400, "lr_min 'abc' is not a number"),
    ("/sweeps/demo?lr_max=nan", 400, "lr_max 'nan' is not a number"),
    ("/sweeps/demo?sort=coefficients", 400, "sort 'coefficients' is not one of"),
    ("/sweeps/demo?page=0", 400, "page must be a whole number"),
    ("/?page=-1", 400, "page must be a whole number"),
    ("/sweeps/dem0", 404, "no sweep 'dem0'; did you mean 'demo'?"),
    ("/sweeps/demo/jobs/ffff", 404, "no job 'ffff' in sweep demo"),
    ("/compare?a=demo&b=nope", 404, "no sweep 'nope'"),
    # Every parameter is bounded: odd digits, huge numbers and spans are a 400, not a 500 or
    # a gigabyte (issue 22, item 7).
    ("/?page=\u00b2", 400, "page must be a whole number from 1 to 1,000,000"),
    ("/?page=" + "9" * 23, 400, "page must be a whole number"),
    ("/?page=" + "9" * 5000, 400, "page is longer than 256 characters"),
    ("/sweeps/demo?page=" + "1" * 23, 400, "page must be a whole number"),
    ("/sweeps/demo?per_page=\u00b2", 400, "per_page '\u00b2' is not one of 25, 50"),
    ("/sweeps/demo?per_page=7", 400, "per_page '7' is not one of 25, 50"),
    ("/sweeps/demo?degree=0-4000000", 400, "degree '0-4000000' is not a degree or a range"),
    ("/sweeps/demo?degree=5-3", 400, "degree '5-3' is a range that ends before"),
    ("/sweeps/demo?degree=\u00b2", 400, "degree '\u00b2' is not a degree"),
    ("/sweeps/demo?degree=" + ",".join(["1"] * 2000), 400, "degree is longer than"),
    ("/sweeps/demo?lr_min=" + "1" * 5000, 400, "lr_min is longer than 256 characters"),
    ("/sweeps/demo?lr_max=1e999", 400, "lr_max '1e999' is not a number"),
    ("/sweeps/demo?desc=maybe", 400, "desc must be 1 or 0"),
    ("/sweeps/demo?sort=" + "x" * 200, 400, "sort '" + "x" * 40 + "...' is not one of"),
    ("/sweeps/" + "x" * 5000, 404, "no sweep of 5,000 characters"),
    ("/sweeps/demo/jobs/" + "f" * 5000, 404, "no job of 5,000 characters"),
    ("/compare?a=demo&b=" + "x" * 300, 400, "b is longer than 256 characters"),
])
def test_bad_input_is_one_line_with_its_status(site, path, status, words):
    page = site.get(path, status).text
    message = re.search(r'<p class="error" id="message">(.*?)</p>', page, re.S).group(1)
    assert html.unescape(message).startswith(words), message
    assert "Traceback" not in page


def test_bad_api_input_is_json(site):
    r = site.get(f"/api/sweeps/{site.demo}/charts/nope", 404)
    assert r.json == {"error": "no chart 'nope'"}
    assert site.get("/api/sweeps?page=\u00b2", 400).json["error"].startswith("page must be")
    assert site.get("/api/sweeps?page=" + "9" * 5000, 400).json["error"].startswith("page is")
    r = site.get(f"/api/sweeps/{site.demo}/charts/" + "x" * 3000, 404)
    assert len(r.json["error"]) < 100
    assert site.get("/api/sweeps/nope/progress", 404).json["error"].startswith("no sweep")


def test_a_request_costs_a_pages_work_whatever_it_asks_for(site):
    """A range of degrees is bounded before it is expanded: 40 million degrees asked for
    allocate nothing (it took the server from 87 MB to 1.7 GB), and the widest range allowed
    names 1,000 values however often it is repeated."""
    import tracemalloc

    tracemalloc.start()
    try:
        r = site.client.get("/sweeps/demo?degree=0-4000000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 400 and peak < 20 * 2**20, (r.status_code, peak)
    from polyfit_results.dashboard import params

    with site.app.test_request_context("/?degree=0-999&degree=0-999,3-5"):
        assert params.degrees() == tuple(range(1000))
    for path in ["/sweeps/demo?degree=0-999", "/sweeps/demo?page=1000000&per_page=500",
                 "/?page=1000000", "/sweeps/demo?desc=true&lr_min=1e-300&lr_max=1e300"]:
        site.get(path)


def test_another_sites_page_cannot_make_the_dashboard_work(site):
    """An <img> or a fetch from another site's page is refused before any work (the browser
    says where a request comes from in Sec-Fetch-Site); links to it and its own requests are
    served."""
    img = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    r = site.get("/sweeps/demo?degree=0-4000000", 403, headers=img)
    assert "Traceback" not in r.text
    site.get("/api/sweeps", 403, headers={**img, "Sec-Fetch-Site": "same-site"})
    site.get("/sweeps/demo", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                                      "Sec-Fetch-Dest": "document"})
    site.get("/api/sweeps", headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})


def test_it_only_reads(site):
    """Only GET is served: nothing on the site takes a body or changes a thing."""
    assert site.client.post("/").status_code == 405
    assert site.client.delete(f"/sweeps/{site.demo}").status_code == 405


# -- who may read it -----------------------------------------------------------------------------

TOKEN = "correct-horse-battery-staple"


def test_a_token_is_asked_of_every_request(site):
    client = create_app(site.url, token=TOKEN).test_client()
    for path in ["/", f"/sweeps/{site.demo}", "/api/sweeps", "/assets/plotly.min.js"]:
        assert client.get(path).status_code == 401, path
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # ?token= once: a cookie (not the token itself), and the same page without the token.
    r = client.get(f"/sweeps/{site.demo}?token={TOKEN}&sort=lr")
    assert r.status_code == 302 and r.headers["Location"] == f"/sweeps/{site.demo}?sort=lr"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert client.get(f"/sweeps/{site.demo}").status_code == 200
    assert client.get("/api/sweeps").status_code == 200
    # The redirect stays on this site, whatever the path looks like ("//host" would leave it;
    # werkzeug's request.path has one leading slash).
    r = client.get(f"/x?token={TOKEN}", environ_overrides={"PATH_INFO": "//evil.example/x"})
    assert r.status_code == 302 and r.headers["Location"] == "/evil.example/x"
    other = create_app(site.url, token=TOKEN + "!").test_client()
    other.set_cookie(COOKIE, client.get_cookie(COOKIE).value)
    assert other.get("/").status_code == 401  # a cookie of one token opens no other
    assert TOKEN not in client.get("/").text


def test_the_token_page_tells_a_visitor_nothing_about_the_database(site):
    page = create_app(site.url, token=TOKEN).test_client().get("/sweeps/demo").text
    assert "asks for its token" in page
    assert "results.sqlite" not in page and "read-only" not in page
    assert "sqlite" not in page.lower()


def test_on_loopback_a_foreign_host_name_is_refused(site):
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 sends
    Host: evil.example; a loopback dashboard answers only to loopback names."""
    client = site.client
    assert client.get("/", headers={"Host": "evil.example:8050"}).status_code == 400
    for host in ("localhost:8050", "127.0.0.1:8050", "[::1]:8050"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    public = create_app(site.url, token=TOKEN, loopback=False).test_client()
    assert public.get("/", headers={"Host": "polyfit.example",
                                    "Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_loopback_host_names_are_told_apart():
    assert all(map(is_loopback_host, ["localhost", "LOCALHOST:8050", "127.0.0.1", "127.0.0.1:80",
                                      "127.1.2.3:8050", "[::1]", "[::1]:8050"]))
    assert not any(map(is_loopback_host, [
        "evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "[::1]evil:80",
        "0.0.0.0:8050", "[::]:8050", "10.0.0.1", "", "127.0.0.1:80:80", "[::1]:x"]))


def test_loopback_is_told_apart():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.9", "localhost", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.org", "192.168.1.2"]))


def _invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["dashboard", *args], catch_exceptions=False,
                              env={"POLYFIT_DASHBOARD_TOKEN": None, **(env or {})})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "dashboard.example"])
def test_a_public_address_needs_a_token_or_insecure_public(site, host):
    r = _invoke("--host", host, "--db", site.url)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert f"refusing to listen on {host} without a token" in r.stderr
    assert "--insecure-public" in r.stderr and "POLYFIT_DASHBOARD_TOKEN" in r.stderr


def test_a_short_token_is_refused(site):
    r = _invoke("--host", "0.0.0.0", "--db", site.url, env={"POLYFIT_DASHBOARD_TOKEN": "1234"})
    assert r.exit_code == 2 and "at least 16 characters" in r.stderr


@pytest.mark.parametrize("token", [" " * 16, "\t" * 20, "correct horse battery staple",
                                   "correct-horse-battery\n"])
def test_a_token_with_spaces_or_control_characters_is_refused(site, token):
    # A process, not CliRunner: a token taken by mistake would serve until stopped.
    r = subprocess.run([sys.executable, "-m", "scheduler", "dashboard", "--host", "0.0.0.0",
                        "--port", "0", "--db", site.url],
                       env=polyfit_env(POLYFIT_DASHBOARD_TOKEN=token), cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "must not hold spaces or control characters" in r.stderr


def _fingerprint(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("content", [b"hello, not a database\n" * 50, b""])
def test_a_file_that_is_not_a_results_database_is_refused_and_left_as_it_was(tmp_path, content):
    path = tmp_path / "other.db"
    path.write_bytes(content)
    before = _fingerprint(tmp_path)
    r = _invoke("--db", f"sqlite:///{path}", "--port", "0")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "not a polyfit results database" in r.stderr
    assert _fingerprint(tmp_path) == before
    r = _invoke("--db", f"sqlite:///{tmp_path / 'missing.sqlite'}", "--port", "0")
    assert r.exit_code == 2 and "no results database" in r.stderr
    assert _fingerprint(tmp_path) == before


def test_without_the_extra_it_says_what_to_install(site):
    script = ("import sys; sys.modules['flask'] = None\n"
              "from scheduler.cli import main\n"
              f"sys.argv = ['polyfit', 'dashboard', '--db', {site.url!r}]\n"
              "main()")
    r = subprocess.run([sys.executable, "-c", script], env=polyfit_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "Error: polyfit dashboard needs flask and the rest of the dashboard extra: "
        "pip install 'polyfit[dashboard]'"]


# -- the real server -----------------------------------------------------------------------------

def _wait_v6(port: int) -> None:
    wait_for(lambda: _connects(("::1", port)), timeout=10, what=f"a listener on [::1]:{port}")


def _connects(address) -> bool:
    try:
        socket.create_connection(address, timeout=0.2).close()
    except OSError:
        return False
    return True


class Server:
    """``polyfit dashboard`` as a real process; its first line says where it listens."""

    def __init__(self, *args: str, env: dict | None = None, prefix: list[str] | None = None):
        command = [sys.executable, "-m", "scheduler", "dashboard", *args]
        if prefix:  # a shell line that ends in `exec`: the command goes after it
            command = [*prefix[:-1], prefix[-1] + " " + " ".join(f"'{a}'" for a in command)]
        self.proc = subprocess.Popen(command, env=polyfit_env(**(env or {})), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        match = re.search(r"on (http://\S+?:(\d+)/)", line)
        if not match:
            self.stop()
            raise AssertionError(f"no address in {line!r}: {self.proc.stderr.read()}")
        self.line, self.url, self.port = line, match.group(1), int(match.group(2))
        try:
            if "://[::1]:" in self.url:
                _wait_v6(self.port)
            else:
                wait_port(self.port)
        except BaseException:
            self.stop()  # a server that never answered must not outlive the test
            raise

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_the_command_serves_the_pages_on_loopback(site):
    server = Server("--port", "0", "--db", site.url)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        assert "read-only; no token" in server.line
        status, page = server.get("/")
        assert status == 200 and f'<tr data-id="{site.demo}"' in page
        assert server.get(f"/sweeps/{site.demo}")[0] == 200
        assert server.get("/", {"Host": "evil.example"})[0] == 400
    finally:
        server.stop()
    assert server.proc.returncode in (0, -15)


def test_an_ipv6_address_in_brackets_is_announced_once_bracketed(site):
    server = Server("--host", "[::1]", "--port", "0", "--db", site.url)
    try:
        assert server.url == f"http://[::1]:{server.port}/", server.line
        request = urllib.request.Request(f"http://[::1]:{server.port}/")
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
    finally:
        server.stop()


def test_a_token_from_the_environment_guards_a_public_address(site):
    server = Server("--host", "0.0.0.0", "--port", "0", "--db", site.url,
                    env={"POLYFIT_DASHBOARD_TOKEN": TOKEN})
    try:
        assert TOKEN not in server.line and "every request needs the token" in server.line
        assert server.get("/")[0] == 401
        assert server.get("/api/sweeps")[0] == 401
        status, page = server.get("/", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and site.demo in page
    finally:
        server.stop()


def _can_bind_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro / / 2>/dev/null"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_bind_mount_read_only(),
                    reason="needs root and `unshare -m` to bind-mount a folder read-only")
def test_it_answers_from_read_only_storage_and_changes_nothing(tmp_path):
    trained = tmp_path / "trained"
    trained.mkdir()
    sweep = finished_sweep(f"sqlite:///{trained / 'results.sqlite'}", SMALL, name="small")
    tmp_path = tmp_path / "ro"  # a copy, without the side files this process keeps open
    tmp_path.mkdir()
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    with sqlite3.connect(trained / "results.sqlite") as source, \
            sqlite3.connect(tmp_path / "results.sqlite") as copy:
        source.backup(copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    before = _fingerprint(tmp_path)
    job = query(url, "SELECT id FROM jobs LIMIT 1")[0]["id"]
    server = Server("--port", "0", "--db", url, prefix=[
        "unshare", "-m", "sh", "-c", f"mount --bind -o ro '{tmp_path}' '{tmp_path}' && exec"])
    try:
        for path in ["/", f"/sweeps/{sweep}", f"/sweeps/{sweep}/jobs/{job}",
                     f"/api/sweeps/{sweep}/progress", f"/api/sweeps/{sweep}/charts/losses",
                     f"/api/sweeps/{sweep}/charts/maps", f"/compare?a={sweep}&b={sweep}"]:
            assert server.get(path)[0] == 200, path
    finally:
        server.stop()
    assert _fingerprint(tmp_path) == before


@pytest.mark.postgres
def test_on_postgresql_the_pages_answer_and_never_show_the_password():
    with pg_schema() as url:
        sweep = finished_sweep(url, SMALL, name="on-pg")
        secret = "s3cret-pw-0451"
        with_password = url.replace("postgres@", f"postgres:{secret}@")
        client = create_app(with_password).test_client()
        job = query(url, "SELECT id FROM jobs LIMIT 1")[0]["id"]
        for path in ["/", f"/sweeps/{sweep}", f"/sweeps/{sweep}?sort=gap&desc=1&page=1",
                     f"/sweeps/{sweep}/jobs/{job}", f"/compare?a={sweep}&b={sweep}",
                     *(f"/api/sweeps/{sweep}/charts/{c}" for c in ("fits", "losses", "maps")),
                     "/sweeps/nope"]:
            r = client.get(path)
            assert r.status_code in (200, 404), (path, r.text[:300])
            assert secret not in r.text, path
        assert "postgres:***@" in client.get("/").text
        best = client.get(f"/api/sweeps/{sweep}/charts/losses").json
        assert any(t["meta"]["best"] for t in best["data"] if t["mode"] == "lines")


# -- the first hour (issue 23.5) -------------------------------------------------------------------

def test_a_sweeps_progress_card_has_a_state_badge_and_no_detached_word(site, tmp_path):
    # The card showed "50/150" and, apart from it where a badge would go, "ended", even while
    # the sweep ran.
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    sweep_id, jobs = record_sweep(url, [{"variant": ["numpy"], "seed": ["0-3"],
                                         "epochs": [10]}], name="half")
    engine = make_engine(url)
    claim_jobs(engine, sweep_id, [jobs[0].id], "w@h/1", 60)
    engine.dispose()
    client = create_app(url).test_client()
    card = re.search(r'<section id="progress".*?</section>', client.get(f"/sweeps/{sweep_id}").text,
                     re.S).group(0)
    assert re.search(r'<span class="status badge running"[^>]*>running</span>', card), card
    assert "0/4</span> jobs ended</span>" in card
    assert client.get(f"/api/sweeps/{sweep_id}/progress").json["state"] == "running"
    assert site.get(f"/api/sweeps/{site.waiting}/progress").json["state"] == "waiting"
    assert site.get(f"/api/sweeps/{site.demo}/progress").json["state"] == "ended"


def test_log_spaced_learning_rates_keep_short_distinct_labels_and_room_for_them(tmp_path):
    from polyfit_results.dashboard.charts import lr_labels

    lrs = [float(v) for v in np.logspace(-7, -5, 9)]  # 5.62341325190349e-06 and its kin
    labels = lr_labels(lrs)
    assert labels[lrs[7]] == "5.62e-06" and len(set(labels.values())) == 9
    assert all(len(text) <= 8 for text in labels.values())
    assert lr_labels([1e-6, 1.0001e-6]) == {1e-6: "1e-06", 1.0001e-6: "1.0001e-06"}
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    sweep_id = finished_sweep(url, [{"variant": ["numpy"], "lr": lrs[:3], "seed": [0],
                                     "epochs": [20]}], name="logspaced")
    chart = create_app(url).test_client().get(f"/api/sweeps/{sweep_id}/charts/maps").json
    [heat] = [t for t in chart["data"] if t["type"] == "heatmap"]
    assert heat["y"] == [labels[lr] for lr in lrs[:3]]
    assert chart["layout"]["yaxis"]["automargin"] is True
