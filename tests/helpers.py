"""Helpers the test modules share (test modules never import each other): reading rows with
plain SQL, waiting for a state, running the scheduler in this process or as a real process,
recording and training a sweep as a worker would, and store rows and results to write."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from polyfit_models import batch_key
from scheduler.cli import cli as polyfit_cli
from scheduler.plan import build_plan
from store import create_schema, make_engine
from store import jobs as store_jobs
from store.records import ENDED
from tests.conftest import ROOT
from worker.execute import run_batch
from worker.payload import Batch
from worker.runtime import Runtime
from worker.settings import Settings

# -- reading and waiting -----------------------------------------------------------------------


def query(db_url: str, sql: str, **params) -> list[dict]:
    """Rows of a plain SQL query, as dicts (a fresh engine: nothing of polyfit's in between)."""
    eng = create_engine(db_url)
    try:
        with eng.connect() as c:
            return [dict(r) for r in c.execute(text(sql), params).mappings()]
    finally:
        eng.dispose()


def rows(db_url: str, sweep_id: str,
         columns: str = "id, status, attempts, worker, mse, error, ran_on") -> list[dict]:
    """``columns`` of the sweep's rows in the jobs table, by id."""
    return query(db_url, f"SELECT {columns} FROM jobs WHERE sweep_id = :s ORDER BY id",
                 s=sweep_id)


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    """Poll ``predicate`` until it returns something true, and return that (a state, not a
    time: the timeout only bounds a test that would otherwise hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def processes_with(mark: str) -> list[int]:
    """Pids of live processes (zombies left out) whose environment carries ``mark``: a test
    puts a unique variable in a command's environment, and its children inherit it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if mark.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    """Pids of the live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pids) -> list[int]:
    """Those of ``pids`` that are still running (not gone, not zombies)."""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            left.append(pid)
    return left


# -- the scheduler -----------------------------------------------------------------------------

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


def polyfit(*args: str, env: dict, cwd=None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``polyfit ARGS`` as a real process."""
    return subprocess.run([sys.executable, "-m", "scheduler", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


# -- sweeps recorded and trained in this process -----------------------------------------------

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


def record_sweep(db_url: str, grid=GRID, name: str = "demo", x_points: int = 2000):
    """Record a sweep as ``polyfit sweep submit`` does; returns (sweep id, jobs), untrained."""
    plan = build_plan({"name": name, "grid": grid,
                       "x": {"start": -3.141592653589793, "stop": 3.141592653589793,
                             "points": x_points}})
    engine = make_engine(db_url)
    create_schema(engine)
    store_jobs.save_sweep(engine, plan.sweep_id, plan.name, plan.spec,
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


# -- store rows and results --------------------------------------------------------------------

def job_row(i: int, **kw) -> dict:
    """A job row as the scheduler records it (numpy, small), with ``kw`` changed."""
    row = {"id": f"job{i:04d}", "variant": "numpy", "lr": 1e-6, "degree": 3, "seed": i,
           "epochs": 10, "optimizer": "sgd", "device": "cpu", "target": "sin",
           "dtype": "float64", "x_start": -3.14, "x_stop": 3.14, "x_points": 100}
    row.update(kw)
    return row


def fit_result(status="succeeded", **kw) -> dict:
    """An outcome as a worker stores it, with ``kw`` changed."""
    out = {"status": status, "final_loss": 1.5, "mse": 0.01, "optimum_mse": 0.005,
           "coefficients": [0.1, 0.2], "monomial": [0.1, 0.2], "diverged_at_epoch": None,
           "duration_s": 0.1, "loss_curve": [[99, 3.0], [199, 2.0]]}
    out.update(kw)
    return out


def race(step, n: int = 4) -> list:
    """``step()`` in ``n`` threads let go at once (as workers storing their last results
    together); what each returned. An exception in any of them fails the race."""
    barrier, got, errors = threading.Barrier(n), [], []

    def run() -> None:
        barrier.wait()
        try:
            got.append(step())
        except Exception as e:  # noqa: BLE001 - reported below, a lost race must not raise
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return got
