"""What scheduler and worker do to the results: record a sweep and its jobs, claim jobs for a
worker, store results exactly once, count, list, cancel and requeue. Every function takes an
engine and plain values and returns plain dataclasses."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    Boolean,
    Engine,
    Integer,
    String,
    Text,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import undefer

from store.clock import ago_sql, db_now, now_sql
from store.db import StoreError, retry_conflicts, store_error, transaction
from store.records import (
    CANCELLED,
    ENDED,
    FAILED,
    OK,
    PAUSED,
    QUEUED,
    RUNNING,
    JobRecord,
    JobStateRecord,
    JobStatus,
    LossPointRecord,
    SweepRecord,
)

# Rows are written in chunks so that one statement never carries an unbounded parameter list
# (SQLite caps bound parameters per statement).
_CHUNK = 500


def now() -> datetime:
    """This process's clock (UTC). Never what the store writes or judges liveness by: that is
    the database's clock (``store.clock``), the one clock every host of a fleet shares."""
    return datetime.now(UTC)


def as_utc(t: datetime) -> datetime:
    """``t`` with its time zone; a naive time from the store is UTC (every time written is)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class SweepRow:
    id: str
    name: str
    spec: dict
    created_at: datetime
    # When it was last submitted to, grown, continued or resumed: where a run of it begins
    # (None in a database made before polyfit noted it).
    used_at: datetime | None = None


@dataclass(frozen=True)
class JobRow:
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
    reused_from: str | None = None
    stop_gap: float | None = None
    stopped_at_epoch: int | None = None
    epochs_done: int | None = None
    versions: str | None = None

    @property
    def gap(self) -> float | None:
        """How far the fit is from the least-squares optimum of its degree: mse - optimum_mse."""
        if self.mse is None or self.optimum_mse is None:
            return None
        return self.mse - self.optimum_mse

    def to_dict(self, *, gap: bool = False) -> dict:
        """The job as JSON-ready values (with ``gap`` if asked); times as ISO 8601 with their
        UTC offset (SQLite hands back the stored UTC times without one)."""
        out = {name: getattr(self, name) for name in JOB_COLUMNS}
        if gap:
            out["gap"] = self.gap
        for key in ("started_at", "heartbeat_at", "finished_at"):
            if out[key] is not None:
                out[key] = as_utc(out[key]).isoformat()
        return out


JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(JobRow))


# Bulk UPDATEs skip the ORM's matching of affected rows against objects loaded in the session:
# that costs O(rows x objects) and made requeueing 10,000 jobs take seconds.
_NO_SYNC = {"synchronize_session": False}


def _in_lock_order(engine: Engine, where, *, limit: int | None = None):
    """``where`` for an UPDATE of many job rows, made to lock them in one order.

    PostgreSQL locks the rows an UPDATE changes in the order its plan meets them (the heap's
    order, an index's, a hash join's), so two statements that change overlapping sets of rows
    (a resume's requeue and a reaper's, a claim and a requeue) can each hold a row the other
    waits for: a deadlock, and one of them fails. Every multi-row writer of the store goes
    through this: the rows are first locked by a ``SELECT ... ORDER BY sweep_id, id FOR
    UPDATE`` (which re-checks ``where`` against a row that changed while it waited), and the
    UPDATE changes exactly those. SQLite has one writer at a time: ``where`` as it is.
    ``limit``: lock at most this many, the first in that order."""
    if engine.dialect.name != "postgresql":
        if limit is None:
            return where
        table = JobRecord.__table__
        pick = select(table.c.id).where(where).order_by(table.c.id).limit(limit)
        return where & table.c.id.in_(pick.scalar_subquery())
    table = JobRecord.__table__
    locked = (select(table.c.sweep_id, table.c.id).where(where)
              .order_by(table.c.sweep_id, table.c.id).limit(limit).with_for_update()
              .subquery("locked"))
    return (table.c.sweep_id == locked.c.sweep_id) & (table.c.id == locked.c.id)


def _sweep_row(rec: SweepRecord) -> SweepRow:
    used = None if "used_at" in inspect(rec).unloaded else rec.used_at
    return SweepRow(id=rec.id, name=rec.name, spec=rec.spec, created_at=rec.created_at,
                    used_at=used)


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _insert_ignoring_existing(engine: Engine, table):
    """INSERT that leaves rows whose primary key exists alone (ON CONFLICT DO NOTHING), so that
    two processes recording the same sweep at once both succeed, on every backend."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise StoreError(f"polyfit's store supports SQLite and PostgreSQL, not {engine.dialect.name}")


@dataclass(frozen=True)
class Recorded:
    """What recording a sweep did: how many jobs were new, which of those took the result that
    another sweep of the database has for the same settings (they need no training), and how
    many jobs the spec had."""

    new: int
    reused: frozenset[str]
    given: int = 0


def save_sweep(engine: Engine, sweep_id: str, name: str, spec: dict, jobs: Iterable[dict],
               *, reuse: bool = True) -> Recorded:
    """Record a sweep and its jobs (rows, any iterable: a million-job sweep is streamed in
    chunks, never held whole) as ``queued``; a sweep or job already recorded is left as it is,
    also when another process records the same sweep at the same moment (the sweep's ``spec``
    becomes the latest one given: a sweep grows when its spec does).

    ``reuse``: a new job whose settings ended well (succeeded or diverged) in another sweep of
    this database takes that result, loss curve included, instead of being trained again; its
    ``reused_from`` names that sweep. All in one transaction: a sweep is never half-recorded.
    When it was recorded (and queued) is the database's time."""
    t = now_sql(engine)
    table = JobRecord.__table__
    extra = {"sweep_id": sweep_id, "status": QUEUED, "attempts": 0}
    with transaction(engine) as s:
        if engine.dialect.name == "sqlite":
            # A big sweep's inserts walk every index of the jobs table: with SQLite's default
            # 2 MB page cache, a million jobs reread index pages from the OS all along (56 s,
            # 20 s of it in the kernel); with 64 MB, 48 s. The connection's own setting (the
            # scheduler's engine is short-lived), so workers keep the small default.
            s.execute(text(f"PRAGMA cache_size=-{_SUBMIT_CACHE_KIB}"))
        s.execute(_insert_ignoring_existing(engine, SweepRecord.__table__)
                  .values(created_at=t, used_at=t),
                  [{"id": sweep_id, "name": name, "spec": spec}])
        s.execute(update(SweepRecord).where(SweepRecord.id == sweep_id)
                  .values(spec=spec, used_at=t).execution_options(**_NO_SYNC))
        new = seen = 0
        reused: set[str] = set()
        # Nothing ended well in another sweep: nothing to reuse, no lookup per chunk.
        reuse = reuse and s.execute(
            select(table.c.id).where(table.c.sweep_id != sweep_id, table.c.status.in_(OK))
            .limit(1)).first() is not None
        for chunk in _batched(jobs, _INSERT_CHUNK):
            seen += len(chunk)
            # RETURNING names exactly the rows this call inserted (executemany rowcounts
            # differ between drivers).
            inserted = s.scalars(
                _insert_ignoring_existing(engine, table).values(heartbeat_at=t)
                .returning(table.c.id),
                [{**row, **extra} for row in chunk]).all()
            new += len(inserted)
            if reuse and inserted:
                reused |= _reuse_results(s, sweep_id, inserted)
        return Recorded(new, frozenset(reused), seen)


_INSERT_CHUNK = 2000
#: SQLite's page cache while a sweep is recorded, in KiB (see ``save_sweep``).
_SUBMIT_CACHE_KIB = 65536


def _batched(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


#: What a reused row takes from the row it reuses.
_REUSED = ("status", "final_loss", "mse", "optimum_mse", "coefficients", "monomial",
           "diverged_at_epoch", "stopped_at_epoch", "epochs_done", "ran_on", "worker",
           "started_at", "finished_at", "duration_s", "versions")


def _reuse_results(s, sweep_id: str, job_ids: Sequence[str]) -> set[str]:
    """Give the queued jobs ``job_ids`` of ``sweep_id`` the results other sweeps have for the
    same settings (the earliest stored); returns their ids."""
    table = JobRecord.__table__
    found = s.execute(
        select(table.c.id, table.c.sweep_id, *(table.c[c] for c in _REUSED))
        .where(table.c.id.in_(list(job_ids)), table.c.sweep_id != sweep_id,
               table.c.status.in_(OK))
        .order_by(table.c.id, table.c.finished_at, table.c.sweep_id)
    ).mappings().all()
    source: dict[str, dict] = {}
    for row in found:
        source.setdefault(row["id"], dict(row))
    if not source:
        return set()
    s.execute(
        update(table)
        .where(table.c.sweep_id == sweep_id, table.c.id == bindparam("b_id"),
               table.c.status == QUEUED)
        .values(reused_from=bindparam("b_from"),
                **{c: bindparam(f"b_{c}") for c in _REUSED}),
        [{"b_id": i, "b_from": r["sweep_id"], **{f"b_{c}": r[c] for c in _REUSED}}
         for i, r in source.items()],
    )
    by_source: dict[str, list[str]] = {}
    for job_id, r in source.items():
        by_source.setdefault(r["sweep_id"], []).append(job_id)
    points = LossPointRecord.__table__
    for from_sweep, ids in by_source.items():
        s.execute(points.insert().from_select(
            ["sweep_id", "job_id", "epoch", "loss"],
            select(literal(sweep_id), points.c.job_id, points.c.epoch, points.c.loss)
            .where(points.c.sweep_id == from_sweep, points.c.job_id.in_(ids))))
    return set(source)


def _spec_columns(table) -> list:
    return [table.c[name] for name in JOB_COLUMNS]


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
        for chunk in _chunks(sorted(set(job_ids))):
            claimed += [JobRow(**r) for r in s.execute(
                update(table)
                .where(_in_lock_order(engine, (table.c.sweep_id == sweep_id)
                                      & table.c.id.in_(chunk) & guard))
                .values(status=RUNNING, worker=worker, started_at=t, heartbeat_at=t,
                        finished_at=None, epochs_done=None, attempts=table.c.attempts + 1)
                .returning(*_spec_columns(table))
            ).mappings()]
    return claimed


@retry_conflicts
def beat(engine: Engine, sweep_id: str, job_ids: Sequence[str], worker: str) -> int:
    """Tell the store that ``worker`` is still alive and training these jobs (at the database's
    time, whatever this host's clock says); returns how many of them it still holds."""
    held = 0
    with transaction(engine) as s:
        for chunk in _chunks(sorted(set(job_ids))):
            held += s.execute(
                update(JobRecord)
                .where(_in_lock_order(engine, (JobRecord.sweep_id == sweep_id)
                                      & JobRecord.id.in_(chunk) & (JobRecord.status == RUNNING)
                                      & (JobRecord.worker == worker)))
                .values(heartbeat_at=now_sql(engine)).execution_options(**_NO_SYNC)
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
    None): their result
    is the rung's, stored ``paused`` with that state until the rung is ranked
    (``store.halving``), and the attempt their claim counted is given back. Returns how many
    rows were written."""
    held = held or {}
    t = now_sql(engine)
    table = JobRecord.__table__
    by_id = dict(outcomes)
    with transaction(engine) as s:
        # Lock the rows this worker may write, in id order (PostgreSQL: FOR UPDATE, so that no
        # claim, requeue or other save can change them before this transaction ends; SQLite:
        # the transaction already holds the database's one write lock).
        owned: list[str] = []
        for chunk in _chunks(sorted(by_id)):
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
                    **{k: bindparam(f"b_{k}") for k in _RESULT_KEYS}),
            params,
        )
        points = [
            {"sweep_id": sweep_id, "job_id": job_id, "epoch": int(ep), "loss": loss}
            for job_id in owned
            for ep, loss in (by_id[job_id].get("loss_curve") or [])
        ]
        for chunk in _chunks(owned):
            s.execute(delete(LossPointRecord).where(
                LossPointRecord.sweep_id == sweep_id, LossPointRecord.job_id.in_(chunk)))
        if points:
            s.execute(insert(LossPointRecord.__table__), points)
        for chunk in _chunks(owned):  # an ended job never continues from a stopped run
            s.execute(delete(JobStateRecord).where(
                JobStateRecord.sweep_id == sweep_id, JobStateRecord.job_id.in_(chunk)))
        kept = [{"sweep_id": sweep_id, "job_id": job_id, "epoch": held[job_id][1],
                 "state": held[job_id][2]}
                for job_id in owned if job_id in held and held[job_id][2] is not None]
        if kept:  # a rung's end: the next rung continues from here
            s.execute(insert(JobStateRecord.__table__), kept)
    return len(owned)


_RESULT_KEYS = ("status", "error", "final_loss", "mse", "optimum_mse", "coefficients",
                "monomial", "diverged_at_epoch", "stopped_at_epoch", "duration_s")


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
        for chunk in _chunks(sorted(updates)):
            held += s.scalars(
                update(table)
                .where(_in_lock_order(engine, (table.c.sweep_id == sweep_id)
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
    return {f"b_{k}": result.get(k) for k in _RESULT_KEYS}


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
    if "reused_from" in _columns_of(engine):
        where.append(j.reused_from.is_(None))
    q = (select(j.device, func.count(), func.sum(j.epochs * j.x_points)).where(*where)
         .group_by(j.device))
    with transaction(engine) as s:
        return [RecentWork(d, n, int(w or 0)) for d, n, w in s.execute(q).all()]


def running_done(engine: Engine, sweep_id: str) -> list[WorkRow]:
    """The running jobs of a sweep per device: how many, and the work (epochs done x points)
    their workers have reported so far (see ``record_progress``)."""
    if "epochs_done" not in _columns_of(engine):
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
    if "epochs_done" not in _columns_of(engine):
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


def mark_used(engine: Engine, sweep_id: str) -> None:
    """Note that the sweep was just continued or resumed: it is the one meant by default."""
    with transaction(engine) as s:
        s.execute(update(SweepRecord).where(SweepRecord.id == sweep_id)
                  .values(used_at=now_sql(engine)).execution_options(**_NO_SYNC))


def find_sweep(engine: Engine, ref: str | None) -> SweepRow | None:
    """The sweep whose id or name is ``ref``, or, with no ``ref``, the latest: the sweep last
    submitted to, grown, continued or resumed (of that name, with a name), which is not always
    the newest made."""
    options = []
    if "used_at" in _columns_of(engine, "sweeps"):
        latest = func.coalesce(SweepRecord.used_at, SweepRecord.created_at)
        options.append(undefer(SweepRecord.used_at))
    else:  # a database made before polyfit noted it: the newest made
        latest = SweepRecord.created_at
    with transaction(engine) as s:
        q = (select(SweepRecord).options(*options)
             .order_by(latest.desc(), SweepRecord.id.desc()).limit(1))
        if ref is not None:
            rec = s.get(SweepRecord, ref, options=options)
            if rec is not None:
                return _sweep_row(rec)
            q = q.where(SweepRecord.name == ref)
        rec = s.scalars(q).first()
        return _sweep_row(rec) if rec is not None else None


@dataclass(frozen=True)
class SweepSummary:
    id: str
    name: str
    created_at: datetime
    jobs: int
    ended: int
    failed: int
    best_mse: float | None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["created_at"] = as_utc(self.created_at).isoformat()
        return out


def list_sweeps(engine: Engine) -> list[SweepSummary]:
    """Every sweep of the database with its counts and best mse, newest first. Counts and
    each best mse come from the (sweep, status, mse) index alone (a best mse from the end of
    its status's range): no job row is read, so a million-job sweep costs what a small one
    does."""
    j = JobRecord
    counts: dict[str, dict[str, int]] = {}
    best_of = {status: select(func.min(j.mse)).where(j.sweep_id == SweepRecord.id,
                                                     j.status == status).scalar_subquery()
               for status in OK}
    with transaction(engine) as s:
        for sweep_id, status, n in s.execute(
                select(j.sweep_id, j.status, func.count()).group_by(j.sweep_id, j.status)):
            counts.setdefault(sweep_id, {})[status] = n
        rows = s.execute(
            select(SweepRecord.id, SweepRecord.name, SweepRecord.created_at,
                   *best_of.values())
            .order_by(SweepRecord.created_at.desc(), SweepRecord.id)).all()
    out = []
    for sweep_id, name, created, *bests in rows:
        by_status = counts.get(sweep_id, {})
        found = [b for b in bests if b is not None]
        out.append(SweepSummary(
            sweep_id, name, created, sum(by_status.values()),
            sum(n for st, n in by_status.items() if st in ENDED),
            by_status.get(FAILED, 0), min(found) if found else None))
    return out


def sweep_names(engine: Engine) -> list[str]:
    with transaction(engine) as s:
        return list(s.scalars(select(SweepRecord.name).distinct()).all())


@dataclass(frozen=True)
class JobQuery:
    """Which jobs of a sweep, in which order (what ``polyfit results`` filters and sorts by)."""

    variants: Sequence[str] = ()
    statuses: Sequence[str] = ()
    degrees: Sequence[int] = ()
    lr_min: float | None = None
    lr_max: float | None = None
    sort: str = "mse"
    descending: bool = False
    limit: int | None = None

    def select(self, engine: Engine, sweep_id: str, *, raw_json: bool = False):
        """The SELECT of ``JOB_COLUMNS``; ``raw_json``: the JSON columns as their stored text
        and the times as text (an export writes them nearly as they are, without decoding and
        encoding each: see ``iso_time``)."""
        if self.sort not in JOB_COLUMNS:
            raise StoreError(f"unknown column {self.sort!r}")
        col = getattr(JobRecord, self.sort)
        table = JobRecord.__table__
        have = _columns_of(engine)

        def column(name: str):
            # A database made by an older polyfit lacks the newest columns: read what is
            # there (a read command never upgrades a database).
            if name not in have:
                return literal(None).label(name)
            if raw_json and name in ("coefficients", "monomial"):
                return cast(table.c[name], Text).label(name)
            if raw_json and name in ("started_at", "heartbeat_at", "finished_at"):
                return _iso_text(engine, table.c[name]).label(name)
            return table.c[name]

        q = select(*(column(c) for c in JOB_COLUMNS)).where(JobRecord.sweep_id == sweep_id)
        if self.variants:
            q = q.where(JobRecord.variant.in_(self.variants))
        if self.statuses:
            q = q.where(JobRecord.status.in_(self.statuses))
        if self.degrees:
            q = q.where(JobRecord.degree.in_(self.degrees))
        if self.lr_min is not None:
            q = q.where(JobRecord.lr >= self.lr_min)
        if self.lr_max is not None:
            q = q.where(JobRecord.lr <= self.lr_max)
        q = q.order_by(col.is_(None), col.desc() if self.descending else col.asc(),
                       JobRecord.id)
        return q if self.limit is None else q.limit(self.limit)


def list_jobs(engine: Engine, sweep_id: str, **query) -> list[JobRow]:
    """The jobs of a sweep, filtered and sorted (missing values last; see ``JobQuery``)."""
    q = JobQuery(**query).select(engine, sweep_id)
    with transaction(engine) as s:
        return [JobRow(**r) for r in s.execute(q).mappings()]


def best_jobs(engine: Engine, sweep_id: str, by: Sequence[str]) -> list[JobRow]:
    """The lowest-mse job (ties: the lower id) of each group of jobs with equal ``by``
    columns, among the sweep's succeeded and diverged jobs: ranked by the database (a window
    function), so a million-job sweep never comes into Python whole."""
    table = JobRecord.__table__
    unknown = [b for b in by if b not in JOB_COLUMNS]
    if unknown:
        raise StoreError(f"unknown column {unknown[0]!r}")
    have = _columns_of(engine)
    columns = [table.c[c] if c in have else literal(None).label(c) for c in JOB_COLUMNS]
    rank = func.row_number().over(partition_by=[table.c[b] for b in by],
                                  order_by=(table.c.mse, table.c.id)).label("pick")
    ranked = (select(*columns, rank)
              .where(table.c.sweep_id == sweep_id, table.c.status.in_(OK),
                     table.c.mse.is_not(None)).subquery())
    q = select(*(ranked.c[c] for c in JOB_COLUMNS)).where(ranked.c.pick == 1)
    with transaction(engine) as s:
        return [JobRow(**r) for r in s.execute(q).mappings()]


def _iso_text(engine: Engine, column):
    """A time column as ISO 8601 text with its UTC offset, made by the database itself (an
    export of a million rows does not parse and format three million times in Python)."""
    if engine.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column),
                            literal('YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))
    # SQLite keeps UTC times as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return func.replace(column, literal(" "), literal("T")) + literal("+00:00")


def stream_jobs(engine: Engine, sweep_id: str, query: JobQuery | None = None, *,
                chunk: int = 10_000) -> Iterator[tuple]:
    """The jobs of a sweep as plain tuples in ``JOB_COLUMNS`` order, ``chunk`` rows at a time
    from the database's own cursor (a server-side one on PostgreSQL): memory stays flat
    whatever the sweep's size, and nothing is done per row in Python. The JSON columns come as
    their stored text, the times as ISO 8601 text."""
    q = (query or JobQuery()).select(engine, sweep_id, raw_json=True)
    try:
        with engine.connect() as conn:
            compiled = q.compile(conn, compile_kwargs={"render_postcompile": True})
            raw = conn.connection.dbapi_connection
            if engine.dialect.name == "postgresql":
                cursor = raw.cursor(name="polyfit_export")
                cursor.itersize = chunk
                params = compiled.params
            else:
                cursor = raw.cursor()
                params = [compiled.params[k] for k in compiled.positiontup]
            try:
                cursor.execute(str(compiled), params)
                while rows := cursor.fetchmany(chunk):
                    yield from rows
            finally:
                cursor.close()
    except SQLAlchemyError as e:
        raise store_error(engine, e) from e
    except (sqlite3.Error, *_psycopg_errors()) as e:
        raise store_error(engine, e) from e


def _psycopg_errors() -> tuple:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


_COLUMNS: weakref.WeakKeyDictionary[Engine, dict[str, frozenset[str]]] = (
    weakref.WeakKeyDictionary())


def _columns_of(engine: Engine, table: str = "jobs") -> frozenset[str]:
    """The columns ``table`` of this database has (asked once per engine)."""
    known = _COLUMNS.setdefault(engine, {})
    if table not in known:
        try:
            known[table] = frozenset(c["name"] for c in inspect(engine).get_columns(table))
        except SQLAlchemyError as e:
            raise store_error(engine, e) from e
    return known[table]


def loss_curves(engine: Engine, sweep_id: str, job_ids: Sequence[str]) -> dict[str, list]:
    """Each job's loss curve as a list of (epoch, loss)."""
    out: dict[str, list] = {j: [] for j in job_ids}
    with transaction(engine) as s:
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


@retry_conflicts
def cancel_sweep(engine: Engine, sweep_id: str) -> int:
    """Jobs that have not started, or wait at a halving rung's end (``paused``), become
    ``cancelled``; running ones finish. Returns the count."""
    with transaction(engine) as s:
        return s.execute(
            update(JobRecord)
            .where(_in_lock_order(engine, (JobRecord.sweep_id == sweep_id)
                                  & JobRecord.status.in_([QUEUED, PAUSED])))
            .values(status=CANCELLED, finished_at=now_sql(engine))
            .execution_options(**_NO_SYNC)
        ).rowcount


def requeue(engine: Engine, sweep_id: str, stale_after_s: float, *,
            retry: Sequence[str] = (), job_ids: Sequence[str] | None = None) -> list[JobRow]:
    """Every chunk of ``requeue_chunks``, as one list (for sweeps of a size that fits)."""
    return [job for chunk in requeue_chunks(engine, sweep_id, stale_after_s, retry=retry,
                                            job_ids=job_ids) for job in chunk]


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
                 for c in (*_RESULT_KEYS[1:], "reused_from", "epochs_done")}}
    if JobStatus.SUCCEEDED in retry:
        # Trained again from nothing (--fresh): from the first rung of a halving too. (A
        # resume keeps a cancelled or failed job's rung: it continues from its state.)
        values["rung"] = case((retried, None), else_=JobRecord.rung)
    where = (JobRecord.sweep_id == sweep_id) & guard
    if job_ids is not None:
        for ids in _batched(job_ids, _CHUNK):
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
        for chunk in _batched(job_ids, _CHUNK):
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
    ``_in_lock_order``) that sets the rows' ``heartbeat_at`` to ``t`` (the database's time, as
    a value or a SQL expression): concurrent callers get disjoint rows, and a row that stops
    matching ``where`` before its turn (PostgreSQL re-checks after the row lock) is left
    alone."""
    table = JobRecord.__table__
    with transaction(engine) as s:
        rows = s.execute(
            update(table).where(_in_lock_order(engine, where, limit=limit))
            .values(heartbeat_at=t, **values)
            .returning(*_spec_columns(table))
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
            .where(_in_lock_order(engine, (JobRecord.status == RUNNING) & or_(
                JobRecord.worker == worker,
                JobRecord.worker.startswith(worker + "/", autoescape=True))))
            .values(status=QUEUED, worker=None, heartbeat_at=now_sql(engine))
            .execution_options(**_NO_SYNC)
        ).rowcount


def all_ended(counts: dict[str, int]) -> bool:
    return sum(counts.values()) > 0 and all(k in ENDED for k, v in counts.items() if v)
