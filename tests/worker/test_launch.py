"""Device pinning and routing rules of the worker launcher (no CUDA needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from worker import launch
from worker.queues import ANY, CPU, CUDA, is_device, queue_for, queues_served
from worker.runtime import Runtime
from worker.settings import Settings


def test_each_device_axis_value_has_its_queue():
    assert queue_for("cpu") == CPU and queue_for("any") == ANY and queue_for("cuda") == CUDA
    assert queue_for("cuda:3") == f"{CUDA}.3"
    with pytest.raises(ValueError):
        queue_for("tpu")
    assert is_device("cuda:12") and not is_device("cuda:") and not is_device("gpu")


def test_cpu_workers_never_serve_gpu_queues_and_gpu_workers_serve_their_card():
    assert queues_served("cpu") == [CPU, ANY]
    assert queues_served("cuda", "2") == [CUDA, f"{CUDA}.2", ANY]


def test_parse_gpus():
    assert launch.parse_gpus("all", 3) == [0, 1, 2]
    assert launch.parse_gpus("2,0,2", 3) == [0, 2]
    for bad, n in (("all", 0), ("5", 2), ("x", 2), (",", 2)):
        with pytest.raises(launch.LaunchError):
            launch.parse_gpus(bad, n)


def test_a_gpu_runtime_records_its_physical_card():
    rt = Runtime(Settings(), "cuda", "3")
    assert rt.torch_device() == "cuda:0" and rt.ran_on() == "cuda:3"
    emulated = Runtime(Settings(), "cuda", "3", emulated=True)
    assert emulated.torch_device() == "cpu" and "emulated" in emulated.ran_on()
    assert Runtime(Settings()).ran_on() == "cpu"


def test_pinning_narrows_cuda_visible_devices_to_the_chosen_card(monkeypatch):
    served = {}
    monkeypatch.setenv(launch.ENV_EMULATE_CUDA, "4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setattr(launch, "_serve", lambda s, rt, options: served.update(rt=rt, **options))
    launch.run_gpu_worker(Settings(), 2)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6"
    assert served["rt"].gpu == "6"
    assert f"{CUDA}.6" in served["queues"]
    assert served["pool_cls"] == "solo"  # no fork after CUDA initialization
    with pytest.raises(launch.LaunchError):
        launch.run_gpu_worker(Settings(), 4)


def test_a_worker_process_limits_torch_and_blas_threads_to_its_share():
    # A fresh interpreter whose OpenBLAS starts 2 threads: the limits are process-wide.
    code = ("import json, numpy, torch, threadpoolctl\n"
            "from worker.runtime import apply_threads\n"
            "apply_threads(1)\n"
            "blas = [p['num_threads'] for p in threadpoolctl.threadpool_info()"
            " if p['user_api'] == 'blas']\n"
            "print(json.dumps([torch.get_num_threads(), blas]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    torch_threads, blas = json.loads(out.stdout)
    assert torch_threads == 1
    assert blas and set(blas) == {1}
