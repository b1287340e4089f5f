"""A TPE search end to end: through ``sweep run`` (embedded broker, local workers) and through
``sweep submit`` with real workers over Redis and PostgreSQL, no client attached; each round
asked and enqueued once, the same spec and seed asking for the same jobs."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.support.processes import polyfit, polyfit_env
from tests.support.sweeps import submitted_to_a_fleet
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
pytest.importorskip("optuna")

SPEC = """\
x: {points: 100}
grid:
  variant: [autograd]
  lr: {log: [1.0e-7, 1.0e-5]}
  degree: [3, 4, 5]
  epochs: [50]
search: {sampler: tpe, trials: 12, round: 4, seed: 0}
"""


def _search(url: str, sweep_id: str) -> tuple[tuple, list[tuple]]:
    eng = create_engine(url)
    with eng.connect() as c:
        state = tuple(c.execute(text("SELECT round, state FROM searches WHERE sweep_id = :s"),
                                {"s": sweep_id}).one())
        trials = [tuple(r) for r in c.execute(text(
            "SELECT t.number, t.round, t.params, j.status, j.attempts FROM trials t JOIN jobs j "
            "ON j.sweep_id = t.sweep_id AND j.id = t.job_id WHERE t.sweep_id = :s "
            "ORDER BY t.number"), {"s": sweep_id})]
    eng.dispose()
    return state, trials


def test_sweep_run_runs_a_tpe_search_to_the_end_reproducibly(tmp_path):
    (tmp_path / "tpe.yaml").write_text(SPEC)
    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{tmp_path / 'r.sqlite'}")
    got = []
    for name in ("first", "second"):
        r = polyfit("sweep", "run", "tpe.yaml", "--name", name, "--workers", "2", env=env,
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "round 3/3, 12/12 trials, search done" in r.stderr
        sweep_id = polyfit("sweeps", "--format", "csv", env=env, cwd=tmp_path).stdout
        sweep_id = next(line.split(",")[0] for line in sweep_id.splitlines()
                        if f",{name}," in line)
        state, trials = _search(env["POLYFIT_DB_URL"], sweep_id)
        assert state == (3, "done")
        assert [t[1] for t in trials] == [0] * 4 + [1] * 4 + [2] * 4
        assert {t[3] for t in trials} <= {"succeeded", "diverged"}
        got.append([t[2] for t in trials])
    assert got[0] == got[1]  # the same spec and seed asked the same jobs, every round
    status = polyfit("status", "second", env=env, cwd=tmp_path)
    assert "tpe round 3/3, 12/12 trials, search done" in status.stdout


def test_the_fleet_finishes_a_submitted_search_with_no_client(tmp_path, redis_url,
                                                              start_worker):
    with submitted_to_a_fleet(tmp_path, "tpe.yaml", SPEC, redis_url,
                              start_worker) as (url, env, sweep_id):
        wait_for(lambda: _search(url, sweep_id)[0][1] != "running", 240, "the search to end")
        state, trials = _search(url, sweep_id)
        assert state == (3, "done")
        assert len(trials) == 12 and [t[0] for t in trials] == list(range(12))
        assert {t[3] for t in trials} <= {"succeeded", "diverged"}
        assert {t[4] for t in trials} == {1}  # every job claimed once
        status = polyfit("status", sweep_id, "--wait", env=env, cwd=tmp_path)
        assert status.returncode == 0 and "search done" in status.stdout
