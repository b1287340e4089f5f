"""The dashboard on a big sweep: builds a results database with one 100,000-job sweep (and a
small one beside it) by inserting rows directly (the driver's executemany, no training: the
values are made up but shaped like real ones: every variant, a lr x degree grid, seeds, ~8 %
diverged, some failed, running and queued, a loss curve per ended job), then times each main
page and
the JSON behind its charts in-process (Flask's test client: the server's own work, not the
network's), best of a few runs after one warm-up.

    python benchmarks/bench_dashboard.py [--jobs 100000] [--curve-points 20] [--runs 3]
                                         [--db URL] [--browser]

``--browser`` also times each page in headless Chromium until every chart on it is drawn.

``tests/polyfit_results/test_dashboard_big.py`` runs the same on a 100,000-job database with
shorter curves and asserts generous bounds."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from polyfit_models import VARIANTS  # noqa: E402
from store import create_schema, make_engine  # noqa: E402

BIG = "big0000000000001"
SMALL = "small00000000001"
_STATES = (("succeeded", 0.86), ("diverged", 0.08), ("failed", 0.01), ("running", 0.02),
           ("queued", 0.03))


def _jobs(sweep_id: str, n: int, rng: random.Random, epochs: int, now: datetime):
    """``n`` job rows of every variant over a lr x degree x seed grid, with outcomes."""
    variants = list(VARIANTS)
    lrs = [10 ** (-8 + 6 * k / 19) for k in range(20)]
    grid = itertools.product(range(10**6), variants, lrs, range(3, 8))
    states = [s for s, _ in _STATES]
    weights = [w for _, w in _STATES]
    for i, (seed, variant, lr, degree) in enumerate(itertools.islice(grid, n)):
        status = rng.choices(states, weights)[0]
        ended = status in ("succeeded", "diverged", "failed")
        optimum = 0.0044 * 0.3 ** (degree - 3)
        mse = optimum * (1 + 10 ** rng.uniform(-4, 3)) if status in ("succeeded",
                                                                   "diverged") else None
        coefficients = [rng.gauss(0, 1) / math.factorial(k) for k in range(degree + 1)]
        yield {
            "sweep_id": sweep_id, "id": f"{i:016x}", "variant": variant, "lr": lr,
            "degree": degree, "seed": seed, "epochs": epochs, "optimizer": "sgd",
            "device": "cpu", "target": "sin", "dtype": "float64", "x_start": -math.pi,
            "x_stop": math.pi, "x_points": 2000, "status": status,
            "final_loss": None if mse is None else mse * 2000,
            "mse": mse, "optimum_mse": optimum if ended else None,
            # Made-up models are ordinary polynomials: the monomial column (the charts fall back
            # on it), not a variant's own parameters.
            "coefficients": None,
            "monomial": coefficients if mse is not None else None,
            "diverged_at_epoch": rng.randrange(100, epochs) if status == "diverged" else None,
            "worker": "bench@host/1" if status != "queued" else None,
            "ran_on": "cpu" if status != "queued" else None,
            "started_at": now - timedelta(seconds=rng.uniform(10, 3600))
            if status != "queued" else None,
            "heartbeat_at": None,
            "finished_at": now - timedelta(seconds=rng.uniform(0, 10)) if ended else None,
            "duration_s": rng.uniform(0.1, 3) if ended else None,
            "attempts": 1 if status != "queued" else 0,
            "error": "RuntimeError: made up" if status == "failed" else None,
            "reused_from": None,
        }


def _curve(job: dict, points: int, rng: random.Random) -> list[tuple]:
    """(sweep_id, job_id, epoch, loss) rows: a made-up decay to the job's final loss."""
    if job["mse"] is None:
        return []
    last = points if job["diverged_at_epoch"] is None else max(1, job["diverged_at_epoch"] // 100)
    end = job["final_loss"]
    start = end * 10 ** rng.uniform(0.5, 3)
    ratio = (end / start) ** (1 / max(1, points - 1))
    return [(job["sweep_id"], job["id"], 100 * k + 99, start * ratio**k)
            for k in range(min(points, last))]


def _json(value):
    return None if value is None else json.dumps(value)


def _time(value):
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


# What SQLAlchemy's SQLite types store: JSON as text, times as naive UTC text.
_CONVERT = {"spec": _json, "coefficients": _json, "monomial": _json, "created_at": _time,
            "started_at": _time, "heartbeat_at": _time, "finished_at": _time}


def _insert_many(c, table, rows: list[dict]) -> None:
    if rows:
        columns = list(rows[0])
        convert = [(k, _CONVERT.get(k)) for k in columns]
        c.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                          f"({', '.join('?' for _ in columns)})",
                          [tuple(f(r[k]) if f else r[k] for k, f in convert) for r in rows])


def _insert_curves(c, rows: list[tuple]) -> None:
    if rows:
        c.exec_driver_sql("INSERT INTO loss_curve (sweep_id, job_id, epoch, loss) "
                          "VALUES (?, ?, ?, ?)", rows)


def build_database(db_url: str, jobs: int = 100_000, curve_points: int = 20,
                   seed: int = 0) -> dict:
    """Write the big sweep (``jobs`` jobs) and a small one (120 jobs) into the SQLite file
    ``db_url`` (the schema through polyfit, the rows with the driver's own executemany); returns
    the two sweep ids and the seconds it took."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    now = datetime.now(UTC)
    engine = make_engine(db_url)
    if engine.url.get_backend_name() != "sqlite":
        raise SystemExit("bench_dashboard builds SQLite databases only")
    create_schema(engine)
    epochs = 100 * curve_points
    with engine.begin() as c:
        _insert_many(c, "sweeps", [
            {"id": BIG, "name": "big", "spec": {"name": "big", "jobs": jobs},
             "created_at": now - timedelta(hours=1)},
            {"id": SMALL, "name": "small", "spec": {"name": "small"},
             "created_at": now}])
        for sweep_id, n in ((BIG, jobs), (SMALL, 120)):
            batch, curves = [], []
            for job in _jobs(sweep_id, n, rng, epochs, now):
                batch.append(job)
                curves.extend(_curve(job, curve_points, rng))
                if len(batch) >= 10_000:
                    _insert_many(c, "jobs", batch)
                    _insert_curves(c, curves)
                    batch, curves = [], []
            _insert_many(c, "jobs", batch)
            _insert_curves(c, curves)
    engine.dispose()
    return {"big": BIG, "small": SMALL, "build_s": time.perf_counter() - t0}


def pages(sweep_id: str, other: str, job_id: str) -> dict[str, str]:
    """The main pages and the JSON behind their charts and live updates."""
    s = f"/sweeps/{sweep_id}"
    return {
        "sweep list": "/",
        "sweep list (live JSON)": "/api/sweeps",
        "sweep page": s,
        "sweep page, filtered, sorted, page 50": f"{s}?variant=module&status=succeeded"
                                                 "&sort=gap&desc=1&page=50",
        "sweep page, last page": f"{s}?page=2000",
        "progress (live JSON)": f"/api/sweeps/{sweep_id}/progress",
        "chart: fits": f"/api/sweeps/{sweep_id}/charts/fits",
        "chart: loss curves": f"/api/sweeps/{sweep_id}/charts/losses",
        "chart: lr x degree maps": f"/api/sweeps/{sweep_id}/charts/maps",
        "job page": f"{s}/jobs/{job_id}",
        "compare page": f"/compare?a={sweep_id}&b={other}",
        "chart: compare": f"/api/compare?a={sweep_id}&b={other}",
    }


def time_pages(db_url: str, sweep_id: str, other: str, runs: int = 3) -> dict[str, float]:
    """Seconds per page (best of ``runs`` after a warm-up), served in-process."""
    from polyfit_results.dashboard import create_app

    client = create_app(db_url).test_client()
    job_id = f"{0:016x}"
    out = {}
    for name, url in pages(sweep_id, other, job_id).items():
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        best = math.inf
        for _ in range(runs):
            t = time.perf_counter()
            r = client.get(url)
            best = min(best, time.perf_counter() - t)
            assert r.status_code == 200
        out[name] = best
    return out


def time_in_browser(db_url: str, sweep_id: str, other: str, runs: int = 3) -> dict[str, float]:
    """Seconds from asking headless Chromium for a page until every chart on it is drawn
    (best of ``runs`` after a warm-up that caches plotly.js), the app served by waitress on
    loopback in this process."""
    import threading

    import waitress
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from polyfit_results.dashboard import create_app

    server = waitress.create_server(create_app(db_url), host="127.0.0.1", port=0, threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    drawn = ("return Array.from(document.querySelectorAll('.chart'))"
             ".every(c => c.dataset.drawn || c.classList.contains('failed'));")
    wanted = {"sweep list", "sweep page", "sweep page, filtered, sorted, page 50", "job page",
              "compare page"}
    out = {}
    try:
        for name, path in pages(sweep_id, other, f"{0:016x}").items():
            if name not in wanted:
                continue
            best = math.inf
            for _ in range(runs + 1):
                t = time.perf_counter()
                driver.get(f"http://127.0.0.1:{server.effective_port}{path}")
                WebDriverWait(driver, 120, poll_frequency=0.02).until(
                    lambda d: d.execute_script(drawn))
                best = min(best, time.perf_counter() - t)
            out[name] = best
    finally:
        driver.quit()
        server.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--curve-points", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--db", default=None, help="an empty database (default: a temporary file)")
    p.add_argument("--browser", action="store_true",
                   help="also time the pages in headless Chromium until their charts are drawn")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'big.sqlite'}"
        built = build_database(url, args.jobs, args.curve_points)
        print(f"built {args.jobs:,} jobs x {args.curve_points} curve points in "
              f"{built['build_s']:.1f} s ({url.split('://')[0]})")
        print("served in-process (Flask's test client):")
        for name, seconds in time_pages(url, built["big"], built["small"], args.runs).items():
            print(f"  {name:40s} {seconds * 1000:8.0f} ms")
        if args.browser:
            print("in headless Chromium, until every chart is drawn:")
            for name, seconds in time_in_browser(url, built["big"], built["small"],
                                                 args.runs).items():
                print(f"  {name:40s} {seconds * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
