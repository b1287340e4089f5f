"""The task: a thin view that turns its JSON payload into job specs, calls the core through
``execute.run_batch`` and returns a small dict. Retry and routing policy sit on the decorator and
the app config."""

from __future__ import annotations

import logging
import os

from celery import signals
from celery.exceptions import Reject

from store import StoreUnavailable
from worker import execute, halving, rounds
from worker.app import app
from worker.payload import RETRY_DELAY_MAX_S, TASK_NAME, BadMessage, Batch
from worker.runtime import Runtime, current, engine_for, share_cores

log = logging.getLogger("polyfit.worker")


def _runtime() -> Runtime:
    return current()


@signals.worker_process_init.connect
def _init_pool_process(**_kwargs) -> None:
    # Each prefork child gets its own share of the host's cores (with every other polyfit
    # training process of the host: two workers on one host, or Celery's own prefork pool
    # of one process per core) and (lazily) its own DB engine.
    share_cores(_runtime())


@signals.worker_process_shutdown.connect
def _leave_pool_process(**_kwargs) -> None:
    from worker import cores

    cores.unregister()


@app.task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    # The database unreachable or refusing a write is transient: retry later, with exponential
    # backoff (1, 2, 4, ... s, at most 60 s, jittered), up to POLYFIT_MAX_RETRIES times. The
    # retry is a new message with an ``eta``, which the worker's gate honours up to that bound
    # plus a margin (``worker.payload.ETA_MAX_S``), and a retry count, which it keeps.
    autoretry_for=(StoreUnavailable,),
    retry_backoff=True,
    retry_backoff_max=RETRY_DELAY_MAX_S,
    retry_jitter=True,
    max_retries=5,
)
def run_batch(self, payload: dict) -> dict:
    """Train one batch of compatible jobs and store their results."""
    settings = _runtime().settings
    # The retry count is a setting of this worker; Celery's autoretry reads it from here.
    self.override_max_retries = settings.max_retries
    try:
        batch = Batch.from_dict(payload)
    except BadMessage as e:
        # Retrying cannot fix a malformed message: log it and drop it, keep the worker serving.
        log.error("rejected malformed batch message %s: %s", self.request.id, e)
        return {"rejected": str(e)}
    # One owner per process: the prefork children of a worker share its hostname, and a job
    # must never be claimed by a second process while the first one still trains it.
    worker = f"{self.request.hostname or 'worker'}/{os.getpid()}"
    share_cores(_runtime())  # workers of the host may have come or gone since the last batch
    out = execute.run_batch(batch, _runtime(), worker=worker)
    if out.get(execute.STOPPED):
        # This worker is stopping and handed the batch's jobs back (queued, with their
        # states): the message goes back to the broker for the next worker at once, instead
        # of the jobs waiting for a reaper's lost-message pass (``stale_after_s``). A copy
        # that finds them taken already claims nothing.
        log.warning("batch %s handed back on stopping: %d jobs queued again with their state",
                    self.request.id, out[execute.STOPPED])
        raise Reject(f"{out[execute.STOPPED]} jobs handed back on stopping", requeue=True)
    # A halving rung may have ended with these results: rank it and enqueue the next (once);
    # and a search's round: ask and enqueue the next (once).
    engine = engine_for(settings)
    halving.advance(engine, settings, self.app, batch.sweep_id, private=_runtime().private)
    rounds.advance(engine, settings, self.app, batch.sweep_id, private=_runtime().private)
    return out
