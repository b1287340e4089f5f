"""Batches and publishing: group compatible jobs into batches sized from a memory budget, and
publish one task per batch on the queue of its device. Used by the scheduler (submit, resume)
and by the worker's reaper (re-enqueueing the jobs of a dead worker)."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from celery import Celery
from kombu.exceptions import ChannelError, KombuError, OperationalError

from polyfit_models import VARIANTS, JobSpec, PolyfitError, SpecError, batch_key, jobs_within
from store.redact import redact_url
from store.rows import JobRow
from worker.payload import TASK_NAME, Batch
from worker.queues import route
from worker.settings import Settings

# Jobs in one message, at most: a CPU worker trains them in budget-sized slices anyway; a GPU
# batch can hold tens of thousands of fits where the card's memory allows.
MAX_BATCH = {"cpu": 4096, "cuda": 65536}


class BrokerError(PolyfitError):
    """Raised when the broker cannot be reached or refuses a message."""


def auto_batch_size(spec: JobSpec, device: str, settings: Settings,
                    budget_bytes: int | None = None) -> int:
    """Jobs of ``spec``'s group that one batch on ``device`` holds within its memory budget
    (the settings' unless ``budget_bytes`` is given); at least 1."""
    budget = settings.budget_bytes(device) if budget_bytes is None else budget_bytes
    cap = MAX_BATCH["cpu" if device == "cpu" else "cuda"]
    return max(1, min(cap, jobs_within(spec, budget)))


def message_size(spec: JobSpec, device: str, settings: Settings) -> int:
    """Jobs of ``spec``'s group one message may hold: its memory budget's room, or for a
    variant with a fused path up to ``MAX_BATCH``. A worker trains a message in slices of its
    budget anyway (``worker.execute.train_within_budget``), and a fused epoch keeps no (jobs,
    points) arrays; what a bigger message buys is one compile weighed against more work: an
    8,192-fit sweep on a machine that never compiled its configuration was cut at the budget
    (3,300 lesson fits) under the size where a cold compile pays, and trained unfused, twice
    as long."""
    cap = MAX_BATCH["cpu" if device == "cpu" else "cuda"]
    return cap if VARIANTS[spec.variant].fusable else auto_batch_size(spec, device, settings)


def plan_batches(
    sweep_id: str, jobs: Sequence[tuple], settings: Settings, *,
    batch_size: int | None = None, spread: int = 1,
) -> list[Batch]:
    """Group compatible jobs, given as (id, spec, device) or (id, spec, device, variant), into
    batches (a spec of None: a row that is not a valid job, batched on its own, with the others
    of its variant: the variant, not the spec, picks the queue, so a plugin's job whose plugin
    is not installed here still goes to the workers that have it).

    ``spread``: how many workers should find work; a group is cut into at least that many
    batches when it is big enough, so that one big batch does not leave workers idle."""
    groups: dict[tuple, list[tuple[str, JobSpec | None]]] = defaultdict(list)
    for job_id, spec, device, *named in jobs:
        variant = named[0] if named else spec.variant if spec is not None else ""
        groups[(device, variant, None if spec is None else batch_key(spec))].append(
            (job_id, spec))
    batches = []
    for (device, variant, key), members in groups.items():
        fits = (len(members) if key is None
                else message_size(members[0][1], device, settings))
        size = batch_size or min(fits, max(1, math.ceil(len(members) / max(1, spread))))
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            batches.append(Batch(sweep_id, device, tuple(job_id for job_id, _ in chunk),
                                 about=_about([spec for _, spec in chunk]), variant=variant))
    return batches


class BatchStream:
    """``plan_batches`` for jobs that come one at a time (a million-job sweep is never held
    whole): a buffer per group of compatible jobs, a batch out as soon as a buffer is full.
    ``group_sizes`` (device, batch key) -> about how many jobs the group will have, to cut it
    into ``spread`` batches at least, as ``plan_batches`` does."""

    def __init__(self, sweep_id: str, settings: Settings, *, batch_size: int | None = None,
                 spread: int = 1, group_sizes: dict[tuple, int] | None = None) -> None:
        self.sweep_id, self.settings = sweep_id, settings
        self.batch_size, self.spread = batch_size, max(1, spread)
        self.group_sizes = group_sizes or {}
        self._buffers: dict[tuple, list[tuple[str, JobSpec | None]]] = {}
        self._sizes: dict[tuple, int] = {}

    def add(self, job_id: str, spec: JobSpec | None, device: str) -> Batch | None:
        """Take one job; returns a batch when this job filled one."""
        key = (device, None if spec is None else batch_key(spec))
        buffer = self._buffers.setdefault(key, [])
        buffer.append((job_id, spec))
        if len(buffer) >= self._size(key, spec, device):
            del self._buffers[key]
            return self._batch(device, buffer)
        return None

    def rest(self) -> list[Batch]:
        """The batches of what is left in the buffers."""
        out = [self._batch(key[0], buffer) for key, buffer in self._buffers.items()]
        self._buffers.clear()
        return out

    def _size(self, key: tuple, spec: JobSpec | None, device: str) -> int:
        if key not in self._sizes:
            if self.batch_size:
                self._sizes[key] = self.batch_size
            elif spec is None:
                self._sizes[key] = MAX_BATCH["cpu"]
            else:
                total = self.group_sizes.get(key, MAX_BATCH["cuda"])
                self._sizes[key] = min(message_size(spec, device, self.settings),
                                       max(1, math.ceil(total / self.spread)))
        return self._sizes[key]

    def _batch(self, device: str, members: list[tuple[str, JobSpec | None]]) -> Batch:
        variant = next((spec.variant for _, spec in members if spec is not None), "")
        return Batch(self.sweep_id, device, tuple(job_id for job_id, _ in members),
                     about=_about([spec for _, spec in members]), variant=variant)


def publish_stream(app: Celery, batches: Iterable[Batch], every: int = 200, *,
                   private: tuple[str, str] | None = None) -> int:
    """Publish batches as they come, ``every`` at a time; returns how many jobs went out."""
    sent = 0
    pending: list[Batch] = []
    for batch in batches:
        pending.append(batch)
        if len(pending) >= every:
            publish(app, pending, private=private)
            sent += sum(len(b.job_ids) for b in pending)
            pending = []
    publish(app, pending, private=private)
    return sent + sum(len(b.job_ids) for b in pending)


def _about(specs: Sequence[JobSpec | None]) -> str:
    """'autograd degree 3, lr 1e-06..3e-06, seeds 0..511' for a batch's argsrepr."""
    specs = [s for s in specs if s is not None]
    if not specs:
        return ""

    def span(values, fmt) -> str:
        lo, hi = min(values), max(values)
        return fmt(lo) if lo == hi else f"{fmt(lo)}..{fmt(hi)}"

    first = specs[0]
    return (f"({first.variant} degree {first.degree}, {first.epochs} epochs, "
            f"lr {span([s.lr for s in specs], lambda v: f'{v:g}')}, "
            f"seed {span([s.seed for s in specs], str)})")


def spec_of(job: JobRow) -> JobSpec:
    """The job spec a stored row describes: the row holds every field of ``JobSpec`` (see
    ``scheduler.plan.Job.row``); raises ``SpecError`` if they are not a valid job."""
    return JobSpec.from_dict({f.name: getattr(job, f.name) for f in dataclasses.fields(JobSpec)})


def batches_for_views(views: Sequence[JobRow], settings: Settings, *,
                      batch_size: int | None = None, spread: int = 1) -> list[Batch]:
    """Batches for stored jobs, which may belong to several sweeps (a row whose settings are
    not a valid job still gets a message: the worker that claims it records why it fails)."""
    by_sweep: dict[str, list[tuple[str, JobSpec | None, str, str]]] = defaultdict(list)
    for v in views:
        try:
            spec = spec_of(v)
        except SpecError:
            spec = None
        by_sweep[v.sweep_id].append((v.id, spec, v.device, v.variant))
    return [b for sweep_id, jobs in by_sweep.items()
            for b in plan_batches(sweep_id, jobs, settings, batch_size=batch_size,
                                  spread=spread)]


def publish(app: Celery, batches: Sequence[Batch], *,
            private: tuple[str, str] | None = None) -> None:
    """Publish one task per batch on its device's queue (``private``: a ``sweep run``'s sweep
    and queue, see ``worker.queues.route``); raises BrokerError if the broker is unreachable."""
    if not batches:
        return
    where = redact_url(app.conf.broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.3)
            with app.producer_pool.acquire(block=True) as producer:
                for batch in batches:
                    app.send_task(TASK_NAME, args=[batch.to_dict()],
                                  argsrepr=batch.describe(), kwargsrepr="{}",
                                  queue=route(batch.device, batch.sweep_id, private,
                                                batch.variant),
                                  producer=producer)
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


def delete_queue(app: Celery, name: str) -> None:
    """Empty and remove a queue (a finished ``sweep run``'s own); raises BrokerError."""
    where = redact_url(app.conf.broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.default_channel
            channel.queue_purge(name)
            # Celery declared it bound to an exchange of its name; a channel deletes only the
            # bindings it knows of (Redis keeps them in a set per exchange).
            channel.exchange_declare(name, "direct")
            channel.queue_bind(name, exchange=name, routing_key=name)
            channel.queue_delete(name)
    except ChannelError:  # never declared, or (Redis) empty and so deleted
        pass
    except (OperationalError, KombuError, OSError) as e:
        raise BrokerError(f"cannot reach the broker at {where}: {e}") from e
