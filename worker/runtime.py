"""Per-process state of a worker: its device (decided once, at start), its torch thread count,
its identity, and its database engine (created lazily in each pool process, never shared across
a fork). The state lives here, not in the Celery app's configuration: ``celery inspect conf``
and ``celery report`` show that configuration to anyone who reaches the broker, and the
settings hold the database URL with its password."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from sqlalchemy import Engine

from store.db import shared_engine
from worker.settings import Settings


@dataclass(frozen=True)
class Runtime:
    """What a worker process is: its settings, device and the GPU it is pinned to."""

    settings: Settings
    # "cpu" or "cuda" (a cuda worker sees only its pinned GPU, as cuda:0).
    device: str = "cpu"
    # The physical GPU this process is pinned to, recorded in each job row.
    gpu: str | None = None
    torch_threads: int | None = None
    # Test seam for fleets on machines without CUDA (POLYFIT_EMULATE_CUDA): the worker serves
    # the GPU queues and pins itself as a GPU worker would, but trains on the CPU and says so
    # in every job row it writes.
    emulated: bool = False
    # A ``sweep run``'s local worker: (its sweep, its private queue), the one queue it reads;
    # the jobs of that sweep its reaper puts back go there (see ``worker.queues.route``).
    private: tuple[str, str] | None = None

    def serves(self) -> tuple[str, ...]:
        """The ``device`` values of the jobs this worker may claim: a CPU worker never takes a
        job meant for a GPU, whatever queue its message came through, nor a GPU worker one
        meant for another card."""
        if self.device != "cuda":
            return ("cpu", "any")
        return ("cuda", "any") if self.gpu is None else ("cuda", f"cuda:{self.gpu}", "any")

    def torch_device(self) -> str:
        return "cuda:0" if self.device == "cuda" and not self.emulated else "cpu"

    def versions(self) -> str:
        """What trains here, as the JSON text a result row keeps (``JobRecord.versions``)."""
        return _versions(self.torch_device() if not self.emulated else "cpu")

    def ran_on(self) -> str:
        if self.device != "cuda":
            return self.device
        where = f"cuda:{self.gpu}" if self.gpu is not None else "cuda"
        return f"{where} (emulated on cpu)" if self.emulated else where


@functools.cache
def _versions(device: str) -> str:
    """polyfit's, torch's, NumPy's and Python's versions, the host and the device's model (once
    per process and device)."""
    import json
    import platform
    import socket
    from importlib import metadata

    import numpy
    import torch

    try:
        polyfit = metadata.version("polyfit")
    except metadata.PackageNotFoundError:
        polyfit = "unknown"
    if device.startswith("cuda"):
        model = torch.cuda.get_device_name(torch.device(device))
    else:
        model = _cpu_model() or platform.machine()
    return json.dumps({"polyfit": polyfit, "torch": torch.__version__,
                       "numpy": numpy.__version__, "python": platform.python_version(),
                       "host": socket.gethostname(), "device": f"{device}: {model}"},
                      separators=(",", ":"))


def _cpu_model() -> str | None:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    """Make ``runtime`` this process's runtime (at the process edge, before the worker starts;
    prefork children inherit it)."""
    global _current
    _current = runtime


def current() -> Runtime:
    """This process's runtime: the one installed, else one from the environment (a worker
    started by ``celery -A worker.app worker`` trains on the CPU with torch's threads)."""
    global _current
    if _current is None:
        _current = Runtime(settings=Settings.from_env())
    return _current


def engine_for(settings: Settings) -> Engine:
    """This process's engine for the results database (one per process, made after any fork)."""
    return shared_engine(settings.db_url)


_shared: dict[int, int] = {}  # pid -> the threads last applied by share_cores


def share_cores(rt: Runtime) -> int | None:
    """Give this training process its fair share of the host's cores (``worker.cores``: every
    polyfit training process of the host counts), recounted before each batch since workers
    come and go; the threads it now has, or None for a GPU worker (its threads do not train).
    The first call registers the process; it is unregistered when it exits."""
    if rt.device == "cuda" and not rt.emulated:
        return None
    from worker import cores

    pid = os.getpid()
    if pid not in _shared:
        cores.register(pid)
        import atexit

        atexit.register(cores.unregister, pid)
        _shared[pid] = 0
    threads = cores.fair_threads()
    if rt.torch_threads:  # a share set for this worker's processes: never above it
        threads = min(threads, rt.torch_threads)
    if threads != _shared[pid]:
        apply_threads(threads)
        _shared[pid] = threads
    return threads


def apply_threads(threads: int | None) -> None:
    """Give this process its share of the cores, so N workers on one machine do not
    oversubscribe them: torch's intra-op threads, and the BLAS that NumPy brought (OpenBLAS
    starts one thread per core in every process; two such processes on two cores spend more
    time contending than computing: the ``numpy`` variant's 1024-job sweep trained 4x slower)."""
    if threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(limits=threads, user_api="blas")
