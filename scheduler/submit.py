"""Submission: record the sweep in the store, then enqueue its jobs in batches.

The sweep and all its jobs are recorded (as ``queued``) in one transaction before anything is
enqueued, so a submit that dies half-way leaves nothing that ``polyfit sweep resume`` cannot
finish, and a job enqueued twice is still claimed only once by the store. Everything streams:
the plan makes jobs one at a time, rows go to the store and batches to the broker in chunks, so
the scheduler's memory does not grow with the sweep (a million jobs in a few hundred MB)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from polyfit_models import JobSpec, batch_key
from scheduler.plan import Plan
from scheduler.specfile import SweepSpecError
from store.db import create_schema, shared_engine
from store.recording import mark_used, save_sweep
from store.records import ENDED
from store.requeue import clear_results, requeue_chunks
from store.rows import JobRow
from store.sweeps import find_sweep
from store.workers import live_processes
from worker.app import make_app
from worker.batches import (
    BatchStream,
    BrokerError,
    batches_for_views,
    delete_queue,
    publish_stream,
)
from worker.settings import Settings

__all__ = ["BrokerError", "Submitted", "carry_on", "drop_queue", "resume", "submit"]


@dataclass(frozen=True)
class Submitted:
    """What a submit did: jobs recorded, enqueued and the batches they went in."""

    sweep_id: str
    new_jobs: int
    enqueued_jobs: int
    batches: int
    reused_jobs: int = 0
    jobs: int = 0  # in the plan


#: How many batches a sweep is cut into at least when no worker has noted itself yet (a submit
#: before the fleet is up): enough for a few workers to share it.
DEFAULT_SPREAD = 8


def fleet_spread(settings: Settings) -> int:
    """How many batches a sweep is cut into at least: one per training process of the workers
    that are up (``store.workers``), or ``DEFAULT_SPREAD`` when none has noted itself."""
    live = live_processes(shared_engine(settings.db_url), within_s=3 * settings.heartbeat_s)
    return live or DEFAULT_SPREAD


def submit(settings: Settings, plan: Plan, *, batch_size: int | None = None,
           spread: int | None = None, fresh: bool = False,
           private: tuple[str, str] | None = None) -> Submitted:
    """Record the plan and enqueue every job of it that has not ended yet.

    A job whose settings ended well in another sweep of the database takes that result and is
    not trained (unless ``fresh``). A job that ended in an earlier run of the same sweep
    (succeeded, diverged, failed or cancelled) is left as it is: submitting again never undoes
    a cancel nor retrains a result (``resume`` retries failed and cancelled jobs); ``fresh``
    trains every job of the plan again. ``private``: a ``sweep run``'s (sweep, own queue), see
    ``worker.queues.route``. A search (``plan.search``) records and enqueues its first round
    (``scheduler.search``). ``spread``: batches at least (default: the fleet's processes)."""
    spread = spread or fleet_spread(settings)
    if plan.search is not None:
        from scheduler.search import submit_search

        if fresh:
            raise SweepSpecError(
                "--fresh: a search trains every job it asks (none is reused from other "
                "sweeps) and asks each trial once; give another --name to search again")

        return submit_search(settings, plan, batch_size=batch_size, spread=spread,
                             private=private)
    engine = shared_engine(settings.db_url)
    create_schema(engine)
    check_growth(engine, plan)
    recorded = save_sweep(engine, plan.sweep_id, plan.name, plan.spec,
                                     (job.row() for job in plan.iter_jobs()),
                                     # A halving's rungs rank every job on its own
                                     # training: no result is taken from elsewhere.
                                     reuse=not fresh and "halving" not in plan.spec)
    if recorded.new < recorded.given or fresh:
        # A re-run: some jobs are recorded already; the store says which need to run.
        if fresh:
            ids = (job.id for job in plan.iter_jobs())
            clear_results(engine, plan.sweep_id,
                                     (job.id for job in plan.iter_jobs()))
            chunks = requeue_chunks(
                engine, plan.sweep_id, settings.stale_after_s,
                retry=tuple(s.value for s in ENDED), job_ids=ids)
        else:
            chunks = requeue_chunks(engine, plan.sweep_id,
                                               settings.stale_after_s)
        sent, batches = _publish_rows(settings, plan.sweep_id, chunks, batch_size, spread,
                                      private)
    else:
        # A new sweep: every job was just recorded as queued (or took a result), so the
        # plan is the work list.
        stream = BatchStream(plan.sweep_id, settings, batch_size=batch_size, spread=spread,
                             group_sizes=_group_sizes(plan))
        counted = _Counted()
        sent = publish_stream(make_app(settings), counted.over(_batches(
            stream, ((job.id, job.spec, job.device) for job in plan.iter_jobs()
                     if job.id not in recorded.reused))), private=private)
        batches = counted.n
    return Submitted(plan.sweep_id, recorded.new, sent, batches, len(recorded.reused),
                     recorded.given)


def _shared(spec: dict) -> dict:
    """What every job of a sweep shares (the figure draws each fit against one target on one
    interval), from a sweep's normalized spec (x keys not given have JobSpec's defaults)."""
    x = spec.get("x") or {}
    return {"target": spec.get("target", "sin"), "x start": x.get("start", JobSpec.x_start),
            "x stop": x.get("stop", JobSpec.x_stop), "x points": x.get("points", JobSpec.x_points),
            "stop_at_gap": spec.get("stop_at_gap")}


def check_growth(engine, plan: Plan) -> None:
    """Refuse (``SweepSpecError``, exit 2) to grow a recorded sweep with a spec of another
    target, x grid or stop_at_gap: its jobs would mix two problems under one name (and one
    figure), and the sweep's spec would describe only the latest. A search grows only by its
    ``trials`` (and ``round``): another sampler, seed or space is another search, and a grid
    never becomes a search nor a search a grid."""
    recorded = find_sweep(engine, plan.sweep_id)
    if recorded is None or recorded.id != plan.sweep_id:
        return
    was, now = _shared(recorded.spec or {}), _shared(plan.spec)
    shown = {None: "none"}.get
    differ = [f"{key} {shown(was[key], repr(was[key]))} (this spec: "
              f"{shown(now[key], repr(now[key]))})" for key in was if was[key] != now[key]]
    if differ:
        raise SweepSpecError(
            f"sweep {plan.name!r} is recorded with {', '.join(differ)}: a sweep has one "
            "target, x grid and stop_at_gap and grows only with more of its grid; give "
            "another --name for a new sweep")
    searched, searching = (recorded.spec or {}).get("search"), plan.spec.get("search")
    if (searched is None) != (searching is None):
        raise SweepSpecError(
            f"sweep {plan.name!r} is recorded as a {'grid' if searched is None else 'search'}"
            f": it cannot go on as a {'search' if searched is None else 'grid'}; give another "
            "--name for a new sweep")
    if searched is not None:
        fixed = [key for key in sorted((set(searched) | set(searching)) - {"trials", "round"})
                 if searched.get(key) != searching.get(key)]
        fixed += [key for key in ("grid", "x") if (recorded.spec or {}).get(key) !=
                  plan.spec.get(key)]
        if fixed:
            raise SweepSpecError(
                f"sweep {plan.name!r} is a search recorded with another {', '.join(fixed)}: a "
                "search grows only by its trials; give another --name for a new search")


def _group_sizes(plan: Plan) -> dict[tuple, int]:
    """About how many jobs each group of compatible jobs has (from the templates, before
    duplicates are dropped): to cut each into as many batches as there are workers."""
    sizes: dict[tuple, int] = {}
    for t in plan.templates:
        key = (t.device, batch_key(t.base))
        sizes[key] = sizes.get(key, 0) + len(t)
    return sizes


def _batches(stream: BatchStream, jobs: Iterable[tuple]) -> Iterator:
    for job_id, spec, device in jobs:
        batch = stream.add(job_id, spec, device)
        if batch is not None:
            yield batch
    yield from stream.rest()


class _Counted:
    def __init__(self) -> None:
        self.n = 0

    def over(self, items: Iterable) -> Iterator:
        for item in items:
            self.n += 1
            yield item


def _publish_rows(settings: Settings, sweep_id: str, chunks: Iterable[list[JobRow]],
                  batch_size: int | None, spread: int,
                  private: tuple[str, str] | None = None) -> tuple[int, int]:
    app = make_app(settings)
    sent = batches = 0
    for rows in chunks:
        planned = batches_for_views(rows, settings, batch_size=batch_size, spread=spread)
        sent += publish_stream(app, planned, private=private)
        batches += len(planned)
    return sent, batches


def carry_on(settings: Settings, sweep_id: str, *, batch_size: int | None = None,
             spread: int | None = None, private: tuple[str, str] | None = None) -> Submitted:
    """Enqueue what a sweep still needs: its queued jobs, and those of a worker that stopped
    beating (not its failed or cancelled ones: ``resume`` retries those)."""
    return _requeue_and_publish(settings, sweep_id, (), batch_size, spread, private)


def resume(settings: Settings, sweep_id: str, *, batch_size: int | None = None,
           spread: int | None = None) -> Submitted:
    """Re-enqueue the jobs of a sweep that have not ended well: queued, stuck on a dead
    worker, failed, and cancelled (resuming is how a cancel is undone)."""
    return _requeue_and_publish(settings, sweep_id, ("failed", "cancelled"), batch_size,
                                spread)


def _requeue_and_publish(settings: Settings, sweep_id: str, retry: tuple, batch_size, spread,
                         private: tuple[str, str] | None = None) -> Submitted:
    engine = shared_engine(settings.db_url)
    spread = spread or fleet_spread(settings)
    mark_used(engine, sweep_id)  # the sweep a later command means by default
    chunks = requeue_chunks(engine, sweep_id, settings.stale_after_s,
                                       retry=retry)
    sent, batches = _publish_rows(settings, sweep_id, chunks, batch_size, spread, private)
    from scheduler.search import continue_search

    # A halving rung, or a search's round, that ended with nobody left to rank it or ask the
    # next one: do it now.
    sent += continue_halving(settings, sweep_id, private=private)
    sent += continue_search(settings, sweep_id, private=private, reopen=bool(retry))
    return Submitted(sweep_id, 0, sent, batches)


def continue_halving(settings: Settings, sweep_id: str, *,
                     private: tuple[str, str] | None = None) -> int:
    """Rank a halving sweep's complete rung and enqueue the next (``worker.halving``)."""
    from worker.halving import advance

    engine = shared_engine(settings.db_url)
    return advance(engine, settings, make_app(settings), sweep_id, private=private)


def drop_queue(settings: Settings, name: str) -> None:
    """Remove a ``sweep run``'s own queue once its workers are stopped (what is left in it is
    ``queued`` in the store, which a later ``sweep run`` or ``sweep resume`` enqueues again);
    a broker that cannot be reached is left as it is."""
    try:
        delete_queue(make_app(settings), name)
    except BrokerError:
        pass
