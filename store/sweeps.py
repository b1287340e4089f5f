"""Finding and listing sweeps: one sweep by id or name (the latest by default), and every sweep
with its counts and best mse, as the CLI, the dashboard and the Python API show them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.orm import undefer

from store.db import columns_of, transaction
from store.records import ENDED, FAILED, OK, JobRecord, SweepRecord
from store.rows import SweepRow, as_utc


def _sweep_row(rec: SweepRecord) -> SweepRow:
    used = None if "used_at" in inspect(rec).unloaded else rec.used_at
    return SweepRow(id=rec.id, name=rec.name, spec=rec.spec, created_at=rec.created_at,
                    used_at=used)


def find_sweep(engine: Engine, ref: str | None) -> SweepRow | None:
    """The sweep whose id or name is ``ref``, or, with no ``ref``, the latest: the sweep last
    submitted to, grown, continued or resumed (of that name, with a name), which is not always
    the newest made."""
    options = []
    if "used_at" in columns_of(engine, "sweeps"):
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
