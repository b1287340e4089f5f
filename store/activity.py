"""What a sweep is doing now, for its progress and ETA: counts and work per status and device,
the recent rate, the running jobs' pace, the last finish. Each from an index, never a scan of
every job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select

from store.db import columns_of, transaction
from store.records import ENDED, QUEUED, RUNNING, JobRecord
from store.rows import as_utc


@dataclass(frozen=True)
class WorkRow:
    """The jobs of a sweep of one device value and one status: how many, and their work
    (epochs x points)."""

    device: str
    status: str
    jobs: int
    work: int


def work_rows(engine: Engine, sweep_id: str) -> list[WorkRow]:
    """Jobs and work per status and device (read from one covering index)."""
    j = JobRecord.__table__.c
    q = (select(j.status, j.device, func.count(), func.sum(j.epochs * j.x_points))
         .where(j.sweep_id == sweep_id).group_by(j.status, j.device))
    with transaction(engine) as s:
        return [WorkRow(d, st, n, int(w or 0)) for st, d, n, w in s.execute(q).all()]


@dataclass(frozen=True)
class RecentWork:
    """The jobs of one device value a sweep trained (not reused) and finished in a window."""

    device: str
    jobs: int
    work: int


def recent_work(engine: Engine, sweep_id: str, since: datetime,
                until: datetime | None = None) -> list[RecentWork]:
    """What the sweep trained and finished between ``since`` and ``until`` (its recent rate;
    only the rows of the window are read)."""
    j = JobRecord.__table__.c
    where = [j.sweep_id == sweep_id, j.finished_at >= since]
    if until is not None:
        where.append(j.finished_at <= until)
    if "reused_from" in columns_of(engine):
        where.append(j.reused_from.is_(None))
    q = (select(j.device, func.count(), func.sum(j.epochs * j.x_points)).where(*where)
         .group_by(j.device))
    with transaction(engine) as s:
        return [RecentWork(d, n, int(w or 0)) for d, n, w in s.execute(q).all()]


def running_done(engine: Engine, sweep_id: str) -> list[WorkRow]:
    """The running jobs of a sweep per device: how many, and the work (epochs done x points)
    their workers have reported so far (see ``record_progress``)."""
    if "epochs_done" not in columns_of(engine):
        return []
    j = JobRecord.__table__.c
    q = (select(j.device, func.count(), func.sum(func.coalesce(j.epochs_done, 0) * j.x_points))
         .where(j.sweep_id == sweep_id, j.status == RUNNING).group_by(j.device))
    with transaction(engine) as s:
        return [WorkRow(d, RUNNING.value, n, int(w or 0)) for d, n, w in s.execute(q).all()]


@dataclass(frozen=True)
class RunningPace:
    """Running jobs of a sweep that started together (a batch) and how far they have got."""

    started_at: datetime
    epochs: int
    epochs_done: int
    jobs: int


def running_pace(engine: Engine, sweep_id: str) -> list[RunningPace]:
    """The sweep's running jobs grouped by start, epochs and epochs reported done (about one
    group per batch in hand): how long the slowest of them still needs."""
    if "epochs_done" not in columns_of(engine):
        return []
    j = JobRecord.__table__.c
    q = (select(j.started_at, j.epochs, j.epochs_done, func.count())
         .where(j.sweep_id == sweep_id, j.status == RUNNING, j.started_at.is_not(None),
                j.epochs_done > 0)
         .group_by(j.started_at, j.epochs, j.epochs_done))
    with transaction(engine) as s:
        return [RunningPace(as_utc(t), e, d, n) for t, e, d, n in s.execute(q).all()]


def last_finish(engine: Engine, sweep_id: str) -> datetime | None:
    """When the sweep's latest job finished (None before any)."""
    j = JobRecord.__table__.c
    with transaction(engine) as s:
        t = s.execute(select(func.max(j.finished_at)).where(j.sweep_id == sweep_id)).scalar()
    return None if t is None else as_utc(t)


@dataclass(frozen=True)
class VariantActivity:
    """Whether a sweep's jobs of one variant are being served: how many wait, how many run,
    and when the last one finished (None before any)."""

    variant: str
    queued: int
    running: int
    last_finish: datetime | None


def variant_activity(engine: Engine, sweep_id: str, variant: str) -> VariantActivity:
    """The sweep's queued and running jobs of ``variant`` and its last finish (rows found
    through the sweep's status index, not a scan of the table)."""
    j = JobRecord.__table__.c
    with transaction(engine) as s:
        counts = dict(s.execute(
            select(j.status, func.count())
            .where(j.sweep_id == sweep_id, j.status.in_((QUEUED, RUNNING)), j.variant == variant)
            .group_by(j.status)).all())
        t = s.execute(select(func.max(j.finished_at))
                      .where(j.sweep_id == sweep_id, j.variant == variant)).scalar()
    return VariantActivity(variant, counts.get(QUEUED, 0), counts.get(RUNNING, 0),
                           None if t is None else as_utc(t))


def status_counts(engine: Engine, sweep_id: str) -> dict[str, int]:
    with transaction(engine) as s:
        rows = s.execute(
            select(JobRecord.status, func.count())
            .where(JobRecord.sweep_id == sweep_id)
            .group_by(JobRecord.status)
        ).all()
    return {status: n for status, n in rows}


def all_ended(counts: dict[str, int]) -> bool:
    return sum(counts.values()) > 0 and all(k in ENDED for k, v in counts.items() if v)
