"""What the reaper and concurrent workers rely on from the store, on SQLite and PostgreSQL: a
claim that two racing workers can never both win, stale jobs moved once, and queued jobs whose
message was lost found again."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update

from store.activity import status_counts
from store.claims import claim_jobs, save_results
from store.reads import list_jobs
from store.recording import save_sweep
from store.records import JobRecord
from store.requeue import lost_queued_devices, reap_stale, take_lost_queued
from store.rows import now
from tests.support.database import fit_result, ids_of, job_row


def _age(engine, seconds: float, **where) -> None:
    with engine.begin() as c:
        q = update(JobRecord).values(heartbeat_at=now() - timedelta(seconds=seconds))
        for col, value in where.items():
            q = q.where(getattr(JobRecord, col) == value)
        c.execute(q)


def test_racing_claims_on_the_same_jobs_never_both_win(engine):
    ids = [f"job{i:04d}" for i in range(200)]
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(200)])
    start = threading.Barrier(8)
    won: dict[int, list[str]] = {}

    def claim(k: int) -> None:
        start.wait()
        won[k] = []
        for chunk in (ids[i : i + 20] for i in range(0, 200, 20)):
            won[k] += ids_of(claim_jobs(engine, "s1", chunk, f"w{k}", 60))

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [j for got in won.values() for j in got]
    assert sorted(everything) == ids  # each job won exactly once
    assert all(j.attempts == 1 for j in list_jobs(engine, "s1"))


def test_stale_running_jobs_are_moved_once_however_many_reapers(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(4)])
    claim_jobs(engine, "s1", ["job0000", "job0001"], "dead", 60)
    claim_jobs(engine, "s1", ["job0002"], "alive", 60)
    _age(engine, 120, worker="dead")
    moved = reap_stale(engine, 60)
    assert sorted(j.id for j in moved) == ["job0000", "job0001"]
    assert all(j.status == "queued" and j.worker is None for j in moved)
    assert reap_stale(engine, 60) == []
    assert status_counts(engine, "s1") == {"queued": 3, "running": 1}


def test_queued_jobs_that_waited_too_long_are_taken_once(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(0), job_row(1), job_row(2, device="cuda"),
                                            job_row(3)])
    claim_jobs(engine, "s1", ["job0003"], "w", 60)
    save_results(engine, "s1", [("job0003", fit_result())], "w", "cpu")
    assert lost_queued_devices(engine, 60) == []  # just queued: not lost
    _age(engine, 120)
    assert sorted(lost_queued_devices(engine, 60)) == ["cpu", "cuda"]
    # The caller found only the CPU queue empty: the cuda job may still have its message.
    taken = take_lost_queued(engine, 60, ["cpu"])
    assert sorted(j.id for j in taken) == ["job0000", "job0001"]
    assert take_lost_queued(engine, 60, ["cpu"]) == []  # marked: once per stale period
    assert lost_queued_devices(engine, 60) == ["cuda"]
    assert status_counts(engine, "s1") == {"queued": 3, "succeeded": 1}
