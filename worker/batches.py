"""Batches and publishing: group compatible jobs into batches sized from a memory budget, and
publish one task per batch on the queue of its device. Used by the scheduler (submit, resume)
and by the worker's reaper (re-enqueueing the jobs of a dead worker)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from celery import Celery
from kombu.exceptions import ChannelError, KombuError, OperationalError

from polyfit_models import JobSpec, batch_key, bytes_per_job
from store.db import redact_url
from store.jobs import JobView
from worker.payload import TASK_NAME, Batch
from worker.queues import queue_for

# Memory one batch may use on its device; the batch size follows from it unless overridden.
BUDGET_BYTES = {"cpu": 256 * 2**20, "cuda": 4 * 2**30}
MAX_BATCH = 4096


class BrokerError(Exception):
    """Raised when the broker cannot be reached or refuses a message."""


def auto_batch_size(spec: JobSpec, device: str) -> int:
    budget = BUDGET_BYTES["cpu" if device == "cpu" else "cuda"]
    return max(1, min(MAX_BATCH, budget // max(1, bytes_per_job(spec))))


def plan_batches(
    sweep_id: str, jobs: Sequence[tuple[str, JobSpec, str]], *, batch_size: int | None = None,
    spread: int = 1,
) -> list[Batch]:
    """Group compatible jobs, given as (id, spec, device), into batches.

    ``spread``: how many workers should find work; a group is cut into at least that many
    batches when it is big enough, so that one big batch does not leave workers idle."""
    groups: dict[tuple, list[tuple[str, JobSpec]]] = defaultdict(list)
    for job_id, spec, device in jobs:
        groups[(device, batch_key(spec))].append((job_id, spec))
    batches = []
    for (device, _key), members in groups.items():
        size = batch_size or min(auto_batch_size(members[0][1], device),
                                 max(1, math.ceil(len(members) / max(1, spread))))
        for start in range(0, len(members), size):
            batches.append(Batch(sweep_id, device, tuple(members[start : start + size])))
    return batches


def spec_of(v: JobView) -> JobSpec:
    return JobSpec(variant=v.variant, lr=v.lr, degree=v.degree, seed=v.seed, epochs=v.epochs,
                   optimizer=v.optimizer, target=v.target, x_start=v.x_start, x_stop=v.x_stop,
                   x_points=v.x_points, dtype=v.dtype)


def batches_for_views(views: Sequence[JobView], *, batch_size: int | None = None,
                      spread: int = 1) -> list[Batch]:
    """Batches for stored jobs, which may belong to several sweeps."""
    by_sweep: dict[str, list[tuple[str, JobSpec, str]]] = defaultdict(list)
    for v in views:
        by_sweep[v.sweep_id].append((v.id, spec_of(v), v.device))
    return [b for sweep_id, jobs in by_sweep.items()
            for b in plan_batches(sweep_id, jobs, batch_size=batch_size, spread=spread)]


def publish(app: Celery, batches: Sequence[Batch]) -> None:
    """Publish one task per batch; raises BrokerError if the broker is unreachable."""
    if not batches:
        return
    where = redact_url(app.conf.broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.3)
            with app.producer_pool.acquire(block=True) as producer:
                for batch in batches:
                    app.send_task(TASK_NAME, args=[batch.to_dict()],
                                  queue=queue_for(batch.device), producer=producer)
    except (OperationalError, KombuError, OSError) as e:
        raise BrokerError(f"cannot reach the broker at {where}: {e}") from e


def queue_sizes(app: Celery, names: Sequence[str]) -> dict[str, int]:
    """How many messages wait in each queue (not counting those a worker holds);
    raises BrokerError if the broker is unreachable."""
    where = redact_url(app.conf.broker_url)
    sizes = {}
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.default_channel
            for name in names:
                try:
                    sizes[name] = channel.queue_declare(queue=name, passive=True).message_count
                except ChannelError:  # never declared, or (Redis) empty and so deleted
                    sizes[name] = 0
    except (OperationalError, KombuError, OSError) as e:
        raise BrokerError(f"cannot reach the broker at {where}: {e}") from e
    return sizes
