"""A small sweep on a warm fleet, against the lesson's loop, in one run.

The lesson's autograd sweep (degree 3, 2000 points, 2000 epochs) at 2 learning rates x N/2
seeds (``--fits``, 64 by default) through a private Redis and a SQLite file, timed from
``polyfit sweep submit`` until every result is stored, with one warm ``polyfit worker
--concurrency P`` (P: the cores this process may use; started and given a small sweep first):

(a) the sweep cut into 8 batches at least (``--batch-size`` fits/8: what every submit did before
    workers noted themselves in the store);
(b) the sweep cut for the fleet that is up (``store.workers``: one batch per training process);

against the lesson's program run one fit after another in this process (timed on ``--sample``
fits, extrapolated to N). Each side is run ``--repeats`` times, interleaved; medians.

    python benchmarks/bench_warm.py [--fits 64] [--repeats 3] [--sample 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_peers import plain_loop
from benchmarks.bench_queue import (
    ROOT,
    _ended,
    _wait,
    base_env,
    private_redis,
    start,
    stop,
)
from worker.cores import usable_cores


def measure(fits: int, repeats: int, sample: int) -> dict:
    """Seconds from submit to stored of each side (``repeats`` runs each, interleaved) on one
    warm worker of ``cores`` processes, and the lesson's loop timed on ``sample`` fits and
    extrapolated to ``fits`` (None where ``sample`` is 0: the caller times the loop itself)."""
    cores = usable_cores()
    tmp = Path(tempfile.mkdtemp(prefix="polyfit-bench-warm-"))
    server, url = private_redis(tmp)
    db = f"sqlite:///{tmp / 'r.sqlite'}"
    env = base_env(POLYFIT_BROKER_URL=url, POLYFIT_DB_URL=db,
                   POLYFIT_CORES_DIR=str(tmp / "cores"))
    worker = start([sys.executable, "-m", "scheduler", "worker", "--device", "cpu",
                    "--concurrency", str(cores), "--loglevel", "WARNING"], env, tmp / "w.log")
    eng = create_engine(db)

    def submit(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "scheduler", "sweep", "submit", *args],
                             env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.split()[-1]

    sides = {"cut into 8 batches (before)": ["--batch-size", str(max(1, fits // 8))],
             "cut for the fleet that is up": []}
    took: dict[str, list[float]] = {label: [] for label in sides}
    try:
        warm = submit("--variant", "autograd", "--epochs", "10", "--seed", f"0-{2 * cores - 1}",
                      "--batch-size", "1", "--name", "warm")
        _wait(lambda: _ended(eng, warm) == 2 * cores, 180)
        seed = 1000
        for r in range(repeats):
            for label, extra in sides.items():
                t0 = time.perf_counter()
                sweep_id = submit("--variant", "autograd", "--lr", "1e-6,2e-6", "--seed",
                                  f"{seed}-{seed + fits // 2 - 1}", "--epochs", "2000",
                                  "--name", f"s{r}-{len(extra)}", *extra)
                _wait(lambda: _ended(eng, sweep_id) == fits, 600)
                took[label].append(time.perf_counter() - t0)
                seed += fits
        loop = plain_loop(sample, tmp) / sample * fits if sample else None
    finally:
        stop(worker)
        server.terminate()
        eng.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"cores": cores, "sides": took, "loop": loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fits", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample", type=int, default=4)
    a = ap.parse_args()
    m = measure(a.fits, a.repeats, a.sample)
    loop = m["loop"]
    print(f"{a.fits} autograd fits (degree 3, 2000 epochs, 2000 points) on a warm worker of "
          f"{m['cores']} processes, submit to stored, median of {a.repeats}; the lesson's loop "
          f"timed on {a.sample} fits and extrapolated:")
    print(f"  {'lesson loop, one fit after another':36s} {loop:7.2f} s   1.0x")
    for label, runs in m["sides"].items():
        med = statistics.median(runs)
        print(f"  {label:36s} {med:7.2f} s  {loop / med:5.1f}x the loop")


if __name__ == "__main__":
    main()
