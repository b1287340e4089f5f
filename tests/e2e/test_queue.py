"""End to end with real processes: a sweep submitted from one process, trained by two real
``polyfit worker`` processes over a real redis-server (and over the embedded no-server broker),
every job stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.support import ROOT
from tests.support.database import query
from tests.support.database import rows as stored_jobs
from tests.support.processes import polyfit, polyfit_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _submit_and_wait(env: dict) -> tuple[str, list[dict]]:
    sub = polyfit("sweep", "submit", "--variant", "numpy,autograd,module", "--seed", "0-7",
                  "--epochs", "300", "--batch-size", "4", env=env)
    assert sub.returncode == 0, sub.stderr
    sweep_id = sub.stdout.split()[-1]
    done = polyfit("status", sweep_id, "--wait", "--json", "--interval", "0.2", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"] is True
    return sweep_id, stored_jobs(env["POLYFIT_DB_URL"], sweep_id)


def test_two_workers_over_redis_store_every_job_exactly_once(redis_url, db_url, start_worker):
    env = polyfit_env(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    for _ in range(2):
        start_worker("--device", "cpu", "--concurrency", "1", POLYFIT_BROKER_URL=redis_url,
                     POLYFIT_DB_URL=db_url)
    sweep_id, rows = _submit_and_wait(env)
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert {r["status"] for r in rows} == {"succeeded"}
    assert all(r["attempts"] == 1 and r["mse"] is not None for r in rows)
    assert len({r["worker"] for r in rows}) == 2  # both workers trained part of it
    assert {r["ran_on"] for r in rows} == {"cpu"}


def test_the_embedded_default_needs_no_server(db_url, start_worker, tmp_path):
    env = polyfit_env(POLYFIT_DB_URL=db_url)
    for _ in range(2):
        start_worker("--device", "cpu", "--concurrency", "1", POLYFIT_DB_URL=db_url)
    sweep_id, rows = _submit_and_wait(env)
    assert len(rows) == 24 and {r["status"] for r in rows} == {"succeeded"}
    assert all(r["attempts"] == 1 for r in rows)
    assert (tmp_path / "results-broker.sqlite").exists()


def test_jobs_stop_at_the_optimum_through_real_workers(tmp_path):
    """``--stop-at-gap``: each job stops once its mse is within the gap, keeps that model,
    records the epoch and counts as succeeded; a dynamic job of the same sweep trains on."""
    env = polyfit_env()
    r = polyfit("sweep", "run", "--variant", "autograd,numpy,dynamic", "--seed", "1-2",
                "--epochs", "3000", "--stop-at-gap", "0.05", "--workers", "1", env=env,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note: dynamic trains every epoch" in r.stderr
    db = f"sqlite:///{tmp_path / 'polyfit.sqlite'}"
    jobs = query(db, "SELECT id, variant, status, stop_gap, stopped_at_epoch, mse, "
                     "optimum_mse FROM jobs")
    assert len(jobs) == 6 and {j["status"] for j in jobs} == {"succeeded"}
    for j in jobs:
        if j["variant"] == "dynamic":
            assert j["stop_gap"] is None and j["stopped_at_epoch"] is None
            continue
        assert j["stop_gap"] == 0.05 and 0 < j["stopped_at_epoch"] < 3000
        assert j["mse"] - j["optimum_mse"] <= 0.05 * 1.001  # judged on float32's loss
        last = query(db, "SELECT max(epoch) AS e FROM loss_curve WHERE job_id = :j",
                     j=j["id"])[0]["e"]
        assert last is None or last <= j["stopped_at_epoch"]
    out = polyfit("results", "--format", "json", env=env, cwd=tmp_path)
    assert {row["stopped_at_epoch"] is not None for row in json.loads(out.stdout)} == {True,
                                                                                        False}


def test_running_jobs_show_their_progress_in_status_results_plot_and_sql(tmp_path):
    """POLYFIT_PROGRESS_S: a worker writes its running jobs' epochs and loss curves so far.
    Observed at a state (a running row with progress), not after a time. The job cannot end
    while the test looks: 10,000,000 epochs (minutes; the work cap raised for it), stopped with
    Ctrl-C at the end (a 200,000-epoch job ended between two of the commands in a CI run)."""
    env = polyfit_env(POLYFIT_PROGRESS_S="1", POLYFIT_MAX_JOB_WORK=str(10**11))
    db = f"sqlite:///{tmp_path / 'polyfit.sqlite'}"
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", "sweep", "run", "--variant",
                             "tensor", "--epochs", "10000000", "--workers", "1", "--name",
                             "long"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def progress_shown() -> list[dict]:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended first: {proc.communicate()}")
        if not (tmp_path / "polyfit.sqlite").exists():
            return []
        try:
            return query(db, "SELECT id, epochs_done FROM jobs WHERE status = 'running' AND "
                             "epochs_done > 0")
        except OperationalError:  # the schema is being made
            return []

    try:
        (running,) = wait_for(progress_shown, 120, "a running job's progress in the store")
        points = query(db, "SELECT count(*) AS n FROM loss_curve WHERE job_id = :j",
                       j=running["id"])[0]["n"]
        assert points >= running["epochs_done"] // 100 > 0
        status = polyfit("status", env=env, cwd=tmp_path)
        assert "1 running (" in status.stdout and "% through)" in status.stdout, status.stdout
        results = polyfit("results", "--status", "running", "--format", "json", env=env,
                          cwd=tmp_path)
        assert json.loads(results.stdout)[0]["epochs_done"] >= running["epochs_done"]
        figure = polyfit("plot", "-o", str(tmp_path / "live.png"), env=env, cwd=tmp_path)
        assert figure.returncode == 0, figure.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_sweep_run_trains_to_the_end_and_prints_the_best(tmp_path):
    env = polyfit_env()
    r = polyfit("sweep", "run", "--variant", "numpy,legendre,dynamic", "--seed", "0-3",
                "--epochs", "200", "--workers", "2", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "best results" in r.stdout
    for variant in ("numpy", "legendre", "dynamic"):
        assert variant in r.stdout
    rows = stored_jobs(f"sqlite:///{tmp_path / 'polyfit.sqlite'}",
                       r.stderr.split("(")[1].split(")")[0])
    assert len(rows) == 12 and all(r["status"] in ("succeeded", "diverged") for r in rows)
    # Running the same sweep again reuses the stored results: nothing is trained twice.
    again = polyfit("sweep", "run", "--variant", "numpy,legendre,dynamic", "--seed", "0-3",
                    "--epochs", "200", "--workers", "1", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "0 to run" in again.stderr
    # However the local workers were stopped, none outlives the command (a killed process
    # may take a moment to be torn down by the kernel).
    deadline = time.monotonic() + 10
    while processes_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_in(tmp_path) == []


def processes_in(directory) -> list[int]:
    """Pids of the live processes whose working directory is ``directory``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == Path(directory):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return pids


def test_a_worker_stops_cleanly_on_sigterm(db_url, start_worker):
    worker = start_worker("--device", "cpu", "--concurrency", "2", POLYFIT_DB_URL=db_url)
    env = polyfit_env(POLYFIT_DB_URL=db_url)
    sweep_id, rows = _submit_and_wait(env)
    assert {r["status"] for r in rows} == {"succeeded"}
    worker.stop(30)  # warm: SIGTERM, killed after 30 s
    # Exit code 0 after Celery's warm shutdown, its last words flushed to the log.
    assert worker.proc.returncode == 0, worker.output()[-2000:]
    assert "Warm shutdown" in worker.output()


def test_ctrl_c_stops_cleanly_keeps_what_finished_and_resume_completes(tmp_path,
                                                                       start_worker):
    import os
    import signal
    import time

    db_url = f"sqlite:///{tmp_path / 'polyfit.sqlite'}"
    env = polyfit_env()
    # One short job, then three long ones (about 7 s each, longer than the 5 s the workers get
    # to stop). The interrupt comes at a state, the short one stored and a long one in hand,
    # so that work is always left (a sweep of equal short jobs could end before the signal
    # arrived: this test failed that way in a clean-clone CI run).
    (tmp_path / "spec.yaml").write_text(
        "name: interrupted\n"
        "grid:\n"
        "  - {variant: [autograd], seed: [0], epochs: [500]}\n"
        "  - {variant: [autograd], seed: [1-3], epochs: [100000]}\n")
    args = ["sweep", "run", "spec.yaml", "--batch-size", "1", "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def short_done_and_long_running() -> bool:
        if not (tmp_path / "polyfit.sqlite").exists():
            return False
        eng = create_engine(db_url)
        try:
            with eng.connect() as c:
                states = dict(c.execute(text("SELECT epochs, status FROM jobs WHERE "
                                             "status IN ('succeeded', 'running')")).all())
        except OperationalError:  # the schema is being made
            return False
        finally:
            eng.dispose()
        return states.get(500) == "succeeded" and states.get(100000) == "running"

    try:
        deadline = time.monotonic() + 120
        while not short_done_and_long_running():
            assert time.monotonic() < deadline, "the sweep never reached the state to interrupt"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "sweep resume" in err
    sweep_id = err.split("(")[1].split(")")[0]
    rows = stored_jobs(db_url, sweep_id)
    finished = {r["id"] for r in rows if r["status"] == "succeeded"}
    assert len(rows) == 4 and 1 <= len(finished) <= 2  # the short one, maybe the one in hand
    assert {r["status"] for r in rows} <= {"succeeded", "queued"}  # nothing left "running"
    # The local worker processes are gone (they ran with their cwd in tmp_path).
    pids = subprocess.run(["pgrep", "-f", "scheduler worker"], capture_output=True,
                          text=True).stdout.split()
    for pid in pids:
        try:
            assert os.readlink(f"/proc/{pid}/cwd") != str(tmp_path)
        except FileNotFoundError:
            pass
    # Resume enqueues exactly the rest; a worker finishes it; finished jobs were not re-run.
    r = polyfit("sweep", "resume", sweep_id, env=polyfit_env(POLYFIT_DB_URL=db_url))
    assert r.returncode == 0 and f"{4 - len(finished)} jobs re-enqueued" in r.stdout
    start_worker("--concurrency", "2", POLYFIT_DB_URL=db_url)
    done = polyfit("status", sweep_id, "--wait", "--json", "--interval", "0.3",
                   env=polyfit_env(POLYFIT_DB_URL=db_url))
    assert done.returncode == 0
    rows = stored_jobs(db_url, sweep_id)
    assert {r["status"] for r in rows} == {"succeeded"}
    assert all(r["attempts"] == 1 for r in rows if r["id"] in finished)


def test_a_plain_celery_worker_serves_the_queue_too(redis_url, db_url, tmp_path):
    """`celery -A worker.app worker` conventions work: settings from the environment."""
    import os
    import signal

    env = polyfit_env(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    with open(tmp_path / "celery.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo",
             "-Q", "polyfit.cpu,polyfit.any", "--loglevel", "INFO"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sub = polyfit("sweep", "submit", "--variant", "numpy,legendre", "--seed", "0-2",
                      "--epochs", "50", env=env)
        sweep_id = sub.stdout.split()[-1]
        done = polyfit("status", sweep_id, "--wait", "--json", "--interval", "0.2", env=env,
                       timeout=120)
        assert done.returncode == 0 and json.loads(done.stdout)["counts"] == {"succeeded": 6}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def peak_rss_mb(pgid: int) -> float:
    """The largest peak resident set (VmHWM) of the live processes of a process group."""
    peak = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            # Fields after the ")" closing the command name: state, ppid, pgrp, ...
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, ValueError, IndexError):
            continue
    return peak


def test_worker_memory_stays_bounded_however_many_jobs_a_message_holds(
        redis_url, db_url, start_worker, tmp_path):
    # 5,000 legendre jobs on 40,000 points in ONE message: trained as one batch they peak at
    # 6.5 GB (measured); the worker trains budget-sized slices and stays near 300 MB.
    worker = start_worker("--device", "cpu", "--concurrency", "1",
                          POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    env = polyfit_env(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    spec = tmp_path / "wide.yaml"
    spec.write_text("x: {points: 40000}\ngrid: {variant: [legendre]}\n")
    sub = polyfit("sweep", "submit", str(spec), "--seed", "0-4999", "--epochs", "1",
                  "--lr", "1e-7", "--batch-size", "5000", env=env)
    assert sub.returncode == 0 and "in 1 batch\n" in sub.stderr + sub.stdout, sub.stderr
    sweep_id = sub.stdout.split()[-1]
    done = polyfit("status", sweep_id, "--wait", "--json", "--interval", "0.5", env=env,
                   timeout=600)
    assert done.returncode == 0 and json.loads(done.stdout)["counts"] == {"succeeded": 5000}
    peak = peak_rss_mb(worker.proc.pid)
    assert 0 < peak < 2048, f"peak RSS {peak:.0f} MB"


def test_sweep_run_of_a_recorded_sweep_trains_what_it_still_needs(tmp_path):
    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{tmp_path / 'polyfit.sqlite'}")
    sub = polyfit("sweep", "submit", "--variant", "numpy", "--seed", "0-3", "--epochs", "30",
                  "--name", "later", env=env)
    assert sub.returncode == 0, sub.stderr
    run = polyfit("sweep", "run", "later", "--workers", "1", env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "best results of sweep later" in run.stdout
    got = stored_jobs(f"sqlite:///{tmp_path / 'polyfit.sqlite'}", sub.stdout.split()[-1])
    assert [r["status"] for r in got] == ["succeeded"] * 4
    # Not a file and not a sweep: one line that says so.
    missing = polyfit("sweep", "run", "nothing-here", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "no spec file or sweep 'nothing-here'" in missing.stderr


def test_a_worker_makes_the_results_tables_when_it_starts(tmp_path, start_worker):
    # Before, a worker started ahead of the first sweep found no tables, and its reaper
    # complained every round until a sweep was submitted.
    db = f"sqlite:///{tmp_path / 'new.sqlite'}"
    w = start_worker("--concurrency", "1", POLYFIT_DB_URL=db)
    wait = time.monotonic() + 60
    while " ready." not in w.output():
        assert time.monotonic() < wait and w.proc.poll() is None, w.output()
        time.sleep(0.2)
    tables = {r["name"] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "sweeps", "loss_curve"} <= tables


def _live(db_url: str) -> list[dict]:
    return query(db_url, "SELECT name, device, processes FROM workers")


def test_a_submit_cuts_a_sweep_for_the_workers_that_are_up(redis_url, db_url, start_worker):
    """A warm fleet of one worker with two processes trains a 64-job sweep as two batches of
    32 (one per process), not eight of 8; a warm stop takes the worker off the list."""
    env = polyfit_env(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    # No worker noted yet: the default cut.
    first = polyfit("sweep", "submit", "--variant", "numpy", "--seed", "0-63", "--epochs",
                    "10", "--name", "before", env=env)
    assert first.returncode == 0, first.stderr
    assert "in 8 batches" in first.stdout
    w = start_worker("--device", "cpu", "--concurrency", "2", POLYFIT_BROKER_URL=redis_url,
                     POLYFIT_DB_URL=db_url)
    (noted,) = wait_for(lambda: _live(db_url), 120, "the worker noted on the fleet's list")
    assert noted["device"] == "cpu" and noted["processes"] == 2
    second = polyfit("sweep", "submit", "--variant", "numpy", "--seed", "100-163", "--epochs",
                     "10", "--name", "after", env=env)
    assert second.returncode == 0, second.stderr
    assert "in 2 batches" in second.stdout
    w.stop(30)
    assert _live(db_url) == []
