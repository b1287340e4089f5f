"""Starting workers: one Celery worker pinned to one device, or one process per GPU.

The device is decided here, once, before anything touches CUDA: a GPU worker process gets
``CUDA_VISIBLE_DEVICES`` set to its one GPU and uses the ``solo`` pool, so nothing ever forks
after CUDA is initialized. CPU workers use the prefork pool and share the cores between their
pool processes' torch threads."""

from __future__ import annotations

import logging
import os
import secrets
import sys

from celery import signals
from celery.utils.log import mlevel
from celery.utils.nodenames import default_nodename, host_format

from polyfit_models.errors import BadInput
from polyfit_models.fuse_settings import INDUCTOR_CACHE
from polyfit_models.registry import plugin_names
from worker import runtime, stopping
from worker.processes import WorkerProcess, forwarding
from worker.queues import queues_served, run_queue
from worker.runtime import Runtime
from worker.settings import Settings


class LaunchError(BadInput):
    """Raised when a worker cannot be started as asked (e.g. no CUDA device)."""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


ENV_EMULATE_CUDA = "POLYFIT_EMULATE_CUDA"


def emulated_gpus() -> int:
    """How many GPUs to pretend this machine has (tests of fleet routing without CUDA)."""
    raw = os.environ.get(ENV_EMULATE_CUDA, "")
    return int(raw) if raw.isdigit() else 0


def cuda_device_count() -> int:
    if emulated_gpus():
        return emulated_gpus()
    # NVML-based count: does not initialize CUDA in this (possibly forking) process.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_gpus(gpus: str, available: int) -> list[int]:
    if gpus == "all":
        if available == 0:
            raise LaunchError("no CUDA device on this machine")
        return list(range(available))
    try:
        chosen = [int(g) for g in gpus.split(",") if g.strip() != ""]
    except ValueError as e:
        raise LaunchError(f"--gpus must be 'all' or a list like 0,1, got {gpus!r}") from e
    if not chosen:
        raise LaunchError("--gpus names no GPU")
    bad = [g for g in chosen if not 0 <= g < available]
    if bad:
        raise LaunchError(f"no CUDA device {bad[0]} on this machine ({available} visible)")
    return sorted(set(chosen))


def node_name(device: str, token: str, pid: int | None = None) -> str:
    """The worker's Celery node name (``%h``: the host), which is also its identity in the
    store (each process writes ``NAME/PID`` in the rows it holds): the device, the worker's
    pid, and a random token, so that two workers with the same pid (in two containers, say)
    never share an identity, even on hosts with the same name."""
    return f"polyfit-{device.replace(':', '')}-{pid or os.getpid()}-{token}@%h"


def new_token() -> str:
    return secrets.token_hex(4)


def worker_options(device: str, queues: list[str], concurrency: int, loglevel: str,
                   token: str | None = None) -> dict:
    """The Celery worker's options, as ``celery worker -Q QUEUES -n NAME -l LEVEL -E
    --without-gossip --without-mingle -P POOL [-c N]`` would pass them to ``app.Worker``. The
    worker is made from code rather than through Celery's command line, whose imports (click
    plugins, a REPL, every subcommand) cost a fifth of a second of each worker's start."""
    pool = {"pool_cls": "prefork", "concurrency": concurrency} if device == "cpu" else \
        {"pool_cls": "solo"}
    return {"hostname": host_format(default_nodename(node_name(device, token or new_token()))),
            "queues": list(queues), "loglevel": mlevel(loglevel), "task_events": True,
            "without_gossip": True, "without_mingle": True, "optimization": "default", **pool}


def run_cpu_worker(settings: Settings, concurrency: int | None, loglevel: str = "WARNING",
                   token: str | None = None, only_sweep: str | None = None) -> None:
    """Serve the CPU queues in this process until stopped (blocks); ``only_sweep`` (with
    ``token``): a ``sweep run``'s local worker, which reads that run's own queue only."""
    concurrency = concurrency or cpu_count()
    threads = max(1, cpu_count() // concurrency)
    private = (only_sweep, run_queue(only_sweep, token)) if only_sweep and token else None
    queues = [private[1]] if private else queues_served("cpu", plugins=plugin_names())
    _serve(settings, Runtime(settings, "cpu", None, threads, private=private), worker_options(
        "cpu", queues, concurrency, loglevel, token))


def run_gpu_worker(settings: Settings, gpu: int, loglevel: str = "WARNING",
                   token: str | None = None) -> None:
    """Serve the GPU queues pinned to physical GPU ``gpu`` in this process (blocks)."""
    available = cuda_device_count()
    if not 0 <= gpu < available:
        raise LaunchError(f"no CUDA device cuda:{gpu} on this machine ({available} visible)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",")[gpu].strip() if visible else str(gpu)
    # Narrow this process to its one GPU before CUDA is initialized anywhere in it.
    os.environ["CUDA_VISIBLE_DEVICES"] = physical
    pinned = Runtime(settings, "cuda", physical, None, emulated=emulated_gpus() > 0)
    _serve(settings, pinned, worker_options(
        f"cuda:{physical}", queues_served("cuda", physical, plugin_names()), 1, loglevel, token))


def _serve(settings: Settings, rt: Runtime, options: dict) -> None:
    runtime.install(rt)
    if settings.compile_cache:
        # Before anything is compiled: inductor reads its disk cache folder from here.
        os.environ.setdefault(INDUCTOR_CACHE, settings.compile_cache)
    from worker.app import app

    app.conf.broker_url = settings.broker_url
    runtime.apply_threads(rt.torch_threads)
    _make_schema(settings)
    signals.worker_ready.connect(_stop_on_hangup, weak=False)
    # A warm shutdown stops the batches in training at their next epoch boundary, their jobs
    # queued again with their states (worker.stopping).
    stopping.arm()
    signals.worker_shutting_down.connect(stopping.request, weak=False)
    try:
        worker = app.Worker(**options)
        worker.start()
        # A worker that stopped on an unrecoverable error exits non-zero, so a supervisor
        # (systemd, docker, `sweep run`) sees it.
        code = worker.exitcode or 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit("message"): the interpreter would print it; we skip the interpreter
            print(e.code, file=sys.stderr)
            code = 1
    # Celery has stopped the pool and closed its connections by now; what is left is the
    # interpreter's own teardown, which with torch loaded costs a second or more of CPU for
    # nothing. Flush what we print and log, and leave.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stop_on_hangup(sender=None, **_kwargs) -> None:
    """SIGHUP (a closed terminal, a dropped SSH session, a process manager) stops this worker
    warm, as SIGTERM does. Celery would re-exec a worker whose output is not a terminal, and
    leave one whose output is a terminal to die at once, mid-batch."""
    from celery.apps.worker import install_worker_term_handler

    controller = getattr(sender, "controller", None)
    if controller is not None:
        install_worker_term_handler(controller, sig="SIGHUP")


def _make_schema(settings: Settings) -> None:
    """The results tables, made now if missing: a worker started before the first sweep would
    otherwise find none and warn about it every reaper round."""
    from store import StoreError, create_schema, make_engine

    try:
        engine = make_engine(settings.db_url)  # not this process's pooled one: pools fork
        try:
            create_schema(engine)
        finally:
            engine.dispose()
    except StoreError as e:  # the database away: the worker retries its calls as it goes
        logging.getLogger("polyfit.worker").warning("could not make the results tables: %s", e)


def run_gpu_fleet(settings: Settings, gpus: list[int], loglevel: str = "WARNING") -> int:
    """One pinned worker process per GPU; waits for all, forwards the signals that stop a
    process to them (SIGTERM, SIGINT, SIGQUIT, SIGHUP); each stops by itself if this process
    is killed (see ``worker.processes``)."""
    env = {**os.environ, **settings.to_env()}
    workers = [WorkerProcess(["--device", f"cuda:{g}", "--loglevel", loglevel], env).start()
               for g in gpus]
    with forwarding(workers):
        codes = [w.wait() for w in workers]
    return max(codes, default=0)
