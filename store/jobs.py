"""What scheduler and worker do to the results: record a sweep and its jobs, claim jobs for a
worker, store results exactly once, count, list, cancel and requeue. Every function takes an
engine and plain values and returns plain dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from store.db import StoreError, redact_url, session_scope
from store.records import (
    CANCELLED,
    ENDED,
    FAILED,
    QUEUED,
    RUNNING,
    JobRecord,
    LossPointRecord,
    SweepRecord,
)

# Rows are written in chunks so that one statement never carries an unbounded parameter list
# (SQLite caps bound parameters per statement).
_CHUNK = 500


def now() -> datetime:
    return datetime.now(UTC)


def as_utc(t: datetime) -> datetime:
    """``t`` with its time zone; a naive time from the store is UTC (every time written is)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class SweepView:
    id: str
    name: str
    spec: dict
    created_at: datetime


@dataclass(frozen=True)
class JobView:
    id: str
    sweep_id: str
    variant: str
    lr: float
    degree: int
    seed: int
    epochs: int
    optimizer: str
    device: str
    target: str
    dtype: str
    x_start: float
    x_stop: float
    x_points: int
    status: str
    final_loss: float | None
    mse: float | None
    optimum_mse: float | None
    coefficients: list | None
    monomial: list | None
    diverged_at_epoch: int | None
    worker: str | None
    ran_on: str | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    attempts: int
    error: str | None

    def to_dict(self) -> dict:
        """The job as JSON-ready values; times as ISO 8601 with their UTC offset (SQLite hands
        back the stored UTC times without one)."""
        out = dataclasses.asdict(self)
        for key in ("started_at", "heartbeat_at", "finished_at"):
            if out[key] is not None:
                out[key] = as_utc(out[key]).isoformat()
        return out


JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(JobView))


# Bulk UPDATEs skip the ORM's matching of affected rows against objects loaded in the session:
# that costs O(rows x objects) and made requeueing 10,000 jobs take seconds.
_NO_SYNC = {"synchronize_session": False}


def _job_view(rec: JobRecord) -> JobView:
    return JobView(**{name: getattr(rec, name) for name in JOB_COLUMNS})


def _sweep_view(rec: SweepRecord) -> SweepView:
    return SweepView(id=rec.id, name=rec.name, spec=rec.spec, created_at=rec.created_at)


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _wrap(engine: Engine, e: Exception) -> StoreError:
    return StoreError(f"results database {redact_url(str(engine.url))}: {e.__class__.__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}")


def save_sweep(engine: Engine, sweep_id: str, name: str, spec: dict, jobs: Sequence[dict]) -> int:
    """Record a sweep and its jobs as ``queued``; jobs already recorded are left as they are.

    Returns how many jobs were new. All in one transaction: a sweep is never half-recorded."""
    t = now()
    try:
        with session_scope(engine) as s:
            if s.get(SweepRecord, sweep_id) is None:
                s.add(SweepRecord(id=sweep_id, name=name, spec=spec, created_at=now()))
                s.flush()
            existing = set(
                s.scalars(select(JobRecord.id).where(JobRecord.sweep_id == sweep_id)).all()
            )
            new = [
                {**job, "sweep_id": sweep_id, "status": QUEUED, "attempts": 0,
                 "heartbeat_at": t}
                for job in jobs
                if job["id"] not in existing
            ]
            if new:
                # Core executemany: SQLAlchemy batches the VALUES itself.
                s.execute(insert(JobRecord.__table__), new)
            return len(new)
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def claim_jobs(
    engine: Engine, sweep_id: str, job_ids: Sequence[str], worker: str, stale_after_s: float
) -> list[str]:
    """Mark the given jobs ``running`` by ``worker`` and return the ids it now owns.

    A job is claimable while ``queued``, or while ``running`` with a heartbeat older than
    ``stale_after_s`` (its worker died). Ended and cancelled jobs are never claimed again, which
    is what makes a redelivered message harmless."""
    t = now()
    stale = t - timedelta(seconds=stale_after_s)
    claimable = or_(
        JobRecord.status == QUEUED,
        (JobRecord.status == RUNNING) & (JobRecord.heartbeat_at < stale),
    )
    claimed: list[str] = []
    try:
        with session_scope(engine) as s:
            for chunk in _chunks(list(job_ids)):
                # The guard sits in the UPDATE itself, so that two workers handed the same job
                # (a redelivered or duplicated message) cannot both take it, on PostgreSQL too,
                # where a SELECT then UPDATE would race under READ COMMITTED.
                claimed += s.scalars(
                    update(JobRecord)
                    .where(JobRecord.sweep_id == sweep_id, JobRecord.id.in_(chunk), claimable)
                    .values(
                        status=RUNNING,
                        worker=worker,
                        started_at=t,
                        heartbeat_at=t,
                        attempts=JobRecord.attempts + 1,
                        error=None,
                    )
                    .returning(JobRecord.id)
                    .execution_options(**_NO_SYNC)
                ).all()
        return claimed
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def beat(engine: Engine, sweep_id: str, job_ids: Sequence[str], worker: str) -> None:
    """Tell the store that ``worker`` is still alive and training these jobs."""
    try:
        with session_scope(engine) as s:
            for chunk in _chunks(list(job_ids)):
                s.execute(
                    update(JobRecord)
                    .where(
                        JobRecord.sweep_id == sweep_id,
                        JobRecord.id.in_(chunk),
                        JobRecord.status == RUNNING,
                        JobRecord.worker == worker,
                    )
                    .values(heartbeat_at=now()).execution_options(**_NO_SYNC)
                )
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def save_results(
    engine: Engine, sweep_id: str, outcomes: Sequence[tuple[str, dict]], worker: str, ran_on: str
) -> int:
    """Store each job's result once: only a ``running`` row owned by ``worker`` is updated, so a
    second delivery of the same job (or a late writer after a reclaim) changes nothing.

    ``outcomes`` holds (job id, FitResult.to_dict()) or (job id, {"status": "failed",
    "error": text}). Returns how many rows were written."""
    t = now()
    table = JobRecord.__table__
    by_id = dict(outcomes)
    try:
        with session_scope(engine) as s:
            # Which of these rows this worker still owns, read inside the write transaction
            # (BEGIN IMMEDIATE on SQLite, row-level UPDATE guard on PostgreSQL below).
            owned: list[str] = []
            for chunk in _chunks(list(by_id)):
                owned += s.scalars(
                    select(JobRecord.id).where(
                        JobRecord.sweep_id == sweep_id, JobRecord.id.in_(chunk),
                        JobRecord.status == RUNNING, JobRecord.worker == worker)
                ).all()
            if not owned:
                return 0
            params = [{"b_id": job_id, **_result_values(by_id[job_id])} for job_id in owned]
            # One executemany instead of a statement per job: 1,250 results went from ~2 s to
            # a few tens of milliseconds.
            written = s.execute(
                update(table)
                .where(table.c.sweep_id == sweep_id, table.c.id == bindparam("b_id"),
                       table.c.status == RUNNING, table.c.worker == worker)
                .values(finished_at=t, heartbeat_at=t, ran_on=ran_on,
                        **{k: bindparam(f"b_{k}") for k in _RESULT_KEYS}),
                params,
            ).rowcount
            points = [
                {"sweep_id": sweep_id, "job_id": job_id, "epoch": int(ep), "loss": loss}
                for job_id in owned
                for ep, loss in (by_id[job_id].get("loss_curve") or [])
            ]
            if points:
                for chunk in _chunks(owned):
                    s.execute(delete(LossPointRecord).where(
                        LossPointRecord.sweep_id == sweep_id, LossPointRecord.job_id.in_(chunk)))
                s.execute(insert(LossPointRecord.__table__), points)
        return written
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


_RESULT_KEYS = ("status", "error", "final_loss", "mse", "optimum_mse", "coefficients",
                "monomial", "diverged_at_epoch", "duration_s")


def _result_values(result: dict) -> dict:
    return {f"b_{k}": result.get(k) for k in _RESULT_KEYS}


def status_counts(engine: Engine, sweep_id: str) -> dict[str, int]:
    try:
        with session_scope(engine) as s:
            rows = s.execute(
                select(JobRecord.status, func.count())
                .where(JobRecord.sweep_id == sweep_id)
                .group_by(JobRecord.status)
            ).all()
        return {status: n for status, n in rows}
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def find_sweep(engine: Engine, ref: str | None) -> SweepView | None:
    """The sweep whose id or name is ``ref`` (the latest of that name), or the latest sweep."""
    try:
        with session_scope(engine) as s:
            q = select(SweepRecord).order_by(SweepRecord.created_at.desc()).limit(1)
            if ref is not None:
                rec = s.get(SweepRecord, ref)
                if rec is not None:
                    return _sweep_view(rec)
                q = q.where(SweepRecord.name == ref)
            rec = s.scalars(q).first()
            return _sweep_view(rec) if rec is not None else None
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def list_jobs(
    engine: Engine,
    sweep_id: str,
    *,
    variants: Sequence[str] = (),
    statuses: Sequence[str] = (),
    degrees: Sequence[int] = (),
    lr_min: float | None = None,
    lr_max: float | None = None,
    sort: str = "mse",
    descending: bool = False,
    limit: int | None = None,
) -> list[JobView]:
    """The jobs of a sweep, filtered and sorted (missing values last)."""
    if sort not in JOB_COLUMNS:
        raise StoreError(f"unknown column {sort!r}")
    col = getattr(JobRecord, sort)
    q = select(JobRecord).where(JobRecord.sweep_id == sweep_id)
    if variants:
        q = q.where(JobRecord.variant.in_(variants))
    if statuses:
        q = q.where(JobRecord.status.in_(statuses))
    if degrees:
        q = q.where(JobRecord.degree.in_(degrees))
    if lr_min is not None:
        q = q.where(JobRecord.lr >= lr_min)
    if lr_max is not None:
        q = q.where(JobRecord.lr <= lr_max)
    q = q.order_by(col.is_(None), col.desc() if descending else col.asc(), JobRecord.id)
    if limit is not None:
        q = q.limit(limit)
    try:
        with session_scope(engine) as s:
            return [_job_view(r) for r in s.scalars(q).all()]
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def loss_curves(engine: Engine, sweep_id: str, job_ids: Sequence[str]) -> dict[str, list]:
    """Each job's loss curve as a list of (epoch, loss)."""
    out: dict[str, list] = {j: [] for j in job_ids}
    try:
        with session_scope(engine) as s:
            for chunk in _chunks(list(job_ids)):
                rows = s.execute(
                    select(LossPointRecord.job_id, LossPointRecord.epoch, LossPointRecord.loss)
                    .where(LossPointRecord.sweep_id == sweep_id,
                           LossPointRecord.job_id.in_(chunk))
                    .order_by(LossPointRecord.job_id, LossPointRecord.epoch)
                ).all()
                for job_id, epoch, loss in rows:
                    out[job_id].append((epoch, loss))
        return out
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def cancel_sweep(engine: Engine, sweep_id: str) -> int:
    """Jobs that have not started become ``cancelled``; running ones finish. Returns the count."""
    try:
        with session_scope(engine) as s:
            return s.execute(
                update(JobRecord)
                .where(JobRecord.sweep_id == sweep_id, JobRecord.status == QUEUED)
                .values(status=CANCELLED, finished_at=now()).execution_options(**_NO_SYNC)
            ).rowcount
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def requeue_missing(engine: Engine, sweep_id: str, stale_after_s: float) -> list[JobView]:
    """Put back to ``queued`` every job that has not ended well: failed, cancelled, still queued,
    or ``running`` on a worker whose heartbeat stopped. Returns those jobs, to be enqueued."""
    t = now()
    stale = t - timedelta(seconds=stale_after_s)
    missing = or_(
        JobRecord.status.in_((QUEUED, FAILED, CANCELLED)),
        (JobRecord.status == RUNNING) & (JobRecord.heartbeat_at < stale),
    )
    try:
        with session_scope(engine) as s:
            # Plain rows, not ORM objects: this may be every job of a large sweep.
            rows = s.execute(
                select(*JobRecord.__table__.c).where(JobRecord.sweep_id == sweep_id, missing)
            ).mappings().all()
            ids = [r["id"] for r in rows]
            for chunk in _chunks(ids):
                s.execute(
                    update(JobRecord)
                    .where(JobRecord.sweep_id == sweep_id, JobRecord.id.in_(chunk))
                    .values(status=QUEUED, worker=None, error=None, finished_at=None,
                            heartbeat_at=t)
                    .execution_options(**_NO_SYNC)
                )
            return [JobView(**{**{c: r[c] for c in JOB_COLUMNS}, "status": QUEUED})
                    for r in rows]
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def reap_stale(engine: Engine, stale_after_s: float) -> list[JobView]:
    """Jobs ``running`` on a worker whose heartbeat stopped go back to ``queued``; returns them
    (to be enqueued again). Two reapers racing get disjoint sets: each row moves once."""
    t = now()
    stale = t - timedelta(seconds=stale_after_s)
    return _requeue_returning(engine, t, (JobRecord.status == RUNNING) &
                              (JobRecord.heartbeat_at < stale),
                              status=QUEUED, worker=None)


def lost_queued_devices(engine: Engine, stale_after_s: float) -> list[str]:
    """The devices of jobs ``queued`` longer than ``stale_after_s`` ago (candidates for a lost
    message: see ``take_lost_queued``)."""
    stale = now() - timedelta(seconds=stale_after_s)
    try:
        with session_scope(engine) as s:
            return list(s.scalars(
                select(JobRecord.device).where(_queued_before(stale)).distinct()
            ).all())
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def take_lost_queued(engine: Engine, stale_after_s: float, devices: Sequence[str]) -> list[JobView]:
    """Jobs of these devices ``queued`` longer than ``stale_after_s`` ago, whose queue the
    caller found empty: their message was lost (fetched by a worker killed before it claimed
    them, dropped by a broker, never published by a scheduler that died). Marks them as queued
    now, so that each is taken once per ``stale_after_s`` however many reapers race, and
    returns them, to be enqueued again."""
    if not devices:
        return []
    t = now()
    stale = t - timedelta(seconds=stale_after_s)
    return _requeue_returning(engine, t, _queued_before(stale) &
                              JobRecord.device.in_(list(devices)))


def _queued_before(t: datetime):
    # ``heartbeat_at`` of a queued job is when it was (re)queued; NULL in rows written before.
    return (JobRecord.status == QUEUED) & or_(JobRecord.heartbeat_at < t,
                                              JobRecord.heartbeat_at.is_(None))


def _requeue_returning(engine: Engine, t: datetime, where, **values) -> list[JobView]:
    """One guarded UPDATE ... RETURNING: concurrent callers get disjoint rows."""
    table = JobRecord.__table__
    try:
        with session_scope(engine) as s:
            rows = s.execute(
                update(table).where(where).values(heartbeat_at=t, **values)
                .returning(*(table.c[name] for name in JOB_COLUMNS))
            ).mappings().all()
            return [JobView(**r) for r in rows]
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def release_worker(engine: Engine, worker_prefix: str) -> int:
    """Jobs left ``running`` by a worker known to be stopped go back to ``queued`` at once
    (without waiting for their heartbeat to go stale). Returns the count."""
    try:
        with session_scope(engine) as s:
            return s.execute(
                update(JobRecord)
                .where(JobRecord.status == RUNNING, JobRecord.worker.startswith(worker_prefix))
                .values(status=QUEUED, worker=None, heartbeat_at=now())
                .execution_options(**_NO_SYNC)
            ).rowcount
    except SQLAlchemyError as e:
        raise _wrap(engine, e) from e


def all_ended(counts: dict[str, int]) -> bool:
    return sum(counts.values()) > 0 and all(k in ENDED for k, v in counts.items() if v)
