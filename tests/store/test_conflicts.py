"""On PostgreSQL, the store's writers lock the job rows they change in one order (sweep, id),
whatever order the server's plan meets them in, so that two of them changing overlapping rows
wait for each other instead of deadlocking; and a transaction the server still rolls back to
settle a deadlock (with a statement of someone else's) is run again, not reported as a failure.

Both are checked on the real server with a second connection that holds row locks: the rows a
writer holds while it waits show the order it locks in, and a deadlock is made on purpose."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from store import create_schema, make_engine
from store.claims import claim_jobs
from store.db import StoreError, is_conflict
from store.recording import save_sweep
from store.requeue import cancel_sweep, reap_stale, requeue, take_lost_queued
from store.rows import now
from tests.support.database import job_row
from tests.support.servers import pg_schema

SWEEP = "s1"
IDS = [f"job{i:04d}" for i in range(40)]
MIDDLE = IDS[20]


@pytest.fixture
def pg():
    with pg_schema() as url:
        engine = make_engine(url)
        create_schema(engine)
        # Recorded last id first: the table's physical order is the reverse of the id order,
        # so a writer that locked rows in the order a scan meets them would not lock by id.
        save_sweep(engine, SWEEP, "s", {}, [job_row(i, id=i_d) for i, i_d in
                                                   reversed(list(enumerate(IDS)))])
        yield engine
        engine.dispose()


def _hold(engine, ids):
    """A connection in a transaction that holds these rows locked (FOR UPDATE)."""
    conn = engine.connect()
    conn.execute(text("SET deadlock_timeout = '60s'"))  # only the writer detects deadlocks
    conn.execute(text("SELECT id FROM jobs WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"),
                 {"ids": list(ids)})
    return conn


def _waiting(engine, holder, timeout: float = 60.0) -> None:
    """Until some backend waits for a lock that ``holder`` (a connection) holds. Only a wait
    on the holder counts: another backend of the server waiting on a lock of its own (another
    test suite, a process of another user of this server) must not end the wait early."""
    held_by = holder.execute(text("SELECT pg_backend_pid()")).scalar()
    deadline = time.monotonic() + timeout
    with engine.connect() as c:
        while time.monotonic() < deadline:
            n = c.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE :h = ANY(pg_blocking_pids(pid))"),
                {"h": held_by}).scalar()
            c.rollback()
            if n:
                return
            time.sleep(0.02)
    raise AssertionError("the writer never waited for the held row")


def _unlocked(engine) -> list[str]:
    with engine.connect() as c:
        ids = c.execute(text("SELECT id FROM jobs ORDER BY id FOR UPDATE SKIP LOCKED")).scalars()
        out = list(ids)
        c.rollback()
        return out


def _in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


WRITERS = {
    "requeue": lambda e: requeue(e, SWEEP, 30),
    "claim": lambda e: claim_jobs(e, SWEEP, IDS, "w@h/1", 30),
    "cancel": lambda e: cancel_sweep(e, SWEEP),
    "take_lost_queued": lambda e: take_lost_queued(e, -1, ["cpu"]),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writers_lock_rows_in_id_order_whatever_the_tables_order(pg, writer):
    holder = _hold(pg, [MIDDLE])
    try:
        t, out = _in_thread(lambda: WRITERS[writer](pg))
        _waiting(pg, holder)
        # Waiting for the middle row, the writer holds every row before it and none after.
        assert _unlocked(pg) == IDS[21:]
    finally:
        holder.rollback()
        holder.close()
    t.join(60)
    assert "error" not in out, out.get("error")


def test_a_writer_held_in_a_deadlock_runs_again_and_succeeds(pg):
    later = now_plus(-60)
    with pg.begin() as c:  # running on a worker whose heartbeat stopped a minute ago
        c.execute(text("UPDATE jobs SET status = 'running', worker = 'gone', "
                       "heartbeat_at = :t"), {"t": later})
    holder = _hold(pg, [MIDDLE])
    try:
        t, out = _in_thread(lambda: reap_stale(pg, 30))
        _waiting(pg, holder)
        # Asking for a row the waiting writer holds closes the circle. The writer's side
        # detects it (after 1 s) and is rolled back, which lets this go on.
        held = sorted(set(IDS) - set(_unlocked(pg)) - {MIDDLE})
        holder.execute(text("UPDATE jobs SET error = 'held' WHERE id = :id"), {"id": held[0]})
        holder.commit()
    finally:
        holder.close()
    t.join(60)
    assert "error" not in out, out.get("error")
    assert sorted(j.id for j in out["value"]) == IDS
    with pg.connect() as c:
        rows = dict(c.execute(text("SELECT id, status FROM jobs")).all())
    assert set(rows.values()) == {"queued"}


def test_a_deadlock_is_a_conflict_and_other_errors_are_not(pg):
    holder = _hold(pg, [MIDDLE])
    try:
        with pg.connect() as c:
            c.execute(text("SET deadlock_timeout = '50ms'"))
            c.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": IDS[0]})
            t, out = _in_thread(lambda: c.execute(
                text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": MIDDLE}))
            _waiting(pg, holder)
            holder.execute(text("UPDATE jobs SET error = 'held' WHERE id = :id"), {"id": IDS[0]})
            t.join(60)
    finally:
        holder.rollback()
        holder.close()
    assert is_conflict(out["error"])
    assert not is_conflict(StoreError("results database: OperationalError: refused"))


def now_plus(seconds: float):
    return now() + timedelta(seconds=seconds)
