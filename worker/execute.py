"""Running one batch: claim its jobs in the store, train what the store's rows say with
``fit_many`` while a heartbeat thread tells the store this worker is alive, and store each job's
outcome exactly once.

A batch that raises is split in halves and retried, down to single jobs, so one job that fails
deterministically ends ``failed`` with its error while its batch-mates still get results (and a
CUDA out-of-memory error halves the batch instead of failing it).

The database may go away while a batch trains (an outage, a partition). The worker keeps
training, its heartbeat keeps trying, and a claim or a save that fails is retried with backoff
for up to ``Settings.store_patience_s``: finished results are kept and stored once the database
is back, instead of failing the task and training the whole batch again."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

from polyfit_models import (
    VARIANTS,
    JobSpec,
    JobState,
    SpecError,
    StateError,
    batch_bytes,
    batch_key,
    fit_many,
    remember_compiles,
)
from polyfit_models.registry import BROKEN, is_plugin
from polyfit_models.result import CURVE_EVERY
from store import StoreError, StoreUnavailable
from store import claims as store_claims
from store import halving as store_halving
from store import states as store_states
from store.claims import claim_jobs, record_progress, save_results
from store.records import JobStatus
from store.rows import JobRow
from store.sweeps import find_sweep
from worker import halving, stopping
from worker.batches import auto_batch_size, spec_of
from worker.payload import Batch
from worker.runtime import Runtime, engine_for
from worker.settings import Settings

log = logging.getLogger("polyfit.worker")

# Backoff between attempts of a store call: from the first to the longest wait.
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0

Trainer = Callable[[Sequence[JobSpec], str], list]

#: The outcome of a job whose batch stopped because the worker was asked to stop: never
#: stored as a status, the job goes back to ``queued`` with its state (``store.states``).
STOPPED = "stopped"
#: An outcome's key for a job that reached its halving rung's end (``worker.halving.Held``):
#: (epochs reached, its state's epoch, the state or None), stored with it ``paused``.
HELD = "held"


class _LiveCurves:
    """``fit_many``'s ``progress`` for one batch: every ``every_s`` it takes the training jobs'
    epochs done and the loss-curve points not yet written, for the heartbeat thread to store
    (``take``). The training thread pays one clock read per 100 epochs otherwise."""

    def __init__(self, jobs: Sequence[tuple[str, JobSpec]], every_s: float) -> None:
        self._ids = {id(spec): job_id for job_id, spec in jobs}
        self._every = every_s
        self._next = time.monotonic() + every_s
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[int, list]] = {}
        self._written: dict[str, int] = {}
        self._closed = False

    def __call__(self, specs: Sequence[JobSpec], epochs_done: int, snapshot) -> None:
        t = time.monotonic()
        if t < self._next or self._closed:
            return
        self._next = t + self._every
        curve, training = snapshot()
        with self._lock:
            for row, spec in enumerate(specs):
                job_id = self._ids.get(id(spec))
                if job_id is None or not training[row]:
                    continue
                start = self._written.get(job_id, 0)
                points = [[(k + 1) * CURVE_EVERY - 1, float(v)]
                          for k, v in enumerate(curve[row, start:], start) if math.isfinite(v)]
                self._written[job_id] = curve.shape[1]
                earlier = self._pending.get(job_id, (0, []))[1]
                self._pending[job_id] = (epochs_done, earlier + points)

    def take(self) -> dict[str, tuple[int, list]]:
        """What to write now (and forget): job id -> (epochs done, new points)."""
        with self._lock:
            out, self._pending = self._pending, {}
        return out

    def close(self) -> None:
        """Training is over: nothing more is taken (the results carry the whole curves)."""
        with self._lock:
            self._closed, self._pending = True, {}


class _Heartbeat:
    """Refreshes the claimed jobs' heartbeat every few seconds until stopped, and writes their
    progress (``flush``) every ``flush_s`` if given."""

    def __init__(self, beat: Callable[[], None], every_s: float,
                 flush: Callable[[], None] | None = None, flush_s: float = 0.0) -> None:
        self._beat, self._every = beat, every_s
        self._flush, self._flush_s = flush, flush_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="polyfit-heartbeat", daemon=True)

    def _run(self) -> None:
        tick = min(self._every, self._flush_s) if self._flush and self._flush_s else self._every
        next_beat = time.monotonic() + self._every
        while not self._stop.wait(tick):
            try:
                if self._flush is not None:
                    self._flush()
                if time.monotonic() >= next_beat - tick / 2:
                    next_beat = time.monotonic() + self._every
                    self._beat()
            except StoreError as e:  # a missed beat is not fatal; the next one may get through
                log.warning("heartbeat failed: %s", e)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # Not forever: a beat stuck on a dead connection (a partition, a server that vanished
        # without a FIN) must not hold the worker; the thread is a daemon and ends with its
        # call, which the connection's keepalives and timeouts bound.
        self._stop.set()
        self._thread.join(timeout=self._every)
        if self._thread.is_alive():
            log.warning("heartbeat still waiting on the database; leaving it behind")


def _with_retries(fn: Callable[[], object], what: str, patience_s: float) -> object:
    """Retry a store call that failed for a reason that may go away (``StoreUnavailable``: the
    database unreachable, a lock) with exponential backoff (0.2 s doubling to 5 s) until it
    succeeds or ``patience_s`` have passed; then the last error is raised (and Celery retries
    the task, see ``worker.tasks``). Any other store error is raised at once."""
    deadline = time.monotonic() + patience_s
    delay, attempt = RETRY_FIRST_S, 0
    while True:
        attempt += 1
        try:
            return fn()
        except StoreUnavailable as e:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning("%s failed (attempt %d, retrying for up to %.0f s more): %s",
                        what, attempt, left, e)
            time.sleep(min(delay, left))
            delay = min(delay * 2, RETRY_MAX_S)


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower()


def train_resilient(specs: Sequence[JobSpec], device: str, trainer: Trainer = fit_many) -> list:
    """Outcomes for ``specs`` in order: a result dict, or {"status": "failed", "error": ...}.

    The halves are retried after the ``except`` block has ended: while it runs, the exception
    (and through its traceback every tensor the failed attempt allocated) is alive, and on a
    GPU the retry would compete with that memory."""
    try:
        return [_outcome(r) for r in trainer(specs, device)]
    except Exception as e:  # noqa: BLE001 - any error in the numerics becomes a job outcome
        error = f"{e.__class__.__name__}: {e}"[:2000]
        oom = _is_oom(e)
    if oom:
        _free_cuda()
    if len(specs) == 1:
        log.warning("job failed: %s", error)
        return [_failed(error)]
    half = len(specs) // 2
    log.info("batch of %d raised %s; retrying in halves", len(specs), error.split(":")[0])
    return (train_resilient(specs[:half], device, trainer)
            + train_resilient(specs[half:], device, trainer))


def _outcome(result) -> dict:
    if isinstance(result, JobState):
        return {"status": STOPPED, "state": result}
    if isinstance(result, halving.Held):
        st = result.state
        return {**result.result.to_dict(), HELD: (
            result.reached, *((st.epoch, st.to_bytes()) if st and st.epoch else (0, None)))}
    return result.to_dict()


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_within_budget(specs: Sequence[JobSpec], device: str, trainer: Trainer = fit_many,
                        settings: Settings | None = None) -> list:
    """``train_resilient`` over slices of ``specs`` that each fit the device's memory budget
    (the settings', and on a GPU also half its free memory): however many jobs a message holds,
    no more than the budget is trained at once."""
    settings = settings or Settings()
    budget = _budget(device, settings)
    outcomes: list = []
    start = 0
    while start < len(specs):
        key = batch_key(specs[start])
        room = auto_batch_size(specs[start], device, settings, budget)
        end = start + 1
        while end < len(specs) and end - start < room and batch_key(specs[end]) == key:
            end += 1
        outcomes += train_resilient(specs[start:end], device, trainer)
        start = end
    return outcomes


def _budget(device: str, settings: Settings) -> int:
    budget = settings.budget_bytes(device)
    if device.startswith("cuda"):
        import torch

        budget = min(budget, torch.cuda.mem_get_info(device)[0] // 2)
    return budget


def _trainable(jobs: Sequence[JobRow], runtime: Runtime
               ) -> tuple[list[tuple[str, JobSpec]], list[tuple[str, dict]]]:
    """The claimed jobs this worker can train, as (id, spec), and the others as (id, failed
    outcome): a row whose settings are not a valid job, or over this worker's limits."""
    settings = runtime.settings
    todo, refused = [], []
    for job in jobs:
        try:
            spec = spec_of(job)
        except SpecError as e:
            refused.append((job.id, _failed(f"the stored settings are not a valid job: {e}")))
            continue
        work = spec.epochs * spec.x_points
        if work > settings.max_job_work:
            refused.append((job.id, _failed(
                f"epochs x points = {work:,} is over this worker's limit of "
                f"{settings.max_job_work:,} (POLYFIT_MAX_JOB_WORK)")))
            continue
        need, budget = batch_bytes(spec, 1), settings.budget_bytes(job.device)
        if need > budget:
            refused.append((job.id, _failed(
                f"needs about {need / 2**20:,.0f} MiB, over this worker's budget of "
                f"{budget / 2**20:,.0f} MiB per batch")))
            continue
        todo.append((job.id, spec))
    return todo, refused


def installed_variants() -> tuple[str, ...]:
    """The variants whose jobs this process may claim: the registry's, and the plugins
    installed here that could not be loaded (to fail their jobs with the reason). A job of a
    plugin that is not installed here is left queued for a worker that has it."""
    return (*VARIANTS, *BROKEN)


def with_plugin(versions: str, variant: str) -> str:
    """``versions`` (the JSON a result row keeps) with the package and version of the plugin
    that provides ``variant``; the same for a built-in (polyfit's version is in it already)."""
    found = VARIANTS.get(variant) or BROKEN.get(variant)
    if found is None or not is_plugin(variant):
        return versions
    return json.dumps({**json.loads(versions), "plugin": found.package,
                       "plugin_version": found.version}, separators=(",", ":"))


def _failed(error: str) -> dict:
    return {"status": JobStatus.FAILED.value, "error": error[:2000]}


def run_batch(batch: Batch, runtime: Runtime, worker: str, trainer: Trainer | None = None
              ) -> dict:
    """Claim, train and store one batch; returns a small summary for the task's return value.
    ``trainer`` defaults to ``fit_many`` fusing as the settings say (POLYFIT_FUSE)."""
    settings = runtime.settings
    engine = engine_for(settings)
    patience = settings.store_patience_s
    claimed = _with_retries(
        lambda: claim_jobs(engine, batch.sweep_id, batch.job_ids, worker,
                                      settings.stale_after_s, devices=runtime.serves(),
                                      max_attempts=settings.max_attempts,
                                      variants=installed_variants()),
        "claim", patience,
    )
    if not claimed:
        return {"sweep_id": batch.sweep_id, "ran": 0, "skipped": len(batch.job_ids)}
    todo, refused = _trainable(claimed, runtime)
    ids = [job.id for job in claimed]

    def beat() -> None:
        store_claims.beat(engine, batch.sweep_id, ids, worker)

    live = _LiveCurves(todo, settings.progress_s) if settings.progress_s > 0 else None
    if trainer is None:
        # Which configurations this machine compiled before, noted beside inductor's cache: a
        # cold compile is fused only where it pays (``runner.AUTO_FUSE_WORK_COLD``), weighed
        # against the whole batch (one configuration), not each slice the budget allows.
        remember_compiles(settings.compile_cache)
        states = _states(engine, batch.sweep_id, todo, patience)
        train = partial(fit_many, fuse=settings.fuse, progress=live, group_jobs=len(todo))
        # Each job continues from its stored state, if any, to its end (or its halving rung's).
        trainer = halving.rung_trainer(train, states,
                                       _rung_budgets(engine, batch.sweep_id, todo, patience),
                                       stopping.halt)

    def flush() -> None:
        record_progress(engine, batch.sweep_id, worker, live.take())

    with _Heartbeat(beat, settings.heartbeat_s, flush if live else None, settings.progress_s):
        try:
            outcomes = train_within_budget([spec for _, spec in todo], runtime.torch_device(),
                                           trainer, settings)
        finally:
            if live is not None:
                live.close()
            if runtime.device == "cuda":
                _free_cuda()
        results = list(zip([job_id for job_id, _ in todo], outcomes)) + refused
        stopped = [(job_id, o["state"]) for job_id, o in results if o["status"] == STOPPED]
        results = [(job_id, o) for job_id, o in results if o["status"] != STOPPED]
        held = {job_id: o.pop(HELD) for job_id, o in results if HELD in o}
        if stopped:
            back = _with_retries(lambda: store_states.suspend_jobs(
                engine, batch.sweep_id,
                [(job_id, st.epoch, st.to_bytes() if st.epoch else None)
                 for job_id, st in stopped], worker), "hand back stopped jobs", patience)
            log.warning("asked to stop: %d jobs handed back to the queue with their state",
                        back)
        # Still beating while the results wait for the write lock (or for the database to come
        # back): a slow save must not make the jobs look abandoned and send them elsewhere.
        variant_of = {job.id: job.variant for job in claimed}
        by_variant: dict[str, list[tuple[str, dict]]] = {}
        for job_id, outcome in results:
            by_variant.setdefault(variant_of[job_id], []).append((job_id, outcome))
        written = 0
        for variant, outcomes in by_variant.items():
            written += _with_retries(
                lambda: save_results(engine, batch.sweep_id, outcomes, worker,
                                                runtime.ran_on(),
                                                with_plugin(runtime.versions(), variant),
                                                held),
                "save results", patience,
            )
    statuses: dict[str, int] = {STOPPED: len(stopped)} if stopped else {}
    for job_id, outcome in results:
        status = JobStatus.PAUSED.value if job_id in held else outcome["status"]
        statuses[status] = statuses.get(status, 0) + 1
    return {"sweep_id": batch.sweep_id, "ran": len(todo), "stored": written, **statuses}


def _states(engine, sweep_id: str, todo: Sequence[tuple[str, JobSpec]],
            patience: float) -> dict[int, JobState]:
    """The stored states of the jobs to train (keyed by their spec's ``id()``, as
    ``_LiveCurves`` keys them): where a stopped run of them left off. A state that cannot be
    read is dropped (that job starts from epoch 0) with a warning."""
    blobs = _with_retries(lambda: store_states.load_states(
        engine, sweep_id, [job_id for job_id, _ in todo]), "load states", patience)
    states = {}
    for job_id, spec in todo:
        if job_id in blobs:
            try:
                states[id(spec)] = JobState.from_bytes(blobs[job_id])
            except StateError as e:
                log.warning("job %s starts afresh: %s", job_id, e)
    return states


def _rung_budgets(engine, sweep_id: str, todo: Sequence[tuple[str, JobSpec]],
                  patience: float) -> dict[int, int]:
    """For a sweep with successive halving, the epochs each job to train goes to in its
    rung (keyed by its spec's ``id()``); none for any other sweep."""
    sweep = _with_retries(lambda: find_sweep(engine, sweep_id), "read the sweep",
                          patience)
    plan = store_halving.Halving.of(sweep.spec if sweep else None)
    if plan is None or not todo:
        return {}
    rungs = _with_retries(lambda: store_halving.rungs_of(
        engine, sweep_id, [job_id for job_id, _ in todo]), "read rungs", patience)
    return {id(spec): plan.rung_epochs(rungs.get(job_id, 0), spec.epochs)
            for job_id, spec in todo}
