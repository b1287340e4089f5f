"""Putting jobs back in the queue and taking them out of it: requeue, resume, reap the jobs of a
dead worker, find the queued jobs whose message was lost, release a stopped worker's jobs, cancel.
Each is one guarded UPDATE, so that concurrent callers move every row once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta

from sqlalchemy import Engine, case, delete, func, literal, or_, select, tuple_, update

from polyfit_models import fields
from store.clock import ago_sql, db_now, now_sql
from store.db import retry_conflicts, transaction
from store.records import (
    CANCELLED,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    JobRecord,
    JobStatus,
    LossPointRecord,
)
from store.rows import CHUNK, NO_SYNC, JobRow, batched, in_lock_order, spec_columns


@retry_conflicts
def cancel_sweep(engine: Engine, sweep_id: str) -> int:
    """Jobs that have not started, or wait at a halving rung's end (``paused``), become
    ``cancelled``; running ones finish. Returns the count."""
    with transaction(engine) as s:
        return s.execute(
            update(JobRecord)
            .where(in_lock_order(engine, (JobRecord.sweep_id == sweep_id)
                                  & JobRecord.status.in_([QUEUED, PAUSED])))
            .values(status=CANCELLED, finished_at=now_sql(engine))
            .execution_options(**NO_SYNC)
        ).rowcount


def requeue(engine: Engine, sweep_id: str, stale_after_s: float, *,
            retry: Sequence[str] = (), job_ids: Sequence[str] | None = None) -> list[JobRow]:
    """Every chunk of ``requeue_chunks``, as one list (for sweeps of a size that fits)."""
    return [job for chunk in requeue_chunks(engine, sweep_id, stale_after_s, retry=retry,
                                            job_ids=job_ids) for job in chunk]


#: What a job trained again from nothing loses: its result, and where its last one came from.
_CLEARED = (*(c for c in fields.RESULT if c != "status"), "reused_from", "epochs_done")


def requeue_chunks(engine: Engine, sweep_id: str, stale_after_s: float, *,
                   retry: Sequence[str] = (), job_ids: Iterable[str] | None = None,
                   chunk: int = 5000) -> Iterator[list[JobRow]]:
    """Put back in the queue the jobs of a sweep that still need a worker, and yield them, a
    chunk at a time (to be enqueued as they come: memory stays flat however big the sweep): the
    ``queued`` ones (their message may be lost), those ``running`` on a worker whose heartbeat
    stopped, and the ended ones whose status is in ``retry`` (``failed``, ``cancelled``: only
    when the user asks, as ``polyfit sweep resume`` does; ``succeeded`` and ``diverged`` too for
    ``--fresh``, which trains them again). ``job_ids``: only these.

    Each chunk is one guarded UPDATE ... RETURNING in its own transaction: a job that ends, or
    that a live worker claims, while this runs is not touched (a select-then-update would put
    it back in the queue). A chunk moved leaves its rows' heartbeat at this call's time (the
    database's, read once), which is how the next chunk skips them."""
    t = db_now(engine)
    stale = t - timedelta(seconds=stale_after_s)
    retry = [JobStatus(r) for r in retry]
    guard = or_(JobRecord.status == QUEUED,
                (JobRecord.status == RUNNING) & (JobRecord.heartbeat_at < stale),
                JobRecord.status.in_(retry))
    retried = JobRecord.status.in_(retry)
    # A job trained again starts from nothing: its old result is cleared with its status.
    values = {"status": QUEUED, "worker": None, "finished_at": None,
              **{c: case((retried, None), else_=getattr(JobRecord, c))
                 for c in _CLEARED}}
    if JobStatus.SUCCEEDED in retry:
        # Trained again from nothing (--fresh): from the first rung of a halving too. (A
        # resume keeps a cancelled or failed job's rung: it continues from its state.)
        values["rung"] = case((retried, None), else_=JobRecord.rung)
    where = (JobRecord.sweep_id == sweep_id) & guard
    if job_ids is not None:
        for ids in batched(job_ids, CHUNK):
            moved = _requeue_returning(engine, t, where & JobRecord.id.in_(ids), **values)
            if moved:
                yield moved
        return
    untouched = or_(JobRecord.heartbeat_at < t, JobRecord.heartbeat_at.is_(None))
    while True:
        moved = _requeue_returning(engine, t, where & untouched, limit=chunk, **values)
        if moved:
            yield moved
        if len(moved) < chunk:
            return


def requeue_missing(engine: Engine, sweep_id: str, stale_after_s: float) -> list[JobRow]:
    """``requeue`` with every failed and cancelled job retried (``polyfit sweep resume``)."""
    return requeue(engine, sweep_id, stale_after_s, retry=(FAILED, CANCELLED))


@retry_conflicts
def clear_results(engine: Engine, sweep_id: str, job_ids: Iterable[str]) -> None:
    """Forget the loss curves of jobs about to be trained again (``--fresh``)."""
    with transaction(engine) as s:
        for chunk in batched(job_ids, CHUNK):
            s.execute(delete(LossPointRecord).where(LossPointRecord.sweep_id == sweep_id,
                                                    LossPointRecord.job_id.in_(chunk)))


def reap_stale(engine: Engine, stale_after_s: float,
               max_attempts: int | None = None) -> list[JobRow]:
    """Jobs ``running`` on a worker whose heartbeat stopped go back to ``queued``, or end
    ``failed`` once they have been claimed ``max_attempts`` times (a job that kills its worker
    every time, out of memory say, must not go round forever). Returns the jobs put back in
    the queue (to be enqueued again). Two reapers racing get disjoint sets: each row moves once.

    Each loss is noted in ``error`` ("heartbeat stopped on WORKER"), so a job that finally fails
    names every worker (and so every host) it was lost on. "Stopped" is judged on the
    database's clock, which every heartbeat was written with: no host's clock matters."""
    t = now_sql(engine)
    stale = ago_sql(engine, stale_after_s)
    lost_on = func.coalesce(JobRecord.error + literal("; "), literal("")) + literal(
        "heartbeat stopped on ") + func.coalesce(JobRecord.worker, literal("?"))
    if max_attempts is None:
        give_up = literal(False)
    else:
        give_up = JobRecord.attempts >= max_attempts
    moved = _requeue_returning(
        engine, t, (JobRecord.status == RUNNING) & (JobRecord.heartbeat_at < stale),
        status=case((give_up, literal(FAILED.value)), else_=literal(QUEUED.value)),
        worker=case((give_up, JobRecord.worker), else_=None),
        finished_at=case((give_up, t), else_=None),
        error=case((give_up, literal(f"worker lost {max_attempts} times "
                                     f"(POLYFIT_MAX_ATTEMPTS={max_attempts}): ") + lost_on),
                   else_=lost_on))
    return [job for job in moved if job.status == QUEUED]


def lost_queued_devices(engine: Engine, stale_after_s: float) -> list[str]:
    """The devices of jobs ``queued`` longer than ``stale_after_s`` ago (candidates for a lost
    message: see ``take_lost_queued``)."""
    stale = ago_sql(engine, stale_after_s)
    with transaction(engine) as s:
        return list(s.scalars(
            select(JobRecord.device).where(_queued_before(stale)).distinct()
        ).all())


def lost_queued_groups(engine: Engine, stale_after_s: float) -> list[tuple[str, str]]:
    """The (device, variant) pairs of jobs ``queued`` longer than ``stale_after_s`` ago: a
    plugin variant's jobs wait on a queue of their own (see ``worker.queues``)."""
    stale = ago_sql(engine, stale_after_s)
    with transaction(engine) as s:
        return [(d, v) for d, v in s.execute(
            select(JobRecord.device, JobRecord.variant).where(_queued_before(stale)).distinct()
        ).all()]


def take_lost_queued(engine: Engine, stale_after_s: float, devices: Sequence[str],
                     groups: Sequence[tuple[str, str]] | None = None) -> list[JobRow]:
    """Jobs of these devices ``queued`` longer than ``stale_after_s`` ago, whose queue the
    caller found empty: their message was lost (fetched by a worker killed before it claimed
    them, dropped by a broker, never published by a scheduler that died). Marks them as queued
    now, so that each is taken once per ``stale_after_s`` however many reapers race, and
    returns them, to be enqueued again. ``groups``: (device, variant) pairs instead of whole
    devices."""
    t, stale = now_sql(engine), ago_sql(engine, stale_after_s)
    if groups is not None:
        if not groups:
            return []
        return _requeue_returning(engine, t, _queued_before(stale) & tuple_(
            JobRecord.device, JobRecord.variant).in_([tuple(g) for g in groups]))
    if not devices:
        return []
    return _requeue_returning(engine, t, _queued_before(stale) &
                              JobRecord.device.in_(list(devices)))


def _queued_before(t):
    # ``heartbeat_at`` of a queued job is when it was (re)queued; NULL in rows written before.
    return (JobRecord.status == QUEUED) & or_(JobRecord.heartbeat_at < t,
                                              JobRecord.heartbeat_at.is_(None))


@retry_conflicts
def _requeue_returning(engine: Engine, t, where, *, limit: int | None = None,
                       **values) -> list[JobRow]:
    """One guarded UPDATE ... RETURNING (of the first ``limit`` rows by id, if given; see
    ``in_lock_order``) that sets the rows' ``heartbeat_at`` to ``t`` (the database's time, as
    a value or a SQL expression): concurrent callers get disjoint rows, and a row that stops
    matching ``where`` before its turn (PostgreSQL re-checks after the row lock) is left
    alone."""
    table = JobRecord.__table__
    with transaction(engine) as s:
        rows = s.execute(
            update(table).where(in_lock_order(engine, where, limit=limit))
            .values(heartbeat_at=t, **values)
            .returning(*spec_columns(table))
        ).mappings().all()
        return [JobRow(**r) for r in rows]


@retry_conflicts
def release_worker(engine: Engine, worker: str) -> int:
    """Jobs left ``running`` by a worker known to be stopped go back to ``queued`` at once
    (without waiting for their heartbeat to go stale). ``worker`` is the worker's identity (a
    node name with its host and random token, see ``worker.launch``): the jobs of that worker's
    processes (``NAME/PID``) and of no other. Returns the count."""
    with transaction(engine) as s:
        return s.execute(
            update(JobRecord)
            .where(in_lock_order(engine, (JobRecord.status == RUNNING) & or_(
                JobRecord.worker == worker,
                JobRecord.worker.startswith(worker + "/", autoescape=True))))
            .values(status=QUEUED, worker=None, heartbeat_at=now_sql(engine))
            .execution_options(**NO_SYNC)
        ).rowcount
