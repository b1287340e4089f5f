"""Finding and listing sweeps: one sweep by id or name (the latest by default), and every sweep
with its counts and best mse, as the CLI, the dashboard and the Python API show them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.orm import undefer

from store.db import columns_of, transaction
from store.manage import labels_of
from store.records import (
    CANCELLED,
    DIVERGED,
    ENDED,
    FAILED,
    OK,
    QUEUED,
    RUNNING,
    JobRecord,
    SweepRecord,
)
from store.rows import SweepRow, as_utc, chunks


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
    """A sweep with its counts, best mse, tags and note: a line of ``polyfit sweeps`` and of
    the dashboard's sweep list."""

    id: str
    name: str
    created_at: datetime
    jobs: int
    ended: int
    failed: int
    best_mse: float | None
    diverged: int = 0
    running: int = 0
    queued: int = 0
    cancelled: int = 0
    tags: tuple[str, ...] = ()
    note: str = ""

    @property
    def done(self) -> bool:
        """Whether every job of the sweep has ended."""
        return self.ended == self.jobs and self.jobs > 0

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["created_at"] = as_utc(self.created_at).isoformat()
        out["tags"] = list(self.tags)
        return out


_NEWEST = (SweepRecord.created_at.desc(), SweepRecord.id)
_HEAD = (SweepRecord.id, SweepRecord.name, SweepRecord.created_at)


def list_sweeps(engine: Engine) -> list[SweepSummary]:
    """Every sweep of the database with its counts and best mse, newest first (see
    ``summarized``)."""
    with transaction(engine) as s:
        rows = s.execute(select(*_HEAD).order_by(*_NEWEST)).all()
    return summarized(engine, rows)


def sweep_summaries(engine: Engine, *, limit: int, offset: int = 0,
                    tag: str | None = None) -> tuple[list[SweepSummary], int]:
    """A page of the sweeps, newest first, with their counts; and how many sweeps there are
    (with ``tag``: only the sweeps that carry it). Only the page's sweeps are counted."""
    if tag is not None:
        # Tags are a JSON list, which the two backends search differently: the (few, short)
        # labels of every sweep are read, the page cut from the sweeps that carry the tag.
        tagged = {i for i, (tags, _) in labels_of(engine).items() if tag in tags}
        with transaction(engine) as s:
            ids = [i for i in s.scalars(select(SweepRecord.id).order_by(*_NEWEST))
                   if i in tagged]
            chosen = ids[offset:offset + limit]
            rows = {r.id: r for r in s.execute(
                select(*_HEAD).where(SweepRecord.id.in_(chosen))).all()} if chosen else {}
        return summarized(engine, [rows[i] for i in chosen]), len(ids)
    with transaction(engine) as s:
        total = s.execute(select(func.count()).select_from(SweepRecord)).scalar_one()
        page = s.execute(select(*_HEAD).order_by(*_NEWEST).limit(limit).offset(offset)).all()
    return summarized(engine, page), total


def sweep_summary(engine: Engine, sweep_id: str) -> SweepSummary | None:
    """The sweep ``sweep_id`` (an id, not a name) with its counts, or None."""
    with transaction(engine) as s:
        found = s.execute(select(*_HEAD).where(SweepRecord.id == sweep_id)).all()
    return summarized(engine, found)[0] if found else None


def summarized(engine: Engine, sweeps: Sequence) -> list[SweepSummary]:
    """These sweeps (rows of id, name, created_at) with their counts, best mse and labels.
    Counts and each best mse come from the (sweep, status, mse) index alone (a best mse from
    the end of its status's range): no job row is read, so a million-job sweep costs what a
    small one does."""
    if not sweeps:
        return []
    j = JobRecord
    ids = [r.id for r in sweeps]
    counts: dict[str, dict[str, int]] = {}
    best: dict[str, float | None] = {}
    best_of = [select(func.min(j.mse)).where(j.sweep_id == SweepRecord.id,
                                             j.status == status).scalar_subquery()
               for status in OK]
    with transaction(engine) as s:
        for chunk in chunks(ids):
            for sweep_id, status, n in s.execute(
                    select(j.sweep_id, j.status, func.count()).where(j.sweep_id.in_(chunk))
                    .group_by(j.sweep_id, j.status)):
                counts.setdefault(sweep_id, {})[status] = n
            for sweep_id, *bests in s.execute(
                    select(SweepRecord.id, *best_of).where(SweepRecord.id.in_(chunk))):
                found = [b for b in bests if b is not None]
                best[sweep_id] = min(found) if found else None
    labels: dict[str, tuple[list[str], str]] = {}
    for chunk in chunks(ids):
        labels.update(labels_of(engine, chunk))
    out = []
    for sweep_id, name, created in sweeps:
        n = counts.get(sweep_id, {})
        tags, note = labels.get(sweep_id, ((), ""))
        out.append(SweepSummary(
            sweep_id, name, created, sum(n.values()),
            sum(k for st, k in n.items() if st in ENDED), n.get(FAILED, 0),
            best.get(sweep_id), n.get(DIVERGED, 0), n.get(RUNNING, 0), n.get(QUEUED, 0),
            n.get(CANCELLED, 0), tuple(tags), note))
    return out


def sweep_names(engine: Engine) -> list[str]:
    """The names of every sweep (for a "did you mean")."""
    with transaction(engine) as s:
        return list(s.scalars(select(SweepRecord.name).distinct()).all())
