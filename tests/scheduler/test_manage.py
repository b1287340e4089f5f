"""Managing sweeps (issue 23): tags and a note on a sweep, shown and filtered by ``polyfit
sweeps``; rename and delete (with jobs and curves, refused while the sweep runs); compare two
sweeps from the CLI. Through the real CLI on a real SQLite file, with the embedded broker and
no worker process (``train`` plays the worker)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from scheduler.cli import cli
from scheduler.plan import sweep_id_of
from tests.support.database import query, rows
from tests.support.sweeps import train


class Cli:
    def __init__(self, db: str) -> None:
        self.db = db

    def __call__(self, *args: str, code: int = 0):
        r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert r.exit_code == code, r.output
        if code == 2:
            assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: "), r.stderr
        return r

    def submit(self, name: str, *extra: str) -> str:
        """A 2-job numpy sweep; ``--fresh``: never results reused from the test's other
        sweeps (whose settings may be the same)."""
        return self("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs",
                    "300", "--name", name, "--fresh", *extra).stdout.split()[-1]

    def trained(self, name: str, *extra: str) -> str:
        sweep_id = self.submit(name, *extra)
        train(self.db, sweep_id, [r["id"] for r in rows(self.db, sweep_id)
                                  if r["status"] == "queued"])
        return sweep_id

    def listed(self, *args: str) -> list[dict]:
        return json.loads(self("sweeps", "--format", "json", *args).stdout)


@pytest.fixture
def run(tmp_path, monkeypatch) -> Cli:
    c = Cli(f"sqlite:///{tmp_path / 'polyfit.sqlite'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLYFIT_DB_URL", c.db)
    monkeypatch.delenv("POLYFIT_BROKER_URL", raising=False)
    return c


def test_tags_and_a_note_are_kept_shown_and_filtered(run):
    run.submit("first", "--tag", "lesson,baseline", "--note", "the lesson's  settings")
    run.submit("second", "--tag", "tuned")
    by_name = {s["name"]: s for s in run.listed()}
    assert by_name["first"]["tags"] == ["lesson", "baseline"]
    assert by_name["first"]["note"] == "the lesson's settings"  # spaces folded
    assert by_name["second"]["tags"] == ["tuned"] and by_name["second"]["note"] is None
    assert [s["name"] for s in run.listed("--tag", "lesson")] == ["first"]
    assert run.listed("--tag", "lesson,tuned") == []  # every tag asked for
    table = run("sweeps").stdout
    assert "lesson,baseline" in table and "the lesson's settings" in table
    # Growing a sweep with another tag adds it; tag and note commands change them.
    run.submit("first", "--tag", "grown")
    assert run.listed("--tag", "grown")[0]["tags"] == ["lesson", "baseline", "grown"]
    run("sweep", "tag", "first", "baseline", "--remove")
    run("sweep", "note", "first", "")
    first = run.listed("--tag", "lesson")[0]
    assert first["tags"] == ["lesson", "grown"] and first["note"] is None
    # SQL sees them too.
    assert query(run.db, "SELECT name FROM sweeps WHERE note IS NULL ORDER BY name") == [
        {"name": "first"}, {"name": "second"}]


@pytest.mark.parametrize("bad", ["two words", "x" * 65, "tab\there"])
def test_a_bad_tag_is_refused_before_anything_is_recorded(run, tmp_path, bad):
    run("sweep", "submit", "--variant", "numpy", "--name", "tagged", "--tag", bad, code=2)
    assert not (tmp_path / "polyfit.sqlite").exists()


def test_rename_moves_jobs_and_curves_and_the_name_grows_the_renamed_sweep(run):
    old = run.trained("old")
    before = {r["id"]: r for r in rows(run.db, old)}
    curves = query(run.db, "SELECT count(*) AS n FROM loss_curve WHERE sweep_id = :s", s=old)
    run("sweep", "rename", "old", "new")
    new = sweep_id_of("new")
    assert query(run.db, "SELECT id, name FROM sweeps") == [{"id": new, "name": "new"}]
    after = {r["id"]: r for r in rows(run.db, new)}
    assert after.keys() == before.keys()
    assert all(after[i]["mse"] == before[i]["mse"] for i in after)
    assert query(run.db, "SELECT count(*) AS n FROM loss_curve WHERE sweep_id = :s",
                 s=new) == curves and curves[0]["n"] > 0
    # The new name is this sweep: running a grown spec under it adds to it.
    grown = run("sweep", "submit", "--variant", "numpy", "--seed", "0-3", "--epochs", "300",
                "--name", "new").stdout
    assert grown.split()[-1] == new and "(2 new)" in grown


def test_rename_is_refused_onto_a_taken_name_and_while_jobs_wait(run):
    run.trained("done")
    run.submit("waiting")
    run("sweep", "rename", "done", "waiting", code=2)
    r = run("sweep", "rename", "waiting", "elsewhere", code=2)
    assert "queued or running" in r.stderr
    assert {s["name"] for s in run.listed()} == {"done", "waiting"}


def test_delete_takes_jobs_and_curves_and_is_refused_while_the_sweep_runs(run):
    kept = run.trained("kept")
    gone = run.trained("gone")
    running = run.submit("running")
    # A worker holds a job of it: the delete is refused and nothing changes.
    from store import make_engine
    from store.claims import claim_jobs

    engine = make_engine(run.db)
    job = rows(run.db, running)[0]["id"]
    assert claim_jobs(engine, running, [job], "w/1", stale_after_s=60)
    engine.dispose()
    r = run("sweep", "delete", "running", "--yes", code=2)
    assert "the sweep is running (1 job" in r.stderr
    assert sorted(r["status"] for r in rows(run.db, running)) == ["queued", "running"]
    # Without --yes and no terminal to ask on: refused.
    run("sweep", "delete", "gone", code=2)
    assert "deleted with 2 jobs" in run("sweep", "delete", "gone", "--yes").stdout
    assert rows(run.db, gone) == []
    assert query(run.db, "SELECT count(*) AS n FROM loss_curve WHERE sweep_id = :s",
                 s=gone) == [{"n": 0}]
    assert len(rows(run.db, kept)) == 2
    assert {s["name"] for s in run.listed()} == {"kept", "running"}


def test_compare_shows_two_sweeps_best_side_by_side(run):
    a = run.trained("slow", "--lr", "1e-7")
    b = run.trained("fast", "--lr", "1e-6")
    [row] = json.loads(run("compare", "slow", "fast", "--format", "json").stdout)
    best = {s: json.loads(run("best", s, "--format", "json").stdout)[0] for s in (a, b)}
    assert row["variant"] == "numpy"
    assert row["mse_a"] == best[a]["mse"] and row["mse_b"] == best[b]["mse"]
    assert row["lr_a"] == 1e-7 and row["lr_b"] == 1e-6
    assert row["mse_b/a"] == pytest.approx(best[b]["mse"] / best[a]["mse"])
    title = run("compare", "slow", "fast").stdout.splitlines()[0]
    assert title == f"best results per variant: A = sweep slow ({a}), B = sweep fast ({b})"
    run("compare", "slow", "nope", code=2)
