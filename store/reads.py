"""Reading the jobs of a sweep, as the CLI, the dashboard, the plot and the Python API all do:
one filter (``JobQuery``), one "best" query, one lr x degree map, the loss curves, and a cursor
that streams a million rows. Only reads: a read never upgrades a database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, Text, case, cast, func, literal, select
from sqlalchemy.exc import SQLAlchemyError

from polyfit_models import fields
from store.db import StoreError, columns_of, store_error, transaction
from store.records import DIVERGED, FAILED, OK, SUCCEEDED, JobRecord, LossPointRecord
from store.rows import JOB_COLUMNS, JobRow, chunks

JOBS = JobRecord.__table__


#: What the job table and ``polyfit results`` may sort by: every column but the JSON lists
#: (which have no order), and ``gap`` (mse minus the least-squares optimum).
SORT_COLUMNS = (*(c for c in JOB_COLUMNS if c not in fields.LISTS), "gap")


@dataclass(frozen=True)
class JobQuery:
    """Which jobs of a sweep, in which order (what ``polyfit results`` and the dashboard's job
    table filter and sort by): the jobs of these variants, states and degrees (all when
    empty), lr within bounds, sorted by a column or ``gap`` (missing values last, ties by id)."""

    variants: Sequence[str] = ()
    statuses: Sequence[str] = ()
    degrees: Sequence[int] = ()
    lr_min: float | None = None
    lr_max: float | None = None
    sort: str = "mse"
    descending: bool = False
    limit: int | None = None

    def where(self, sweep_id: str) -> list:
        """The conditions a job of ``sweep_id`` meets to pass."""
        j = JOBS.c
        out = [j.sweep_id == sweep_id]
        if self.variants:
            out.append(j.variant.in_(list(self.variants)))
        if self.statuses:
            out.append(j.status.in_(list(self.statuses)))
        if self.degrees:
            out.append(j.degree.in_(list(self.degrees)))
        if self.lr_min is not None:
            out.append(j.lr >= self.lr_min)
        if self.lr_max is not None:
            out.append(j.lr <= self.lr_max)
        return out

    def order_by(self) -> list:
        """The sort: missing values last, ties by id."""
        if self.sort not in JOB_COLUMNS and self.sort != "gap":
            raise StoreError(f"unknown column {self.sort!r}")
        key = JOBS.c.mse - JOBS.c.optimum_mse if self.sort == "gap" else JOBS.c[self.sort]
        return [key.is_(None), key.desc() if self.descending else key.asc(), JOBS.c.id]

    def select(self, engine: Engine, sweep_id: str, *, raw_json: bool = False):
        """The SELECT of ``JOB_COLUMNS``; ``raw_json``: the JSON columns as their stored text
        and the times as text (an export writes them nearly as they are, without decoding and
        encoding each: see ``iso_time``)."""
        order = self.order_by()
        q = (select(*_job_columns(engine, raw_json=raw_json)).where(*self.where(sweep_id))
             .order_by(*order))
        return q if self.limit is None else q.limit(self.limit)


def _job_columns(engine: Engine, *, raw_json: bool = False) -> list:
    """``JOB_COLUMNS`` as this database has them: a database made by an older polyfit lacks
    the newest columns, which read as missing (a read never upgrades a database)."""
    have = columns_of(engine)

    def column(name: str):
        if name not in have:
            return literal(None).label(name)
        if raw_json and name in ("coefficients", "monomial"):
            return cast(JOBS.c[name], Text).label(name)
        if raw_json and name in ("started_at", "heartbeat_at", "finished_at"):
            return _iso_text(engine, JOBS.c[name]).label(name)
        return JOBS.c[name]

    return [column(c) for c in JOB_COLUMNS]


def list_jobs(engine: Engine, sweep_id: str, **query) -> list[JobRow]:
    """The jobs of a sweep, filtered and sorted (missing values last; see ``JobQuery``)."""
    q = JobQuery(**query).select(engine, sweep_id)
    with transaction(engine) as s:
        return [JobRow(**r) for r in s.execute(q).mappings()]


def jobs_page(engine: Engine, sweep_id: str, query: JobQuery, *, page: int,
              per_page: int) -> tuple[list[JobRow], int]:
    """One page (from 1) of the sweep's jobs that pass ``query``, and how many pass it. The
    database sorts and skips narrow rows (the key and the id), then hands over the page's
    rows only: a late page of a big sweep costs what the first does."""
    where = query.where(sweep_id)
    q = (select(JOBS.c.id).where(*where).order_by(*query.order_by())
         .limit(per_page).offset((page - 1) * per_page))
    with transaction(engine) as s:
        total = s.execute(select(func.count()).select_from(JOBS).where(*where)).scalar_one()
        ids = list(s.scalars(q))
    return rows_of(engine, sweep_id, ids), total


def rows_of(engine: Engine, sweep_id: str, ids: Sequence[str]) -> list[JobRow]:
    """The full rows of these jobs, in the order of ``ids`` (those the sweep has)."""
    found: dict[str, JobRow] = {}
    with transaction(engine) as s:
        for chunk in chunks(list(ids)):
            q = select(*_job_columns(engine)).where(JOBS.c.sweep_id == sweep_id,
                                                    JOBS.c.id.in_(list(chunk)))
            found.update((r["id"], JobRow(**r)) for r in s.execute(q).mappings())
    return [found[i] for i in ids if i in found]


def find_job(engine: Engine, sweep_id: str, job_id: str) -> JobRow | None:
    """The job ``job_id`` of the sweep, or None."""
    found = rows_of(engine, sweep_id, [job_id])
    return found[0] if found else None


def best_jobs(engine: Engine, sweep_id: str, by: Sequence[str], *,
              top: int = 1) -> list[JobRow]:
    """The ``top`` lowest-mse jobs (ties: the lower id) of each group of jobs with equal
    ``by`` columns, among the sweep's succeeded and diverged jobs: ranked by the database (a
    window function), so a million-job sweep never comes into Python whole. Each group's jobs
    come together, its best first."""
    ok = JOBS.c.status.in_(OK) & JOBS.c.mse.is_not(None)
    return _ranked(engine, sweep_id, by, (JOBS.c.mse, JOBS.c.id), ok, top)


def latest_diverged(engine: Engine, sweep_id: str, by: Sequence[str], *,
                    top: int = 1) -> list[JobRow]:
    """The ``top`` jobs of each group of equal ``by`` columns that diverged latest (the
    longest loss curves; ties: the lower id)."""
    return _ranked(engine, sweep_id, by, (JOBS.c.diverged_at_epoch.desc(), JOBS.c.id),
                   JOBS.c.status == DIVERGED, top)


def _ranked(engine: Engine, sweep_id: str, by: Sequence[str], order: Sequence, where,
            top: int) -> list[JobRow]:
    unknown = [b for b in by if b not in JOB_COLUMNS]
    if unknown:
        raise StoreError(f"unknown column {unknown[0]!r}")
    rank = func.row_number().over(partition_by=[JOBS.c[b] for b in by],
                                  order_by=list(order)).label("pick")
    ranked = (select(*_job_columns(engine), rank)
              .where(JOBS.c.sweep_id == sweep_id, where).subquery())
    q = (select(*(ranked.c[c] for c in JOB_COLUMNS)).where(ranked.c.pick <= top)
         .order_by(*(ranked.c[b] for b in by), ranked.c.pick))
    with transaction(engine) as s:
        return [JobRow(**r) for r in s.execute(q).mappings()]


@dataclass(frozen=True)
class MapCell:
    """The jobs of one variant, learning rate and degree: a cell of the lr x degree maps (the
    dashboard's and the plot's), coloured by ``best_mse``."""

    variant: str
    lr: float
    degree: int
    jobs: int
    succeeded: int
    diverged: int
    failed: int
    best_mse: float | None  # the lowest mse of those that succeeded
    mean_mse: float | None  # their mean


def map_cells(engine: Engine, sweep_id: str) -> list[MapCell]:
    """One aggregate per (variant, lr, degree): a grid's worth of rows, whatever the seeds."""
    j = JOBS.c
    good = case((j.status == SUCCEEDED, j.mse), else_=None)

    def count(status):
        return func.coalesce(func.sum(case((j.status == status, 1), else_=0)), 0)

    q = (select(j.variant, j.lr, j.degree, func.count(), count(SUCCEEDED), count(DIVERGED),
                count(FAILED), func.min(good), func.avg(good))
         .where(j.sweep_id == sweep_id).group_by(j.variant, j.lr, j.degree))
    with transaction(engine) as s:
        return [MapCell(v, lr, d, int(n), int(ok), int(dv), int(f), b, m)
                for v, lr, d, n, ok, dv, f, b, m in s.execute(q).all()]


def setting_values(engine: Engine, sweep_id: str, *columns: str) -> list[tuple]:
    """The distinct values the sweep's jobs take of these settings (for a page's filters)."""
    q = select(*(JOBS.c[c] for c in columns)).where(JOBS.c.sweep_id == sweep_id).distinct()
    with transaction(engine) as s:
        return [tuple(r) for r in s.execute(q).all()]


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


def loss_curves(engine: Engine, sweep_id: str, job_ids: Sequence[str]) -> dict[str, list]:
    """Each job's loss curve as a list of (epoch, loss)."""
    out: dict[str, list] = {j: [] for j in job_ids}
    with transaction(engine) as s:
        for chunk in chunks(list(job_ids)):
            rows = s.execute(
                select(LossPointRecord.job_id, LossPointRecord.epoch, LossPointRecord.loss)
                .where(LossPointRecord.sweep_id == sweep_id,
                       LossPointRecord.job_id.in_(chunk))
                .order_by(LossPointRecord.job_id, LossPointRecord.epoch)
            ).all()
            for job_id, epoch, loss in rows:
                out[job_id].append((epoch, loss))
    return out
