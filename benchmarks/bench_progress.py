"""The cost of live progress: the same 1,024-job sweep through ``polyfit sweep run`` with the
workers writing their running jobs' epochs and loss curves every ``POLYFIT_PROGRESS_S`` seconds,
and with that switched off (0), interleaved in one run on this machine.

Each run is a fresh directory (embedded broker, SQLite, local workers; start-up, training,
storing and stopping included). The jobs are long enough (20,000 epochs by default) for every
batch to be written several times while it trains. A warm-up run first fills the compile cache
so that no configuration pays a first compile inside the timed runs.

    python benchmarks/bench_progress.py [--seeds 512] [--epochs 20000] [--repeats 2]
        [--every 1,5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep_seconds(seeds: int, epochs: int, every: int, workers: int) -> float:
    """Wall time of the sweep through ``polyfit sweep run`` with progress every ``every`` s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["POLYFIT_PROGRESS_S"] = str(every)
    with tempfile.TemporaryDirectory(prefix="polyfit-bench-") as tmp:
        cmd = [sys.executable, "-m", "scheduler", "sweep", "run", "--variant", "autograd",
               "--lr", "1e-6,2e-6", "--seed", f"0-{seeds - 1}", "--epochs", str(epochs),
               "--workers", str(workers), "--top", "0"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"polyfit sweep run failed: {r.stderr.strip()[-500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=512, help="seeds per lr (2 lrs)")
    ap.add_argument("--epochs", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--every", default="1,5", help="POLYFIT_PROGRESS_S values to compare with 0")
    a = ap.parse_args()
    everies = [int(e) for e in a.every.split(",")]
    jobs = 2 * a.seeds
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {jobs} autograd jobs of "
          f"{a.epochs} epochs, {a.workers} local workers; runs interleaved, {a.repeats} each")
    sweep_seconds(a.seeds, a.epochs, 0, a.workers)  # warm-up: the compile cache
    times: dict[int, list[float]] = {e: [] for e in [0, *everies]}
    for _ in range(a.repeats):
        for every in times:
            took = sweep_seconds(a.seeds, a.epochs, every, a.workers)
            times[every].append(took)
            print(f"  POLYFIT_PROGRESS_S={every}: {took:.1f} s", flush=True)
    base = statistics.median(times[0])
    print(f"{'POLYFIT_PROGRESS_S':>18} {'median s':>9} {'runs':>20} {'vs off':>8}")
    for every, runs in times.items():
        med = statistics.median(runs)
        print(f"{every:>18} {med:9.1f} {', '.join(f'{t:.1f}' for t in runs):>20} "
              f"{med / base:7.3f}x")


if __name__ == "__main__":
    main()
