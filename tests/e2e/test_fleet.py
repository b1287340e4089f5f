"""A fleet on the CPU: a CPU worker and a two-GPU worker launcher (emulated, this machine has no
CUDA) as real processes; routing checked job by job from the database."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.database import rows as stored_rows
from tests.support.processes import polyfit, polyfit_env

pytestmark = pytest.mark.slow


def rows(db_url: str, sweep_id: str) -> list[dict]:
    return stored_rows(db_url, sweep_id, "variant, device, status, ran_on, worker")


def submit(env, *args) -> str:
    r = polyfit("sweep", "submit", "--epochs", "20", "--batch-size", "2", *args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


def wait_done(env, sweep_id) -> None:
    r = polyfit("status", sweep_id, "--wait", "--json", "--interval", "0.2", env=env,
                timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["done"], r.stderr


def test_jobs_are_routed_to_the_devices_they_ask_for(redis_url, db_url, start_worker):
    env = polyfit_env(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    start_worker("--device", "cpu", "--concurrency", "1", POLYFIT_BROKER_URL=redis_url,
                 POLYFIT_DB_URL=db_url)
    sweep_id = submit(env, "--variant", "numpy,autograd", "--seed", "0-3",
                      "--device", "cpu,cuda,cuda:1")

    # With only a CPU worker, CPU jobs finish and GPU jobs wait: never silently on the CPU.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = rows(db_url, sweep_id)
        if all(r["status"] == "succeeded" for r in got if r["device"] == "cpu"):
            break
        time.sleep(0.3)
    time.sleep(1.0)
    got = rows(db_url, sweep_id)
    cpu = [r for r in got if r["device"] == "cpu"]
    gpu = [r for r in got if r["device"] != "cpu"]
    assert len(cpu) == 8 and all(r["status"] == "succeeded" and r["ran_on"] == "cpu"
                                 for r in cpu)
    assert len(gpu) == 8 and all(r["status"] == "queued" for r in gpu)  # numpy: no cuda jobs
    assert {r["variant"] for r in gpu} == {"autograd"}

    # One launcher, one pinned worker process per GPU.
    start_worker("--device", "cuda", "--gpus", "0,1", POLYFIT_BROKER_URL=redis_url,
                 POLYFIT_DB_URL=db_url, POLYFIT_EMULATE_CUDA="2")
    wait_done(env, sweep_id)
    for r in rows(db_url, sweep_id):
        assert r["status"] == "succeeded"
        if r["device"] == "cuda:1":
            assert r["ran_on"].startswith("cuda:1 ")
        elif r["device"] == "cuda":
            assert r["ran_on"].startswith(("cuda:0 ", "cuda:1 "))
    gpu_workers = {r["worker"] for r in rows(db_url, sweep_id) if r["device"] != "cpu"}
    assert all(w.startswith("polyfit-cuda") for w in gpu_workers)

    # `any` goes to whichever worker is free; numpy always runs on a CPU.
    any_id = submit(env, "--variant", "numpy,autograd", "--seed", "10-17", "--device", "any")
    wait_done(env, any_id)
    got = rows(db_url, any_id)
    assert all(r["ran_on"] == "cpu" for r in got if r["variant"] == "numpy")
    assert all(r["status"] == "succeeded" for r in got)


def test_worker_without_cuda_exits_2_with_one_line(tmp_path):
    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{tmp_path / 'r.sqlite'}")
    r = polyfit("worker", "--device", "cuda:0", env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no CUDA device" in r.stderr
