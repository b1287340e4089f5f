"""Sweeps as studies: a result is trained once per database (a job whose settings ended well in
any sweep is not trained again; its row says where its result came from; ``--fresh`` trains
anyway), and running a spec again under the same name grows that one sweep."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from scheduler.cli import cli
from tests.support.database import query, rows
from tests.support.sweeps import train


class Study:
    """The CLI on one test's own database (an absolute URL: workers' engines are cached by URL
    for the whole process), with the embedded broker and no worker process."""

    def __init__(self, db: str) -> None:
        self.db = db

    def __call__(self, *args: str):
        r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r

    def train_all(self, sweep_id: str) -> None:
        """Train the sweep's queued jobs as a worker would."""
        ids = [r["id"] for r in rows(self.db, sweep_id) if r["status"] == "queued"]
        if ids:
            train(self.db, sweep_id, ids)


@pytest.fixture
def run(tmp_path, monkeypatch) -> Study:
    study = Study(f"sqlite:///{tmp_path / 'polyfit.sqlite'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYFIT_DB_URL", study.db)
    monkeypatch.delenv("POLYFIT_BROKER_URL", raising=False)
    return study


def test_a_grown_spec_under_the_same_name_trains_only_the_new_jobs(run):
    first = run("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "20",
                "--name", "study")
    sweep_id = first.stdout.split()[-1]
    run.train_all(sweep_id)
    grown = run("sweep", "submit", "--variant", "numpy", "--seed", "0-3", "--epochs", "20",
                "--name", "study")
    assert grown.stdout.split()[-1] == sweep_id  # the same sweep, grown
    assert "4 jobs (2 new), 2 enqueued in" in grown.stdout
    assert query(run.db, "SELECT count(*) AS n FROM sweeps WHERE name = 'study'") == [{"n": 1}]
    got = {r["id"]: r["status"] for r in rows(run.db, sweep_id)}
    assert sorted(got.values()) == ["queued", "queued", "succeeded", "succeeded"]


def test_a_result_is_reused_across_sweeps_and_says_where_it_came_from(run):
    a = run("sweep", "submit", "--variant", "numpy", "--seed", "0-2", "--epochs", "20",
            "--name", "first").stdout.split()[-1]
    run.train_all(a)
    b = run("sweep", "submit", "--variant", "numpy", "--seed", "1-3", "--epochs", "20",
            "--name", "second")
    assert "3 jobs (3 new, 2 with results from other sweeps), 1 enqueued in 1 batch" in b.stdout
    b_id = b.stdout.split()[-1]
    reused = query(run.db, "SELECT id, status, reused_from, mse, coefficients FROM jobs "
                       "WHERE sweep_id = :s AND reused_from IS NOT NULL", s=b_id)
    assert len(reused) == 2 and {r["reused_from"] for r in reused} == {a}
    for r in reused:
        source = query(run.db, "SELECT mse, coefficients FROM jobs WHERE sweep_id = :s AND id = :i",
                       s=a, i=r["id"])[0]
        assert (r["status"], r["mse"], r["coefficients"]) == (
            "succeeded", source["mse"], source["coefficients"])
        curves = [query(run.db, "SELECT epoch, loss FROM loss_curve WHERE sweep_id = :s AND "
                            "job_id = :i ORDER BY epoch", s=s, i=r["id"]) for s in (a, b_id)]
        assert curves[0] == curves[1]
    # --fresh trains them again: queued, their reused results cleared.
    fresh = run("sweep", "submit", "--variant", "numpy", "--seed", "1-3", "--epochs", "20",
                "--name", "second", "--fresh")
    assert "3 enqueued" in fresh.stdout
    again = query(run.db, "SELECT status, reused_from, mse FROM jobs WHERE sweep_id = :s", s=b_id)
    assert again == [{"status": "queued", "reused_from": None, "mse": None}] * 3
    assert query(run.db, "SELECT count(*) AS n FROM loss_curve WHERE sweep_id = :s",
                 s=b_id) == [{"n": 0}]


def test_failed_and_cancelled_results_are_not_reused(run):
    a = run("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "20",
            "--name", "first").stdout.split()[-1]
    run("cancel", "first")
    b = run("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "20",
            "--name", "second")
    assert "2 enqueued" in b.stdout and "from other sweeps" not in b.stdout
    assert a != b.stdout.split()[-1]


def test_a_database_from_before_reuse_is_read_as_it_is_and_upgraded_by_a_writer(run, tmp_path):
    sweep_id = run("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "20",
                   "--name", "old").stdout.split()[-1]
    with sqlite3.connect(tmp_path / "polyfit.sqlite") as c:  # as an older polyfit made it
        for view in ("best_jobs", "sweep_summary", "variant_summary"):
            c.execute(f"DROP VIEW {view}")
        c.execute("ALTER TABLE jobs DROP COLUMN reused_from")
    before = (tmp_path / "polyfit.sqlite").read_bytes()
    listed = run("results", "old", "--format", "json")
    assert [r["reused_from"] for r in json.loads(listed.stdout)] == [None, None]
    assert (tmp_path / "polyfit.sqlite").read_bytes() == before  # a read never upgrades
    run("sweep", "submit", "--variant", "numpy", "--seed", "0-2", "--epochs", "20",
        "--name", "old")
    columns = {r["name"] for r in query(run.db, "SELECT name FROM pragma_table_info('jobs')")}
    assert "reused_from" in columns
    assert len(rows(run.db, sweep_id)) == 3


def test_polyfit_sweeps_lists_every_sweep_with_its_counts(run):
    a = run("sweep", "submit", "--variant", "numpy", "--seed", "0-2", "--epochs", "20",
            "--name", "alpha").stdout.split()[-1]
    run.train_all(a)
    b = run("sweep", "submit", "--variant", "numpy", "--seed", "5-6", "--epochs", "20",
            "--name", "beta").stdout.split()[-1]
    run("cancel", "beta")
    listed = json.loads(run("sweeps", "--format", "json").stdout)
    by_id = {s["id"]: s for s in listed}
    assert set(by_id) == {a, b} and [s["id"] for s in listed] == [b, a]  # newest first
    assert (by_id[a]["name"], by_id[a]["jobs"], by_id[a]["ended"], by_id[a]["failed"]) == (
        "alpha", 3, 3, 0)
    assert by_id[a]["best_mse"] == min(
        r["mse"] for r in query(run.db, "SELECT mse FROM jobs WHERE sweep_id = :s", s=a))
    assert (by_id[b]["jobs"], by_id[b]["ended"], by_id[b]["best_mse"]) == (2, 2, None)
    table = run("sweeps").stdout.splitlines()
    assert table[0].split() == ["id", "name", "created_at", "jobs", "ended", "failed",
                                "best_mse", "tags", "note"]
    assert len(table) == 4


def test_an_unknown_sweep_name_gets_a_did_you_mean(run):
    run("sweep", "submit", "--variant", "numpy", "--seed", "0", "--epochs", "5",
        "--name", "learning-rates")
    r = CliRunner().invoke(cli, ["status", "learning-rate"])
    assert r.exit_code == 2
    assert r.stderr.strip() == "Error: no sweep 'learning-rate'; did you mean 'learning-rates'?"
    r = CliRunner().invoke(cli, ["results", "zzz"])
    assert r.exit_code == 2 and "`polyfit sweeps` lists them" in r.stderr


# -- honest progress ---------------------------------------------------------------------------

def _age(db: str, sweep_id: str, sql: str, **params) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(db)
    with eng.begin() as c:
        c.execute(text(sql), {"s": sweep_id, **params})
    eng.dispose()


def test_the_eta_follows_the_work_left_not_the_count_of_jobs(run):
    from datetime import UTC, datetime, timedelta

    from polyfit_results.queries import progress
    from store import make_engine
    from store.sweeps import find_sweep

    # 20 short jobs done in the last 20 s, and one job with 1,000 times their work running.
    sid = run("sweep", "submit", "--variant", "numpy", "--seed", "0-19", "--epochs", "10",
              "--name", "mixed").stdout.split()[-1]
    run("sweep", "submit", "--variant", "numpy", "--seed", "0", "--epochs", "10000",
        "--name", "mixed")
    now = datetime.now(UTC).replace(tzinfo=None)
    _age(run.db, sid, "UPDATE sweeps SET created_at = :a, used_at = :a WHERE id = :s",
         a=now - timedelta(seconds=21))  # this run began 21 s ago
    _age(run.db, sid, "UPDATE jobs SET status = 'succeeded', started_at = :a, finished_at = :b "
                      "WHERE sweep_id = :s AND epochs = 10",
         a=now - timedelta(seconds=20), b=now - timedelta(seconds=1))
    _age(run.db, sid, "UPDATE jobs SET status = 'running', started_at = :a WHERE sweep_id = :s "
                      "AND epochs = 10000", a=now - timedelta(seconds=1))
    engine = make_engine(run.db)
    p = progress(engine, find_sweep(engine, sid))
    engine.dispose()
    assert p.ended == 20 and p.total == 21
    # 20 x 10 epochs x 2000 points in ~20 s; 10,000 x 2000 left: about 1,000 s, not ~1 s.
    assert 600 < p.eta_s < 1500, p
    assert 0.7 < p.fits_per_s < 1.3, p


def test_a_rerun_shows_its_own_rate_idle_time_and_tail(run):
    # Issue 23.3: after a grow (or --fresh, or a rerun after Ctrl-C) the rate, the ETA and
    # "no worker for" were counted from the sweep's creation and its earlier run's work.
    from datetime import UTC, datetime, timedelta

    from polyfit_results.queries import progress
    from store import make_engine
    from store.sweeps import find_sweep

    def now_progress():
        engine = make_engine(run.db)
        try:
            return progress(engine, find_sweep(engine, sid))
        finally:
            engine.dispose()

    sid = run("sweep", "submit", "--variant", "numpy", "--seed", "0-19", "--epochs", "10",
              "--name", "again").stdout.split()[-1]
    long_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=10)
    _age(run.db, sid, "UPDATE sweeps SET created_at = :a, used_at = :a WHERE id = :s",
         a=long_ago)
    _age(run.db, sid, "UPDATE jobs SET status = 'succeeded', started_at = :a, finished_at = :a "
                      "WHERE sweep_id = :s", a=long_ago)
    # Grown ten minutes later: 10 new jobs, nothing of them taken yet.
    run("sweep", "submit", "--variant", "numpy", "--seed", "0-29", "--epochs", "10", "--name",
        "again")
    p = now_progress()
    assert p.idle_s is None, p  # not "no worker for 10m" at the start of this run
    assert p.fits_per_s is None and p.eta_s is None, p  # nothing of this run's own yet
    # This run began 5 s ago and finished 5 jobs since: 1 fit/s (not 5 over a 60 s window).
    now = datetime.now(UTC).replace(tzinfo=None)
    _age(run.db, sid, "UPDATE sweeps SET used_at = :a WHERE id = :s",
         a=now - timedelta(seconds=5))
    fresh = [r["id"] for r in rows(run.db, sid) if r["status"] == "queued"]
    _age(run.db, sid, "UPDATE jobs SET status = 'succeeded', started_at = :a, finished_at = :b "
                      f"WHERE sweep_id = :s AND id IN ({', '.join(map(repr, fresh[:5]))})",
         a=now - timedelta(seconds=5), b=now - timedelta(seconds=1))
    p = now_progress()
    assert 0.7 < p.fits_per_s < 1.5, p
    # The tail: one job of 10 epochs running for 40 s and half done needs about 40 s more,
    # whatever the rate of the short jobs said (the other 4 queued ones: a few seconds).
    _age(run.db, sid, "UPDATE jobs SET status = 'running', started_at = :a, epochs_done = 5 "
                      f"WHERE sweep_id = :s AND id = {fresh[5]!r}", a=now - timedelta(seconds=40))
    p = now_progress()
    assert 30 < p.eta_s < 60, p


def test_status_says_when_no_worker_serves_a_sweep_and_names_the_command(run):
    sid = run("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "10",
              "--name", "orphan").stdout.split()[-1]
    fresh = CliRunner().invoke(cli, ["status", "orphan"])
    assert "no worker" not in fresh.output  # just submitted: not idle yet
    _age(run.db, sid, "UPDATE sweeps SET created_at = '2000-01-01 00:00:00', "
                      "used_at = '2000-01-01 00:00:00' WHERE id = :s")
    idle = CliRunner().invoke(cli, ["status", "orphan"])
    assert "no worker for" in idle.stdout
    assert "`polyfit worker`" in idle.stderr and "`polyfit sweep run orphan`" in idle.stderr
    as_json = json.loads(CliRunner().invoke(cli, ["status", "orphan", "--json"]).stdout)
    assert as_json["idle_s"] > 60


def test_a_sweep_that_ends_with_cancelled_jobs_says_so_and_exits_1(run):
    run("sweep", "submit", "--variant", "numpy", "--seed", "0-2", "--epochs", "10",
        "--name", "halted")
    run("cancel", "halted")
    r = CliRunner().invoke(cli, ["status", "halted", "--wait"])
    assert r.exit_code == 1 and "3 jobs of the sweep cancelled" in r.stderr
    assert r.stderr.count("\n") == 1  # silent until then: one note


def test_counts_read_in_the_singular_where_they_are_one(run):
    r = run("sweep", "submit", "--variant", "numpy", "--seed", "0", "--epochs", "10",
            "--name", "one")
    assert "1 job (1 new), 1 enqueued in 1 batch" in r.stdout


def test_best_and_job_show_the_fitted_polynomial_and_plot_defaults_to_the_latest(run, tmp_path):
    sid = run("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "300",
              "--name", "shown").stdout.split()[-1]
    run.train_all(sid)
    best = json.loads(run("best", "--format", "json").stdout)[0]
    c = best["monomial"]
    assert best["formula"].startswith(f"y = {'-' if c[0] < 0 else ''}{abs(c[0]):.3f} ")
    assert best["formula"].endswith("x³")
    detail = run("job", best["id"][:8]).stdout
    assert best["formula"] in detail and f"id{' ' * 17}{best['id']}" in detail
    assert json.loads(run("job", best["id"], "--format", "json").stdout)["loss_curve"]
    assert "shown" in run("plot", "-o", str(tmp_path / "p.png")).stdout
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_the_latest_sweep_is_the_one_last_submitted_to_or_resumed_and_tables_name_it(run):
    def submit(name: str, seeds: str) -> str:
        return run("sweep", "submit", "--variant", "numpy", "--seed", seeds, "--epochs", "20",
                   "--name", name).stdout.split()[-1]

    def shown() -> str:
        """The sweep ``results`` and ``best`` show without a SWEEP (both say which)."""
        title = run("results").stdout.splitlines()[0]
        best = run("best").stdout.splitlines()[0]
        assert best.startswith("best results of sweep " + title.split("jobs of sweep ")[1]
                               .split(",")[0] + ", lowest mse per variant")
        return title

    older = submit("older", "0-1")
    newer = submit("newer", "0-1")
    assert shown() == f"jobs of sweep newer ({newer}), by mse:"
    submit("older", "0-3")  # grown: now the sweep a user works on
    assert shown() == f"jobs of sweep older ({older}), by mse:"
    assert json.loads(run("status", "--json").stdout)["sweep_id"] == older
    run("sweep", "resume", "newer")
    assert shown() == f"jobs of sweep newer ({newer}), by mse:"
    # Named explicitly, a sweep is found whatever was used last.
    assert run("results", "older").stdout.startswith(f"jobs of sweep older ({older})")


# -- stopping at the optimum ----------------------------------------------------------------------

def test_stop_at_gap_reaches_every_job_that_can_stop_and_changes_their_ids():
    from scheduler.plan import build_plan

    grid = {"variant": ["autograd", "dynamic"], "seed": [0, 1]}
    plain = build_plan({"grid": grid})
    stopping = build_plan({"grid": grid, "stop_at_gap": 0.01})
    flagged = build_plan({"grid": grid, "stop_at_gap": 0.01}, stop_at_gap="0.5")
    gaps = {(j.spec.variant, j.spec.stop_gap) for j in stopping.jobs}
    assert gaps == {("autograd", 0.01), ("dynamic", None)}
    assert stopping.spec["stop_at_gap"] == 0.01 and "stop_at_gap" not in plain.spec
    assert any("dynamic trains every epoch" in n for n in stopping.notes)
    assert {j.spec.stop_gap for j in flagged.jobs if j.spec.variant == "autograd"} == {0.5}
    ids = {j.spec.variant: set() for j in plain.jobs}
    for plan in (plain, stopping):
        for j in plan.jobs:
            ids[j.spec.variant].add(j.id)
    # Another gap is another job; dynamic, which ignores it, keeps its ids.
    assert len(ids["autograd"]) == 4 and len(ids["dynamic"]) == 2


@pytest.mark.parametrize("args,spec", [
    (["--stop-at-gap", "-1"], None), (["--stop-at-gap", "soon"], None),
    ([], "grid: {variant: [autograd]}\nstop_at_gap: [0.1]\n"),
    ([], "grid: {variant: [autograd]}\nstop_at_gap: .nan\n"),
])
def test_a_bad_stop_at_gap_is_one_line_and_exit_2_with_nothing_written(tmp_path, monkeypatch,
                                                                        args, spec):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYFIT_DB_URL", f"sqlite:///{tmp_path / 'r.sqlite'}")
    files = []
    if spec:
        (tmp_path / "s.yaml").write_text(spec)
        files = ["s.yaml"]
    else:
        args = ["--variant", "autograd", *args]
    r = CliRunner().invoke(cli, ["sweep", "submit", *files, *args])
    assert r.exit_code == 2, r.output
    assert "stop_at_gap" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.sqlite").exists()
