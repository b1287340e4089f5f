"""Sweep throughput through ``polyfit sweep run`` against the lesson's programs run one after
another in one process, both measured in this run on this machine.

Per variant: a 1024-job sweep (two learning rates x 512 seeds, degree 3, 5 for ``dynamic``,
2000 epochs) through the real CLI in a fresh directory (embedded broker, local workers, SQLite;
process start-up, submission, training and storing all included), against the lesson's program
for the same settings run one fit after another. The lesson side is timed on ``--sample`` fits
and extrapolated to the sweep's size (said in the output): running it 1024 times would take
minutes per variant and tell nothing more.

    python benchmarks/bench_sweep.py [--variants autograd,module,numpy,dynamic] [--seeds 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import bench_models as lesson  # noqa: E402

# variant -> (lesson program, learning rates, degree, extra sweep flags)
CASES = {
    "autograd": (lesson.lesson_autograd, (1e-6, 2e-6), 3, []),
    "module": (lesson.lesson_module, (1e-3, 2e-3), 3, []),
    "numpy": (lesson.lesson_numpy, (1e-6, 2e-6), 3, []),
    "dynamic": (lesson.lesson_dynamic, (1e-8, 2e-8), 5, []),
    "tensor": (lesson.lesson_tensor, (1e-6, 2e-6), 3, []),
    "legendre": (lesson.lesson_legendre, (5e-6, 1e-5), 3, []),
}
EPOCHS = 2000


def lesson_seconds_per_fit(program, lrs, sample: int) -> float:
    t0 = time.perf_counter()
    for i in range(sample):
        program(seed=i, epochs=EPOCHS, lr=lrs[i % len(lrs)])
    return (time.perf_counter() - t0) / sample


def polyfit_seconds(variant: str, lrs, degree: int, seeds: int, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory(prefix="polyfit-bench-") as tmp:
        cmd = [sys.executable, "-m", "scheduler", "sweep", "run", "--variant", variant,
               "--lr", ",".join(str(lr) for lr in lrs), "--seed", f"0-{seeds - 1}",
               "--degree", str(degree), "--epochs", str(EPOCHS), "--top", "0", *extra]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"polyfit sweep run failed for {variant}: {r.stderr.strip()[-500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="autograd,module,numpy,dynamic")
    ap.add_argument("--seeds", type=int, default=512)
    ap.add_argument("--sample", type=int, default=8, help="lesson fits timed per variant")
    a = ap.parse_args()
    jobs = 2 * a.seeds
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"torch threads for the lesson loop: {torch.get_num_threads()}")
    print(f"{jobs} jobs per variant (2 lrs x {a.seeds} seeds, {EPOCHS} epochs); lesson time "
          f"extrapolated from {a.sample} fits run one after another")
    print(f"{'variant':9} {'lesson s/fit':>12} {'lesson total':>13} {'polyfit run':>12} "
          f"{'fits/s':>8} {'ratio':>7} {'peak RSS':>9}")
    for variant in a.variants.split(","):
        program, lrs, degree, extra = CASES[variant]
        per_fit = lesson_seconds_per_fit(program, lrs, a.sample)
        took = polyfit_seconds(variant, lrs, degree, a.seeds, extra)
        total = per_fit * jobs
        # Largest resident set of any process of the run so far (workers included: each
        # parent waits for its children, so their peaks reach us).
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"{variant:9} {per_fit:12.3f} {total:12.1f}s {took:11.1f}s {jobs / took:8.1f} "
              f"{total / took:6.1f}x {rss_mb:7.0f}MB", flush=True)


if __name__ == "__main__":
    main()
