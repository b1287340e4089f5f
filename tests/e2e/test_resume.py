"""A `polyfit sweep run` stopped by its user keeps the work of the batch it was training: the
batch stops at its next epoch boundary, its jobs go back to the queue with their training
state and without spending an attempt, and a rerun continues them to exactly the result of a
run that was never stopped. Real processes, a real SIGINT, real SQLite files."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from sqlalchemy.exc import OperationalError

from tests.support import ROOT
from tests.support.database import query
from tests.support.processes import polyfit, polyfit_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

# Adam: its moments and step count carried over (every variant and rule is checked bit for bit
# in tests/polyfit_models/test_models_resume.py). One batch of four jobs, long enough (seconds)
# that a stop asked once progress shows lands mid-batch.
SPEC = """\
name: stopped
x: {start: -3.141592653589793, stop: 3.141592653589793, points: 200}
grid:
  variant: [tensor]
  optimizer: [adam]
  lr: [1.0e-3, 2.0e-3]
  seed: [0, 1]
  epochs: [100000]
"""
RUN = ("sweep", "run", "--workers", "1", "--batch-size", "4")
RESULT = ("SELECT id, status, mse, final_loss, coefficients, attempts, epochs_done "
          "FROM jobs ORDER BY id")


def _rows(db_url: str, sql: str) -> list[dict]:
    try:
        return query(db_url, sql)
    except OperationalError:  # no tables yet: the run is starting
        return []


def test_a_user_stopped_sweep_continues_to_the_bits_of_an_uninterrupted_run(tmp_path):
    spec = tmp_path / "stopped.yaml"
    spec.write_text(SPEC)
    whole_db = f"sqlite:///{tmp_path / 'whole.sqlite'}"
    whole = polyfit(*RUN, str(spec), env=polyfit_env(POLYFIT_DB_URL=whole_db), timeout=300)
    assert whole.returncode == 0, whole.stderr

    db_url = f"sqlite:///{tmp_path / 'stopped.sqlite'}"
    env = polyfit_env(POLYFIT_DB_URL=db_url, POLYFIT_PROGRESS_S="1")
    run = subprocess.Popen([sys.executable, "-m", "scheduler", *RUN, str(spec)], env=env,
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any((r["epochs_done"] or 0) > 0 for r in _rows(db_url, RESULT)), 120,
                 "the batch to report epochs done")
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130 and "Traceback" not in err, err
    stopped = _rows(db_url, RESULT)
    assert [(r["status"], r["attempts"]) for r in stopped] == [("queued", 0)] * 4, stopped
    states = _rows(db_url, "SELECT job_id, epoch FROM job_state")
    assert len(states) == 4 and len({s["epoch"] for s in states}) == 1, states
    assert 0 < states[0]["epoch"] < 100000

    again = polyfit(*RUN, str(spec), env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _rows(db_url, RESULT) == _rows(whole_db, RESULT)  # mse, coefficients, attempts: 1
    curve = "SELECT job_id, epoch, loss FROM loss_curve ORDER BY job_id, epoch"
    assert _rows(db_url, curve) == _rows(whole_db, curve)
    assert _rows(db_url, "SELECT * FROM job_state") == []


def test_a_fleet_worker_stopped_warm_hands_its_batch_to_the_next_worker_at_once(
        tmp_path, redis_url, start_worker):
    """A process manager stops a `polyfit worker` (SIGTERM) mid-batch: the jobs go back to the
    queue with their states and the message back to the broker, so the next worker continues
    them without waiting for the reaper (which, with an hour's ``stale_after_s``, never runs
    in this test)."""
    spec = tmp_path / "stopped.yaml"
    spec.write_text(SPEC)
    db_url = f"sqlite:///{tmp_path / 'fleet.sqlite'}"
    settings = {"POLYFIT_DB_URL": db_url, "POLYFIT_BROKER_URL": redis_url,
                "POLYFIT_PROGRESS_S": "1", "POLYFIT_STALE_AFTER_S": "3600"}
    first = start_worker("--concurrency", "1", **settings)
    sub = polyfit("sweep", "submit", str(spec), "--batch-size", "4", env=polyfit_env(**settings),
                  timeout=120)
    assert sub.returncode == 0, sub.stderr
    wait_for(lambda: any((r["epochs_done"] or 0) > 0 for r in _rows(db_url, RESULT)), 120,
             "the batch to report epochs done")
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(120)
    stopped = _rows(db_url, RESULT)
    assert [(r["status"], r["attempts"]) for r in stopped] == [("queued", 0)] * 4, stopped
    epoch = _rows(db_url, "SELECT DISTINCT epoch FROM job_state")
    assert len(epoch) == 1 and 0 < epoch[0]["epoch"] < 100000

    start_worker("--concurrency", "1", **settings)
    wait_for(lambda: [r["status"] for r in _rows(db_url, RESULT)] == ["succeeded"] * 4, 240,
             "the next worker to finish the handed-back jobs")
    assert [r["attempts"] for r in _rows(db_url, RESULT)] == [1] * 4
    assert _rows(db_url, "SELECT * FROM job_state") == []
