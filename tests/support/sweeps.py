"""Sweeps for the tests: the shared grids, a sweep recorded and trained in this process as
``polyfit sweep submit`` and a worker would, and the scheduler's CLI run in this process against
real workers."""

from __future__ import annotations

import time
from contextlib import contextmanager

from click.testing import CliRunner

from polyfit_models import JobSpec, batch_key, fit_many
from scheduler.cli import cli as polyfit_cli
from scheduler.plan import build_plan
from store import create_schema, make_engine
from store.recording import save_sweep
from store.records import ENDED
from tests.support.database import rows
from tests.support.waiting import wait_for
from worker.execute import run_batch
from worker.payload import Batch
from worker.runtime import Runtime
from worker.settings import Settings

# numpy diverges at lr 1e-4, and at degree 4 at 1e-6 too; the others converge at different
# speeds. 18 jobs of 300 epochs. (A diverged job keeps the mse of its last finite model.)
GRID = [
    {"variant": ["numpy"], "lr": [1e-6, 1e-4], "degree": [3, 4], "seed": [0, 1],
     "epochs": [300]},
    {"variant": ["legendre"], "lr": [5e-6], "degree": [3], "seed": [0, 1], "epochs": [300]},
    {"variant": ["module"], "optimizer": ["adam"], "lr": [1e-3, 1e-2], "degree": [3],
     "seed": [0, 1], "epochs": [300]},
    {"variant": ["dynamic"], "optimizer": ["momentum"], "lr": [1e-8], "degree": [4, 5],
     "seed": [0, 1], "epochs": [300]},
]

# Every variant, for what shows a sweep (the dashboard, the plot); numpy over lr x degree: at
# lr 1e-4 every job diverges before its first recorded loss, at 3.6e-6 those of degree 3
# diverge late (around epoch 300: their curves end with a cross). 24 jobs.
EVERY_VARIANT = [
    {"variant": ["numpy"], "lr": [1e-6, 3.6e-6, 1e-4], "degree": [2, 3], "seed": [0, 1],
     "epochs": [400]},
    {"variant": ["tensor", "autograd", "legendre"], "lr": [1e-6], "degree": [3],
     "seed": [0, 1], "epochs": [200]},
    {"variant": ["module"], "optimizer": ["adam"], "lr": [1e-2], "degree": [3],
     "seed": [0, 1], "epochs": [200]},
    {"variant": ["dynamic"], "optimizer": ["momentum"], "lr": [1e-8], "degree": [4, 5],
     "seed": [0, 1], "epochs": [200]},
]


def record_sweep(db_url: str, grid=GRID, name: str = "demo", x_points: int = 2000):
    """Record a sweep as ``polyfit sweep submit`` does; returns (sweep id, jobs), untrained."""
    plan = build_plan({"name": name, "grid": grid,
                       "x": {"start": -3.141592653589793, "stop": 3.141592653589793,
                             "points": x_points}})
    engine = make_engine(db_url)
    create_schema(engine)
    save_sweep(engine, plan.sweep_id, plan.name, plan.spec,
                          [j.row() for j in plan.jobs])
    engine.dispose()
    return plan.sweep_id, sorted(plan.jobs, key=lambda j: (str(batch_key(j.spec)), j.id))


def train(db_url: str, sweep_id: str, jobs) -> dict:
    """Train these jobs (planned jobs or ids) as a worker would (claim, fit, store)."""
    batch = Batch(sweep_id, "cpu", tuple(getattr(j, "id", j) for j in jobs))
    return run_batch(batch, Runtime(settings=Settings(db_url=db_url)), "test-worker@host/1")


def finished_sweep(db_url: str, grid=GRID, name: str = "demo") -> str:
    sweep_id, jobs = record_sweep(db_url, grid, name)
    train(db_url, sweep_id, jobs)
    return sweep_id


def numpy_epochs_per_second() -> int:
    """numpy-variant epochs (default settings) that take about a second on one core here."""
    spec = JobSpec.create("numpy", epochs=4000)
    fit_many([spec], "cpu")
    t = time.perf_counter()
    fit_many([spec], "cpu")
    return max(1000, int(4000 / (time.perf_counter() - t)))


# -- the scheduler in this process, against real workers -----------------------------------------

def cli(env: dict, *args: str):
    """The scheduler side in this process (its start-up is paid once); workers are real."""
    settings = {k: env.get(k) for k in ("POLYFIT_DB_URL", "POLYFIT_BROKER_URL",
                                        "POLYFIT_STALE_AFTER_S", "POLYFIT_MAX_RETRIES")}
    return CliRunner().invoke(polyfit_cli, list(args), env=settings, catch_exceptions=False)


def submit(env: dict, *args: str) -> str:
    r = cli(env, "sweep", "submit", "--batch-size", "1", *args)
    assert r.exit_code == 0, r.output
    return r.stdout.split()[-1]


def wait_done(env: dict, sweep_id: str, timeout: float = 150) -> list[dict]:
    return wait_for(lambda: (got := rows(env["POLYFIT_DB_URL"], sweep_id))
                    and all(r["status"] in ENDED for r in got) and got,
                    timeout, f"sweep {sweep_id} to end")


@contextmanager
def submitted_to_a_fleet(tmp_path, spec_file: str, spec: str, redis_url: str, start_worker,
                         workers: int = 2):
    """``spec`` written to ``tmp_path/spec_file`` and submitted with no client left to finish
    it (one job a batch) over Redis and a fresh PostgreSQL schema, then ``workers`` workers of
    one process started: yields (database URL, environment, sweep id). One job a batch and two
    workers make a round's or a rung's last two results often land together."""
    from tests.support.processes import polyfit, polyfit_env
    from tests.support.servers import pg_schema

    (tmp_path / spec_file).write_text(spec)
    with pg_schema() as url:
        settings = {"POLYFIT_DB_URL": url, "POLYFIT_BROKER_URL": redis_url}
        env = polyfit_env(**settings)
        sub = polyfit("sweep", "submit", spec_file, "--batch-size", "1", env=env, cwd=tmp_path)
        assert sub.returncode == 0, sub.stderr
        for _ in range(workers):
            start_worker("--concurrency", "1", **settings)
        yield url, env, sub.stdout.split()[-1]
