"""The reaper: a worker bootstep that, every ``Settings.reap_every_s``, puts back in the queue
the jobs whose worker stopped sending heartbeats (killed, lost its machine, lost the database),
and the jobs whose message was lost (a worker killed between fetching a message and claiming
its jobs, a broker that dropped it, a publish that failed).

It runs on the worker's own timer in its main process, so every live worker of the fleet is a
reaper and no extra service is needed; reapers racing each other move each job once. Enqueueing
a job twice is harmless (the store lets one worker claim it), losing one is not: when in doubt,
the reaper enqueues."""

from __future__ import annotations

import logging
from typing import ClassVar

from celery import bootsteps

from store import StoreError
from store.clock import skew_s
from store.requeue import lost_queued_groups, reap_stale, take_lost_queued
from store.workers import forget_worker, note_worker
from worker import runtime
from worker.batches import BrokerError, batches_for_views, publish, queue_sizes
from worker.queues import queue_for
from worker.runtime import engine_for

log = logging.getLogger("polyfit.worker")

#: A worker whose clock is at least this far off the database's says so.
SKEW_WARN_S = 5.0
_clock_checked = False


def reap_once(app) -> int:
    """Requeue and re-enqueue the jobs of dead workers and of lost messages; returns how many."""
    settings = runtime.current().settings
    engine = engine_for(settings)
    try:
        stale = reap_stale(engine, settings.stale_after_s, settings.max_attempts)
    except StoreError as e:
        log.warning("reaper could not use the store: %s", e)
        return 0
    _check_clock(engine)
    try:
        lost = _take_lost(app, engine, settings.stale_after_s)
    except (StoreError, BrokerError) as e:
        log.warning("reaper could not look for lost messages: %s", e)
        lost = []
    todo = stale + lost
    if not todo:
        return 0
    try:
        publish(app, batches_for_views(todo, settings), private=runtime.current().private)
    except BrokerError as e:
        # They stay ``queued``; once the broker is back their queue is empty and the next
        # rounds enqueue them again as lost.
        log.warning("reaper could not re-enqueue %d jobs: %s", len(todo), e)
        return 0
    if stale:
        log.warning("reaper re-enqueued %d jobs of a worker that stopped beating", len(stale))
    if lost:
        log.warning("reaper re-enqueued %d queued jobs whose message was lost", len(lost))
    return len(todo)


def _check_clock(engine) -> None:
    """Once per process: warn when this host's clock is off the database's."""
    global _clock_checked
    if _clock_checked:
        return
    try:
        skew = skew_s(engine)
    except StoreError:
        return  # the next round tries again
    _clock_checked = True
    if abs(skew) >= SKEW_WARN_S:
        log.warning("this host's clock is %.0f s %s the database's: polyfit judges heartbeats "
                    "on the database's clock, so no job is lost for it, but fix the clock "
                    "(NTP): Redis redelivers unacknowledged messages by the workers' clocks",
                    abs(skew), "ahead of" if skew > 0 else "behind")


def _take_lost(app, engine, stale_after_s: float) -> list:
    """Queued jobs that have waited longer than ``stale_after_s`` while their queue is empty
    (a plugin variant's jobs: the queue of that variant's own, where they wait for a worker
    that has the plugin, however long)."""
    groups = lost_queued_groups(engine, stale_after_s)
    if not groups:
        return []
    private = runtime.current().private  # a `sweep run`'s worker: its jobs wait there too
    extra = [private[1]] if private else []
    sizes = queue_sizes(app, sorted({queue_for(*g) for g in groups} | set(extra)))
    empty = [g for g in groups
             if sizes[queue_for(*g)] == 0 and not any(sizes[q] for q in extra)]
    return take_lost_queued(engine, stale_after_s, (), groups=empty)


def note_presence(worker) -> None:
    """Note this worker in the fleet's list (``store.workers``): its training processes are
    what a submit cuts a sweep for."""
    rt = runtime.current()
    processes = worker.concurrency if rt.device == "cpu" else 1
    try:
        note_worker(engine_for(rt.settings), worker.hostname, rt.device, processes)
    except StoreError as e:
        log.warning("could not note this worker in the fleet's list: %s", e)


class Reaper(bootsteps.StartStopStep):
    """A worker's step that requeues jobs whose worker died and messages that were lost, and
    keeps the worker on the fleet's list while it is up."""

    requires: ClassVar[set] = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.tref = self.presence = None

    def start(self, worker):
        settings = runtime.current().settings
        self.tref = worker.timer.call_repeatedly(settings.reap_every_s, reap_once,
                                                 (worker.app,), priority=10)
        if runtime.current().private is None:  # a `sweep run`'s own workers serve it alone
            note_presence(worker)
            self.presence = worker.timer.call_repeatedly(settings.heartbeat_s, note_presence,
                                                         (worker,), priority=10)

    def stop(self, worker):
        for tref in (self.tref, self.presence):
            if tref is not None:
                tref.cancel()
        self.tref = self.presence = None
        if runtime.current().private is None:
            try:
                forget_worker(engine_for(runtime.current().settings), worker.hostname)
            except StoreError as e:
                log.warning("could not take this worker off the fleet's list: %s", e)
