"""``polyfit sweep run`` starts its local worker's interpreter first of all, before it has read
its spec (``scheduler.early``): that worker trains the sweep; one that never gets its orders
leaves nothing behind, however the command ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from scheduler.early import ENV_EARLY, local_flags, wanted
from tests.support import ROOT
from tests.support.processes import polyfit, polyfit_env, processes_with
from tests.support.waiting import wait_for


@pytest.mark.parametrize(("argv", "expected"), [
    (["sweep", "run", "spec.yaml"], True),
    (["--debug", "sweep", "run", "--variant", "numpy"], True),
    (["sweep", "run", "--help"], False),
    (["sweep", "run", "-h"], False),
    (["sweep", "submit", "spec.yaml"], False),
    (["worker"], False),
    (["run", "sweep"], False),
    ([], False),
])
def test_only_a_sweep_run_starts_a_worker_first(argv, expected):
    assert wanted(argv, environ={}) is expected


def test_the_early_start_can_be_turned_off():
    assert not wanted(["sweep", "run"], environ={ENV_EARLY: "0"})
    assert wanted(["sweep", "run"], environ={ENV_EARLY: "1"})


def test_the_early_worker_reads_the_local_workers_flags_itself(tmp_path):
    from scheduler.local import LocalWorkers
    from worker.settings import Settings

    local = LocalWorkers(Settings(), 3, "abc123", log_path=tmp_path / "w.log", token="0f0f0f0f")
    assert local_flags(local.args) == {"--device": "cpu", "--concurrency": "3",
                                       "--loglevel": "WARNING", "--token": "0f0f0f0f",
                                       "--only-sweep": "abc123"}
    # Anything else goes through `polyfit worker`'s own parsing and checks.
    assert local_flags([*local.args, "--gpus", "all"]) is None
    assert local_flags(["--device", "cuda", *local.args[2:]]) is None
    assert local_flags(local.args[:-1]) is None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(db: str) -> int:
    eng = create_engine(db)
    try:
        with eng.connect() as c:
            return c.execute(text("SELECT count(*) FROM jobs WHERE status = 'running'")).scalar()
    except Exception:  # noqa: BLE001 - not made yet
        return 0
    finally:
        eng.dispose()


@pytest.mark.slow
def test_the_worker_started_first_trains_the_sweep(tmp_path):
    mark = f"POLYFIT_TEST_MARK_{uuid.uuid4().hex}"
    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    env = polyfit_env(POLYFIT_DB_URL=db, **{mark: "1"})
    run = subprocess.Popen([sys.executable, "-m", "scheduler", "sweep", "run", "--variant",
                            "numpy", "--seed", "0", "--epochs", "1000000", "--workers", "1"],
                           env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _running(db) == 1, 120, "the job to be in training")
        workers = [p for p in processes_with(mark) if p != run.pid]
        assert any("-m scheduler.early" in _cmdline(p) for p in workers), \
            [_cmdline(p) for p in workers]
        # It is the only worker: none was started a second time once the orders were known.
        assert not any(" worker " in f"{_cmdline(p)} " for p in workers)
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(60)
    wait_for(lambda: not processes_with(mark), 30, "every local worker process to be gone")


@pytest.mark.slow
def test_a_sweep_run_refused_for_bad_input_leaves_no_worker_and_no_log(tmp_path):
    mark = f"POLYFIT_TEST_MARK_{uuid.uuid4().hex}"
    logs = tmp_path / "tmp"
    logs.mkdir()
    env = polyfit_env(TMPDIR=str(logs), **{mark: "1"})
    r = polyfit("sweep", "run", "--variant", "numpy", "--epochs", "-1", env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert not processes_with(mark)  # ended by the command itself, before its exit
    assert not list(logs.glob("polyfit-worker-*.log"))


@pytest.mark.slow
def test_a_worker_started_early_ends_when_its_command_is_killed(tmp_path):
    # The command is killed (SIGKILL: nothing of it runs any more) before the orders are sent.
    script = ("import os, signal, sys\n"
              "from scheduler import early\n"
              "early.prestart(['sweep', 'run'])\n"
              "print(early._early.proc.pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", script], env=polyfit_env(TMPDIR=str(tmp_path)),
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    pid = int(r.stdout.split()[0])

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"

    wait_for(gone, 60, "the early worker to end")


def test_the_early_worker_imports_nothing_that_reads_the_settings():
    # worker.app makes the Celery app from the settings at import: imported before the
    # orders, it would keep the environment the command started with, not the worker's.
    script = ("import importlib, sys\n"
              "from scheduler.early import PRELOAD\n"
              "for m in PRELOAD: importlib.import_module(m)\n"
              "print(sorted(m for m in ('worker.app', 'worker.tasks') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", script], env=polyfit_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_an_early_start_that_cannot_be_made_is_left_to_the_command(monkeypatch):
    # No file for its log: nothing is started, nothing raised; the worker starts later.
    from scheduler import early

    def no_file(**_kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(early.tempfile, "mkstemp", no_file)
    early.prestart(["sweep", "run"])
    assert early.take() is None
