"""Running jobs' progress in the store: while a batch trains, its worker writes each job's
epochs done and its loss-curve points so far (``_LiveCurves`` takes them from the training
loop, ``store.claims.record_progress`` writes them), only into rows it still holds; the final
result replaces them. Real fits, a real SQLite file and the real PostgreSQL server, the
worker's own pieces."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from polyfit_models import fit_many
from store.claims import claim_jobs, record_progress, save_results
from store.db import make_engine
from tests.support.database import query
from tests.support.sweeps import record_sweep
from worker.batches import spec_of
from worker.execute import _LiveCurves


@pytest.fixture
def db_url(any_db_url):
    """Each backend (conftest's ``db_url`` is SQLite only)."""
    return any_db_url


GRID = [{"variant": ["autograd"], "lr": [1e-6], "seed": [0, 1], "epochs": [1000]}]


def _progress(db_url: str, sweep_id: str) -> dict[str, tuple]:
    rows = query(db_url, "SELECT id, status, epochs_done FROM jobs WHERE sweep_id = :s",
                 s=sweep_id)
    points = query(db_url, "SELECT job_id, count(*) AS n, max(epoch) AS last FROM loss_curve "
                           "WHERE sweep_id = :s GROUP BY job_id", s=sweep_id)
    counts = {p["job_id"]: (p["n"], p["last"]) for p in points}
    return {r["id"]: (r["status"], r["epochs_done"], *counts.get(r["id"], (0, None)))
            for r in rows}


def test_a_running_batch_shows_its_epochs_and_curves_then_its_results(db_url):
    sweep_id, jobs = record_sweep(db_url, GRID, name="live")
    engine = make_engine(db_url)
    claimed = claim_jobs(engine, sweep_id, [j.id for j in jobs], "w/1", 60)
    todo = [(job.id, spec_of(job)) for job in claimed]
    live = _LiveCurves(todo, every_s=1e-9)  # every window: the test sees each write
    seen = []

    def progress(rows, epochs_done, snapshot):
        live(rows, epochs_done, snapshot)
        record_progress(engine, sweep_id, "w/1", live.take())
        seen.append((epochs_done, _progress(db_url, sweep_id)))

    results = fit_many([spec for _, spec in todo], progress=progress)
    assert [done for done, _ in seen] == list(range(100, 1001, 100))
    for done, state in seen:
        assert state == {job.id: ("running", done, done // 100, done - 1) for job in claimed}
    stored = query(db_url, "SELECT epoch, loss FROM loss_curve WHERE job_id = :j ORDER BY "
                           "epoch", j=todo[0][0])
    assert [[r["epoch"], r["loss"]] for r in stored] == results[0].loss_curve

    save_results(engine, sweep_id, [(job_id, r.to_dict()) for (job_id, _), r
                                               in zip(todo, results)], "w/1", "cpu")
    assert _progress(db_url, sweep_id) == {
        job.id: ("succeeded", 1000, 10, 999) for job in claimed}
    engine.dispose()


def test_progress_is_written_only_into_rows_the_worker_still_holds(db_url):
    sweep_id, jobs = record_sweep(db_url, GRID, name="held")
    engine = make_engine(db_url)
    mine, theirs = jobs
    claim_jobs(engine, sweep_id, [mine.id], "w/1", 60)
    claim_jobs(engine, sweep_id, [theirs.id], "w/2", 60)
    update = {job.id: (300, [[99, 5.0], [199, 4.0], [299, 3.0]]) for job in jobs}
    assert record_progress(engine, sweep_id, "w/1", update) == 1
    state = _progress(db_url, sweep_id)
    assert state[mine.id] == ("running", 300, 3, 299)
    assert state[theirs.id] == ("running", None, 0, None)
    # Ended: nothing more is written.
    save_results(engine, sweep_id, [(mine.id, {"status": "failed", "error": "x"})],
                            "w/1", "cpu")
    assert record_progress(engine, sweep_id, "w/1", update) == 0
    assert _progress(db_url, sweep_id)[mine.id] == ("failed", None, 0, None)
    engine.dispose()


def test_a_later_attempt_overwrites_the_points_of_an_earlier_one(db_url):
    sweep_id, jobs = record_sweep(db_url, GRID, name="again")
    engine = make_engine(db_url)
    job = jobs[0]
    claim_jobs(engine, sweep_id, [job.id], "w/1", 60)
    record_progress(engine, sweep_id, "w/1", {job.id: (200, [[99, 9.0], [199, 8.0]])})
    # w/1 is lost; w/2 claims the job once its heartbeat is stale, and starts from nothing.
    with engine.begin() as c:
        c.execute(text("UPDATE jobs SET heartbeat_at = '2000-01-01 00:00:00' WHERE id = :j"),
                  {"j": job.id})
    assert claim_jobs(engine, sweep_id, [job.id], "w/2", 60)
    assert _progress(db_url, sweep_id)[job.id][1] is None
    record_progress(engine, sweep_id, "w/2", {job.id: (100, [[99, 7.0]])})
    stored = query(db_url, "SELECT epoch, loss FROM loss_curve WHERE job_id = :j ORDER BY epoch",
                   j=job.id)
    assert [(r["epoch"], r["loss"]) for r in stored] == [(99, 7.0), (199, 8.0)]
    engine.dispose()
