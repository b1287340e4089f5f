"""Recording a sweep and its jobs: all or nothing, safe when two processes record the same sweep
at once, and a new job whose settings ended well in another sweep takes that result instead of
being trained again."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from polyfit_models import fields
from store.clock import now_sql
from store.db import StoreError, transaction
from store.records import OK, QUEUED, JobRecord, LossPointRecord, SweepRecord
from store.rows import NO_SYNC, batched


def insert_ignoring_existing(engine: Engine, table):
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
        s.execute(insert_ignoring_existing(engine, SweepRecord.__table__)
                  .values(created_at=t, used_at=t),
                  [{"id": sweep_id, "name": name, "spec": spec}])
        s.execute(update(SweepRecord).where(SweepRecord.id == sweep_id)
                  .values(spec=spec, used_at=t).execution_options(**NO_SYNC))
        new = seen = 0
        reused: set[str] = set()
        # Nothing ended well in another sweep: nothing to reuse, no lookup per chunk.
        reuse = reuse and s.execute(
            select(table.c.id).where(table.c.sweep_id != sweep_id, table.c.status.in_(OK))
            .limit(1)).first() is not None
        for chunk in batched(jobs, _INSERT_CHUNK):
            seen += len(chunk)
            # RETURNING names exactly the rows this call inserted (executemany rowcounts
            # differ between drivers).
            inserted = s.scalars(
                insert_ignoring_existing(engine, table).values(heartbeat_at=t)
                .returning(table.c.id),
                [{**row, **extra} for row in chunk]).all()
            new += len(inserted)
            if reuse and inserted:
                reused |= _reuse_results(s, sweep_id, inserted)
        return Recorded(new, frozenset(reused), seen)


_INSERT_CHUNK = 2000
#: SQLite's page cache while a sweep is recorded, in KiB (see ``save_sweep``).
_SUBMIT_CACHE_KIB = 65536


#: What a reused row takes from the row it reuses.
_REUSED = fields.REUSED


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


def mark_used(engine: Engine, sweep_id: str) -> None:
    """Note that the sweep was just continued or resumed: it is the one meant by default."""
    with transaction(engine) as s:
        s.execute(update(SweepRecord).where(SweepRecord.id == sweep_id)
                  .values(used_at=now_sql(engine)).execution_options(**NO_SYNC))
