"""What a Ctrl-C costs a `polyfit sweep run`: a sweep run once to the end, and again in a fresh
database stopped with SIGINT once its jobs are ``--at`` of the way (read from the database's
``epochs_done``, not a timer), then run again to the end; the rerun's wall time against the
whole run's, and the stored results compared bit for bit. Run it with ``PYTHONPATH`` pointing
at another checkout to measure that code (before this feature, a rerun started from epoch 0).

    python benchmarks/bench_resume.py [--variant autograd] [--jobs 24] [--epochs 30000]
        [--at 0.5] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from sqlalchemy import create_engine, text

RESULT = "SELECT id, mse, coefficients, attempts FROM jobs ORDER BY id"


def _rows(url: str, sql: str) -> list:
    eng = create_engine(url)
    try:
        with eng.connect() as c:
            return [tuple(r) for r in c.execute(text(sql))]
    except Exception:  # noqa: BLE001 - no tables yet
        return []
    finally:
        eng.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="autograd")
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=30000)
    ap.add_argument("--at", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    run = [sys.executable, "-m", "scheduler", "sweep", "run", "--variant", args.variant,
           "--seed", f"0-{args.jobs - 1}", "--epochs", str(args.epochs),
           "--workers", str(args.workers), "--name", "bench", "--top", "0"]
    folder = tempfile.mkdtemp(prefix="bench-resume-")
    whole_url, url = (f"sqlite:///{folder}/{n}.sqlite" for n in ("whole", "stopped"))

    def env(db: str) -> dict:
        return {**os.environ, "POLYFIT_DB_URL": db, "POLYFIT_PROGRESS_S": "1"}

    started = time.perf_counter()
    subprocess.run(run, env=env(whole_url), check=True, capture_output=True)
    whole_s = time.perf_counter() - started

    proc = subprocess.Popen(run, env=env(url), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = args.at * args.epochs
    while proc.poll() is None:
        done = [r[0] or 0 for r in _rows(url, "SELECT epochs_done FROM jobs WHERE status = "
                                              "'running'")]
        if done and min(done) >= target:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    proc.wait()
    kept = _rows(url, "SELECT count(*), min(epoch) FROM job_state")
    started = time.perf_counter()
    subprocess.run(run, env=env(url), check=True, capture_output=True)
    rerun_s = time.perf_counter() - started
    print(f"{args.jobs} x {args.variant} {args.epochs} epochs, {args.workers} workers: "
          f"whole run {whole_s:.1f} s; stopped at {args.at:.0%}, states kept "
          f"{kept or 'none (no job_state table)'}; rerun {rerun_s:.1f} s; results equal to "
          f"the whole run's: {_rows(url, RESULT) == _rows(whole_url, RESULT)}")


if __name__ == "__main__":
    main()
