"""A first fused sweep on a fresh machine: is it ever slower for fusing (issue 25's goal)?

Each side runs in a process of its own, the way a worker trains a batch, with its own empty
compile cache folder where the side is "cold" (nothing compiled on this machine before):

* ``unfused``: ``fit_many(fuse=False)``, the baseline;
* ``fused, cold``: ``fuse=True`` with an empty cache (what ``fuse=None`` did before it knew a
  cold compile from a warm one, at this size: 1,024 lesson fits were over its threshold);
* ``auto, cold``: ``fuse=None`` with an empty cache (``runner.remember_compiles``): it must not
  be slower than unfused;
* ``auto, warm``: ``fuse=None`` again in a new process, with the cache the cold side left: it
  fuses (the compile is on disk), and must be faster than unfused.

Times are each process's ``fit_many`` call, compile included (the import of torch is not).

    python benchmarks/bench_cold.py [--jobs 1024] [--epochs 2000] [--points 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time, torch
from polyfit_models import JobSpec, fit_many, remember_compiles
jobs, epochs, points, fuse, cache, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
remember_compiles(cache)
specs = [JobSpec(variant="autograd", lr=lr, degree=3, seed=s, epochs=epochs, x_points=points,
                 optimizer="sgd", dtype="float32")
         for lr in (1e-6, 2e-6) for s in range(jobs // 2)]
t0 = time.perf_counter()
results = fit_many(specs, "cpu", fuse=fuse)
took = time.perf_counter() - t0
from polyfit_models import runner
print(json.dumps({"s": took, "fused": bool(runner._fused_ready),
                  "mse": sorted(r.mse for r in results)[0]}))
"""


def side(jobs: int, epochs: int, points: int, fuse: bool | None, cache: Path,
         threads: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", CHILD,
                        json.dumps([jobs, epochs, points, fuse, str(cache), threads])],
                       env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(r.stderr.strip()[-800:])
    return json.loads(r.stdout.strip().splitlines()[-1])


#: Each side: its fuse setting and its cache folder ("auto, warm" reuses what "fused, cold"
#: compiled into "a").
SIDES = {"unfused": (False, "none"), "fused, cold": (True, "a"), "auto, cold": (None, "b"),
         "auto, warm": (None, "a")}


def measure(jobs: int, epochs: int, points: int, threads: int,
            sides: tuple[str, ...] = tuple(SIDES)) -> dict[str, dict]:
    """Each of ``sides`` (in ``SIDES``' order) in a process of its own, in fresh cache folders:
    its ``fit_many`` seconds, whether it fused, and its best mse."""
    with tempfile.TemporaryDirectory(prefix="polyfit-cold-") as tmp:
        return {label: side(jobs, epochs, points, fuse, Path(tmp, folder), threads)
                for label, (fuse, folder) in SIDES.items() if label in sides}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=2000)
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{a.jobs:,} autograd fits x {a.epochs:,} epochs x {a.points:,} points, "
          f"{a.threads} torch threads")
    figures = measure(a.jobs, a.epochs, a.points, a.threads)
    base = figures["unfused"]["s"]
    print(f"{'':14} {'s':>7} {'fused':>6} {'vs unfused':>11}")
    for label, f in figures.items():
        print(f"{label:14} {f['s']:7.2f} {str(f['fused']):>6} {f['s'] / base:10.2f}x")


if __name__ == "__main__":
    main()
