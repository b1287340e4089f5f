"""The cores of a host shared by every polyfit training process on it (``worker.cores``): each
takes its share of the cores it may use, a process that died stops counting, and a reused pid
is not taken for the process that had it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker import cores


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv(cores.ENV_FOLDER, str(tmp_path / "cores"))
    started: list[subprocess.Popen] = []

    def process() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        started.append(p)
        cores.register(p.pid)
        return p

    yield process
    for p in started:
        p.kill()
        p.wait()


def test_live_training_processes_share_the_cores(host, monkeypatch):
    monkeypatch.setattr(cores, "usable_cores", lambda: 8)
    cores.register()
    assert cores.live_processes() == 1 and cores.fair_threads() == 8
    others = [host() for _ in range(3)]
    assert cores.live_processes() == 4 and cores.fair_threads() == 2
    others[0].kill()
    others[0].wait()
    assert cores.live_processes() == 3 and cores.fair_threads() == 2  # 8 // 3
    assert not (cores.folder() / str(others[0].pid)).exists()  # the dead one's entry went
    for p in others[1:]:
        cores.unregister(p.pid)
    assert cores.fair_threads() == 8
    [host() for _ in range(20)]
    assert cores.fair_threads() == 1  # never none


def test_a_reused_pid_is_not_taken_for_the_process_that_had_it(host):
    p = host()
    entry = cores.folder() / str(p.pid)
    entry.write_text("1")  # as if this pid had started at boot, and died since
    assert cores.live_processes() == 1 and not entry.exists()


def test_the_share_is_of_the_cores_this_process_may_use():
    assert cores.usable_cores() == len(os.sched_getaffinity(0))


def test_share_cores_sets_the_threads_a_batch_trains_with(host, monkeypatch):
    # A fresh interpreter: its threads are set by share_cores, as a worker's pool process's.
    code = ("import json, torch\n"
            "from worker import cores, runtime\n"
            "from worker.settings import Settings\n"
            "cores.usable_cores = lambda: 8\n"
            "rt = runtime.Runtime(Settings(), 'cpu')\n"
            "print(json.dumps([runtime.share_cores(rt), torch.get_num_threads()]))\n")
    others = [host() for _ in range(3)]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.split("\n")[0] == "[2, 2]"  # 8 cores, 4 training processes
    assert len(list(cores.folder().iterdir())) == 3  # it left when it exited
    assert others


@pytest.mark.slow
def test_two_workers_on_one_host_share_its_cores(tmp_path, redis_url, start_worker):
    # Issue 25: two `polyfit worker --concurrency 1` each sized their threads from the whole
    # machine (2 x 2 threads on 2 cores: 7.8x slower than one worker with 2 processes).
    from tests.support.processes import polyfit_env
    from tests.support.sweeps import submit, wait_done
    from tests.support.waiting import wait_for

    folder = tmp_path / "cores"
    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    settings = dict(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db,
                    POLYFIT_CORES_DIR=str(folder))
    workers = [start_worker("--device", "cpu", "--concurrency", "1", **settings)
               for _ in range(2)]
    env = polyfit_env(**settings)
    sweep_id = submit(env, "--variant", "numpy", "--seed", "0-5", "--epochs", "50")
    wait_done(env, sweep_id)

    def registered() -> set[int]:
        return {int(p.name) for p in folder.iterdir()} if folder.is_dir() else set()

    # Each worker's one pool process is registered (a child of that worker), nothing else.
    pool = wait_for(lambda: len(registered()) == 2 and registered(), 60,
                    "both pool processes to register")
    parents = {int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
               for pid in pool}
    assert parents == {w.proc.pid for w in workers}
    code = ("import os; os.environ['POLYFIT_CORES_DIR'] = %r\n"
            "from worker import cores; print(cores.live_processes())" % str(folder))
    counted = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=env).stdout.strip()
    assert counted == "2"
    # A worker that stops leaves: the other then has the host to itself.
    workers[0].stop(30)  # warm: SIGTERM, killed after 30 s
    wait_for(lambda: len(registered()) == 1, 60, "the stopped worker's process to leave")
