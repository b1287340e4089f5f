"""The read commands (results, best, status --watch, sql on the views) and the notebook API,
against sweeps trained for real: jobs recorded by the store, trained by ``worker.execute.
run_batch`` (the code a Celery task runs, without the queue) and read back through the CLI.
Every output is parsed (json, csv, the table's columns), and checked against plain SQL."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from scheduler.cli import cli
from store import create_schema, make_engine
from store.activity import status_counts
from store.claims import claim_jobs, save_results
from store.reads import list_jobs
from store.sql_views import VIEWS
from tests.support import ROOT
from tests.support.processes import polyfit_env
from tests.support.sweeps import finished_sweep, record_sweep, train


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory):
    """A trained sweep in its own SQLite file, shared by the read-only tests of this module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('q') / 'results.sqlite'}"
    return url, finished_sweep(url)


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("POLYFIT_DB_URL", "POLYFIT_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def _run(*args, **kw):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)

    return _run


def _sql(db_url: str, query: str, **params) -> list[dict]:
    eng = create_engine(db_url)
    with eng.connect() as c:
        rows = [dict(r) for r in c.execute(text(query), params).mappings()]
    eng.dispose()
    return rows


def _name_of(db_url: str, sweep_id: str) -> str:
    return _sql(db_url, "SELECT name FROM sweeps WHERE id = :s", s=sweep_id)[0]["name"]


def _one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output


# -- results -----------------------------------------------------------------------------------

def test_results_filters_match_plain_sql(run, sweep_db):
    url, sweep_id = sweep_db
    r = run("results", sweep_id, "--db", url, "--variant", "numpy", "--status", "succeeded",
            "--degree", "3", "--lr-min", "5e-7", "--lr-max", "2e-6", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    expected = _sql(url, "SELECT id FROM jobs WHERE sweep_id = :s AND variant = 'numpy' AND "
                    "status = 'succeeded' AND degree = 3 AND lr BETWEEN 5e-7 AND 2e-6",
                    s=sweep_id)
    assert sorted(r["id"] for r in rows) == sorted(e["id"] for e in expected)
    assert len(rows) == 2  # two seeds
    assert all(r["variant"] == "numpy" and r["lr"] == 1e-6 and r["degree"] == 3 for r in rows)
    # Repeated options are ORed; statuses take every state.
    r = run("results", sweep_id, "--db", url, "--variant", "legendre", "--variant", "module",
            "--status", "succeeded", "--status", "diverged", "--format", "json")
    assert {row["variant"] for row in json.loads(r.stdout)} == {"legendre", "module"}
    # Comma-separated lists and degree ranges, as the sweep's axis flags take them.
    listed = run("results", sweep_id, "--db", url, "--variant", "legendre,module", "--status",
                 "succeeded,diverged", "--format", "json")
    assert json.loads(listed.stdout) == json.loads(r.stdout)
    ranged = json.loads(run("results", "--db", url, "--degree", "4-5", "--format",
                            "json").stdout)
    assert sorted({row["degree"] for row in ranged}) == [4, 5] and len(ranged) == 8
    for bad in (["--variant", "numpy,nope"], ["--status", "done"], ["--degree", "3-x"],
                ["--degree", "3,"]):
        _one_line_error(run("results", "--db", url, *bad))
    diverged = json.loads(run("results", "--db", url, "--status", "diverged",
                              "--format", "json").stdout)
    assert {(d["lr"], d["degree"]) for d in diverged} == {(1e-4, 3), (1e-4, 4), (1e-6, 4)}
    assert all(d["diverged_at_epoch"] is not None for d in diverged)


def test_results_json_times_carry_their_utc_offset(run, sweep_db):
    url, sweep_id = sweep_db
    rows = json.loads(run("results", sweep_id, "--db", url, "--format", "json").stdout)
    for row in rows:
        for key in ("started_at", "finished_at"):
            t = datetime.fromisoformat(row[key])
            assert t.utcoffset() == timedelta(0), row[key]


def test_results_sorts_by_any_column_and_limits(run, sweep_db):
    url, sweep_id = sweep_db
    everything = json.loads(run("results", sweep_id, "--db", url, "--format", "json").stdout)
    assert len(everything) == 18
    # Default: by mse ascending, jobs without an mse (diverged) last.
    mses = [r["mse"] for r in everything]
    assert None not in mses and mses == sorted(mses)
    for column in ("lr", "duration_s", "variant", "seed", "finished_at"):
        rows = json.loads(run("results", "--db", url, "--sort", column, "--desc", "--format",
                              "json").stdout)
        values = [r[column] for r in rows if r[column] is not None]
        assert values == sorted(values, reverse=True), column
    top = json.loads(run("results", "--db", url, "--sort", "final_loss", "--limit", "3",
                         "--format", "json").stdout)
    ordered = json.loads(run("results", "--db", url, "--sort", "final_loss", "--format",
                             "json").stdout)
    assert [r["id"] for r in top] == [r["id"] for r in ordered[:3]]
    _one_line_error(run("results", "--db", url, "--sort", "coefficients"))
    _one_line_error(run("results", "--db", url, "--limit", "0"))


def test_results_csv_and_table_carry_the_same_numbers_as_json(run, sweep_db):
    url, sweep_id = sweep_db
    as_json = {r["id"]: r for r in json.loads(
        run("results", sweep_id, "--db", url, "--format", "json").stdout)}
    rows = list(csv.DictReader(io.StringIO(run("results", sweep_id, "--db", url,
                                               "--format", "csv").stdout)))
    assert len(rows) == len(as_json) == 18
    for row in rows:
        exact = as_json[row["id"]]
        # Floats survive the round trip bit for bit; missing values are empty cells.
        assert (float(row["mse"]) if row["mse"] else None) == exact["mse"]
        assert float(row["lr"]) == exact["lr"]
        assert json.loads(row["coefficients"]) == exact["coefficients"]
        assert int(row["attempts"]) == exact["attempts"] == 1
    title, *lines = run("results", sweep_id, "--db", url, "--limit", "5").stdout.splitlines()
    assert title == f"jobs of sweep {_name_of(url, sweep_id)} ({sweep_id}), by mse:"
    header = lines[0].split()
    assert header[:4] == ["id", "variant", "lr", "degree"] and "mse" in header
    assert set(lines[1]) <= {"-", " "} and len(lines) == 7
    for line in lines[2:]:
        cells = dict(zip(header, line.split()))
        assert float(cells["mse"]) == pytest.approx(as_json[cells["id"]]["mse"], rel=1e-5)


# -- best --------------------------------------------------------------------------------------

def test_best_per_variant_is_the_lowest_mse_with_its_gap(run, sweep_db):
    url, sweep_id = sweep_db
    r = run("best", sweep_id, "--db", url, "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["variant"] for row in rows] == ["numpy", "legendre", "module", "dynamic"]
    for row in rows:
        lowest = _sql(url, "SELECT min(mse) AS m FROM jobs WHERE sweep_id = :s AND variant = :v "
                      "AND status IN ('succeeded', 'diverged')", s=sweep_id, v=row["variant"])
        assert row["mse"] == lowest[0]["m"]
        assert row["gap"] == row["mse"] - row["optimum_mse"] and row["gap"] >= 0
    # Grouped by two settings, csv: one row per (variant, degree) that has a result.
    r = run("best", sweep_id, "--db", url, "--by", "variant,degree", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["variant"], int(x["degree"])) for x in rows] == [
        ("numpy", 3), ("numpy", 4), ("legendre", 3), ("module", 3), ("dynamic", 4),
        ("dynamic", 5)]
    # The command and the best_jobs view (for sqlite3 users) agree.
    view = _sql(url, "SELECT variant, degree, job_id, gap FROM best_jobs WHERE sweep_id = :s",
                s=sweep_id)
    assert {(v["variant"], v["degree"]): v["job_id"] for v in view} == {
        (x["variant"], int(x["degree"])): x["id"] for x in rows}
    title, *table = run("best", sweep_id, "--db", url, "--by", "lr").stdout.splitlines()
    assert title == (f"best results of sweep {_name_of(url, sweep_id)} ({sweep_id}), lowest "
                     "mse per lr:")
    assert table[0].split()[:2] == ["lr", "variant"] and "gap" in table[0].split()
    lrs = [float(line.split()[0]) for line in table[2:]]
    assert lrs == [1e-8, 1e-6, 5e-6, 1e-4, 1e-3, 1e-2]


@pytest.mark.parametrize("by", ["nope", "variant,mse", "", ","])
def test_best_refuses_an_unknown_group_column(run, sweep_db, by):
    url, _ = sweep_db
    _one_line_error(run("best", "--db", url, "--by", by))


# -- views -------------------------------------------------------------------------------------

def test_views_are_readable_through_polyfit_sql_and_sqlite3(run, sweep_db):
    url, sweep_id = sweep_db
    r = run("sql", "SELECT * FROM sweep_summary", "--db", url, "--format", "json")
    assert r.exit_code == 0, r.output
    (summary,) = json.loads(r.stdout)
    counts = _sql(url, "SELECT status, count(*) AS n FROM jobs GROUP BY status")
    assert summary["jobs"] == 18 and summary["sweep_id"] == sweep_id
    for c in counts:
        assert summary[c["status"]] == c["n"]
    assert summary["diverged"] == 6 and summary["queued"] == summary["running"] == 0
    # The plain sqlite3 module (what the sqlite3 shell uses) sees them too.
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    per_variant = dict(con.execute("SELECT variant, jobs FROM variant_summary").fetchall())
    con.close()
    assert per_variant == {"numpy": 8, "legendre": 2, "module": 4, "dynamic": 4}


def _view_sql(engine, name: str) -> str | None:
    with engine.connect() as c:
        if engine.dialect.name == "sqlite":
            return c.execute(text("SELECT sql FROM sqlite_master WHERE name = :n"),
                             {"n": name}).scalar()
        return c.execute(text("SELECT pg_get_viewdef(to_regclass(:n))"), {"n": name}).scalar()


def test_views_answer_the_same_on_sqlite_and_postgresql(any_db_url):
    grid = [{"variant": ["numpy"], "lr": [1e-6, 1e-4], "degree": [2, 3], "seed": [0, 1],
             "epochs": [200]}]
    sweep_id, jobs = record_sweep(any_db_url, grid, x_points=200)
    train(any_db_url, sweep_id, jobs[:6])
    engine = make_engine(any_db_url)
    try:
        create_schema(engine)  # again: a no-op
        before = {name: _view_sql(engine, name) for name in VIEWS}
        create_schema(engine)
        assert {name: _view_sql(engine, name) for name in VIEWS} == before
        views = {name: _sql(any_db_url, f"SELECT * FROM {name}") for name in VIEWS}
        counts = status_counts(engine, sweep_id)
        stored = list_jobs(engine, sweep_id)
    finally:
        engine.dispose()
    (summary,) = views["sweep_summary"]
    assert summary["jobs"] == 8 and summary["queued"] == counts["queued"] == 2
    assert sum(summary[s] for s in ("succeeded", "diverged")) == 6
    ok = [j for j in stored if j.status in ("succeeded", "diverged") and j.mse is not None]
    assert summary["best_mse"] == min(j.mse for j in ok)
    best = {(b["variant"], b["degree"]): b for b in views["best_jobs"]}
    for degree in {j.degree for j in ok}:
        winner = min((j for j in ok if j.degree == degree), key=lambda j: (j.mse, j.id))
        row = best[("numpy", degree)]
        assert row["job_id"] == winner.id and row["mse"] == winner.mse
        assert row["gap"] == pytest.approx(winner.mse - winner.optimum_mse, rel=1e-12)
    (variant,) = views["variant_summary"]
    assert variant["jobs"] == 8 and variant["best_mse"] == summary["best_mse"]


def test_a_view_with_an_old_definition_is_replaced(any_db_url):
    engine = make_engine(any_db_url)
    try:
        create_schema(engine)
        with engine.begin() as c:
            c.exec_driver_sql("DROP VIEW best_jobs")
            c.exec_driver_sql("CREATE VIEW best_jobs AS SELECT 1 AS old_column")
        create_schema(engine)
        with engine.connect() as c:
            columns = list(c.execute(text("SELECT * FROM best_jobs")).keys())
    finally:
        engine.dispose()
    assert "old_column" not in columns and columns[:4] == ["sweep_id", "variant", "degree",
                                                           "job_id"]


# -- status --watch ----------------------------------------------------------------------------

_LINE = re.compile(r"^sweep demo \((\w+)\): \[[#.]{24}\] (\d+)/(\d+) \| (\d+) succeeded \| "
                   r"(\d+) diverged \| (\d+) failed")


def _train_in_steps(url: str, sweep_id: str, jobs, steps: int, pause_s: float):
    def work():
        size = -(-len(jobs) // steps)
        for start in range(0, len(jobs), size):
            time.sleep(pause_s)
            train(url, sweep_id, jobs[start:start + size])

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_watch_prints_a_line_per_poll_until_the_sweep_ends(run, db_url):
    grid = [{"variant": ["numpy"], "seed": [0, 1, 2, 3, 4, 5], "epochs": [100]}]
    sweep_id, jobs = record_sweep(db_url, grid)
    worker = _train_in_steps(db_url, sweep_id, jobs, steps=3, pause_s=0.6)
    r = run("status", "demo", "--watch", "--interval", "0.1", "--db", db_url)
    worker.join(30)
    assert r.exit_code == 0, r.output
    parsed = [_LINE.match(line) for line in r.stdout.splitlines()]
    assert all(parsed), r.stdout
    done = [int(m.group(2)) for m in parsed]
    assert all(int(m.group(3)) == 6 and m.group(1) == sweep_id for m in parsed)
    assert done[0] < 6 and done[-1] == 6 and done == sorted(done)
    assert len(set(done)) >= 3  # it saw the sweep move, not only its end
    assert "\r" not in r.stdout  # not a terminal: plain lines, no redraws


def test_watch_json_is_one_object_a_line_and_exit_1_when_a_job_failed(run, db_url):
    grid = [{"variant": ["numpy"], "seed": [0, 1, 2, 3], "epochs": [100]}]
    sweep_id, jobs = record_sweep(db_url, grid)
    # One job fails (as a worker stores a job whose fit raised); the rest train later.
    engine = make_engine(db_url)
    claim_jobs(engine, sweep_id, [jobs[0].id], "w@h", 60)
    save_results(engine, sweep_id,
                            [(jobs[0].id, {"status": "failed", "error": "ValueError: x"})],
                            "w@h", "cpu")
    engine.dispose()
    worker = _train_in_steps(db_url, sweep_id, jobs[1:], steps=1, pause_s=0.5)
    r = run("status", sweep_id, "--watch", "--json", "--interval", "0.1", "--db", db_url)
    worker.join(30)
    assert r.exit_code == 1, r.output
    states = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(states) >= 2
    assert [s["done"] for s in states] == [False] * (len(states) - 1) + [True]
    assert states[0]["counts"]["failed"] == 1 and states[-1]["counts"] == {"failed": 1,
                                                                          "succeeded": 3}
    assert [s["ended"] for s in states] == sorted(s["ended"] for s in states)


def _read_until(fd: int, want: bytes, timeout_s: float) -> bytes:
    """Read a terminal until ``want`` shows up, it closes, or the time is out."""
    out = b""
    deadline = time.monotonic() + timeout_s
    while want not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize("counts", [
    {"queued": 4}, {"succeeded": 0, "queued": 4}, {"running": 4},
    {"succeeded": 2, "running": 1, "queued": 1}, {"succeeded": 3, "diverged": 1}])
def test_every_drawing_of_the_bar_fits_the_terminal(counts):
    """Whatever the reading, the bar's line fits a 72-column terminal: rich's table kept a
    short detail whole and squeezed the bar, so one drawing in a run was 82 columns wide."""
    from polyfit_results.progress import LiveProgress
    from polyfit_results.queries import Progress

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 72, 0, 0))
    ended = sum(n for s, n in counts.items() if s in ("succeeded", "diverged"))
    with open(follower, "w", closefd=True) as screen:
        with LiveProgress(screen, terminal=True, every_s=0,
                          label="sweep demo (15db83584a00)") as live:
            for rate, eta in ((None, None), (6.04, 12.5), (0.3, 3600.0)):
                live.show(Progress("15db83584a00", "demo", 4, counts, ended, rate, eta,
                                   ended == 4, running_done=0.25 if "running" in counts
                                   else None))
                time.sleep(0.15)  # rich redraws from its own thread too
    out = _read_available(leader)
    os.close(leader)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode().replace("\r\n", "\n"))
    assert "0/4" in plain or f"{ended}/4" in plain
    assert all(len(line) <= 72 for line in re.split(r"[\r\n]", plain)), repr(plain)


def test_watch_redraws_one_line_in_place_on_a_terminal(db_url):
    grid = [{"variant": ["numpy"], "seed": [0, 1, 2, 3], "epochs": [100]}]
    sweep_id, jobs = record_sweep(db_url, grid)
    leader, follower = os.openpty()
    columns = 72
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "status", sweep_id, "--watch", "--interval",
         "0.1", "--db", db_url], stdout=follower, stderr=subprocess.PIPE, cwd=ROOT,
        env=polyfit_env())
    os.close(follower)
    try:
        out = _read_until(leader, b"0/4", 60)  # it has drawn the sweep, still queued
        train(db_url, sweep_id, jobs)
        out += _read_until(leader, b"4/4", 60)
        assert proc.wait(30) == 0, proc.stderr.read()
        out += _read_available(leader)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    text_out = out.decode().replace("\r\n", "\n")  # the terminal's own newline translation
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text_out)  # what the screen shows
    # Redrawn in place: no line per poll, and each drawing fits the terminal's width.
    assert plain.count("\n") <= 2, repr(text_out)
    assert all(len(line) <= columns for line in re.split(r"[\r\n]", plain)), repr(plain)
    assert "0/4" in plain and "4/4" in plain and "4 succeeded" in plain


def _read_available(fd: int) -> bytes:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


# -- read commands never create a database ------------------------------------------------------

@pytest.mark.parametrize("args", [["best"], ["status", "--watch"], ["plot", "x", "-o", "x.png"],
                                  ["best", "--by", "variant,nope"]])
def test_read_commands_without_a_database_create_nothing(run, tmp_path, args):
    _one_line_error(run(*args))
    assert list(tmp_path.iterdir()) == []


def test_unknown_sweep_is_one_line(run, sweep_db):
    url, _ = sweep_db
    for args in (["best", "nope"], ["status", "nope", "--watch"], ["plot", "nope", "-o",
                                                                   "x.png"]):
        _one_line_error(run(*args, "--db", url))


# -- the notebook API --------------------------------------------------------------------------

def test_api_frames_hold_the_sweep(sweep_db):
    from polyfit_results.api import SweepNotFound, best_frame, jobs_frame, loss_curve_frame

    url, sweep_id = sweep_db
    jobs = jobs_frame("demo", db_url=url)
    assert len(jobs) == 18 and set(jobs["sweep_id"]) == {sweep_id}
    assert str(jobs["started_at"].dt.tz) == "UTC"
    assert jobs.groupby("variant")["mse"].min()["legendre"] == _sql(
        url, "SELECT min(mse) AS m FROM jobs WHERE variant = 'legendre'")[0]["m"]
    best = best_frame(sweep_id, by=["variant", "degree"], db_url=url)
    assert len(best) == 6 and (best["gap"] >= 0).all()
    curves = loss_curve_frame(db_url=url)  # the latest sweep
    stored = _sql(url, "SELECT count(*) AS n FROM loss_curve WHERE sweep_id = :s", s=sweep_id)
    assert len(curves) == stored[0]["n"] > 0
    assert set(curves["epoch"]) == {99, 199, 299}
    with pytest.raises(SweepNotFound):
        jobs_frame("nope", db_url=url)


def test_api_does_not_create_a_database(tmp_path):
    from polyfit_results.api import jobs_frame
    from store import StoreError

    with pytest.raises(StoreError, match="no results database"):
        jobs_frame(db_url=f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert list(tmp_path.iterdir()) == []


def test_api_without_pandas_says_how_to_install_it(tmp_path):
    # A fresh interpreter where pandas cannot be imported.
    code = ("import sys; sys.modules['pandas'] = None\n"
            "from polyfit_results.api import jobs_frame\n"
            "try:\n    jobs_frame(db_url='sqlite:///nowhere.sqlite')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=polyfit_env(), timeout=60, check=False)
    assert "pip install 'polyfit[pandas]'" in out.stdout, out.stderr
    assert list(tmp_path.iterdir()) == []
