"""The results database as the tests see it: rows read with plain SQL (nothing of polyfit's in
between), job rows and results to write through the store, and writers racing each other."""

from __future__ import annotations

import threading

from sqlalchemy import create_engine, text


def query(db_url: str, sql: str, **params) -> list[dict]:
    """Rows of a plain SQL query, as dicts (a fresh engine: nothing of polyfit's in between)."""
    eng = create_engine(db_url)
    try:
        with eng.connect() as c:
            return [dict(r) for r in c.execute(text(sql), params).mappings()]
    finally:
        eng.dispose()


def rows(db_url: str, sweep_id: str,
         columns: str = "id, status, attempts, worker, mse, error, ran_on") -> list[dict]:
    """``columns`` of the sweep's rows in the jobs table, by id."""
    return query(db_url, f"SELECT {columns} FROM jobs WHERE sweep_id = :s ORDER BY id",
                 s=sweep_id)


def ids_of(jobs) -> list[str]:
    """The ids of store views (``claim_jobs`` returns the claimed jobs, not their ids)."""
    return [job.id for job in jobs]


def job_row(i: int, **kw) -> dict:
    """A job row as the scheduler records it (numpy, small), with ``kw`` changed."""
    row = {"id": f"job{i:04d}", "variant": "numpy", "lr": 1e-6, "degree": 3, "seed": i,
           "epochs": 10, "optimizer": "sgd", "device": "cpu", "target": "sin",
           "dtype": "float64", "x_start": -3.14, "x_stop": 3.14, "x_points": 100}
    row.update(kw)
    return row


def fit_result(status="succeeded", **kw) -> dict:
    """An outcome as a worker stores it, with ``kw`` changed."""
    out = {"status": status, "final_loss": 1.5, "mse": 0.01, "optimum_mse": 0.005,
           "coefficients": [0.1, 0.2], "monomial": [0.1, 0.2], "diverged_at_epoch": None,
           "duration_s": 0.1, "loss_curve": [[99, 3.0], [199, 2.0]]}
    out.update(kw)
    return out


def race(step, n: int = 4) -> list:
    """``step()`` in ``n`` threads let go at once (as workers storing their last results
    together); what each returned. An exception in any of them fails the race."""
    barrier, got, errors = threading.Barrier(n), [], []

    def run() -> None:
        barrier.wait()
        try:
            got.append(step())
        except Exception as e:  # noqa: BLE001 - reported below, a lost race must not raise
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return got
