"""The store's one clock is the database's, on SQLite and PostgreSQL: a caller whose clock is off
(``store.rows.now``, this process's clock, moved) neither writes a heartbeat that looks stale or
fresh when it is not, nor judges a live job stale."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from store import rows as store_rows
from store.activity import status_counts
from store.claims import beat, claim_jobs, record_progress, save_results
from store.clock import db_now, skew_s
from store.reads import list_jobs
from store.recording import save_sweep
from store.requeue import lost_queued_devices, reap_stale, requeue, take_lost_queued
from store.rows import as_utc
from store.sweeps import find_sweep
from tests.support.database import fit_result, job_row

STALE_S = 10


@pytest.fixture
def clock_off(monkeypatch):
    """Move this process's clock (as ``store.rows.now`` reads it) by the given seconds."""
    real = store_rows.now

    def move(seconds: float) -> None:
        monkeypatch.setattr(store_rows, "now", lambda: real() + timedelta(seconds=seconds))

    yield move
    monkeypatch.setattr(store_rows, "now", real)


def _fresh(engine, t) -> bool:
    return abs((as_utc(t) - db_now(engine)).total_seconds()) < STALE_S / 2


def test_a_writer_whose_clock_is_behind_writes_the_databases_time(engine, clock_off):
    clock_off(-120)
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(3)])
    [claimed] = claim_jobs(engine, "s1", ["job0000"], "behind", STALE_S)
    beat(engine, "s1", ["job0000"], "behind")
    record_progress(engine, "s1", "behind", {"job0000": (5, [(4, 1.0)])})
    save_results(engine, "s1", [("job0001", fit_result())], "behind", "cpu")
    clock_off(0)
    jobs = {j.id: j for j in list_jobs(engine, "s1")}
    assert _fresh(engine, claimed.started_at) and _fresh(engine, jobs["job0000"].heartbeat_at)
    assert _fresh(engine, jobs["job0001"].finished_at)
    assert _fresh(engine, find_sweep(engine, "s1").created_at)
    # A reaper whose clock is right finds nothing stale and no message lost.
    assert reap_stale(engine, STALE_S, 3) == []
    assert lost_queued_devices(engine, STALE_S) == []
    assert requeue(engine, "s1", STALE_S, job_ids=["job0000"]) == []
    assert status_counts(engine, "s1") == {"running": 1, "succeeded": 1, "queued": 1}


def test_a_reaper_whose_clock_is_ahead_takes_nothing_live(engine, clock_off):
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(2)])
    claim_jobs(engine, "s1", ["job0000"], "alive", STALE_S)
    clock_off(90)
    assert reap_stale(engine, STALE_S, 3) == []
    assert claim_jobs(engine, "s1", ["job0000"], "other", STALE_S) == []
    assert lost_queued_devices(engine, STALE_S) == []
    assert take_lost_queued(engine, STALE_S, ["cpu"]) == []
    [job] = [j for j in list_jobs(engine, "s1") if j.id == "job0000"]
    assert (job.status, job.worker, job.attempts) == ("running", "alive", 1)


def test_a_heartbeat_that_stopped_is_stale_by_the_databases_clock(engine, clock_off):
    save_sweep(engine, "s1", "demo", {}, [job_row(0)])
    clock_off(-120)
    claim_jobs(engine, "s1", ["job0000"], "dead", 0.5)
    # However far the caller's clock is off, a heartbeat older than stale_after_s by the
    # database's clock is stale: the job goes back to the queue.
    wait_until = db_now(engine) + timedelta(seconds=1)
    while db_now(engine) < wait_until:
        time.sleep(0.05)
    [moved] = reap_stale(engine, 0.5, 3)
    assert (moved.id, moved.status) == ("job0000", "queued")


def test_skew_is_measured_against_the_database(engine):
    # This process and the database share this machine's clock.
    assert abs(skew_s(engine)) < 1.0
