"""The task message: which stored jobs to train, as JSON primitives only. A message names work
and nothing more — a sweep id, the device class of its queue and job ids; the settings of each
job come from the store's rows when a worker claims them, so a redelivered, duplicated or forged
message cannot change what is trained or what a row holds. ``from_dict`` is the gate every
message passes: anything malformed raises ``BadMessage`` and is rejected without running.

``admit`` is the gate around it, for the whole Celery message: the envelope a worker hands to
Celery is rebuilt from the batch and the message's id alone (see its docstring)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from polyfit_models.errors import PolyfitError
from worker.queues import is_device

# The task's registered name: part of the message contract between scheduler and workers.
TASK_NAME = "polyfit.run_batch"
SCHEMA = 2
MAX_JOBS_PER_BATCH = 65_536
# Sweep and job ids are hex digests (see scheduler.plan); a short word for tests and tools.
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
# A Celery task id (a uuid from Celery; any short word from other publishers).
_TASK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# The longest backoff of the task's own retries (its ``retry_backoff_max``), and the latest
# ``eta`` a message may carry: that plus a margin for transit and clocks. A retry is republished
# with an ``eta`` at most this far ahead; any later one is ignored (the batch runs now), since a
# worker holds a message with an ``eta`` unacknowledged in memory until then, and Redis hands
# such a message to a consumer again after each visibility timeout: far-future ones piled up.
RETRY_DELAY_MAX_S = 60
ETA_MAX_S = RETRY_DELAY_MAX_S + 30
_MAX_RETRIES_SEEN = 1000
# What Celery finds in the third part of a message body: no callbacks, no chain, no chord.
_NO_WORKFLOW = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class BadMessage(PolyfitError, ValueError):
    """Raised when a task message does not name a valid batch of stored jobs."""


@dataclass(frozen=True)
class Batch:
    """A queue message: the ids of jobs of one sweep to train together on one device."""

    sweep_id: str
    device: str
    job_ids: tuple[str, ...]
    # What the jobs are, for people (Flower, ``celery inspect``): not part of the message, which
    # names the jobs only; the publisher knows their settings and writes it as the argsrepr.
    about: str = field(default="", compare=False)
    # The jobs' variant, which picks the queue (a plugin's jobs go to its own, see
    # ``worker.queues``): not part of the message either; the worker reads the store's rows.
    variant: str = field(default="", compare=False)

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


@dataclass(frozen=True)
class Admitted:
    """A task message as a worker lets Celery see it."""

    headers: dict
    body: bytes
    batch: Batch
    # What the message asked for and did not get (time limits, an expiry, callbacks, ...).
    ignored: tuple[str, ...] = ()


def admit(headers: object, body: object, content_type: object,
          now: datetime | None = None) -> Admitted:
    """The message a worker hands to Celery in place of the one it took; raises ``BadMessage``
    (one line) unless the message is a protocol-2 ``polyfit.run_batch`` task, in JSON, whose
    body is ``[[batch], {}, {...}]`` with a valid batch.

    Celery reads much more from a message than the task's arguments: time limits (a string or
    a one-element list of them stops or wedges the worker; any number kills or fails a job),
    an ``eta`` or ``countdown``, an expiry, callbacks, errbacks, chains and chords (tasks it
    sends after this one), a ``shadow`` name, stamps, a group, the retry count. A message names
    jobs and nothing more, so the envelope is rebuilt: the task name, the message's id, the
    batch, the retry count (bounded: Celery's autoretry counts with it) and an ``eta`` no later
    than ``ETA_MAX_S`` ahead (the backoff of the task's own retries); everything else takes
    Celery's defaults: no time limits, no expiry, no workflow."""
    if not isinstance(headers, dict):
        raise BadMessage(f"headers must be an object, got {type(headers).__name__}")
    task = headers.get("task")
    if task != TASK_NAME:
        raise BadMessage(f"task {_show(task)} is not {TASK_NAME}"
                         if task is not None else "no task header (protocol 2 only)")
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
        raise BadMessage(f"task id {_show(task_id)} is not a short id string")
    if content_type != "application/json":
        raise BadMessage(f"content type {_show(content_type)} is not application/json")
    if headers.get("compression") is not None:
        raise BadMessage("compressed messages are not accepted")
    try:
        decoded = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
    except (AttributeError, TypeError, ValueError) as e:
        raise BadMessage(f"the body is not JSON: {' '.join(str(e).split())[:80]}") from None
    if not isinstance(decoded, list) or len(decoded) != 3:
        raise BadMessage("the body must be [args, kwargs, embed]")
    args, kwargs, embed = decoded
    if not isinstance(args, list) or len(args) != 1:
        raise BadMessage("the task takes exactly one argument, the batch")
    if kwargs != {}:
        raise BadMessage("the task takes no keyword arguments")
    if not isinstance(embed, dict | None):
        raise BadMessage("the body's third part must be an object")
    batch = Batch.from_dict(args[0])

    now = now or datetime.now(timezone.utc)
    ignored = [name for name, asked in (
        ("time limits", any(x is not None for x in _seq(headers.get("timelimit")))),
        ("an expiry", headers.get("expires") is not None),
        ("another name", bool(headers.get("shadow"))),
        ("a group", headers.get("group") is not None),
        ("stamps", bool(headers.get("stamped_headers") or headers.get("stamps"))),
        ("callbacks", bool((embed or {}).get("callbacks"))),
        ("errbacks", bool((embed or {}).get("errbacks"))),
        ("a chain", bool((embed or {}).get("chain"))),
        ("a chord", bool((embed or {}).get("chord"))),
    ) if asked]
    eta = _eta(headers.get("eta"), now)
    if headers.get("eta") is not None and eta is None:
        ignored.append("a later start")
    retries = headers.get("retries")
    if not (isinstance(retries, int) and not isinstance(retries, bool)
            and 0 <= retries <= _MAX_RETRIES_SEEN):
        if retries is not None:
            ignored.append("a retry count")
        retries = 0
    clean = {
        "lang": "py", "task": TASK_NAME, "id": task_id, "root_id": task_id, "parent_id": None,
        "group": None, "eta": eta, "expires": None, "retries": retries,
        "timelimit": [None, None], "ignore_result": True,
        "argsrepr": _text(headers.get("argsrepr")) or batch.describe(), "kwargsrepr": "{}",
        "origin": _text(headers.get("origin")) or None,
    }
    body_out = json.dumps([[batch.to_dict()], {}, dict(_NO_WORKFLOW)]).encode()
    return Admitted(headers=clean, body=body_out, batch=batch, ignored=tuple(ignored))


def _seq(value: object) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _eta(value: object, now: datetime) -> str | None:
    """``value`` as an ISO time if it is one no later than ``ETA_MAX_S`` from ``now``."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:  # Celery sends UTC
        when = when.replace(tzinfo=timezone.utc)
    if when > now + timedelta(seconds=ETA_MAX_S):
        return None
    return when.isoformat()


def _text(value: object, limit: int = 200) -> str:
    """A display string (Flower, the worker's log) on one line of printable characters."""
    if not isinstance(value, str):
        return ""
    text = " ".join("".join(c if c.isprintable() else " " for c in value[:4 * limit]).split())
    return text[:limit]


def _show(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."
