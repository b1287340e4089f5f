"""The task message: one batch of compatible jobs, as JSON primitives only. ``from_dict`` is the
gate every message passes: anything malformed (wrong schema, unknown variant, absurd sizes)
raises ``BadMessage`` and is rejected without running."""

from __future__ import annotations

from dataclasses import dataclass

from polyfit_models import JobSpec, SpecError
from worker.queues import is_device

# The task's registered name: part of the message contract between scheduler and workers.
TASK_NAME = "polyfit.run_batch"
SCHEMA = 1
MAX_JOBS_PER_BATCH = 65_536


class BadMessage(ValueError):
    """Raised when a task message does not describe a valid batch of jobs."""


@dataclass(frozen=True)
class Batch:
    sweep_id: str
    device: str
    jobs: tuple[tuple[str, JobSpec], ...]

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "sweep_id": self.sweep_id,
            "device": self.device,
            "jobs": [{"id": job_id, "spec": spec.to_dict()} for job_id, spec in self.jobs],
        }

    @classmethod
    def from_dict(cls, data: object, *, max_job_work: int | None = None) -> Batch:
        """The batch a message describes; ``max_job_work`` caps each job's epochs x points (a
        message put straight into the queue has not been through the scheduler's limits)."""
        if not isinstance(data, dict):
            raise BadMessage(f"a batch must be a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise BadMessage(f"unknown batch schema {data.get('schema')!r}")
        extra = set(data) - {"schema", "sweep_id", "device", "jobs"}
        if extra:
            raise BadMessage(f"unknown batch keys {sorted(extra)}")
        sweep_id, device, jobs = data.get("sweep_id"), data.get("device"), data.get("jobs")
        if not isinstance(sweep_id, str) or not 0 < len(sweep_id) <= 32:
            raise BadMessage("sweep_id must be a short string")
        if not isinstance(device, str) or not is_device(device):
            raise BadMessage(f"unknown device {device!r}")
        if not isinstance(jobs, list) or not 0 < len(jobs) <= MAX_JOBS_PER_BATCH:
            raise BadMessage(f"jobs must be a list of 1..{MAX_JOBS_PER_BATCH} jobs")
        parsed = []
        for job in jobs:
            if not isinstance(job, dict) or set(job) != {"id", "spec"}:
                raise BadMessage("each job must be an object with exactly 'id' and 'spec'")
            job_id = job["id"]
            if not isinstance(job_id, str) or not 0 < len(job_id) <= 32:
                raise BadMessage("a job id must be a short string")
            try:
                spec = JobSpec.from_dict(job["spec"])
            except SpecError as e:
                raise BadMessage(f"job {job_id}: {e}") from e
            work = spec.epochs * spec.x_points
            if max_job_work is not None and work > max_job_work:
                raise BadMessage(f"job {job_id}: epochs x points = {work:,} is over the limit "
                                 f"of {max_job_work:,} (POLYFIT_MAX_JOB_WORK)")
            parsed.append((job_id, spec))
        return cls(sweep_id=sweep_id, device=device, jobs=tuple(parsed))
