"""The kit's end-to-end step: a GPU worker (``polyfit worker --device cuda --gpus all``) and a CPU
worker (``polyfit worker --device cpu``) as real processes on the run's Redis, a SQLite results
file, and two sweeps submitted and watched through the command line only:

- a big autograd sweep on ``cuda`` (100,000 jobs in the GPU run), timed from the stored rows;
- a mixed sweep, every variant on ``cpu,cuda``, whose rows must show each job on the device it
  asked for (``ran_on``) and ``numpy`` never on a GPU.

Only the CLI and the results database's columns are used (never the queue's messages or the
workers' names, which are internal). In the dry run the GPU worker is emulated
(``POLYFIT_EMULATE_CUDA=1``): it serves the GPU queues, trains on the CPU and says so in
``ran_on``."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from benchmarks.gpu.kit import ROOT, Step, size

OK = ("succeeded", "diverged")


class Fleet:
    """The workers and the ``polyfit`` commands of one run, against one broker and database."""

    def __init__(self, step: Step, redis_url: str) -> None:
        self.step = step
        self.logs = step.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
        self.env.update(POLYFIT_BROKER_URL=redis_url,
                        POLYFIT_DB_URL=f"sqlite:///{step.work / 'fleet.sqlite'}")
        self.workers: list[tuple[subprocess.Popen, Path]] = []

    def polyfit(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scheduler", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=max(1.0, timeout))

    def start_worker(self, label: str, *args: str, **env: str) -> None:
        log = self.logs / f"worker-{label}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "worker", *args, "--loglevel", "INFO"],
                cwd=ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.workers.append((proc, log))
        # run.sh kills these process groups after the step whatever happened to it: a worker
        # runs in its own session, and one left behind would hold the GPU for the next steps.
        with open(self.step.work / "worker.pgids", "a") as pids:
            pids.write(f"{proc.pid}\n")

    def wait_ready(self, timeout: float) -> bool:
        """Until every worker's log says Celery's ``ready.`` (or one has exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p, _ in self.workers):
                return False
            if all(" ready." in log.read_text(errors="replace") for _, log in self.workers):
                return True
            time.sleep(0.2)
        return False

    def raise_if_a_worker_exited(self) -> None:
        """A worker that is gone will train nothing: say why now instead of waiting."""
        for proc, log in self.workers:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{log.name[:-4]} exited with {proc.returncode}: "
                                   + " | ".join(tail))

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL to what is left of each group."""
        for proc, _ in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # Past the step's time (run.sh's timeout kills this process 10 s after its SIGTERM)
        # there is no time for a warm shutdown.
        deadline = time.monotonic() + min(20.0, max(2.0, self.step.left_s() + 5))
        for proc, _ in self.workers:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the pool's children, the GPU launcher's
            except ProcessLookupError:
                pass
            proc.wait()

    def sql(self, query: str) -> list[dict]:
        r = self.polyfit("sql", query, "--format", "json", timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"polyfit sql failed: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def submit(self, *args: str) -> tuple[str, str, float]:
        """(sweep id, polyfit's summary line, seconds) of ``polyfit sweep submit ARGS``."""
        started = time.monotonic()
        r = self.polyfit("sweep", "submit", *args, timeout=max(30.0, self.step.left_s()))
        if r.returncode != 0:
            raise RuntimeError(f"polyfit sweep submit failed: {r.stderr.strip()}")
        lines = r.stdout.strip().splitlines()
        sweep_id = lines[-1].strip()
        if not re.fullmatch(r"[0-9a-f]+", sweep_id):
            raise RuntimeError(f"polyfit sweep submit printed no sweep id: {r.stdout!r}")
        return sweep_id, (lines[-2] if len(lines) > 1 else ""), time.monotonic() - started

    def wait(self, sweep_id: str, timeout: float) -> dict | None:
        """``polyfit status SWEEP --wait --json``: its last state, or None if it timed out."""
        try:
            r = self.polyfit("status", sweep_id, "--wait", "--json", "--interval", "1",
                             timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _stored(fleet: Fleet, sweep_id: str) -> dict:
    """Counts, devices and the training span of a sweep, from its stored rows."""
    by_status = fleet.sql(
        f"SELECT status, COUNT(*) AS n, MIN(started_at) AS first_start, "
        f"MAX(finished_at) AS last_finish FROM jobs WHERE sweep_id = '{sweep_id}' "
        f"GROUP BY status")
    placed = fleet.sql(
        f"SELECT variant, device, ran_on, status, COUNT(*) AS n FROM jobs "
        f"WHERE sweep_id = '{sweep_id}' GROUP BY variant, device, ran_on, status")
    ended = [r for r in by_status if r["status"] in OK]
    out = {"statuses": {r["status"]: r["n"] for r in by_status},
           "jobs": sum(r["n"] for r in by_status), "ended_ok": sum(r["n"] for r in ended),
           "placed": placed}
    starts = [t for t in (_time(r["first_start"]) for r in ended) if t]
    finishes = [t for t in (_time(r["last_finish"]) for r in ended) if t]
    if starts and finishes:
        span = (max(finishes) - min(starts)).total_seconds()
        out["first_start"], out["last_finish"] = str(min(starts)), str(max(finishes))
        out["training_span_s"] = round(span, 2)
        out["fits_per_min_stored"] = round(out["ended_ok"] / span * 60, 1) if span > 0 else None
    return out


def _gpu_pattern(mode: str) -> re.Pattern:
    return re.compile(r"cuda:\d+" if mode == "cuda" else r"cuda:\d+ \(emulated on cpu\)")


def fleet(step: Step, redis_url: str | None) -> None:
    from polyfit_models import VARIANTS  # the registry only: no torch in this process

    if not redis_url:
        raise RuntimeError("no broker: redis-server did not start (gpu-kit.log says why)")
    mode, fig = step.mode, step.figures
    gpu_ran_on = _gpu_pattern(mode)
    f = Fleet(step, redis_url)
    fig["broker"] = redis_url
    fig["database"] = f.env["POLYFIT_DB_URL"]
    try:
        started = time.monotonic()
        f.start_worker("gpu", "--device", "cuda", "--gpus", "all",
                       **({"POLYFIT_EMULATE_CUDA": "1"} if mode == "cpu" else {}))
        concurrency = str(size("CPU_CONCURRENCY", mode))
        f.start_worker("cpu", "--device", "cpu",
                       *(["--concurrency", concurrency] if concurrency else []))
        ready = f.wait_ready(min(90.0, step.left_s() / 3))
        fig["workers_ready_s"] = round(time.monotonic() - started, 2) if ready else None
        f.raise_if_a_worker_exited()
        if not ready:
            step.note("the workers did not say ready in time (see worker-*.log); going on")

        # 1. The big sweep on the GPU(s).
        lrs = [lr for lr in str(size("FLEET_LRS", mode)).split(",") if lr]
        seeds = max(1, math.ceil(size("FLEET_JOBS", mode) / len(lrs)))
        epochs = size("FLEET_EPOCHS", mode)
        big_id, line, submit_s = f.submit(
            "--name", "kit-big", "--variant", "autograd", "--degree", "3", "--epochs",
            str(epochs), "--lr", ",".join(lrs), "--seed", f"0-{seeds - 1}", "--device", "cuda")
        step.note(f"{line} ({submit_s:.1f} s)")
        big = {"sweep_id": big_id, "submit": line, "submit_s": round(submit_s, 2),
               "asked": seeds * len(lrs), "epochs": epochs, "variant": "autograd",
               "degree": 3, "lrs": lrs, "seeds": seeds}
        fig["big"] = big  # filled in as it goes: a step stopped half-way still says this much
        t0 = time.monotonic()
        state = f.wait(big_id, step.left_s() - size("MIXED_RESERVE_S", mode) - 5)
        big["wait_s"] = round(time.monotonic() - t0, 2)
        if state is None:
            cancel = f.polyfit("cancel", big_id, timeout=60)
            step.note(f"the big sweep did not end in time; cancelled the rest: "
                      f"{cancel.stdout.strip() or cancel.stderr.strip()}")
        big.update(_stored(f, big_id))
        big["fits_per_min_wall"] = round(big["ended_ok"] / (submit_s + big["wait_s"]) * 60, 1)
        step.note(f"big sweep: {big['ended_ok']} of {big['asked']} ended ok; "
                  f"{big.get('fits_per_min_stored')} fits/min from the stored rows")
        step.check("big_sweep_stored", state is not None and big["ended_ok"] == big["asked"]
                   and big["jobs"] == big["asked"],
                   f"{big['ended_ok']} of {big['asked']} ended ok, statuses {big['statuses']}"
                   + ("" if state is not None else " (timed out)"))
        wrong = [r for r in big["placed"] if r["status"] in OK
                 and not gpu_ran_on.fullmatch(r["ran_on"] or "")]
        step.check("big_sweep_on_gpu", not wrong and big["ended_ok"] > 0,
                   f"ran_on {sorted({r['ran_on'] for r in big['placed']}, key=str)}")

        # 2. The mixed sweep: every variant, cpu and cuda.
        mixed_seeds, mixed_epochs = size("MIXED_SEEDS", mode), size("MIXED_EPOCHS", mode)
        mixed_id, line, submit_s = f.submit(
            "--name", "kit-mixed", "--variant", ",".join(VARIANTS), "--device", "cpu,cuda",
            "--seed", f"0-{mixed_seeds - 1}", "--epochs", str(mixed_epochs))
        cpu_only = [n for n, v in VARIANTS.items() if "cuda" not in v.devices]
        expected = mixed_seeds * (2 * len(VARIANTS) - len(cpu_only))
        state = f.wait(mixed_id, step.left_s() - 5)
        mixed = {"sweep_id": mixed_id, "submit": line, "expected": expected,
                 "seeds": mixed_seeds, "epochs": mixed_epochs, **_stored(f, mixed_id)}
        fig["mixed"] = mixed
        placed = mixed["placed"]
        step.check("mixed_sweep_stored", state is not None and mixed["jobs"] == expected
                   and mixed["ended_ok"] == expected,
                   f"{mixed['ended_ok']} of {expected} ended ok, statuses {mixed['statuses']}"
                   + ("" if state is not None else " (timed out)"))
        on_cuda = [r for r in placed if r["device"].startswith("cuda") and r["status"] in OK]
        step.check("cuda_jobs_on_gpu", bool(on_cuda) and all(
            gpu_ran_on.fullmatch(r["ran_on"] or "") for r in on_cuda),
            f"cuda jobs ran on {sorted({r['ran_on'] for r in on_cuda}, key=str)}")
        on_cpu = [r for r in placed if r["device"] == "cpu" and r["status"] in OK]
        step.check("cpu_jobs_on_cpu", bool(on_cpu) and all(r["ran_on"] == "cpu" for r in on_cpu),
                   f"cpu jobs ran on {sorted({r['ran_on'] for r in on_cpu}, key=str)}")
        numpy_rows = [r for r in placed if r["variant"] in cpu_only]
        step.check("numpy_never_on_gpu", sum(r["n"] for r in numpy_rows) == mixed_seeds and all(
            r["device"] == "cpu" and r["ran_on"] == "cpu" for r in numpy_rows),
            f"{', '.join(cpu_only)}: " + "; ".join(
                f"{r['n']} on {r['device']} ran on {r['ran_on']} ({r['status']})"
                for r in numpy_rows))
    finally:
        f.stop()
