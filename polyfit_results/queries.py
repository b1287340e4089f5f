"""A sweep's progress summary and the best job per group: what ``status``, ``best``, the end of
``sweep run``, the figure and the notebook API show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from polyfit_models import VARIANTS
from store import jobs as store_jobs
from store.records import ENDED, OK


class GroupError(ValueError):
    """Raised when asked to group jobs by something that is not a job setting."""


@dataclass(frozen=True)
class Progress:
    sweep_id: str
    name: str
    total: int
    counts: dict[str, int]
    ended: int
    fits_per_s: float | None
    eta_s: float | None
    done: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def progress(engine: Engine, sweep: store_jobs.SweepRow) -> Progress:
    counts = store_jobs.status_counts(engine, sweep.id)
    total = sum(counts.values())
    ended = sum(n for s, n in counts.items() if s in ENDED)
    first, last = store_jobs.time_span(engine, sweep.id)
    rate = eta = None
    done = store_jobs.all_ended(counts)
    if first is not None and last is not None and ended:
        # While the sweep runs, the rate is over the time so far (not up to the last finish),
        # so the ETA keeps moving while a long batch is in flight.
        until = last if done else datetime.now(UTC)
        span = (until - first).total_seconds()
        if span > 0:
            rate = ended / span
            eta = (total - ended) / rate
    return Progress(sweep.id, sweep.name, total, counts, ended, rate, eta, done)


# The job settings ``best_per_group`` (and ``polyfit best --by``) can group by.
GROUP_COLUMNS = ("variant", "lr", "degree", "seed", "epochs", "optimizer", "device", "dtype",
                 "target")

_VARIANT_ORDER = {name: i for i, name in enumerate(VARIANTS)}


def best_per_group(jobs: Sequence[store_jobs.JobRow], by: Sequence[str]) -> list[dict]:
    """The lowest-mse job of each group (ties: the lower id), with its gap to the least-squares
    optimum, ordered by the group's values (numbers as numbers)."""
    unknown = [b for b in by if b not in GROUP_COLUMNS]
    if unknown:
        raise GroupError(f"cannot group by {unknown[0]!r} (choose from "
                         f"{', '.join(GROUP_COLUMNS)})")
    best: dict[tuple, store_jobs.JobRow] = {}
    for job in jobs:
        if job.mse is None or job.status not in OK:
            continue
        key = tuple(getattr(job, b) for b in by)
        if key not in best or (job.mse, job.id) < (best[key].mse, best[key].id):
            best[key] = job
    return [best[key].to_dict(gap=True) for key in sorted(best, key=lambda k: _group_order(by, k))]


def _group_order(by: Sequence[str], key: tuple) -> tuple:
    # Variants in the registry's order, other values as themselves (each position holds one
    # column's values, all of one type, so the tuples compare).
    return tuple(_VARIANT_ORDER.get(v, len(_VARIANT_ORDER)) if b == "variant" else v
                 for b, v in zip(by, key))
