"""Every signal that asks a process to stop stops it, and no worker outlives the process that
started it: `polyfit sweep run` sent SIGTERM, SIGHUP, SIGQUIT, SIGINT or SIGKILL; a `polyfit
worker --gpus` launcher sent SIGTERM, SIGHUP or SIGKILL; a `polyfit worker` whose output is a
terminal sent SIGHUP. And a `sweep run` on a broker and database that another user's sweep
shares trains its own sweep only. Real processes, real signals, a real redis-server."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import threading
import uuid

import pytest
from sqlalchemy.exc import OperationalError

from tests.support import ROOT
from tests.support.database import query, rows
from tests.support.processes import alive, children_of, polyfit, polyfit_env, processes_with
from tests.support.sweeps import submit
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

# Four numpy jobs of a few seconds each, one per batch, on two local worker processes: a signal
# sent once one of them runs finds the sweep far from done (a loaded machine only slows it).
SWEEP = ("--variant", "numpy", "--seed", "0-3", "--epochs", "100000", "--batch-size", "1")


def _start_sweep_run(env: dict, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler", "sweep", "run", *SWEEP, "--workers", "2",
         "--name", name], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def _sweep_rows(db_url: str, name: str) -> list[dict]:
    try:
        return query(db_url, "SELECT j.id, j.status, j.attempts, j.finished_at FROM jobs j "
                             "JOIN sweeps s ON s.id = j.sweep_id WHERE s.name = :n "
                             "ORDER BY j.id", n=name)
    except OperationalError:  # no tables yet: the run is starting
        return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT,
                                 signal.SIGKILL], ids=lambda s: s.name)
def test_a_signalled_sweep_run_leaves_no_worker_and_can_be_finished(sig, tmp_path):
    mark = f"POLYFIT_TEST_MARK_{uuid.uuid4().hex}"
    db_url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    # A short heartbeat horizon: after SIGKILL, the jobs the dead run held go back to the
    # queue soon (there is no one left to release them at once).
    env = polyfit_env(POLYFIT_DB_URL=db_url, POLYFIT_STALE_AFTER_S="10", **{mark: "1"})
    run = _start_sweep_run(env, "long")
    try:
        wait_for(lambda: any(r["status"] == "running" for r in _sweep_rows(db_url, "long")),
                 120, "a job of the sweep to run")
        workers = [p for p in processes_with(mark) if p != run.pid]
        assert workers, "no local worker process found"
        run.send_signal(sig)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    if sig == signal.SIGKILL:
        assert run.returncode == -signal.SIGKILL
    else:
        assert run.returncode == 128 + sig, err  # as Ctrl-C: 130
        assert "Traceback" not in err
        assert "finished results are stored" in err, err
    wait_for(lambda: not alive(workers) and not processes_with(mark), 90,
             f"every local worker process to be gone after {sig.name}")

    if sig in (signal.SIGQUIT, signal.SIGINT):
        return  # the same path as SIGTERM from here on
    before = {r["id"]: r["finished_at"] for r in _sweep_rows(db_url, "long")
              if r["finished_at"] is not None}
    again = polyfit("sweep", "run", "long", "--workers", "2", env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    after = _sweep_rows(db_url, "long")
    assert len(after) == 4 and all(r["status"] == "succeeded" for r in after), after
    # What had ended before the signal was not trained again.
    assert {r["id"]: r["finished_at"] for r in after if r["id"] in before} == before
    wait_for(lambda: not processes_with(mark), 60, "every process of the second run to be gone")


# -- the --gpus launcher (GPUs emulated on the CPU, see POLYFIT_EMULATE_CUDA) -----------------

@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP, signal.SIGTERM],
                         ids=lambda s: s.name)
def test_the_per_device_workers_of_a_signalled_gpus_launcher_stop(sig, start_worker,
                                                                  redis_url, db_url):
    launcher = start_worker("--device", "cuda", "--gpus", "0,1", POLYFIT_BROKER_URL=redis_url,
                            POLYFIT_DB_URL=db_url, POLYFIT_EMULATE_CUDA="2")
    per_device = wait_for(lambda: len(c := children_of(launcher.proc.pid)) == 2 and c, 60,
                          "the launcher's two per-device workers")
    os.kill(launcher.proc.pid, sig)  # the launcher only (its workers have sessions of their own)
    launcher.proc.wait(60)
    wait_for(lambda: not alive(per_device), 90,
             f"the per-device workers to stop after {sig.name} of their launcher")


# -- a worker in a terminal -------------------------------------------------------------------

def test_a_worker_whose_terminal_hangs_up_stops_warm_with_its_pool(redis_url, db_url):
    """Celery leaves SIGHUP alone when its output is a terminal: the worker died at once and
    its pool processes lived on."""
    primary, secondary = pty.openpty()
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    env = polyfit_env(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "worker", "--concurrency", "2", "--loglevel",
         "INFO"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=secondary,
        stderr=secondary, start_new_session=True)
    os.close(secondary)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    pool: list[int] = []
    try:
        wait_for(lambda: b" ready." in b"".join(seen), 120, "the worker to be ready")
        pool = children_of(worker.pid)
        assert pool, "no pool process found"
        worker.send_signal(signal.SIGHUP)
        assert worker.wait(60) == 0, b"".join(seen).decode(errors="replace")
        wait_for(lambda: not alive(pool), 60, "the worker's pool processes to stop")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        for pid in alive(pool):
            os.kill(pid, signal.SIGKILL)
        os.close(primary)


# -- a broker and a database shared with another user -----------------------------------------

def test_a_sweep_run_on_a_shared_broker_leaves_other_sweeps_alone(redis_url, redis_server,
                                                                  db_url):
    env = polyfit_env(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    # User B: long jobs in the queue, no worker of theirs running yet.
    theirs = submit(env, "--variant", "numpy", "--seed", "0-3", "--epochs", "500000",
                    "--name", "theirs")
    # User A: a short sweep, run here.
    mine = polyfit("sweep", "run", "--variant", "numpy", "--seed", "0-1", "--epochs", "200",
                   "--workers", "2", "--name", "mine", env=env, timeout=300)
    assert mine.returncode == 0, mine.stderr
    assert "no worker" not in mine.stderr, mine.stderr
    assert all(r["status"] == "succeeded" for r in rows(db_url, query(
        db_url, "SELECT id FROM sweeps WHERE name = 'mine'")[0]["id"]))
    # B's jobs were never taken: not claimed, not killed half-way, their messages still queued.
    assert [(r["status"], r["attempts"]) for r in rows(db_url, theirs)] == [("queued", 0)] * 4
    cli = ["redis-cli", "-p", str(redis_server.port)]
    waiting = subprocess.run([*cli, "llen", "polyfit.cpu"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert waiting == "4"
    # The run's own queue is gone with it.
    left = subprocess.run([*cli, "--scan", "--pattern", "*polyfit.run*"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert left == []
