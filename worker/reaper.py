"""The reaper: a worker bootstep that, every ``REAP_EVERY_S``, puts back in the queue the jobs
whose worker stopped sending heartbeats (killed, lost its machine, lost the database).

It runs on the worker's own timer in its main process, so every live worker of the fleet is a
reaper and no extra service is needed; reapers racing each other move each job once."""

from __future__ import annotations

import logging

from celery import bootsteps

from store import StoreError
from store import jobs as store_jobs
from worker.batches import BrokerError, batches_for_views, publish
from worker.runtime import engine_for

log = logging.getLogger("polyfit.worker")

REAP_EVERY_S = 15.0


def reap_once(app) -> int:
    """Requeue and re-enqueue the jobs of dead workers; returns how many."""
    settings = app.conf.polyfit_settings
    try:
        stale = store_jobs.reap_stale(engine_for(settings), settings.stale_after_s)
    except StoreError as e:
        log.warning("reaper could not read the store: %s", e)
        return 0
    if not stale:
        return 0
    try:
        publish(app, batches_for_views(stale))
    except BrokerError as e:
        # The jobs are ``queued`` in the store; `polyfit sweep resume` enqueues them.
        log.warning("reaper could not re-enqueue %d jobs: %s", len(stale), e)
        return 0
    log.warning("reaper re-enqueued %d jobs of a worker that stopped beating", len(stale))
    return len(stale)


class Reaper(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker):
        self.tref = worker.timer.call_repeatedly(REAP_EVERY_S, reap_once, (worker.app,),
                                                 priority=10)

    def stop(self, worker):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
