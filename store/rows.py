"""The plain rows the store hands to everyone outside it (``SweepRow``, ``JobRow``), and what
every writer of many job rows shares: rows moved in bounded chunks, locked in one order."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from polyfit_models import fields
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


class _JobValues:
    """What a job row can tell besides its columns."""

    __slots__ = ()

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
        for key in fields.TIMES:
            if out[key] is not None:
                out[key] = as_utc(out[key]).isoformat()
        return out


def _row_field(name: str) -> tuple:
    """A ``JobRow`` attribute: the declared type, None allowed (and the default) where the
    column allows NULL."""
    kind, column = fields.BY_NAME[name].type, JobRecord.__table__.c[name]
    if column.nullable:
        return name, kind | None, dataclasses.field(default=None)
    return name, kind


#: A job as the store holds it (settings, status, result, the record of its run): one
#: attribute per column of the job's declaration (``polyfit_models.fields.ROW``), built with
#: keywords.
JobRow = dataclasses.make_dataclass(
    "JobRow", [_row_field(name) for name in fields.ROW], bases=(_JobValues,), frozen=True,
    kw_only=True, namespace={"__module__": __name__,
                             "__doc__": "A job as the store holds it: its settings, status "
                                        "and result, and the record of its run."})


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
