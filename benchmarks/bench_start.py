"""The fixed cost of ``polyfit sweep run``: a tiny sweep (2 autograd jobs of 1 epoch) from the
command to its exit, in a fresh directory (a new database and embedded broker, local workers
started and stopped), against ``python -c "import torch"``, the floor of any process that
trains; interleaved in one run on this machine. ``polyfit --help`` (the CLI's own imports) and
the second run of the same sweep in the same directory (its results reused: no worker needed)
are printed beside them, and the tiny sweep with its local worker started the way it was before
``scheduler.early`` (once the command knew its orders: ``POLYFIT_EARLY_WORKER=0``).

    python benchmarks/bench_start.py [--repeats 5]
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
#: The tiny sweep with its local worker started once the command knows its orders, not first of
#: all (``scheduler.early``): how every ``sweep run`` started it before.
LATE = "tiny sweep, fresh, worker started late"
SWEEP = ["sweep", "run", "--variant", "autograd", "--seed", "0-1", "--epochs", "1", "--top", "0"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return {**env, **extra}


def timed(cmd: list[str], cwd: str, **extra: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=_env(**extra), cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    return took


def measure(repeats: int) -> dict[str, list[float]]:
    """Seconds of each command, ``repeats`` interleaved runs (each in a fresh folder)."""
    polyfit = [sys.executable, "-m", "scheduler"]
    times: dict[str, list[float]] = {"import torch": [], "polyfit --help": [],
                                     "tiny sweep, fresh": [], "tiny sweep, again": [],
                                     LATE: []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="polyfit-bench-") as tmp:
            times[LATE].append(timed([*polyfit, *SWEEP], tmp, POLYFIT_EARLY_WORKER="0"))
        with tempfile.TemporaryDirectory(prefix="polyfit-bench-") as tmp:
            times["import torch"].append(timed([sys.executable, "-c", "import torch"], tmp))
            times["polyfit --help"].append(timed([*polyfit, "--help"], tmp))
            times["tiny sweep, fresh"].append(timed([*polyfit, *SWEEP], tmp))
            times["tiny sweep, again"].append(timed([*polyfit, *SWEEP], tmp))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {a.repeats} interleaved runs")
    times = measure(a.repeats)
    floor = statistics.median(times["import torch"])
    print(f"{'':40} {'median s':>9} {'min s':>7} {'vs import torch':>16}")
    for label, runs in times.items():
        med = statistics.median(runs)
        print(f"{label:40} {med:9.2f} {min(runs):7.2f} {med / floor:15.2f}x")


if __name__ == "__main__":
    main()
