"""Concurrent writers on one SQLite file: N real processes race to claim, beat and save the
results of the same jobs through ``store.claims``, as N workers of a fleet do. Prints the figures:
wall time, jobs per second, transaction latencies, and how many "database is locked" (or any
other store) errors there were, which must be zero.

    python benchmarks/bench_writers.py [--processes 8] [--jobs 10000] [--batch 25] [--db URL]

Every process walks all the jobs in its own random order, a batch at a time, so that writers
collide on the same rows (the claim decides who trains what) as well as on the file lock."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from store import StoreError, create_schema, make_engine  # noqa: E402
from store.claims import beat, claim_jobs, save_results  # noqa: E402
from store.recording import save_sweep  # noqa: E402

SWEEP = "bench"


def _job(i: int) -> dict:
    return {"id": f"j{i:06d}", "variant": "numpy", "lr": 1e-6, "degree": 3, "seed": i,
            "epochs": 10, "optimizer": "sgd", "device": "cpu", "target": "sin",
            "dtype": "float64", "x_start": -3.0, "x_stop": 3.0, "x_points": 100}


def _result(i: int) -> dict:
    return {"status": "succeeded", "final_loss": 1.0 + i, "mse": 0.01, "optimum_mse": 0.005,
            "coefficients": [0.1, 0.2, 0.3, 0.4], "monomial": [0.1, 0.2, 0.3, 0.4],
            "diverged_at_epoch": None, "duration_s": 0.001, "loss_curve": [[0, 2.0], [9, 1.0]]}


def _writer(db_url: str, n_jobs: int, batch: int, seed: int, start: mp.Event, out) -> None:
    engine = make_engine(db_url)
    name = f"writer-{seed}"
    ids = [_job(i)["id"] for i in range(n_jobs)]
    chunks = [ids[k : k + batch] for k in range(0, n_jobs, batch)]
    random.Random(seed).shuffle(chunks)
    stats = {"claim_ms": [], "save_ms": [], "beat_ms": [], "saved": [], "errors": []}
    start.wait()
    for chunk in chunks:
        try:
            t = time.perf_counter()
            mine = [job.id for job in claim_jobs(engine, SWEEP, chunk, name,
                                                   stale_after_s=3600)]
            stats["claim_ms"].append((time.perf_counter() - t) * 1000)
            if not mine:
                continue
            t = time.perf_counter()
            beat(engine, SWEEP, mine, name)
            stats["beat_ms"].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            written = save_results(engine, SWEEP, [(j, _result(int(j[1:]))) for j in mine],
                                     name, "cpu")
            stats["save_ms"].append((time.perf_counter() - t) * 1000)
            if written != len(mine):
                stats["errors"].append(f"saved {written} of {len(mine)} claimed")
            stats["saved"] += mine
        except StoreError as e:
            stats["errors"].append(str(e))
    engine.dispose()
    out.put((name, stats))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def _collect(out, procs, timeout_s: float) -> dict:
    """Each writer's figures; fails at once (not after the timeout) if a writer died."""
    results: dict = {}
    deadline = time.monotonic() + timeout_s
    while len(results) < len(procs):
        try:
            name, stats = out.get(timeout=1)
            results[name] = stats
        except queue.Empty:
            crashed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if crashed:
                raise RuntimeError(f"a writer process exited with code {crashed[0]}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"writers still running after {timeout_s:.0f} s") from None
    return results


def run(db_url: str, processes: int = 8, jobs: int = 10_000, batch: int = 25) -> dict:
    """Race ``processes`` writers over ``jobs`` jobs; returns the figures (see module doc)."""
    engine = make_engine(db_url)
    create_schema(engine)
    save_sweep(engine, SWEEP, SWEEP, {}, [_job(i) for i in range(jobs)])
    engine.dispose()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_url, jobs, batch, k, start, out))
             for k in range(processes)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let every process import and connect before the race starts
    t0 = time.perf_counter()
    start.set()
    results = _collect(out, procs, timeout_s=600)
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    saved = [j for s in results.values() for j in s["saved"]]
    errors = [e for s in results.values() for e in s["errors"]]
    check = create_engine(db_url)
    with check.connect() as c:
        rows = c.execute(text("SELECT status, attempts, count(*) FROM jobs WHERE sweep_id = :s "
                              "GROUP BY status, attempts"), {"s": SWEEP}).all()
    check.dispose()
    claims = [x for s in results.values() for x in s["claim_ms"]]
    saves = [x for s in results.values() for x in s["save_ms"]]
    return {
        "processes": processes,
        "jobs": jobs,
        "batch": batch,
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall),
        "transactions": len(claims) + len(saves)
        + sum(len(s["beat_ms"]) for s in results.values()),
        "claim_ms_p50": _pct(claims, 0.5),
        "claim_ms_p99": _pct(claims, 0.99),
        "claim_ms_max": _pct(claims, 1.0),
        "save_ms_p50": _pct(saves, 0.5),
        "save_ms_p99": _pct(saves, 0.99),
        "save_ms_max": _pct(saves, 1.0),
        "saved": len(saved),
        "saved_distinct": len(set(saved)),
        "locked_errors": sum("locked" in e for e in errors),
        "errors": errors[:5],
        "error_count": len(errors),
        "rows": {f"{status} x{attempts}": n for status, attempts, n in rows},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--db", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{Path(tmp) / 'writers.sqlite'}"
        print(json.dumps(run(db, args.processes, args.jobs, args.batch), indent=2))


if __name__ == "__main__":
    main()
