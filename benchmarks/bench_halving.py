"""What successive halving saves: one grid run to the end with `polyfit sweep run`, and the same
grid with ``--halving ETA:MIN_EPOCHS``; the epochs each trained (the sum of ``epochs_done``,
and for halving also the epochs its rungs retrain: a rung's last 1 to 100 epochs are trained
again by the next rung, which continues from the last 100-epoch boundary), their wall times,
and the best mse each found.

    python benchmarks/bench_halving.py [--variant autograd] [--optimizer adam]
        [--lr log:1e-4:1:64] [--epochs 2000] [--halving 4:125] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from sqlalchemy import create_engine, text


def _rows(url: str) -> list[tuple]:
    eng = create_engine(url)
    with eng.connect() as c:
        rows = [tuple(r) for r in c.execute(text(
            "SELECT status, rung, epochs_done, mse, lr FROM jobs"))]
    eng.dispose()
    return rows


def _retrained(rows: list[tuple], eta: int, min_epochs: int, epochs: int) -> int:
    """Epochs the rungs train twice: each job that went past rung r retrains b_r - W_r."""
    extra = 0
    for _, rung, *_ in rows:
        for r in range(rung or 0):
            b = min(epochs, min_epochs * eta ** r)
            extra += b - (b - 1) // 100 * 100
    return extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="autograd")
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--lr", default="log:1e-4:1:64")
    ap.add_argument("--epochs", type=int, default=2000)
    ap.add_argument("--halving", default="4:125")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    eta, min_epochs = (int(v) for v in args.halving.split(":"))
    folder = tempfile.mkdtemp(prefix="bench-halving-")
    base = [sys.executable, "-m", "scheduler", "sweep", "run", "--variant", args.variant,
            "--optimizer", args.optimizer, "--lr", args.lr, "--epochs", str(args.epochs),
            "--workers", str(args.workers), "--top", "0"]
    out = {}
    for name, extra in (("grid", []), ("halving", ["--halving", args.halving])):
        url = f"sqlite:///{folder}/{name}.sqlite"
        started = time.perf_counter()
        subprocess.run([*base, "--name", name, *extra], check=True, capture_output=True,
                       env={**os.environ, "POLYFIT_DB_URL": url})
        wall = time.perf_counter() - started
        rows = _rows(url)
        epochs = sum(r[2] or 0 for r in rows)
        again = _retrained(rows, eta, min_epochs, args.epochs) if extra else 0
        best = min((r for r in rows if r[0] == "succeeded" and r[3] is not None),
                   key=lambda r: r[3])
        out[name] = (len(rows), epochs, again, wall, best)
    grid_epochs = out["grid"][1]
    print(f"{args.variant} ({args.optimizer}), lr {args.lr}, {args.epochs} epochs, "
          f"halving {args.halving}, {args.workers} workers")
    for name, (jobs, epochs, again, wall, best) in out.items():
        print(f"{name:8s} {jobs} jobs  epochs {epochs:>9,} (+{again:,} retrained) "
              f"= {(epochs + again) / grid_epochs:6.1%} of the grid's  wall {wall:6.1f} s  "
              f"best mse {best[3]:.10g} (lr {best[4]:.4g})")


if __name__ == "__main__":
    main()
