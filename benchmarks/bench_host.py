"""Several workers on one host, against one worker with as many processes, in one run.

The lesson's autograd sweep (degree 3, 2000 points, 2000 epochs) at 2 learning rates x N/2
seeds (``--fits``, 1,024 by default) through a private Redis and a SQLite file, timed from
``polyfit sweep submit`` until every result is stored, with warm workers (started and given a
one-job sweep first), on:

(a) one ``polyfit worker --concurrency P`` (P: the cores this process may use), the baseline;
(b) P ``polyfit worker --concurrency 1`` on the same host: as many training processes;
(c) ``celery -A worker.app worker -Q polyfit.cpu,polyfit.any`` with Celery's defaults (prefork,
    one process per core) and nothing of polyfit's launcher.

Each worker process takes its share of the host's cores (``worker.cores``); before that, (b)
and (c) each sized its threads from the whole machine and oversubscribed the cores. Prints
each time and its ratio to (a): the goal is at most 1.25x.

    python benchmarks/bench_host.py [--fits 1024]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_queue import ROOT, _ended, _wait, base_env, private_redis, start, stop
from worker.cores import usable_cores


def timed_sweep(url: str, db: str, fits: int, workers: list[list[str]], tmp: Path,
                tag: str) -> float:
    env = base_env(POLYFIT_BROKER_URL=url, POLYFIT_DB_URL=db,
                   POLYFIT_CORES_DIR=str(tmp / f"cores-{tag}"))
    procs = [start(cmd, env, tmp / f"{tag}-{i}.log") for i, cmd in enumerate(workers)]
    eng = create_engine(db)

    def submit(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "scheduler", "sweep", "submit", *args],
                             env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.split()[-1]

    try:
        # Warm: every worker up, torch imported (one job each, in batches of one).
        warm = submit("--variant", "autograd", "--epochs", "10", "--seed",
                      f"0-{2 * len(workers) - 1}", "--batch-size", "1", "--name", f"w-{tag}")
        _wait(lambda: _ended(eng, warm) == 2 * len(workers), 180)
        t0 = time.perf_counter()
        sweep_id = submit("--variant", "autograd", "--lr", "1e-6,2e-6", "--seed",
                          f"0-{fits // 2 - 1}", "--epochs", "2000", "--name", f"b-{tag}")
        _wait(lambda: _ended(eng, sweep_id) == fits, 1800)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            stop(p)
        eng.dispose()


def measure(fits: int) -> dict[str, float]:
    """Seconds from submit to stored of each way of running the host's workers, by label, the
    baseline (one worker with a process per core) first."""
    cores = usable_cores()
    tmp = Path(tempfile.mkdtemp(prefix="polyfit-bench-host-"))
    server, url = private_redis(tmp)
    polyfit = [sys.executable, "-m", "scheduler", "worker", "--device", "cpu", "--loglevel",
               "WARNING"]
    runs = {
        f"one polyfit worker, --concurrency {cores}": [[*polyfit, "--concurrency", str(cores)]],
        f"{cores} polyfit workers, --concurrency 1": [[*polyfit, "--concurrency", "1"]] * cores,
        "celery -A worker.app worker (Celery's defaults)": [[
            sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q",
            "polyfit.cpu,polyfit.any", "--loglevel", "WARNING"]],
    }
    took = {}
    try:
        for i, (label, workers) in enumerate(runs.items()):
            took[label] = timed_sweep(url, f"sqlite:///{tmp / f'r{i}.sqlite'}", fits,
                                      workers, tmp, f"r{i}")
    finally:
        server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fits", type=int, default=1024)
    a = ap.parse_args()
    took = measure(a.fits)
    base = next(iter(took.values()))
    print(f"{a.fits:,} autograd fits (degree 3, 2000 epochs, 2000 points), {usable_cores()} "
          "cores, warm workers, submit to stored:")
    for label, seconds in took.items():
        print(f"  {label:48s} {seconds:7.1f} s  {seconds / base:5.2f}x")


if __name__ == "__main__":
    main()
