"""Reading the jobs of a sweep, as the CLI, the dashboard, the plot and the Python API all do:
one filter (``JobQuery``), one "best" query, one lr x degree map, the loss curves, and a cursor
that streams a million rows. Only reads: a read never upgrades a database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, Text, cast, func, literal, select
from sqlalchemy.exc import SQLAlchemyError

from store.db import StoreError, columns_of, store_error, transaction
from store.records import OK, JobRecord, LossPointRecord
from store.rows import JOB_COLUMNS, JobRow, chunks


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
        have = columns_of(engine)

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
    have = columns_of(engine)
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
