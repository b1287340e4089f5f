"""Submission: record the sweep in the store, then enqueue its jobs in batches.

The sweep and all its jobs are recorded (as ``queued``) in one transaction before anything is
enqueued, so a submit that dies half-way leaves nothing that ``polyfit sweep resume`` cannot
finish, and a job enqueued twice is still claimed only once by the store."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.sweep import Plan
from store import jobs as store_jobs
from store.db import create_schema, make_engine
from store.records import ENDED
from worker.app import make_app
from worker.batches import BrokerError, batches_for_views, plan_batches, publish
from worker.settings import Settings

__all__ = ["BrokerError", "Submitted", "carry_on", "resume", "submit"]


@dataclass(frozen=True)
class Submitted:
    sweep_id: str
    new_jobs: int
    enqueued_jobs: int
    batches: int
    reused_jobs: int = 0


def submit(settings: Settings, plan: Plan, *, batch_size: int | None = None,
           spread: int = 8, fresh: bool = False) -> Submitted:
    """Record the plan and enqueue every job of it that has not ended yet.

    A job whose settings ended well in another sweep of the database takes that result and is
    not trained (unless ``fresh``). A job that ended in an earlier run of the same sweep
    (succeeded, diverged, failed or cancelled) is left as it is: submitting again never undoes
    a cancel nor retrains a result (``resume`` retries failed and cancelled jobs); ``fresh``
    trains every job of the plan again."""
    engine = make_engine(settings.db_url)
    ids = [job.id for job in plan.jobs]
    try:
        create_schema(engine)
        recorded = store_jobs.save_sweep(engine, plan.sweep_id, plan.name, plan.spec,
                                         [job.row() for job in plan.jobs], reuse=not fresh)
        if recorded.new < len(plan.jobs) or fresh:
            # A re-run: some jobs are recorded already; the store says which need to run.
            retry = tuple(s.value for s in ENDED) if fresh else ()
            if fresh:
                store_jobs.clear_results(engine, plan.sweep_id, ids)
            todo = store_jobs.requeue(engine, plan.sweep_id, settings.stale_after_s,
                                      retry=retry, job_ids=ids)
    finally:
        engine.dispose()
    if recorded.new < len(plan.jobs) or fresh:
        batches = batches_for_views(todo, settings, batch_size=batch_size, spread=spread)
    else:
        # A new sweep: every job was just recorded as queued (or took a result), so the plan
        # is the work list.
        batches = plan_batches(plan.sweep_id,
                               [(job.id, job.spec, job.device) for job in plan.jobs
                                if job.id not in recorded.reused], settings,
                               batch_size=batch_size, spread=spread)
    publish(make_app(settings), batches)
    return Submitted(plan.sweep_id, recorded.new, sum(len(b.job_ids) for b in batches),
                     len(batches), len(recorded.reused))


def carry_on(settings: Settings, sweep_id: str, *, batch_size: int | None = None,
             spread: int = 8) -> Submitted:
    """Enqueue what a sweep still needs: its queued jobs, and those of a worker that stopped
    beating (not its failed or cancelled ones: ``resume`` retries those)."""
    engine = make_engine(settings.db_url)
    try:
        todo = store_jobs.requeue(engine, sweep_id, settings.stale_after_s)
    finally:
        engine.dispose()
    batches = batches_for_views(todo, settings, batch_size=batch_size, spread=spread)
    publish(make_app(settings), batches)
    return Submitted(sweep_id, 0, sum(len(b.job_ids) for b in batches), len(batches))


def resume(settings: Settings, sweep_id: str, *, batch_size: int | None = None,
           spread: int = 8) -> Submitted:
    """Re-enqueue the jobs of a sweep that have not ended well: queued, stuck on a dead
    worker, failed, and cancelled (resuming is how a cancel is undone)."""
    engine = make_engine(settings.db_url)
    try:
        todo = store_jobs.requeue_missing(engine, sweep_id, settings.stale_after_s)
    finally:
        engine.dispose()
    batches = batches_for_views(todo, settings, batch_size=batch_size, spread=spread)
    publish(make_app(settings), batches)
    return Submitted(sweep_id, 0, sum(len(b.job_ids) for b in batches), len(batches))
