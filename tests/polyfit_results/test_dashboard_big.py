"""The dashboard on a 100,000-job sweep: the database is built in seconds by inserting rows
directly (``benchmarks/bench_dashboard.py``, no training), and every main page and the JSON
behind its charts is served in-process. The pages hold a page of rows and a bounded number of
series, whatever the sweep's size. Their times are printed (``-s`` shows them), not asserted:
speed is the benchmark's to measure (``benchmarks/bench_dashboard.py``), and a time bound here
would judge the load of the machine that runs the tests."""

from __future__ import annotations

import re

import pytest

from benchmarks.bench_dashboard import build_database, pages, time_pages
from polyfit_results.dashboard import create_app
from polyfit_results.dashboard.data import DIVERGED_CURVES, FAINT_CURVES

pytestmark = pytest.mark.slow  # builds a 100,000-job database

JOBS = 100_000


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('big') / 'big.sqlite'}"
    built = build_database(url, jobs=JOBS, curve_points=5)
    print(f"\n100,000-job database built in {built['build_s']:.1f} s")
    return url, built


def test_every_main_page_of_a_100000_job_sweep_is_served(big):
    url, built = big
    times = time_pages(url, built["big"], built["small"], runs=1)
    print("\n" + "\n".join(f"{name:40s} {s * 1000:7.0f} ms" for name, s in times.items()))
    assert set(times) == set(pages("s", "t", "j"))


def test_pages_of_a_big_sweep_stay_small(big):
    url, built = big
    client = create_app(url).test_client()
    sweep = built["big"]
    page = client.get(f"/sweeps/{sweep}").text
    assert '<span id="jobs-total">100,000</span>' in page
    assert len(re.findall(r'<tr data-id="', page)) == 50  # one page of the job table
    assert len(page) < 200_000
    last = client.get(f"/sweeps/{sweep}?per_page=500&page=200").text
    assert len(re.findall(r'<tr data-id="', last)) == 500 and "page <span id=\"job-page\">200" \
        in last
    losses = client.get(f"/api/sweeps/{sweep}/charts/losses").json["data"]
    lines = [t for t in losses if t["mode"] == "lines"]
    assert 6 <= len(lines) <= 6 * (1 + FAINT_CURVES + DIVERGED_CURVES)
    maps = client.get(f"/api/sweeps/{sweep}/charts/maps").json["data"]
    cells = sum(len(row) for t in maps if t["type"] == "heatmap" for row in t["z"])
    assert cells == 6 * 20 * 5  # variants x learning rates x degrees, whatever the seeds
