"""Searching against enumerating, both measured in this run on this machine.

1. Fits needed to reach an mse within ``--tol`` (1e-3) of the optimum on the lesson's problem
   (autograd, sin on [-pi, pi], 2000 points, 2000 epochs; the space: lr log-uniform in
   [1e-7, 1e-5] and degree in {3, 4, 5}), for TPE and for random search, each asked in rounds
   of ``--round`` exactly as a search sweep asks them (``worker.search.ask_round``) and trained
   with ``fit_many`` in this process; the median over ``--seeds`` seeds. The optimum is the
   lowest mse any fit of this run reached (a dense grid of lr x degree included).
2. The throughput of a search against a grid of the same size, both through ``polyfit sweep
   run`` (embedded broker, local workers, SQLite; start-up included): a search waits for each
   round's last result before it asks the next, a grid enqueues everything at once.

    python benchmarks/bench_search.py [--seeds 5] [--trials 96] [--round 16] [--jobs 96]
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
sys.path.insert(0, str(ROOT))

from polyfit_models import JobSpec, fit_many  # noqa: E402
from store.search import TrialRow  # noqa: E402
from worker.search import ask_round  # noqa: E402

EPOCHS = 2000
LOW, HIGH = 1e-7, 1e-5


def space(low: float) -> dict:
    return {"variant": ["autograd"], "lr": {"log": [low, HIGH]}, "degree": [3, 4, 5],
            "epochs": [EPOCHS]}


def run_search(sampler: str, seed: int, trials: int, size: int, low: float) -> list[float]:
    """The mse of each trial, in the order asked."""
    spec = {"target": "sin", "x": {}, "grid": [space(low)],
            "search": {"sampler": sampler, "trials": trials, "round": size, "seed": seed}}
    past: list[TrialRow] = []
    attrs: dict = {}
    for r in range((trials + size - 1) // size):
        asked, attrs = ask_round(spec, past, r, attrs)
        results = fit_many([a.spec for a in asked], "cpu")
        past += [TrialRow(a.number, r, a.job_id, a.params, a.system_attrs, res.status,
                          res.mse) for a, res in zip(asked, results)]
    return [t.mse if t.mse is not None else float("inf") for t in past]


def grid_best(num: int, low: float) -> float:
    lrs = [low * ((HIGH / low) ** (i / (num - 1))) for i in range(num)]
    specs = [JobSpec.create("autograd", lr=lr, degree=d, epochs=EPOCHS)
             for lr in lrs for d in (3, 4, 5)]
    return min(r.mse for r in fit_many(specs, "cpu") if r.mse is not None)


def fits_to_reach(mses: list[float], goal: float) -> int | None:
    for i, m in enumerate(mses, 1):
        if m <= goal:
            return i
    return None


def sweep_run_seconds(args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory(prefix="polyfit-bench-") as tmp:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "scheduler", "sweep", "run", *args,
                            "--top", "0"], env=env, cwd=tmp, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"sweep run failed: {r.stderr[-800:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=96)
    ap.add_argument("--round", type=int, default=16)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--low", type=float, default=LOW,
                    help="the lr range's low end (the high end is 1e-5, where fits diverge)")
    ap.add_argument("--jobs", type=int, default=96,
                    help="jobs of the throughput comparison (0: leave it out)")
    a = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")

    print(f"space: lr log-uniform in [{a.low:g}, {HIGH:g}], degree in {{3, 4, 5}}; "
          f"{a.trials} trials in rounds of {a.round}, {a.seeds} seeds")
    runs = {s: [run_search(s, seed, a.trials, a.round, a.low) for seed in range(a.seeds)]
            for s in ("random", "tpe")}
    optimum = min(grid_best(64, a.low), *(min(m) for ms in runs.values() for m in ms))
    print(f"optimum mse {optimum:.6g} (the lowest of every fit of this run)")
    for label, goal in ((f"within {a.tol:g} of it", optimum + a.tol),
                        (f"within {a.tol:g} x it", optimum * (1 + a.tol))):
        medians = {}
        for sampler, ms in runs.items():
            # Fits trained: a search trains whole rounds, so the round the goal was met in
            # counts whole.
            needed = [fits_to_reach(m, goal) for m in ms]
            needed = [None if n is None else -(-n // a.round) * a.round for n in needed]
            shown = ", ".join("-" if n is None else str(n) for n in needed)
            # A seed that never reached the goal counts as needing more than every trial.
            medians[sampler] = statistics.median(n if n is not None else a.trials + a.round
                                                 for n in needed)
            reached = sum(n is not None for n in needed)
            print(f"  {label}: {sampler:>6} fits per seed [{shown}], median "
                  f"{medians[sampler]:g} ({reached}/{len(needed)} seeds within {a.trials})")
        print(f"  {label}: random needs {medians['random'] / medians['tpe']:.2f}x the fits "
              "TPE needs (median over seeds)")

    # How close each gets as the trials go: the median over seeds of best mse - optimum.
    for k in sorted({a.round * 2, a.trials // 4, a.trials // 2, a.trials} - {0}):
        gaps = {sampler: statistics.median(min(m[:k]) - optimum for m in ms)
                for sampler, ms in runs.items()}
        print(f"  after {k:>3} fits: median best mse - optimum: random {gaps['random']:.3g}, "
              f"tpe {gaps['tpe']:.3g}")
    if a.jobs <= 0:
        return
    per_degree = max(1, a.jobs // 3)
    common = ["--variant", "autograd", "--degree", "3,4,5", "--epochs", str(EPOCHS)]
    grid_s = sweep_run_seconds([*common, "--lr", f"log:1e-7:1e-5:{per_degree}",
                                "--name", "grid"])
    search_s = sweep_run_seconds([*common, "--lr", "log:1e-7:1e-5", "--sampler", "tpe",
                                  "--trials", str(per_degree * 3), "--round", str(a.round),
                                  "--name", "search"])
    n = per_degree * 3
    print(f"throughput through `sweep run`, {n} jobs: grid {n / grid_s:.1f} fits/s "
          f"({grid_s:.1f} s), TPE search in rounds of {a.round} {n / search_s:.1f} fits/s "
          f"({search_s:.1f} s): the search runs at {grid_s / search_s:.2f}x the grid's rate")


if __name__ == "__main__":
    main()
