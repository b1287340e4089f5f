"""How much memory a batch really takes, against polyfit's estimate (``batch_bytes``), which the
scheduler uses to refuse jobs too big for a device and the worker to cut messages into batches
within budget.

Each configuration runs in a fresh process (an allocator's cache would hide a second peak): it
trains ``fit_many`` once on the CPU and reports the rise of its peak resident memory (VmHWM)
over the resident memory just before. Prints one line per configuration with the ratio
estimate / measured, which must stay at or above 1.

    python benchmarks/bench_memory.py                 # a grid over variants and degrees
    python benchmarks/bench_memory.py --points 1000000 --degree 14 --variant numpy
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from polyfit_models import VARIANTS, JobSpec, batch_bytes


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def specs_for(variant: str, points: int, degree: int, jobs: int, dtype: str,
              epochs: int = 200) -> list[JobSpec]:
    return [JobSpec.create(variant, seed=s, epochs=epochs, degree=degree, x_points=points,
                           dtype=dtype, x_start=-1.0, x_stop=1.0) for s in range(jobs)]


def _child(variant: str, points: int, degree: int, jobs: int, dtype: str) -> None:
    import torch

    from polyfit_models import fit_many

    torch.set_num_threads(1)
    # Load the variant's code and kernels first, on a tiny job: they are not the batch's.
    fit_many(specs_for(variant, 10, degree, 1, dtype, epochs=2), "cpu")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    fit_many(specs_for(variant, points, degree, jobs, dtype), "cpu")
    print(json.dumps({"peak_bytes": _status("VmHWM") - before}))


def measure(variant: str, points: int, degree: int, jobs: int, dtype: str) -> dict:
    """Peak memory of one batch, measured in a fresh process, with polyfit's estimate."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(points), str(degree), str(jobs),
         dtype], capture_output=True, text=True, check=True)
    peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    estimate = batch_bytes(specs_for(variant, points, degree, 1, dtype)[0], jobs)
    return {"variant": variant, "points": points, "degree": degree, "jobs": jobs,
            "dtype": dtype, "measured_mib": round(peak / 2**20, 1),
            "estimate_mib": round(estimate / 2**20, 1),
            "ratio": round(estimate / max(peak, 1), 2)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, points, degree, jobs, dtype = sys.argv[2:7]
        _child(variant, int(points), int(degree), int(jobs), dtype)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=list(VARIANTS))
    parser.add_argument("--points", type=int, action="append")
    parser.add_argument("--degree", type=int, action="append")
    parser.add_argument("--jobs", type=int, action="append")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = parser.parse_args()
    for variant in args.variant or list(VARIANTS):
        for points in args.points or [400_000]:
            for degree in args.degree or [4, 14]:
                for jobs in args.jobs or [1, 8]:
                    print(json.dumps(measure(variant, points, degree, jobs, args.dtype)))


if __name__ == "__main__":
    main()
