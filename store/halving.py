"""Successive halving's rungs in the store, and the one guarded step that ranks a rung.

A sweep with ``halving: {eta, min_epochs}`` in its spec trains each job in rungs: in rung r a
job trains to ``rung_epochs`` (``min_epochs * eta**r``, at most its own ``epochs``). A job
that reaches its rung's end before its own last epoch is stored ``paused`` with the rung's
result and its training state (``jobs.save_results(..., held=...)``); one that ends (its last
epoch, diverged, stopped at its gap) or fails is stored as any job is. Once no job of the rung
is queued or running, the rung is ranked (``advance_rung``): the best ``1/eta`` of its paused
jobs (by mse, ties by job id; at least one) go back to ``queued`` in the next rung, the others
end ``pruned`` keeping the result of the epoch they reached.

Whoever stores a rung's last result (any worker), or a resume, may try to rank it: the ranking
moves the rung's ``paused`` rows in one transaction that first locks them (``FOR UPDATE`` on
PostgreSQL, the one write lock on SQLite) and re-checks that the rung is complete, so of two
processes racing on the same rung exactly one moves its rows (the other finds none paused)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, select, update

from store.clock import now_sql
from store.db import retry_conflicts, transaction
from store.records import PAUSED, PRUNED, QUEUED, RUNNING, JobRecord, JobStateRecord
from store.rows import JobRow, chunks, in_lock_order, spec_columns

#: The smallest ``eta``: keeping 1/1 of a rung would prune nothing.
MIN_ETA = 2


@dataclass(frozen=True)
class Halving:
    """A sweep's ``halving`` setting."""

    eta: int
    min_epochs: int

    @classmethod
    def of(cls, spec: Mapping | None) -> Halving | None:
        """The halving of a recorded sweep's spec, or None."""
        raw = (spec or {}).get("halving") if isinstance(spec, Mapping) else None
        return None if not raw else cls(int(raw["eta"]), int(raw["min_epochs"]))

    def rung_epochs(self, rung: int, epochs: int) -> int:
        """The epochs a job of ``epochs`` trains to in rung ``rung``."""
        return min(epochs, self.min_epochs * self.eta ** rung)

    def rungs(self, epochs: int) -> int:
        """How many rungs a job of ``epochs`` goes through at most."""
        r = 0
        while self.rung_epochs(r, epochs) < epochs:
            r += 1
        return r + 1


def _rung():
    return func.coalesce(JobRecord.rung, 0)


def rungs_of(engine: Engine, sweep_id: str, job_ids: Sequence[str]) -> dict[str, int]:
    """The rung of each of these jobs (0 for a job never promoted)."""
    out: dict[str, int] = {}
    with transaction(engine) as s:
        for chunk in chunks(sorted(set(job_ids))):
            out.update(s.execute(select(JobRecord.id, _rung()).where(
                JobRecord.sweep_id == sweep_id, JobRecord.id.in_(chunk))).all())
    return out


def current_rung(engine: Engine, sweep_id: str) -> int:
    """The rung a halving sweep is in: the lowest rung of a job not ended, or the highest
    rung reached once every job has ended."""
    open_ = JobRecord.status.in_([QUEUED, RUNNING, PAUSED])
    with transaction(engine) as s:
        low = s.scalar(select(func.min(_rung())).where(JobRecord.sweep_id == sweep_id, open_))
        if low is not None:
            return int(low)
        return int(s.scalar(select(func.max(_rung())).where(JobRecord.sweep_id == sweep_id))
                   or 0)


def _ready(s, sweep_id: str) -> int | None:
    """The lowest rung with paused jobs if no job of it or below is queued or running."""
    paused = s.scalar(select(func.min(_rung())).where(JobRecord.sweep_id == sweep_id,
                                                      JobRecord.status == PAUSED))
    if paused is None:
        return None
    busy = s.scalar(select(func.count()).select_from(JobRecord).where(
        JobRecord.sweep_id == sweep_id, JobRecord.status.in_([QUEUED, RUNNING]),
        _rung() <= paused))
    return None if busy else int(paused)


def rung_ready(engine: Engine, sweep_id: str) -> int | None:
    """The rung to rank now (see ``_ready``), or None."""
    with transaction(engine) as s:
        return _ready(s, sweep_id)


@retry_conflicts
def advance_rung(engine: Engine, sweep_id: str, rung: int, eta: int) -> list[JobRow]:
    """Rank rung ``rung`` if it is complete and its jobs still wait: the best ``1/eta`` of its
    paused jobs (at least one) are queued in the next rung and returned (to be enqueued), the
    others end ``pruned``. Returns [] for a caller that finds nothing to rank (the rung is not
    complete, or another process ranked it)."""
    table = JobRecord.__table__
    t = now_sql(engine)
    with transaction(engine) as s:
        ranked = s.execute(
            select(JobRecord.id).where(JobRecord.sweep_id == sweep_id,
                                       JobRecord.status == PAUSED, _rung() == rung)
            .order_by(JobRecord.id).with_for_update()).scalars().all()
        if not ranked or _ready(s, sweep_id) != rung:
            return []
        mse = _mses(s, sweep_id, ranked)
        order = sorted(ranked, key=lambda i: (mse[i] is None, mse[i] or 0.0, i))
        keep = max(1, len(order) // eta)
        up, out = sorted(order[:keep]), sorted(order[keep:])
        moved = []
        for chunk in chunks(up):
            moved += s.execute(
                update(table).where(in_lock_order(engine, (table.c.sweep_id == sweep_id)
                                                   & table.c.id.in_(chunk)
                                                   & (table.c.status == PAUSED)))
                .values(status=QUEUED, rung=rung + 1, worker=None, heartbeat_at=t,
                        finished_at=None)
                .returning(*spec_columns(table))).mappings().all()
        for chunk in chunks(out):
            s.execute(update(JobRecord).where(
                JobRecord.sweep_id == sweep_id, JobRecord.id.in_(chunk),
                JobRecord.status == PAUSED)
                .values(status=PRUNED, finished_at=t, heartbeat_at=t)
                .execution_options(synchronize_session=False))
            s.execute(delete(JobStateRecord).where(JobStateRecord.sweep_id == sweep_id,
                                                   JobStateRecord.job_id.in_(chunk)))
        return [JobRow(**r) for r in moved]


def _mses(s, sweep_id: str, ids: Sequence[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for chunk in chunks(ids):
        out.update(s.execute(select(JobRecord.id, JobRecord.mse).where(
            JobRecord.sweep_id == sweep_id, JobRecord.id.in_(chunk))).all())
    return out
