"""A sweep's progress summary and the best job per group: what ``status``, ``best``, the end of
``sweep run``, the figure and the notebook API show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine

from polyfit_models.describe import formula
from polyfit_models.errors import BadInput
from polyfit_models.fields import names
from polyfit_models.registry import is_plugin
from polyfit_results.fits import variant_rank
from store import activity as store_activity
from store import halving as store_halving
from store import search as store_search
from store.clock import db_now
from store.reads import best_jobs
from store.records import CANCELLED, ENDED, QUEUED, RUNNING
from store.rows import JobRow, SweepRow, as_utc


class GroupError(BadInput, ValueError):
    """Raised when asked to group jobs by something that is not a job setting."""


#: The rate behind the ETA is measured over this recent window (the whole run, if shorter), so
#: that it follows the sweep's pace now rather than its average since the start.
RATE_WINDOW_S = 60.0
#: Queued jobs and nothing taken for this long: no worker is serving the sweep, say so.
IDLE_AFTER_S = 30.0


@dataclass(frozen=True)
class Progress:
    """A sweep's progress: its jobs per status, its work done and left, its pace."""

    sweep_id: str
    name: str
    total: int
    counts: dict[str, int]
    ended: int
    fits_per_s: float | None  # jobs trained per second over the recent window
    eta_s: float | None  # from the work left (epochs x points) and its recent rate
    done: bool
    idle_s: float | None = None  # queued jobs, nothing running, nothing taken for this long
    # The share of the running jobs' work (epochs x points) their workers have reported done.
    running_done: float | None = None
    # Plugin variants whose queued jobs no worker has taken for IDLE_AFTER_S: no worker with
    # their package installed serves the sweep (name -> seconds).
    unserved: dict[str, float] = field(default_factory=dict)
    #: A search's state (``store.search.SearchState``), None for a grid.
    search: object = None
    #: Successive halving's rung: {rung (0-based), rungs, epochs (the rung's), eta,
    #: min_epochs}; None for a sweep without halving.
    halving: dict | None = None

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        if self.search is not None:
            s = self.search
            out["search"] = {"sampler": s.sampler, "round": s.round,
                             "rounds": -(-s.trials // s.round_size), "asked": s.asked,
                             "trials": s.trials, "state": s.state, "error": s.error}
        return out


def device_class(device: str) -> str:
    """The workers a job's device value waits for: "cpu", "cuda" (any card, or card N), "any"."""
    return "cuda" if device.startswith("cuda") else device


def progress(engine: Engine, sweep: SweepRow) -> Progress:
    """Counts, the recent rate and an ETA from the work left: a job's work is its epochs x
    points, so a sweep whose long jobs are still running does not claim to be nearly done
    because most of its (short) jobs are, and the epochs running jobs have reported done are no
    longer left. The ETA is that of the slowest device class. A few indexed queries, none of
    which reads every row: fast on a sweep of a million jobs. "Now" is the database's clock,
    which wrote every time read here: a reader on a host whose clock is off sees the same."""
    now = db_now(engine)
    counts: dict[str, int] = {}
    left: dict[str, int] = {}
    running_work = 0
    for r in store_activity.work_rows(engine, sweep.id):
        counts[r.status] = counts.get(r.status, 0) + r.jobs
        running_work += r.work if r.status == RUNNING else 0
        if r.status not in ENDED:
            cls = device_class(r.device)
            left[cls] = left.get(cls, 0) + r.work
    running_done = None
    if running_work:
        reported = store_activity.running_done(engine, sweep.id)
        for r in reported:  # work the running jobs have done is no longer left
            cls = device_class(r.device)
            left[cls] = max(0, left.get(cls, 0) - r.work)
        running_done = sum(r.work for r in reported) / running_work
    total = sum(counts.values())
    ended = sum(n for s, n in counts.items() if s in ENDED)
    # A search is done when its sampler has nothing more to ask, not when a round has ended
    # (or when it was cancelled: no round follows one with a cancelled job until a resume).
    search = store_search.search_state(engine, sweep.id)
    done = store_activity.all_ended(counts) and (
        search is None or not search.running or bool(counts.get(CANCELLED)))
    finished = store_activity.last_finish(engine, sweep.id)
    # This run of the sweep began when it was last submitted to, grown, continued or resumed:
    # its rate, ETA and idle time are this run's own, not counted from an earlier run's work.
    began = as_utc(sweep.used_at or sweep.created_at)
    # The window: the last RATE_WINDOW_S up to now (up to the last finish once done), and not
    # before this run began.
    until = (finished or now) if done and finished and finished > began else now
    since = max(began, until - timedelta(seconds=RATE_WINDOW_S))
    span = (until - since).total_seconds()
    recent = store_activity.recent_work(engine, sweep.id, since, until) if span > 0 else []
    done_work: dict[str, int] = {}
    for r in recent:
        cls = device_class(r.device)
        done_work[cls] = done_work.get(cls, 0) + r.work
    jobs_recent = sum(r.jobs for r in recent)
    rate = jobs_recent / span if span > 0 and jobs_recent else None
    eta = None
    if not done:
        etas = [work / (done_work[cls] / span) if span > 0 and done_work.get(cls) else None
                for cls, work in left.items() if work]
        eta = max(etas) if etas and None not in etas else None
        # However fast the fleet finished jobs lately, the sweep is not done before its
        # slowest running batch is, at that batch's own pace (a tail of long jobs on one
        # worker while the others idle): an ETA never below that.
        tail = _slowest_running(engine, sweep.id, now)
        if tail is not None and (eta is not None or not counts.get(QUEUED)):
            eta = max(eta or 0.0, tail)
    idle = None
    if not done and counts.get(QUEUED) and not counts.get(RUNNING):
        last = finished if finished and finished > began else began
        idle_for = (now - last).total_seconds()
        idle = idle_for if idle_for >= IDLE_AFTER_S else None
    unserved = {} if done else _unserved(engine, sweep, now, began)
    return Progress(sweep.id, sweep.name, total, counts, ended, rate, eta, done, idle,
                    running_done, unserved, search, _rung(engine, sweep))


def _rung(engine: Engine, sweep: SweepRow) -> dict | None:
    """Where a halving sweep is (see ``Progress.halving``)."""
    plan = store_halving.Halving.of(sweep.spec)
    if plan is None:
        return None
    epochs = max((e for g in sweep.spec.get("grid") or [] for e in _epoch_values(g)),
                 default=plan.min_epochs)
    rung = store_halving.current_rung(engine, sweep.id)
    return {"rung": rung, "rungs": plan.rungs(epochs), "epochs": plan.rung_epochs(rung, epochs),
            "eta": plan.eta, "min_epochs": plan.min_epochs}


def _epoch_values(grid: dict) -> list[int]:
    values = grid.get("epochs") if isinstance(grid, dict) else None
    if isinstance(values, dict):  # a search's range
        return [int(v) for ends in values.values() for v in ends]
    return [int(v) for v in values] if isinstance(values, list) else []


def plugin_variants(spec: dict) -> list[str]:
    """The plugin variants (not polyfit's built-ins) a recorded sweep's grid names."""
    grids = spec.get("grid") if isinstance(spec, dict) else None
    grids = [grids] if isinstance(grids, dict) else grids if isinstance(grids, list) else []
    names = [v for g in grids if isinstance(g, dict)
             for v in (g.get("variant") or []) if isinstance(v, str)]
    return [v for v in dict.fromkeys(names) if is_plugin(v)]


def _unserved(engine: Engine, sweep: SweepRow, now, began) -> dict[str, float]:
    """Plugin variants of the sweep with jobs queued and none running or finished for at
    least IDLE_AFTER_S since this run began: only a worker with the plugin takes them (see
    ``worker.queues``), and none has."""
    out = {}
    for variant in plugin_variants(sweep.spec):
        a = store_activity.variant_activity(engine, sweep.id, variant)
        if not a.queued or a.running:
            continue
        last = a.last_finish if a.last_finish and a.last_finish > began else began
        waited = (now - last).total_seconds()
        if waited >= IDLE_AFTER_S:
            out[variant] = waited
    return out


def _slowest_running(engine: Engine, sweep_id: str, now) -> float | None:
    """Seconds the slowest running batch of the sweep still needs at its own pace so far (its
    epochs left x its seconds per epoch), or None before any running job has reported."""
    left = [(now - p.started_at).total_seconds() * (p.epochs - p.epochs_done) / p.epochs_done
            for p in store_activity.running_pace(engine, sweep_id)]
    return max((max(0.0, s) for s in left), default=None)


# The job settings ``best_per_group`` (and ``polyfit best --by``) can group by.
GROUP_COLUMNS = names(shown="group")



def best_per_group(engine: Engine, sweep_id: str, by: Sequence[str]) -> list[dict]:
    """The lowest-mse job of each group (ties: the lower id), with its gap to the least-squares
    optimum and its formula, ordered by the group's values (numbers as numbers). The database
    ranks the jobs; only the winners come back."""
    unknown = [b for b in by if b not in GROUP_COLUMNS]
    if unknown:
        raise GroupError(f"cannot group by {unknown[0]!r} (choose from "
                         f"{', '.join(GROUP_COLUMNS)})")
    best = best_jobs(engine, sweep_id, by)
    best.sort(key=lambda job: _group_order(by, tuple(getattr(job, b) for b in by)))
    return [described(job) for job in best]


def described(job: JobRow) -> dict:
    """A job's columns with its gap to the optimum and its fitted polynomial as a formula."""
    return {**job.to_dict(gap=True), "formula": formula(job.monomial)}


def _group_order(by: Sequence[str], key: tuple) -> tuple:
    # Variants in the registry's order, other values as themselves (each position holds one
    # column's values, all of one type, so the tuples compare).
    return tuple((variant_rank(v), v) if b == "variant" else v
                 for b, v in zip(by, key))
