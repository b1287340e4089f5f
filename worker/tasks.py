"""The task: a thin view that turns its JSON payload into job specs, calls the core through
``execute.run_batch`` and returns a small dict. Retry and routing policy sit on the decorator and
the app config."""

from __future__ import annotations

import logging

from celery import signals

from store import StoreError
from worker import execute
from worker.app import TASK_NAME, app
from worker.payload import BadMessage, Batch
from worker.runtime import Runtime, apply_threads

log = logging.getLogger("polyfit.worker")


def _runtime() -> Runtime:
    return app.conf.polyfit_runtime


@signals.worker_process_init.connect
def _init_pool_process(**_kwargs) -> None:
    # Each prefork child gets its own share of the cores and (lazily) its own DB engine.
    apply_threads(_runtime().torch_threads)


@app.task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(StoreError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=5,
)
def run_batch(self, payload: dict) -> dict:
    """Train one batch of compatible jobs and store their results."""
    try:
        batch = Batch.from_dict(payload)
    except BadMessage as e:
        # Retrying cannot fix a malformed message: log it and drop it, keep the worker serving.
        log.error("rejected malformed batch message %s: %s", self.request.id, e)
        return {"rejected": str(e)}
    return execute.run_batch(batch, _runtime(), worker=self.request.hostname or "worker")
