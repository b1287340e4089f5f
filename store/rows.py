"""The plain rows the store hands to everyone outside it (``SweepRow``, ``JobRow``), and what
every writer of many job rows shares: rows moved in bounded chunks, locked in one order."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from store.records import JobRecord

# Rows are written in chunks so that one statement never carries an unbounded parameter list
# (SQLite caps bound parameters per statement).
CHUNK = 500


def now() -> datetime:
    """This process's clock (UTC). Never what the store writes or judges liveness by: that is
    the database's clock (``store.clock``), the one clock every host of a fleet shares."""
    return datetime.now(UTC)


def as_utc(t: datetime) -> datetime:
    """``t`` with its time zone; a naive time from the store is UTC (every time written is)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class SweepRow:
    """A recorded sweep: its id, name, spec and when it was made and last used."""

    id: str
    name: str
    spec: dict
    created_at: datetime
    # When it was last submitted to, grown, continued or resumed: where a run of it begins
    # (None in a database made before polyfit noted it).
    used_at: datetime | None = None


@dataclass(frozen=True)
class JobRow:
    """A job as the store holds it: its settings, status and result."""

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
NO_SYNC = {"synchronize_session": False}


def in_lock_order(engine: Engine, where, *, limit: int | None = None):
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


def chunks(items: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def batched(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def spec_columns(table) -> list:
    return [table.c[name] for name in JOB_COLUMNS]
