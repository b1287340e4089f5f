"""The queue's own cost, end to end through a real Redis.

Measures, in one run on one machine:
  1. Celery's floor: N no-op tasks through Redis into a solo worker (tasks/s);
  2. polyfit one job per task: N one-epoch numpy jobs, ``--batch-size 1``, one worker process,
     from ``polyfit sweep submit`` until every result is in SQLite (jobs/s);
  3. polyfit batched: M one-epoch jobs with the automatic batch size, one worker with its
     default pool (a process per core), from submit until every result is stored (jobs/s, s).
Prints each rate and the ratio to the no-op floor. Start-up of the worker is excluded (the
worker is started and warmed first); submit + train + store are included.

    python benchmarks/bench_queue.py [--tasks 2000] [--batched-jobs 10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_redis(tmp: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server of this run's own (no persistence) in ``tmp``, and its URL (db 0)."""
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp)],
                              stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return server, f"redis://127.0.0.1:{port}/0"


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def base_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(extra)
    return env


def noop_rate(url: str, n: int, tmp: Path) -> float:
    env = base_env(NOOP_BROKER_URL=url)
    worker = start([sys.executable, "-m", "celery", "-A", "benchmarks.noop_app", "worker",
                    "-P", "solo", "-Q", "noop", "--loglevel", "WARNING", "--without-gossip",
                    "--without-mingle", "--without-heartbeat"], env, tmp / "noop.log")
    r = redis.Redis.from_url(url)
    try:
        os.environ["NOOP_BROKER_URL"] = url
        from benchmarks.noop_app import count

        r.delete("noop:done")
        count.delay()  # warm-up: wait for the worker to be consuming
        _wait(lambda: int(r.get("noop:done") or 0) >= 1, 60)
        r.delete("noop:done")
        t0 = time.perf_counter()
        for _ in range(n):
            count.delay()
        _wait(lambda: int(r.get("noop:done") or 0) >= n, 300)
        return n / (time.perf_counter() - t0)
    finally:
        stop(worker)


def _wait(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(0.01)


def polyfit_rate(url: str, db: str, jobs: int, batch_size: int | None, tmp: Path,
                 tag: str, concurrency: int | None) -> tuple[float, float]:
    env = base_env(POLYFIT_BROKER_URL=url, POLYFIT_DB_URL=db)
    pool = ["--concurrency", str(concurrency)] if concurrency else []
    worker = start([sys.executable, "-m", "scheduler", "worker", *pool,
                    "--loglevel", "WARNING"], env, tmp / f"worker-{tag}.log")
    eng = create_engine(db)
    try:
        # Warm-up sweep: the worker is up and has imported torch.
        warm = subprocess.run([sys.executable, "-m", "scheduler", "sweep", "submit", "--variant",
                               "numpy", "--epochs", "1", "--name", f"warm-{tag}"], env=env,
                              cwd=ROOT, capture_output=True, text=True, check=True)
        _wait(lambda: _ended(eng, warm.stdout.split()[-1]) == 1, 120)
        args = ["sweep", "submit", "--variant", "numpy", "--epochs", "1", "--seed",
                f"0-{jobs - 1}", "--name", f"bench-{tag}"]
        if batch_size:
            args += ["--batch-size", str(batch_size)]
        t0 = time.perf_counter()
        sub = subprocess.run([sys.executable, "-m", "scheduler", *args], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True)
        sweep_id = sub.stdout.split()[-1]
        _wait(lambda: _ended(eng, sweep_id) == jobs, 600)
        took = time.perf_counter() - t0
        return jobs / took, took
    finally:
        stop(worker)
        eng.dispose()


def _ended(eng, sweep_id: str) -> int:
    with eng.connect() as c:
        return c.execute(text("SELECT count(*) FROM jobs WHERE sweep_id = :s AND status IN "
                              "('succeeded','diverged','failed')"), {"s": sweep_id}).scalar()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--batched-jobs", type=int, default=10_000)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="polyfit-bench-"))
    server, url = private_redis(tmp)
    try:
        floor = noop_rate(url.replace("/0", "/15"), a.tasks, tmp)
        # One job per task on one pool process: comparable with the solo no-op worker.
        per_task, _ = polyfit_rate(url, f"sqlite:///{tmp / 'one.sqlite'}", a.tasks, 1, tmp,
                                   "one", concurrency=1)
        # Batched as a user runs it: automatic batch size, default worker (one pool process
        # per core).
        batched, took = polyfit_rate(url, f"sqlite:///{tmp / 'batched.sqlite'}",
                                     a.batched_jobs, None, tmp, "batched", concurrency=None)
    finally:
        server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"celery no-op task, solo worker        : {floor:8.1f} tasks/s")
    print(f"polyfit, 1 one-epoch job per task      : {per_task:8.1f} jobs/s  "
          f"(ratio to no-op floor {per_task / floor:.2f})")
    print(f"polyfit, {a.batched_jobs} one-epoch jobs, auto batches: {batched:8.1f} jobs/s  "
          f"({took:.2f} s end to end; ratio to no-op floor {batched / floor:.1f})")


if __name__ == "__main__":
    main()
