"""What a worker does to the jobs it trains: claim them (of two racing workers exactly one gets a
job), beat while training, report progress, and store each result exactly once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import (
    Boolean,
    Engine,
    Integer,
    String,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from polyfit_models import fields
from store.clock import ago_sql, now_sql
from store.db import retry_conflicts, transaction
from store.records import (
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    JobRecord,
    JobStateRecord,
    LossPointRecord,
)
from store.rows import NO_SYNC, JobRow, chunks, in_lock_order, spec_columns


@retry_conflicts
def claim_jobs(
    engine: Engine, sweep_id: str, job_ids: Sequence[str], worker: str, stale_after_s: float,
    *, devices: Sequence[str] | None = None, max_attempts: int | None = None,
    variants: Sequence[str] | None = None,
) -> list[JobRow]:
    """Mark the given jobs ``running`` by ``worker`` and return the jobs it now owns, with the
    settings stored for them: a worker trains what the store says, never what a message says.

    A job is claimable while ``queued``, or while ``running`` with a heartbeat older than
    ``stale_after_s`` (its worker died) and fewer than ``max_attempts`` claims (the reaper
    fails it otherwise). ``devices``: only jobs whose ``device`` is one of these (the ones this
    worker serves); ``variants``: only jobs of these variants (the ones installed where it
    runs: a job of a plugin it lacks stays queued for a worker that has it). Ended and
    cancelled jobs are never claimed again, which is what makes a redelivered message
    harmless. One guarded UPDATE ... RETURNING: of two workers racing for a
    job, exactly one gets it, on SQLite (one writer at a time) and on PostgreSQL (the row lock
    makes the second UPDATE re-check the guard against the committed row). Staleness and the
    times written are the database's clock (``store.clock``), not this process's."""
    t = now_sql(engine)
    stale = ago_sql(engine, stale_after_s)
    lost = (JobRecord.status == RUNNING) & (JobRecord.heartbeat_at < stale)
    if max_attempts is not None:
        lost = lost & (JobRecord.attempts < max_attempts)
    guard = or_(JobRecord.status == QUEUED, lost)
    if devices is not None:
        guard = guard & JobRecord.device.in_(list(devices))
    if variants is not None:
        guard = guard & JobRecord.variant.in_(list(variants))
    table = JobRecord.__table__
    claimed: list[JobRow] = []
    with transaction(engine) as s:
        for chunk in chunks(sorted(set(job_ids))):
            claimed += [JobRow(**r) for r in s.execute(
                update(table)
                .where(in_lock_order(engine, (table.c.sweep_id == sweep_id)
                                      & table.c.id.in_(chunk) & guard))
                .values(status=RUNNING, worker=worker, started_at=t, heartbeat_at=t,
                        finished_at=None, epochs_done=None, attempts=table.c.attempts + 1)
                .returning(*spec_columns(table))
            ).mappings()]
    return claimed


@retry_conflicts
def beat(engine: Engine, sweep_id: str, job_ids: Sequence[str], worker: str) -> int:
    """Tell the store that ``worker`` is still alive and training these jobs (at the database's
    time, whatever this host's clock says); returns how many of them it still holds."""
    held = 0
    with transaction(engine) as s:
        for chunk in chunks(sorted(set(job_ids))):
            held += s.execute(
                update(JobRecord)
                .where(in_lock_order(engine, (JobRecord.sweep_id == sweep_id)
                                      & JobRecord.id.in_(chunk) & (JobRecord.status == RUNNING)
                                      & (JobRecord.worker == worker)))
                .values(heartbeat_at=now_sql(engine)).execution_options(**NO_SYNC)
            ).rowcount
    return held


def _savable(worker: str):
    """Rows a worker that trained them may still write: those it holds, and those put back in
    the queue (its heartbeat lapsed: a partition, a database outage) that nobody has claimed
    since. Storing the finished result then spares the queued work, which finds the job ended.
    A row another worker holds, or that has ended, is never written."""
    return ((JobRecord.status == RUNNING) & (JobRecord.worker == worker)) | (
        JobRecord.status == QUEUED)


@retry_conflicts
def save_results(
    engine: Engine, sweep_id: str, outcomes: Sequence[tuple[str, dict]], worker: str, ran_on: str,
    versions: str | None = None,
    held: Mapping[str, tuple[int, int, bytes | None]] | None = None,
) -> int:
    """Store each job's result once (see ``_savable``): a second delivery of the same job, or
    a late writer whose job another worker took over, changes nothing. ``versions``: what
    trained them (see ``JobRecord.versions``).

    ``outcomes`` holds (job id, FitResult.to_dict()) or (job id, {"status": "failed",
    "error": text}). ``held``: the jobs among them that reached the end of a successive-halving
    rung, job id -> (epochs reached, the state's epochs, training state to continue from or
    None): their result is the rung's, stored ``paused`` with that state until the rung is
    ranked (``store.halving``), and the attempt their claim counted is given back. Returns how
    many rows were written."""
    held = held or {}
    t = now_sql(engine)
    table = JobRecord.__table__
    by_id = dict(outcomes)
    with transaction(engine) as s:
        # Lock the rows this worker may write, in id order (PostgreSQL: FOR UPDATE, so that no
        # claim, requeue or other save can change them before this transaction ends; SQLite:
        # the transaction already holds the database's one write lock).
        owned: list[str] = []
        for chunk in chunks(sorted(by_id)):
            owned += s.scalars(
                select(JobRecord.id).where(JobRecord.sweep_id == sweep_id,
                                           JobRecord.id.in_(chunk), _savable(worker))
                .order_by(JobRecord.id).with_for_update()
            ).all()
        if not owned:
            return 0
        params = [{"b_id": job_id, **_result_values(by_id[job_id]),
                   "b_reached": held[job_id][0] if job_id in held else None,
                   "b_held": job_id in held} for job_id in owned]
        if held:
            for p in params:
                if p["b_held"]:
                    p["b_status"] = PAUSED.value
        paused = bindparam("b_held", type_=Boolean)
        # One executemany instead of a statement per job: 1,250 results went from ~2 s to
        # a few tens of milliseconds.
        s.execute(
            update(table)
            .where(table.c.sweep_id == sweep_id, table.c.id == bindparam("b_id"))
            .values(finished_at=case((paused, None), else_=t), heartbeat_at=t, ran_on=ran_on,
                    worker=worker, versions=versions,
                    epochs_done=case((paused, bindparam("b_reached", type_=Integer)),
                                     else_=_epochs_done(table)),
                    attempts=case((paused, table.c.attempts - 1), else_=table.c.attempts),
                    rung=case((paused, func.coalesce(table.c.rung, 0)), else_=table.c.rung),
                    **{k: bindparam(f"b_{k}") for k in RESULT_KEYS}),
            params,
        )
        points = [
            {"sweep_id": sweep_id, "job_id": job_id, "epoch": int(ep), "loss": loss}
            for job_id in owned
            for ep, loss in (by_id[job_id].get("loss_curve") or [])
        ]
        for chunk in chunks(owned):
            s.execute(delete(LossPointRecord).where(
                LossPointRecord.sweep_id == sweep_id, LossPointRecord.job_id.in_(chunk)))
        if points:
            s.execute(insert(LossPointRecord.__table__), points)
        for chunk in chunks(owned):  # an ended job never continues from a stopped run
            s.execute(delete(JobStateRecord).where(
                JobStateRecord.sweep_id == sweep_id, JobStateRecord.job_id.in_(chunk)))
        kept = [{"sweep_id": sweep_id, "job_id": job_id, "epoch": held[job_id][1],
                 "state": held[job_id][2]}
                for job_id in owned if job_id in held and held[job_id][2] is not None]
        if kept:  # a rung's end: the next rung continues from here
            s.execute(insert(JobStateRecord.__table__), kept)
    return len(owned)


#: What a worker's result writes (the job's declaration says which columns).
RESULT_KEYS = fields.RESULT


def _epochs_done(table):
    """How far an ended job went: to the epoch it stopped at, or diverged at, or all of its
    epochs (none for a failed job)."""
    return case((bindparam("b_status", type_=String) == FAILED, None),
                else_=func.coalesce(bindparam("b_stopped_at_epoch", type_=Integer),
                                    bindparam("b_diverged_at_epoch", type_=Integer),
                                    table.c.epochs))


@retry_conflicts
def record_progress(engine: Engine, sweep_id: str, worker: str,
                    updates: dict[str, tuple[int, list]]) -> int:
    """A running job's progress: ``updates`` maps a job id to (epochs done, new loss-curve
    points [(epoch, loss)]). Written only for the rows this worker still holds running (a
    job that ended, or was taken over, is left alone), in one transaction; returns how many."""
    if not updates:
        return 0
    table = JobRecord.__table__
    t = now_sql(engine)
    with transaction(engine) as s:
        held: list[str] = []
        for chunk in chunks(sorted(updates)):
            held += s.scalars(
                update(table)
                .where(in_lock_order(engine, (table.c.sweep_id == sweep_id)
                                      & table.c.id.in_(chunk) & (table.c.status == RUNNING)
                                      & (table.c.worker == worker)))
                .values(heartbeat_at=t,
                        epochs_done=case({i: updates[i][0] for i in chunk}, value=table.c.id,
                                         else_=table.c.epochs_done))
                .returning(table.c.id)
            ).all()
        points = [{"sweep_id": sweep_id, "job_id": i, "epoch": int(e), "loss": loss}
                  for i in held for e, loss in updates[i][1]]
        if points:
            # An earlier attempt's points (a job whose worker was lost) are overwritten.
            dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
            insert_points = dialect.insert(LossPointRecord.__table__)
            s.execute(insert_points.on_conflict_do_update(
                index_elements=["sweep_id", "job_id", "epoch"],
                set_={"loss": insert_points.excluded.loss}), points)
    return len(held)


def _result_values(result: dict) -> dict:
    return {f"b_{k}": result.get(k) for k in RESULT_KEYS}
