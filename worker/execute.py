"""Running one batch: claim its jobs in the store, train them with ``fit_many`` while a heartbeat
thread tells the store this worker is alive, and store each job's outcome exactly once.

A batch that raises is split in halves and retried, down to single jobs, so one job that fails
deterministically ends ``failed`` with its error while its batch-mates still get results (and a
CUDA out-of-memory error halves the batch instead of failing it)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from polyfit_models import JobSpec, batch_key, fit_many
from store import StoreError
from store import jobs as store_jobs
from worker.batches import auto_batch_size
from worker.payload import Batch
from worker.runtime import Runtime, engine_for

log = logging.getLogger("polyfit.worker")

# Quick in-process retries of a store call (a blip); a longer outage fails the task, which Celery
# retries with backoff (POLYFIT_MAX_RETRIES), see worker.tasks.
STORE_ATTEMPTS = 3

Trainer = Callable[[Sequence[JobSpec], str], list]


class _Heartbeat:
    """Refreshes the claimed jobs' heartbeat every few seconds until stopped."""

    def __init__(self, beat: Callable[[], None], every_s: float) -> None:
        self._beat, self._every = beat, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="polyfit-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._beat()
            except StoreError as e:  # a missed beat is not fatal; the next one may get through
                log.warning("heartbeat failed: %s", e)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _with_retries(fn: Callable[[], object], what: str) -> object:
    """Retry a store call with exponential backoff: the database may be briefly unreachable."""
    delay = 0.2
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return fn()
        except StoreError as e:
            if attempt == STORE_ATTEMPTS:
                raise
            log.warning("%s failed (attempt %d/%d): %s", what, attempt, STORE_ATTEMPTS, e)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower()


def train_resilient(specs: Sequence[JobSpec], device: str, trainer: Trainer = fit_many) -> list:
    """Outcomes for ``specs`` in order: a result dict, or {"status": "failed", "error": ...}."""
    try:
        return [r.to_dict() for r in trainer(specs, device)]
    except Exception as e:  # noqa: BLE001 - any error in the numerics becomes a job outcome
        if _is_oom(e):
            _free_cuda()
        if len(specs) == 1:
            log.warning("job failed: %s", e)
            return [{"status": "failed", "error": f"{e.__class__.__name__}: {e}"[:2000]}]
        half = len(specs) // 2
        log.info("batch of %d raised %s; retrying in halves", len(specs), e.__class__.__name__)
        return (train_resilient(specs[:half], device, trainer)
                + train_resilient(specs[half:], device, trainer))


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_within_budget(specs: Sequence[JobSpec], device: str, trainer: Trainer = fit_many
                        ) -> list:
    """``train_resilient`` over slices of ``specs`` that each fit the device's memory budget:
    however many jobs a message holds, no more than the budget is trained at once."""
    outcomes: list = []
    start = 0
    while start < len(specs):
        key, room = batch_key(specs[start]), auto_batch_size(specs[start], device)
        end = start + 1
        while end < len(specs) and end - start < room and batch_key(specs[end]) == key:
            end += 1
        outcomes += train_resilient(specs[start:end], device, trainer)
        start = end
    return outcomes


def run_batch(batch: Batch, runtime: Runtime, worker: str, trainer: Trainer = fit_many) -> dict:
    """Claim, train and store one batch; returns a small summary for the task's return value."""
    settings = runtime.settings
    engine = engine_for(settings)
    ids = [job_id for job_id, _ in batch.jobs]
    owned = set(_with_retries(
        lambda: store_jobs.claim_jobs(engine, batch.sweep_id, ids, worker,
                                      settings.stale_after_s),
        "claim",
    ))
    todo = [(job_id, spec) for job_id, spec in batch.jobs if job_id in owned]
    if not todo:
        return {"sweep_id": batch.sweep_id, "ran": 0, "skipped": len(ids)}
    beat = lambda: store_jobs.beat(engine, batch.sweep_id, [j for j, _ in todo], worker)
    with _Heartbeat(beat, settings.heartbeat_s):
        try:
            outcomes = train_within_budget([spec for _, spec in todo], runtime.torch_device(),
                                           trainer)
        finally:
            if runtime.device == "cuda":
                _free_cuda()
        # Still beating while the results wait for the write lock: a slow save must not make
        # the jobs look abandoned and send them to another worker.
        written = _with_retries(
            lambda: store_jobs.save_results(
                engine, batch.sweep_id, list(zip([j for j, _ in todo], outcomes)), worker,
                runtime.ran_on(),
            ),
            "save results",
        )
    statuses: dict[str, int] = {}
    for outcome in outcomes:
        statuses[outcome["status"]] = statuses.get(outcome["status"], 0) + 1
    return {"sweep_id": batch.sweep_id, "ran": len(todo), "stored": written, **statuses}
