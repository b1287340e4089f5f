"""Training states of jobs whose batch was stopped on purpose (``JobStateRecord``): written
when a worker hands its jobs back to the queue, read when a worker claims them again, deleted
when their result is stored (``jobs.save_results``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, delete, insert, select, update

from store.clock import now_sql
from store.db import retry_conflicts, transaction
from store.records import QUEUED, RUNNING, JobRecord, JobStateRecord
from store.rows import chunks, in_lock_order


@retry_conflicts
def suspend_jobs(engine: Engine, sweep_id: str, states: Sequence[tuple[str, int, bytes | None]],
                 worker: str) -> int:
    """Put the jobs ``worker`` holds back in the queue with their states, (job id, epochs
    done, state or None: it had not started), and give back the attempt their claim counted:
    a stop asked for is not a failure. A job the worker no longer holds (another worker took it
    over) is left alone. One transaction; returns how many jobs went back."""
    by_id = {job_id: (epoch, blob) for job_id, epoch, blob in states}
    back: list[str] = []
    with transaction(engine) as s:
        for chunk in chunks(sorted(by_id)):
            back += s.scalars(
                update(JobRecord)
                .where(in_lock_order(engine, (JobRecord.sweep_id == sweep_id)
                                      & JobRecord.id.in_(chunk) & (JobRecord.status == RUNNING)
                                      & (JobRecord.worker == worker)))
                .values(status=QUEUED, worker=None, heartbeat_at=now_sql(engine),
                        attempts=JobRecord.attempts - 1)
                .returning(JobRecord.id)
            ).all()
        for chunk in chunks(back):
            s.execute(delete(JobStateRecord).where(JobStateRecord.sweep_id == sweep_id,
                                                   JobStateRecord.job_id.in_(chunk)))
        rows = [{"sweep_id": sweep_id, "job_id": job_id, "epoch": by_id[job_id][0],
                 "state": by_id[job_id][1]} for job_id in back if by_id[job_id][1] is not None]
        if rows:
            s.execute(insert(JobStateRecord.__table__), rows)
        # What the progress shows for a queued job: how far its state goes.
        for job_id in back:
            s.execute(update(JobRecord).where(JobRecord.sweep_id == sweep_id,
                                              JobRecord.id == job_id)
                      .values(epochs_done=by_id[job_id][0] or None))
    return len(back)


def load_states(engine: Engine, sweep_id: str, job_ids: Sequence[str]) -> dict[str, bytes]:
    """The stored states of these jobs (job id -> blob), for those that have one."""
    out: dict[str, bytes] = {}
    with transaction(engine) as s:
        for chunk in chunks(sorted(set(job_ids))):
            out.update(s.execute(
                select(JobStateRecord.job_id, JobStateRecord.state)
                .where(JobStateRecord.sweep_id == sweep_id, JobStateRecord.job_id.in_(chunk))
            ).all())
    return out
