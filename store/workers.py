"""The fleet that is up: each worker notes itself every few seconds (``worker.reaper``) and
removes itself at a warm stop, so that a submit cuts a sweep into as many batches as there are
training processes to take them (a warm fleet of two processes trains a 64-job sweep as two
batches of 32, not eight of 8). A worker that died is no longer counted once its note is older
than the window asked; judged on the database's clock, as every heartbeat is."""

from __future__ import annotations

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from store.clock import ago_sql, now_sql
from store.db import has_table, retry_conflicts, transaction
from store.records import WorkerRecord


@retry_conflicts
def note_worker(engine: Engine, name: str, device: str, processes: int) -> None:
    """Note that the worker ``name`` is up with ``processes`` training processes on
    ``device`` (``cpu``, ``cuda`` or ``cuda:N``)."""
    values = {"device": device, "processes": processes, "seen_at": now_sql(engine)}
    with transaction(engine) as s:
        if s.execute(update(WorkerRecord).where(WorkerRecord.name == name)
                     .values(**values)).rowcount:
            return
    try:
        with transaction(engine) as s:
            s.execute(insert(WorkerRecord).values(name=name, **values))
    except IntegrityError:  # noted meanwhile by an earlier call of the same worker
        pass


def forget_worker(engine: Engine, name: str) -> None:
    """The worker ``name`` stops: no longer counted."""
    with transaction(engine) as s:
        s.execute(delete(WorkerRecord).where(WorkerRecord.name == name))


def live_processes(engine: Engine, within_s: float) -> int:
    """How many training processes the workers noted within the last ``within_s`` seconds
    run in all (0 in a database made before workers noted themselves)."""
    if not has_table(engine, WorkerRecord.__tablename__):
        return 0
    with transaction(engine) as s:
        return int(s.scalar(select(func.coalesce(func.sum(WorkerRecord.processes), 0))
                            .where(WorkerRecord.seen_at >= ago_sql(engine, within_s))))
