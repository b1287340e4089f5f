"""How polyfit's costs grow with a sweep's size: ``sweep submit``, ``sweep run`` (one-epoch jobs,
two local workers), ``status``, ``best``, ``sweeps`` and a CSV export, at growing sizes, on SQLite
(and on PostgreSQL with ``--pg URL``), through the real CLI in fresh processes. Prints, per
size, each command's time and peak resident memory, the database's and the broker's sizes, and
the time per job; then the ratios that the scale goals are about (1,000,000 against 10,000).

    python benchmarks/bench_scale.py                       # 10k, 100k, 1M on SQLite
    python benchmarks/bench_scale.py --sizes 10000,100000 --run-up-to 100000
    python benchmarks/bench_scale.py --pg postgresql+psycopg://postgres@127.0.0.1/test
    python benchmarks/bench_scale.py --broker-sweeps 10     # the embedded broker's file

``--broker-sweeps N`` runs N sweeps of 100,000 one-epoch jobs one after another through ``sweep
run`` in one folder and prints the broker file's size after each: it must not grow."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """Run ``polyfit ARGS`` as its own process; returns (seconds, its peak RSS in MB, stdout)
    (the peak through /usr/bin/time, which reports that one process's)."""
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "scheduler", *args],
                         cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t
    if out.returncode not in (0, 1):
        raise RuntimeError(f"polyfit {' '.join(args)} failed: {out.stderr[-2000:]}")
    peak_kb = int(out.stderr.strip().splitlines()[-1])
    return seconds, peak_kb / 1024, out.stdout


def sizes_of(folder: Path) -> dict[str, float]:
    return {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(folder.iterdir())
            if p.suffix == ".sqlite" or p.name.endswith(".sqlite-wal")}


def one_size(n: int, db: str | None, run: bool, folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = str(ROOT)
    env["POLYFIT_MAX_JOBS"] = str(max(n, 1_000_000))
    if db:
        env["POLYFIT_DB_URL"] = db
    name = f"scale-{n}-{uuid.uuid4().hex[:6]}"
    seeds = f"0-{n // 2 - 1}"
    spec = ["--variant", "autograd", "--lr", "1e-6,2e-6", "--seed", seeds, "--epochs", "1",
            "--name", name]
    out: dict = {"jobs": n}
    if run:
        s, rss, _ = timed(["sweep", "run", *spec, "--top", "0"], folder, env)
        out["run_s"], out["run_rss_mb"] = round(s, 2), round(rss)
    else:
        s, rss, _ = timed(["sweep", "submit", *spec], folder, env)
        out["submit_s"], out["submit_rss_mb"] = round(s, 2), round(rss)
        out["submit_us_per_job"] = round(s / n * 1e6, 1)
    for label, args in (("status", ["status", name]), ("best", ["best", name]),
                        ("sweeps", ["sweeps"])):
        s, rss, _ = timed(args, folder, env)
        out[f"{label}_s"] = round(s, 2)
    csv_path = folder / f"{name}.csv"
    s, rss, _ = timed(["results", name, "--format", "csv", "-o", str(csv_path)], folder, env)
    out["export_s"], out["export_rss_mb"] = round(s, 2), round(rss)
    out["export_rows_per_s"] = round(n / s)
    csv_path.unlink()
    out["files_mb"] = sizes_of(folder)
    return out


def broker_growth(sweeps: int, folder: Path) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = str(ROOT)
    sizes = []
    for i in range(sweeps):
        timed(["sweep", "run", "--variant", "numpy", "--seed", "0-99999", "--epochs", "1",
               "--name", f"broker-{i}", "--top", "0"], folder, env)
        sizes.append(round((folder / "polyfit-broker.sqlite").stat().st_size / 2**20, 2))
        print(f"  after sweep {i + 1}: broker file {sizes[-1]} MB", flush=True)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--run-up-to", type=int, default=100_000,
                        help="sweep run (training) up to this size; submit only above")
    parser.add_argument("--pg", default=None, help="also on this PostgreSQL URL")
    parser.add_argument("--broker-sweeps", type=int, default=0)
    args = parser.parse_args()
    if args.broker_sweeps:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps({"broker_mb_after_each": broker_growth(args.broker_sweeps,
                                                                    Path(tmp))}))
        return
    backends = [("sqlite", None)] + ([("postgres", args.pg)] if args.pg else [])
    for backend, db in backends:
        results = []
        for n in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                row = one_size(n, db, n <= args.run_up_to, Path(tmp))
            row["backend"] = backend
            results.append(row)
            print(json.dumps(row), flush=True)
        small, big = results[0], results[-1]
        ratios = {f"{k}: {big['jobs']:,} / {small['jobs']:,}": round(big[k] / small[k], 2)
                  for k in ("status_s", "best_s", "sweeps_s") if small.get(k)}
        print(json.dumps({"backend": backend, "ratios": ratios}), flush=True)


if __name__ == "__main__":
    main()
