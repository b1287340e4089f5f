"""``polyfit plot`` and the loss curves behind it: the file is a real image, the fitted curves
are the stored models (they reproduce each job's stored mse), the maps mark what diverged, and,
end to end through a real ``polyfit sweep run``, the loss every 100 epochs lands in the
``loss_curve`` table where SQL reads it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib import image as mpimg

from polyfit_models import VARIANTS
from polyfit_results import plot
from scheduler.cli import cli
from store import make_engine
from store.reads import list_jobs
from store.rows import JobRow, SweepRow
from store.sweeps import find_sweep
from tests.support.processes import polyfit_env
from tests.support.sweeps import EVERY_VARIANT, finished_sweep, record_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"



@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('plot') / 'results.sqlite'}"
    return url, finished_sweep(url, EVERY_VARIANT, name="plotted")


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POLYFIT_DB_URL", raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _assert_real_png(path, min_size=(800, 1000)):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    height, width, channels = pixels.shape
    assert height >= min_size[0] and width >= min_size[1] and channels in (3, 4)
    # Not a blank canvas: many distinct colours, drawn across the whole figure.
    rgb = (pixels[..., :3] * 255).astype(np.uint32)
    assert len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])) > 200
    for band in np.array_split(pixels[..., :3], 3):  # top, middle, bottom thirds
        assert band.std() > 0.05


def test_plot_writes_a_real_png(run, sweep_db, tmp_path):
    url, _ = sweep_db
    r = run("plot", "plotted", "-o", tmp_path / "fit.png", "--db", url)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"sweep plotted: plot written to {tmp_path / 'fit.png'}"
    _assert_real_png(tmp_path / "fit.png")


def test_plot_writes_svg_too(run, sweep_db, tmp_path):
    url, sweep_id = sweep_db
    assert run("plot", sweep_id, "-o", "fit.svg", "--db", url).exit_code == 0
    assert "<svg" in (tmp_path / "fit.svg").read_text()[:2000]


@pytest.mark.parametrize("output", ["fit.jpg", "no/such/folder/fit.png", "fit"])
def test_plot_refuses_an_unusable_output_in_one_line(run, sweep_db, tmp_path, output):
    url, _ = sweep_db
    r = run("plot", "plotted", "-o", output, "--db", url)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("Error: ") and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_with_nothing_finished_is_an_input_error(run, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    record_sweep(url, [{"variant": ["numpy"], "epochs": [100]}], name="waiting")
    r = run("plot", "waiting", "-o", "fit.png", "--db", url)
    assert r.exit_code == 2 and "no finished or running job" in r.stderr
    assert not (tmp_path / "fit.png").exists()


def test_fitted_curves_are_the_stored_models(sweep_db):
    """Evaluated on the job's grid, each drawn curve gives back the job's stored mse, for every
    variant (legendre and dynamic through their own predict); the monomial column, used when
    the coefficients are missing, draws the same curve."""
    url, sweep_id = sweep_db
    engine = make_engine(url)
    jobs = list_jobs(engine, sweep_id, statuses=["succeeded"])
    engine.dispose()
    assert {j.variant for j in jobs} == set(VARIANTS)
    for job in jobs:
        x = plot.x_grid(job)
        values = plot.fitted_values(job, x)
        assert np.mean((values - np.sin(x)) ** 2) == pytest.approx(job.mse, rel=1e-9), job.variant
        from_monomial = plot.fitted_values(dataclasses.replace(job, coefficients=None), x)
        assert np.allclose(from_monomial, values, rtol=1e-6, atol=1e-9), job.variant
    assert plot.fitted_values(dataclasses.replace(jobs[0], coefficients=None, monomial=None),
                              plot.x_grid(jobs[0])) is None


def test_the_figure_shows_each_variant_and_marks_diverged_cells(sweep_db):
    url, sweep_id = sweep_db
    engine = make_engine(url)
    data = plot.load(engine, find_sweep(engine, sweep_id))
    engine.dispose()
    fig = plot.draw(data)
    axes = {ax.get_title(loc="left") or ax.get_title(): ax for ax in fig.axes}
    fits, losses = axes["best fit per variant"], axes["training loss"]
    labels = [line.get_label() for line in fits.get_lines()]
    for job in data.best:
        assert any(label.startswith(f"{job.variant}  ") and f"mse {job.mse:.3g}" in label
                   for label in labels)
    assert losses.get_yscale() == "log"
    assert [t.get_text() for t in losses.get_legend().get_texts()] == list(VARIANTS)
    # One lr x degree map per variant; numpy's has 3 x 2 cells: its lr 1e-4 row diverged, and
    # at 3.6e-6 the cell of degree 3 (late, after its first recorded losses).
    numpy_map = axes["numpy"]
    assert [t.get_text() for t in numpy_map.get_yticklabels()] == ["1e-06", "3.6e-06", "0.0001"]
    assert [t.get_text() for t in numpy_map.get_xticklabels()] == ["2", "3"]
    grey = numpy_map.patches
    assert len(grey) == 3  # the cells of lr 1e-4, degrees 2 and 3, and of 3.6e-6, degree 3
    assert sorted((p.get_x(), p.get_y()) for p in grey) == [(-0.5, 1.5), (0.5, 0.5), (0.5, 1.5)]
    assert all(not axes[v].patches for v in VARIANTS if v != "numpy")
    assert len(numpy_map.texts) == 3  # the three cells that trained, annotated with their mse
    assert "diverged" in fig.get_supxlabel()
    # dynamic ran at the lesson's lr: the figure says why its fits look flat.
    assert f"dynamic: {VARIANTS['dynamic'].note}" in fig.get_supxlabel()


def test_a_sweep_whose_every_job_diverged_says_so_in_every_panel(tmp_path):
    # lr 1 diverges at once, before the curve's first point (every 100 epochs): no curve.
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    sweep_id = finished_sweep(url, [{"variant": ["autograd"], "lr": [1.0], "degree": [3],
                                     "seed": [0], "epochs": [200]}], name="all-diverged")
    engine = make_engine(url)
    data = plot.load(engine, find_sweep(engine, sweep_id))
    engine.dispose()
    [job] = data.jobs
    assert job.status == "diverged" and not data.curves.get(job.id)
    fig = plot.draw(data)
    assert "1 job: 1 diverged" in fig._suptitle.get_text()  # not "1 jobs"
    axes = {ax.get_title(loc="left") or ax.get_title(): ax for ax in fig.axes}
    fits, losses = axes["best fit per variant"], axes["training loss"]
    assert any("diverged at epoch" in line.get_label() for line in fits.get_lines())
    # The loss panel shows where the job diverged, with its loss there (per point).
    [cross] = [line for line in losses.get_lines() if line.get_marker() == "x"]
    assert list(cross.get_xdata()) == [max(job.diverged_at_epoch, 1)]
    assert cross.get_ydata()[0] == pytest.approx(job.final_loss / job.x_points)
    assert "diverged at epoch" in losses.get_legend().get_texts()[0].get_text()
    # No colour bar of values that are not there: the map's note says why.
    assert not any(ax.get_ylabel() == "final mse" for ax in fig.axes)
    assert "no cell has an mse to colour" in fig.get_supxlabel()


def test_an_empty_loss_panel_says_why():
    sweep = SweepRow("s", "empty", {}, None)
    job = JobRow(
        id="j", sweep_id="s", variant="autograd", lr=1e-6, degree=3, seed=0, epochs=10,
        optimizer="sgd", device="cpu", target="sin", dtype="float32", x_start=-3.0, x_stop=3.0,
        x_points=100, status="running", final_loss=None, mse=None, optimum_mse=None,
        coefficients=None, monomial=None, diverged_at_epoch=None, worker="w", ran_on=None,
        started_at=None, heartbeat_at=None, finished_at=None, duration_s=None, attempts=1,
        error=None)
    fig = plt_losses(plot.PlotData(sweep, (job,), (), {}))
    assert "no loss curve yet" in " ".join(t.get_text() for t in fig.texts)


def plt_losses(data):
    from matplotlib.figure import Figure

    fig = Figure()
    plot._draw_losses(fig, fig.add_gridspec(1, 1)[0, 0], data)
    return fig.axes[0]


@pytest.mark.slow
def test_a_real_sweep_stores_loss_curves_that_sql_reads_and_plot_draws(run, tmp_path):
    r = subprocess.run([sys.executable, "-m", "scheduler", "sweep", "run", "--variant",
                        "numpy,legendre,dynamic", "--lr", "1e-6,1e-4", "--seed", "0-1",
                        "--epochs", "300", "--workers", "1", "--name", "curves"],
                       env=polyfit_env(), cwd=tmp_path, capture_output=True, text=True,
                       timeout=180, check=False)
    assert r.returncode == 0, r.stderr
    q = run("sql", "SELECT j.id, j.variant, j.lr, j.status, j.final_loss, j.diverged_at_epoch, "
            "l.epoch, l.loss FROM jobs j LEFT JOIN loss_curve l ON l.sweep_id = j.sweep_id "
            "AND l.job_id = j.id ORDER BY j.id, l.epoch", "--format", "json")
    assert q.exit_code == 0, q.output
    jobs: dict[str, list] = {}
    for row in json.loads(q.stdout):
        jobs.setdefault(row["id"], []).append(row)
    assert len(jobs) == 12
    for rows in jobs.values():
        job = rows[0]
        points = [(p["epoch"], p["loss"]) for p in rows if p["epoch"] is not None]
        if job["lr"] == 1e-4:
            # Every variant blows up at this lr; its curve stops before the epoch it did.
            assert job["status"] == "diverged"
            assert all(epoch < job["diverged_at_epoch"] for epoch, _ in points)
            continue
        assert job["status"] == "succeeded"
        assert [epoch for epoch, _ in points] == [99, 199, 299]  # as the lesson prints
        if VARIANTS[job["variant"]].loss == "sse":
            losses = [loss for _, loss in points]
            assert losses == sorted(losses, reverse=True)  # gradient descent at a safe lr
            # The last point is the loss one update before the end: close to final_loss.
            assert losses[-1] == pytest.approx(job["final_loss"], rel=2e-2)
    p = run("plot", "curves", "-o", "fit.png")
    assert p.exit_code == 0, p.output
    _assert_real_png(tmp_path / "fit.png")


def test_a_plugin_variant_not_installed_here_reads_as_stored(tmp_path):
    """A sweep with jobs of a plugin's variant, read where the plugin is not installed (the
    dashboard's host, a laptop): the figure, the tables and the dashboard show them as stored,
    leaving out what needs the variant's code (its fitted curve), instead of an internal
    error."""
    from polyfit_results.dashboard import create_app
    from tests.support.database import query

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    sweep = finished_sweep(url, [{"variant": ["numpy"], "lr": [1e-6], "degree": [3],
                                  "seed": [0, 1], "epochs": [200]}], name="pv")
    engine = make_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE jobs SET variant = 'elsewhere' WHERE seed = 1")
    engine.dispose()
    job = query(url, "SELECT id FROM jobs WHERE variant = 'elsewhere'")[0]["id"]
    for args in (["plot", "-o", str(tmp_path / "p.png")], ["best"], ["results"],
                 ["job", job], ["compare", "pv", "pv"]):
        r = CliRunner().invoke(cli, [*args, "--db", url])
        assert r.exit_code == 0, (args, r.output)
    assert "elsewhere" in CliRunner().invoke(cli, ["best", "--db", url]).output
    client = create_app(url).test_client()
    for path in ("/", f"/sweeps/{sweep}", *(f"/api/sweeps/{sweep}/charts/{c}"
                                           for c in ("fits", "losses", "maps")),
                 f"/sweeps/{sweep}/jobs/{job}", f"/api/sweeps/{sweep}/jobs/{job}/charts/curve",
                 f"/api/sweeps/{sweep}/jobs/{job}/charts/fit"):
        assert client.get(path).status_code == 200, path
