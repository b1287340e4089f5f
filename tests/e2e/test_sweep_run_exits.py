"""`polyfit sweep run` stops its local workers on every way out: a broker that is down or refuses
it, a database that is down, and the normal end. Each run is a real process; afterwards no
process of it (its local worker and that worker's pool) is left."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from tests.support import ROOT
from tests.support.processes import polyfit_env, processes_with
from tests.support.servers import free_port, wait_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def _sweep_run(env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", "sweep", "run", "--variant",
                           "numpy", "--seed", "0-3", "--epochs", "20", "--workers", "2", *extra],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture
def refusing_redis(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
         "--requirepass", "right", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    yield f"redis://:wrong@127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)


@pytest.mark.parametrize("failure", ["broker down", "broker refuses", "database down",
                                     "postgres down", "no failure"])
def test_sweep_run_leaves_no_worker_behind(failure, tmp_path, request):
    mark = f"POLYFIT_TEST_MARK_{uuid.uuid4().hex}"
    settings = {"POLYFIT_DB_URL": f"sqlite:///{tmp_path / 'r.sqlite'}", mark: "1"}
    if failure == "broker down":
        settings["POLYFIT_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    elif failure == "broker refuses":
        settings["POLYFIT_BROKER_URL"] = request.getfixturevalue("refusing_redis")
    elif failure == "database down":
        (tmp_path / "gone.sqlite").mkdir()  # a folder where the file should be
        settings["POLYFIT_DB_URL"] = f"sqlite:///{tmp_path / 'gone.sqlite'}"
    elif failure == "postgres down":
        settings["POLYFIT_DB_URL"] = f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x"
    r = _sweep_run(polyfit_env(**settings))
    if failure == "no failure":
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("Error: "), r.stderr
        assert "Traceback" not in r.stderr
    wait_for(lambda: not processes_with(mark), 30, "every local worker process to be gone")
