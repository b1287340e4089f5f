"""The dashboard's reads. Each page asks the database a few SELECTs (SQLAlchemy Core on the
``store.records`` tables) that count, aggregate, rank and paginate in SQL, so that a page of a
100,000-job sweep moves a page of rows and a few hundred aggregates out of the database, never
the sweep. Only reads: every function takes an engine that ``store.reader.open_results`` made
and hands back plain dataclasses or ``store.jobs.JobRow``s."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, case, func, inspect, literal, select
from sqlalchemy.exc import SQLAlchemyError

from polyfit_results.fits import variant_rank
from store.db import store_error, transaction
from store.manage import labels_of
from store.records import (
    CANCELLED,
    DIVERGED,
    ENDED,
    FAILED,
    OK,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    SweepRecord,
)
from store.rows import JOB_COLUMNS, JobRow, as_utc

JOBS = JobRecord.__table__
SWEEPS = SweepRecord.__table__

#: Columns the job table sorts by: those of ``polyfit results --sort`` (every column but the
#: JSON lists, which have no order), and ``gap``.
SORT_COLUMNS = tuple(c for c in JOB_COLUMNS if c not in ("coefficients", "monomial")) + ("gap",)
#: Rows per page of the job table that a request may ask for.
PER_PAGE = (25, 50, 100, 200, 500)
#: Loss curves drawn per variant besides its best: the next lowest-mse jobs, and a few that
#: diverged (their end is marked). Six variants give at most 6 x (1 + 12 + 4) = 102 series:
#: enough to see the spread over seeds and learning rates, few enough for a browser.
FAINT_CURVES = 12
DIVERGED_CURVES = 4

#: Variants in the registry's order (one not installed here after them), as every table and
#: chart shows.
variant_order = variant_rank


# -- the sweeps ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepLine:
    """A sweep with its counts and best mse: a line of the sweep list."""

    id: str
    name: str
    created_at: datetime
    jobs: int
    ended: int
    failed: int
    diverged: int
    running: int
    queued: int
    cancelled: int
    best_mse: float | None
    tags: tuple[str, ...] = ()
    note: str = ""

    @property
    def done(self) -> bool:
        return self.ended == self.jobs and self.jobs > 0

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["created_at"] = as_utc(self.created_at).isoformat()
        out["tags"] = list(self.tags)
        out["done"] = self.done
        return out


def _counts(engine: Engine, sweep_ids: Sequence[str]) -> dict[str, tuple]:
    """Per sweep: jobs, ended, failed, diverged, running, queued, cancelled, best mse (one
    aggregate over those sweeps' jobs, in the order of the primary key)."""
    j = JOBS.c

    def count(cond):
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    q = (select(j.sweep_id, func.count(), count(j.status.in_(ENDED)), count(j.status == FAILED),
                count(j.status == DIVERGED), count(j.status == RUNNING),
                count(j.status == QUEUED), count(j.status == CANCELLED),
                func.min(case((j.status.in_(OK), j.mse), else_=None)))
         .where(j.sweep_id.in_(list(sweep_ids))).group_by(j.sweep_id))
    with transaction(engine) as s:
        return {r[0]: (*(int(n) for n in r[1:8]), r[8]) for r in s.execute(q).all()}


def _lines(engine: Engine, sweeps: Sequence) -> list[SweepLine]:
    ids = [r.id for r in sweeps]
    counts = _counts(engine, ids) if sweeps else {}
    labels = labels_of(engine, ids) if sweeps else {}
    return [SweepLine(r.id, r.name, r.created_at,
                      *counts.get(r.id, (0, 0, 0, 0, 0, 0, 0, None)),
                      tuple(labels.get(r.id, ((), ""))[0]), labels.get(r.id, ((), ""))[1])
            for r in sweeps]


def sweep_lines(engine: Engine, *, limit: int, offset: int = 0,
                tag: str | None = None) -> tuple[list[SweepLine], int]:
    """A page of the sweeps, newest first, with their counts; and how many sweeps there are
    (with ``tag``: only the sweeps that carry it). Only the page's sweeps are aggregated."""
    order = (SWEEPS.c.created_at.desc(), SWEEPS.c.id)
    if tag is not None:
        # Tags are a JSON list, which the two backends search differently: the (few, short)
        # labels of every sweep are read, the page cut from the sweeps that carry the tag.
        tagged = {i for i, (tags, _) in labels_of(engine).items() if tag in tags}
        with transaction(engine) as s:
            ids = [i for i in s.scalars(select(SWEEPS.c.id).order_by(*order)) if i in tagged]
            chosen = ids[offset:offset + limit]
            rows = {r.id: r for r in s.execute(
                select(SWEEPS.c.id, SWEEPS.c.name, SWEEPS.c.created_at)
                .where(SWEEPS.c.id.in_(chosen))).all()} if chosen else {}
        return _lines(engine, [rows[i] for i in chosen]), len(ids)
    q = (select(SWEEPS.c.id, SWEEPS.c.name, SWEEPS.c.created_at)
         .order_by(*order).limit(limit).offset(offset))
    with transaction(engine) as s:
        total = s.execute(select(func.count()).select_from(SWEEPS)).scalar_one()
        page = s.execute(q).all()
    return _lines(engine, page), total


def sweep_line(engine: Engine, sweep_id: str) -> SweepLine | None:
    q = select(SWEEPS.c.id, SWEEPS.c.name, SWEEPS.c.created_at).where(SWEEPS.c.id == sweep_id)
    with transaction(engine) as s:
        found = s.execute(q).all()
    return _lines(engine, found)[0] if found else None


# -- the jobs of a sweep -------------------------------------------------------------------------

_COLUMNS: weakref.WeakKeyDictionary[Engine, frozenset[str]] = weakref.WeakKeyDictionary()


def _have(engine: Engine) -> frozenset[str]:
    """The columns the ``jobs`` table of this database has (an older polyfit's lacks the newest
    ones: they read as missing, nothing is upgraded)."""
    if engine not in _COLUMNS:
        try:
            _COLUMNS[engine] = frozenset(c["name"] for c in inspect(engine).get_columns("jobs"))
        except SQLAlchemyError as e:
            raise store_error(engine, e) from e
    return _COLUMNS[engine]


def _job_columns(engine: Engine, table=JOBS) -> list:
    have = _have(engine)
    return [table.c[c] if c in have else literal(None).label(c) for c in JOB_COLUMNS]


def _job(row) -> JobRow:
    return JobRow(**{c: row[c] for c in JOB_COLUMNS})


@dataclass(frozen=True)
class JobFilter:
    """What the job table shows, as ``polyfit results`` takes it: the jobs of these variants,
    states and degrees (all when empty), lr within bounds, sorted by a column (missing values
    last, ties by id)."""

    variants: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    degrees: tuple[int, ...] = ()
    lr_min: float | None = None
    lr_max: float | None = None
    sort: str = "mse"
    descending: bool = False

    def where(self, sweep_id: str) -> list:
        j = JOBS.c
        out = [j.sweep_id == sweep_id]
        if self.variants:
            out.append(j.variant.in_(self.variants))
        if self.statuses:
            out.append(j.status.in_(self.statuses))
        if self.degrees:
            out.append(j.degree.in_(self.degrees))
        if self.lr_min is not None:
            out.append(j.lr >= self.lr_min)
        if self.lr_max is not None:
            out.append(j.lr <= self.lr_max)
        return out

    def order_by(self) -> list:
        if self.sort not in SORT_COLUMNS:
            raise ValueError(f"cannot sort by {self.sort!r}")
        key = JOBS.c.mse - JOBS.c.optimum_mse if self.sort == "gap" else JOBS.c[self.sort]
        return [key.is_(None), key.desc() if self.descending else key.asc(), JOBS.c.id]


def rows_of(engine: Engine, sweep_id: str, ids: Sequence[str]) -> list[JobRow]:
    """The full rows of these jobs, in the order of ``ids``."""
    if not ids:
        return []
    q = select(*_job_columns(engine)).where(JOBS.c.sweep_id == sweep_id,
                                            JOBS.c.id.in_(list(ids)))
    with transaction(engine) as s:
        found = {r["id"]: _job(r) for r in s.execute(q).mappings()}
    return [found[i] for i in ids if i in found]


def jobs_page(engine: Engine, sweep_id: str, wanted: JobFilter, *, page: int,
              per_page: int) -> tuple[list[JobRow], int]:
    """One page (from 1) of the sweep's jobs that pass the filter, and how many pass it. The
    database sorts and skips narrow rows (the key and the id), then hands over the page's
    rows only: a late page of a big sweep costs what the first does."""
    where = wanted.where(sweep_id)
    q = (select(JOBS.c.id).where(*where).order_by(*wanted.order_by())
         .limit(per_page).offset((page - 1) * per_page))
    with transaction(engine) as s:
        total = s.execute(select(func.count()).select_from(JOBS).where(*where)).scalar_one()
        ids = list(s.scalars(q))
    return rows_of(engine, sweep_id, ids), total


def job(engine: Engine, sweep_id: str, job_id: str) -> JobRow | None:
    q = select(*_job_columns(engine)).where(JOBS.c.sweep_id == sweep_id, JOBS.c.id == job_id)
    with transaction(engine) as s:
        row = s.execute(q).mappings().first()
    return None if row is None else _job(row)


# -- the best jobs -------------------------------------------------------------------------------

def _ranked(sweep_id: str, partition: Sequence, order: Sequence, where):
    """The ids of the sweep's jobs that pass ``where``, ranked by ``order`` within each group
    of ``partition`` (a subquery with ``id`` and ``rank``: narrow rows, which sort fast)."""
    rank = func.row_number().over(partition_by=list(partition), order_by=list(order))
    return select(JOBS.c.id, rank.label("rank")).where(JOBS.c.sweep_id == sweep_id,
                                                       where).subquery()


def _top(engine: Engine, sweep_id: str, ranked, most: int) -> list[JobRow]:
    q = select(ranked.c.id).where(ranked.c.rank <= most)
    with transaction(engine) as s:
        ids = list(s.scalars(q))
    return rows_of(engine, sweep_id, ids)


@dataclass(frozen=True)
class Best:
    """The best jobs of a sweep and the values its jobs take."""

    by_variant: list[JobRow]  # the lowest-mse job of each variant, in the registry's order
    by_degree: list[JobRow]  # of each variant and degree
    variants: tuple[str, ...]  # every variant and degree of the sweep's jobs, for the filters
    degrees: tuple[int, ...]


def best_jobs(engine: Engine, sweep_id: str) -> Best:
    """The lowest-mse job (succeeded or diverged; ties: the lower id) of each variant and of
    each variant and degree, as ``polyfit best --by variant[,degree]`` picks them. Two scans of
    the sweep, no sort of it: the lowest mse of each (variant, degree) in one aggregate, then
    the jobs that hold one of those values."""
    j = JOBS.c
    ok = and_(j.sweep_id == sweep_id, j.status.in_(OK), j.mse.is_not(None))
    groups = (select(j.variant, j.degree, func.min(case((ok, j.mse), else_=None)))
              .where(j.sweep_id == sweep_id).group_by(j.variant, j.degree))
    with transaction(engine) as s:
        lowest = {(v, d): m for v, d, m in s.execute(groups).all()}
        values = sorted({m for m in lowest.values() if m is not None})
        found = s.execute(select(j.id, j.variant, j.degree, j.mse)
                          .where(ok, j.mse.in_(values))).all() if values else []
    winners: dict[tuple, tuple] = {}
    for job_id, v, d, mse in found:
        if lowest.get((v, d)) == mse and ((v, d) not in winners or job_id < winners[v, d][0]):
            winners[v, d] = (job_id, mse)
    rows = {r.id: r for r in rows_of(engine, sweep_id, [w[0] for w in winners.values()])}
    by_degree = sorted((rows[w[0]] for w in winners.values() if w[0] in rows),
                       key=lambda r: (variant_order(r.variant), r.degree))
    by_variant: dict[str, JobRow] = {}
    for r in by_degree:
        if r.variant not in by_variant or (r.mse, r.id) < (by_variant[r.variant].mse,
                                                            by_variant[r.variant].id):
            by_variant[r.variant] = r
    return Best(list(by_variant.values()), by_degree,
                tuple(sorted({v for v, _ in lowest}, key=variant_order)),
                tuple(sorted({d for _, d in lowest})))


def curve_jobs(engine: Engine, sweep_id: str, faint: int = FAINT_CURVES,
               diverged: int = DIVERGED_CURVES) -> list[JobRow]:
    """The jobs whose loss curves the sweep page draws: per variant its best ``1 + faint`` by
    mse, and ``diverged`` of those that diverged (the latest to: the longest curves)."""
    j = JOBS.c
    best = _ranked(sweep_id, [j.variant], [j.mse, j.id], and_(j.status.in_(OK),
                                                               j.mse.is_not(None)))
    gone = _ranked(sweep_id, [j.variant], [j.diverged_at_epoch.desc(), j.id],
                   j.status == DIVERGED)
    rows = _top(engine, sweep_id, best, 1 + faint) + _top(engine, sweep_id, gone, diverged)
    return list({r.id: r for r in rows}.values())


def best_of(jobs: Sequence[JobRow]) -> set[str]:
    """The ids of the lowest-mse job of each variant among ``jobs`` (of those that succeeded or
    diverged; ties: the lower id): among ``curve_jobs``, each variant's best of the sweep."""
    best: dict[str, JobRow] = {}
    for j in jobs:
        if j.status in OK and j.mse is not None and (
                j.variant not in best or (j.mse, j.id) < (best[j.variant].mse,
                                                          best[j.variant].id)):
            best[j.variant] = j
    return {j.id for j in best.values()}


# -- the lr x degree maps ------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """The jobs of one variant, learning rate and degree."""

    variant: str
    lr: float
    degree: int
    jobs: int
    succeeded: int
    diverged: int
    failed: int
    best_mse: float | None  # the lowest mse of those that succeeded
    mean_mse: float | None


def map_cells(engine: Engine, sweep_id: str) -> list[Cell]:
    """One aggregate per (variant, lr, degree): a grid's worth of rows, whatever the seeds."""
    j = JOBS.c
    good = case((j.status == SUCCEEDED, j.mse), else_=None)

    def count(status):
        return func.coalesce(func.sum(case((j.status == status, 1), else_=0)), 0)

    q = (select(j.variant, j.lr, j.degree, func.count(), count(SUCCEEDED), count(DIVERGED),
                count(FAILED), func.min(good), func.avg(good))
         .where(j.sweep_id == sweep_id).group_by(j.variant, j.lr, j.degree))
    with transaction(engine) as s:
        return [Cell(v, lr, d, int(n), int(ok), int(dv), int(f), b, m)
                for v, lr, d, n, ok, dv, f, b, m in s.execute(q).all()]
