"""The task message: which stored jobs to train, as JSON primitives only. A message names work
and nothing more — a sweep id, the device class of its queue and job ids; the settings of each
job come from the store's rows when a worker claims them, so a redelivered, duplicated or forged
message cannot change what is trained or what a row holds. ``from_dict`` is the gate every
message passes: anything malformed raises ``BadMessage`` and is rejected without running."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from worker.queues import is_device

# The task's registered name: part of the message contract between scheduler and workers.
TASK_NAME = "polyfit.run_batch"
SCHEMA = 2
MAX_JOBS_PER_BATCH = 65_536
# Sweep and job ids are hex digests (see scheduler.sweep); a short word for tests and tools.
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class BadMessage(ValueError):
    """Raised when a task message does not name a valid batch of stored jobs."""


@dataclass(frozen=True)
class Batch:
    sweep_id: str
    device: str
    job_ids: tuple[str, ...]
    # What the jobs are, for people (Flower, ``celery inspect``): not part of the message, which
    # names the jobs only; the publisher knows their settings and writes it as the argsrepr.
    about: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "sweep_id": self.sweep_id, "device": self.device,
                "jobs": list(self.job_ids)}

    def describe(self) -> str:
        """A short human summary (Celery's ``argsrepr``: what Flower and ``celery inspect``
        show instead of the list of ids)."""
        n = len(self.job_ids)
        what = f" {self.about}" if self.about else ""
        return f"sweep {self.sweep_id} on {self.device}: {n} job{'s' if n != 1 else ''}{what}"

    @classmethod
    def from_dict(cls, data: object) -> Batch:
        """The batch a message names; raises ``BadMessage`` (one line) on anything else."""
        if not isinstance(data, dict):
            raise BadMessage(f"a batch must be a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise BadMessage(f"unknown batch schema {_show(data.get('schema'))}")
        extra = set(data) - {"schema", "sweep_id", "device", "jobs"}
        if extra:
            raise BadMessage(f"unknown batch keys {sorted(map(_show, extra))}")
        sweep_id, device, jobs = data.get("sweep_id"), data.get("device"), data.get("jobs")
        if not isinstance(sweep_id, str) or not _ID.match(sweep_id):
            raise BadMessage("sweep_id must be a short id string")
        if not isinstance(device, str) or not is_device(device):
            raise BadMessage(f"unknown device {_show(device)}")
        if not isinstance(jobs, list) or not 0 < len(jobs) <= MAX_JOBS_PER_BATCH:
            raise BadMessage(f"jobs must be a list of 1..{MAX_JOBS_PER_BATCH} job ids")
        if not all(isinstance(j, str) and _ID.match(j) for j in jobs):
            raise BadMessage("each job must be a short id string")
        return cls(sweep_id=sweep_id, device=device, job_ids=tuple(dict.fromkeys(jobs)))


def _show(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."
