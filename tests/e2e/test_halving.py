"""Successive halving end to end: through ``sweep run`` (embedded broker, local workers) and
through ``sweep submit`` with real workers over Redis and PostgreSQL, no client attached; each
rung ranked once, the same spec giving the same results."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.support.processes import polyfit, polyfit_env
from tests.support.sweeps import submitted_to_a_fleet

pytestmark = pytest.mark.slow

# 8 jobs, rungs of 50, 100, 200 and 400 epochs: 8 -> 4 -> 2 -> 1.
SPEC = """\
x: {points: 40}
grid:
  variant: [autograd]
  optimizer: [adam]
  lr: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2, 0.1, 0.3]
  epochs: [400]
halving: {eta: 2, min_epochs: 50}
"""


def _jobs(url: str, sweep_id: str) -> list[tuple]:
    eng = create_engine(url)
    with eng.connect() as c:
        rows = [tuple(r) for r in c.execute(text(
            "SELECT lr, status, rung, epochs_done, mse, coefficients, attempts FROM jobs "
            "WHERE sweep_id = :s ORDER BY lr"), {"s": sweep_id})]
        states = c.execute(text("SELECT count(*) FROM job_state")).scalar()
    eng.dispose()
    assert states == 0  # nothing left to continue from once the sweep has ended
    return rows


def _check_rungs(rows: list[tuple]) -> None:
    assert sorted((r[1], r[2], r[3]) for r in rows) == sorted(
        [("pruned", 0, 50)] * 4 + [("pruned", 1, 100)] * 2 + [("pruned", 2, 200)]
        + [("succeeded", 3, 400)])
    assert [r[6] for r in rows if r[1] == "pruned"] == [0] * 7  # a rung's end is no attempt
    assert all(r[4] is not None for r in rows)  # a pruned job keeps its rung's mse


def _sweep_id(env, cwd, name: str) -> str:
    listing = polyfit("sweeps", "--format", "csv", env=env, cwd=cwd).stdout
    return next(line.split(",")[0] for line in listing.splitlines() if f",{name}," in line)


def test_sweep_run_runs_a_halving_sweep_to_the_end_reproducibly(tmp_path):
    (tmp_path / "h.yaml").write_text(SPEC)
    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{tmp_path / 'r.sqlite'}")
    got = []
    for name in ("first", "second"):
        r = polyfit("sweep", "run", "h.yaml", "--name", name, "--workers", "2", env=env,
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "7 pruned" in r.stderr and "rung 4/4 (400 epochs)" in r.stderr, r.stderr
        rows = _jobs(env["POLYFIT_DB_URL"], _sweep_id(env, tmp_path, name))
        _check_rungs(rows)
        got.append(rows)
    assert [r[:6] for r in got[0]] == [r[:6] for r in got[1]]
    status = polyfit("status", "second", env=env, cwd=tmp_path)
    assert "1 succeeded" in status.stdout and "7 pruned" in status.stdout
    assert "rung 4/4 (400 epochs)" in status.stdout


def test_the_fleet_finishes_a_submitted_halving_sweep_with_no_client(tmp_path, redis_url,
                                                                     start_worker):
    with submitted_to_a_fleet(tmp_path, "h.yaml", SPEC, redis_url,
                              start_worker) as (url, env, sweep_id):
        status = polyfit("status", sweep_id, "--wait", env=env, cwd=tmp_path, timeout=240)
        assert status.returncode == 0, status.stderr
        assert "rung 4/4" in status.stdout
        _check_rungs(_jobs(url, sweep_id))


def test_sweep_run_runs_a_search_whose_rounds_are_halved(tmp_path):
    pytest.importorskip("optuna")
    spec = SPEC.replace("lr: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2, 0.1, 0.3]",
                        "lr: {log: [1.0e-4, 0.3]}")
    (tmp_path / "s.yaml").write_text(spec + "search: {sampler: random, trials: 16, round: 8}\n")
    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{tmp_path / 'r.sqlite'}")
    r = polyfit("sweep", "run", "s.yaml", "--workers", "2", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "round 2/2, 16/16 trials, search done | rung 4/4" in r.stderr, r.stderr
    eng = create_engine(env["POLYFIT_DB_URL"])
    with eng.connect() as c:
        rounds = c.execute(text(
            "SELECT t.round, j.status, j.rung FROM trials t JOIN jobs j ON j.id = t.job_id"
        )).all()
    eng.dispose()
    for n in (0, 1):  # each round's rungs: 8 -> 4 -> 2 -> 1
        assert sorted((s, g) for k, s, g in rounds if k == n) == sorted(
            [("pruned", 0)] * 4 + [("pruned", 1)] * 2 + [("pruned", 2)] + [("succeeded", 3)])
