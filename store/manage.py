"""Managing sweeps as a user of a tuning tool expects: rename one, delete one (with its jobs and
loss curves, never while it runs), and label them with tags and a free-text note. Each change is
one transaction: a refused change leaves nothing half-done."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Engine, delete, func, insert, select, update

from polyfit_models.errors import BadInput
from store.db import StoreError, columns_of, has_table, transaction
from store.records import (
    QUEUED,
    RUNNING,
    JobRecord,
    JobStateRecord,
    LossPointRecord,
    SearchRecord,
    SweepRecord,
    TrialRecord,
)
from store.search import _has_tables

#: Limits of a label: tags are short words, a note a paragraph.
MAX_TAG = 64
MAX_TAGS = 32
MAX_NOTE = 2000


class SweepChangeRefused(StoreError, BadInput):
    """Raised when a change of a sweep is refused for what the user asked (a name another sweep
    has, a sweep that is running, a tag that is no tag): an input error, nothing changed."""


def rename_sweep(engine: Engine, sweep_id: str, new_id: str, new_name: str) -> None:
    """Give the sweep another name, and with it the id that name digests to (the scheduler's
    ``sweep_id_of``: a name is one sweep, so that running a spec under the new name grows this
    one). Its jobs and loss curves move to the new id in the same transaction. Refused when
    another sweep has the name, and while a job of the sweep is queued or running (their
    messages on the broker name the old id)."""
    new_name = _checked_name(new_name)
    # A search's round counter and trials go with it (deleting the old sweep row would cascade
    # to them).
    searched = (SearchRecord, TrialRecord) if _has_tables(engine) else ()
    # ... and the training states of its stopped jobs (a cancelled sweep's, for a resume).
    states = (JobStateRecord,) if has_table(engine, JobStateRecord.__tablename__) else ()
    with transaction(engine) as s:
        rec = s.get(SweepRecord, sweep_id)
        if rec is None:
            raise SweepChangeRefused(f"no sweep {sweep_id!r}")
        taken = s.scalars(select(SweepRecord.id).where(
            (SweepRecord.name == new_name) | (SweepRecord.id == new_id),
            SweepRecord.id != sweep_id)).first()
        if taken is not None:
            raise SweepChangeRefused(f"another sweep is named {new_name!r} ({taken}): delete "
                                     "or rename it first")
        busy = s.scalar(select(func.count()).select_from(JobRecord).where(
            JobRecord.sweep_id == sweep_id, JobRecord.status.in_((QUEUED, RUNNING))))
        if busy:
            raise SweepChangeRefused(
                f"the sweep has {busy:,} job{'s' if busy != 1 else ''} queued or running: "
                "rename it once they have ended (or `polyfit cancel` it first)")
        if new_id == sweep_id:
            rec.name = new_name
            return
        s.execute(insert(SweepRecord).values(
            id=new_id, name=new_name, spec=rec.spec, created_at=rec.created_at,
            used_at=rec.used_at, tags=rec.tags, note=rec.note))
        for table in (JobRecord, LossPointRecord, *searched, *states):
            s.execute(update(table).where(table.sweep_id == sweep_id).values(sweep_id=new_id)
                      .execution_options(synchronize_session=False))
        s.execute(delete(SweepRecord).where(SweepRecord.id == sweep_id)
                  .execution_options(synchronize_session=False))


def delete_sweep(engine: Engine, sweep_id: str) -> int:
    """Delete the sweep, its jobs and their loss curves; returns how many jobs went. Refused
    while a job of it is running. Its queued jobs are taken out of the workers' reach first,
    in the same transaction, so that no worker claims one between the check and the delete
    (a message still on the broker then names rows that are gone, and is dropped)."""
    states = (JobStateRecord,) if has_table(engine, JobStateRecord.__tablename__) else ()
    with transaction(engine) as s:
        s.execute(update(JobRecord).where(JobRecord.sweep_id == sweep_id,
                                          JobRecord.status == QUEUED)
                  .values(status="cancelled").execution_options(synchronize_session=False))
        running = s.scalar(select(func.count()).select_from(JobRecord).where(
            JobRecord.sweep_id == sweep_id, JobRecord.status == RUNNING))
        if running:
            raise SweepChangeRefused(
                f"the sweep is running ({running:,} job{'s' if running != 1 else ''} in "
                "workers' hands): `polyfit cancel` it and wait for them, then delete it")
        for table in (LossPointRecord, *states):
            s.execute(delete(table).where(table.sweep_id == sweep_id)
                      .execution_options(synchronize_session=False))
        gone = s.execute(delete(JobRecord).where(JobRecord.sweep_id == sweep_id)
                         .execution_options(synchronize_session=False)).rowcount
        s.execute(delete(SweepRecord).where(SweepRecord.id == sweep_id)
                  .execution_options(synchronize_session=False))
        return gone


def label_sweep(engine: Engine, sweep_id: str, *, add: Iterable[str] = (),
                remove: Iterable[str] = (), note: str | None = None) -> tuple[list[str], str]:
    """Add and remove tags and, when ``note`` is given, set the note ("" clears it); returns
    the sweep's tags and note after the change."""
    add, remove = checked_tags(add), checked_tags(remove)
    if note is not None:
        note = " ".join(note.split())
        if len(note) > MAX_NOTE:
            raise SweepChangeRefused(f"a note is at most {MAX_NOTE:,} characters, got "
                                     f"{len(note):,}")
    with transaction(engine) as s:
        rec = s.get(SweepRecord, sweep_id, with_for_update=engine.dialect.name != "sqlite")
        if rec is None:
            raise SweepChangeRefused(f"no sweep {sweep_id!r}")
        tags = [t for t in (rec.tags or []) if t not in remove]
        tags += [t for t in add if t not in tags]
        if len(tags) > MAX_TAGS:
            raise SweepChangeRefused(f"a sweep has at most {MAX_TAGS} tags")
        rec.tags = tags
        if note is not None:
            rec.note = note or None
        return tags, rec.note or ""


def checked_tags(tags: Iterable[str]) -> list[str]:
    """Tags as given (comma-separated lists allowed), each a short printable word."""
    out: list[str] = []
    for given in tags:
        for tag in str(given).split(","):
            tag = tag.strip()
            if not tag:
                continue
            if len(tag) > MAX_TAG or not tag.isprintable() or any(c.isspace() for c in tag):
                raise SweepChangeRefused(f"a tag is a word of at most {MAX_TAG} printable "
                                         f"characters without spaces, got {tag[:80]!r}")
            if tag not in out:
                out.append(tag)
    return out


def labels_of(engine: Engine, sweep_ids: Sequence[str] | None = None
              ) -> dict[str, tuple[list[str], str]]:
    """Each sweep's tags and note (every sweep's when ``sweep_ids`` is None); empty for a
    database made before polyfit kept them."""
    if not {"tags", "note"} <= columns_of(engine, "sweeps"):
        return {}
    q = select(SweepRecord.id, SweepRecord.tags, SweepRecord.note)
    if sweep_ids is not None:
        q = q.where(SweepRecord.id.in_(list(sweep_ids)))
    with transaction(engine) as s:
        return {i: (list(t or []), n or "") for i, t, n in s.execute(q).all()}


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise SweepChangeRefused("a sweep's name is 1 to 200 printable characters")
    return name
