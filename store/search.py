"""A search's state in the store: its round counter, its trials, and the one guarded step that
records the next round.

A search (``search:`` in a sweep's spec) asks a sampler for ``round_size`` jobs at a time. Its
``searches`` row counts the rounds asked; its ``trials`` rows say which job each trial made and
what the sampler asked. Whoever stores a round's last result (any worker), or a resume, may try
to ask the next round: ``advance_round`` moves the counter from the round it saw to the next
with a compare-and-set UPDATE in the transaction that inserts that round's jobs and trials, so
of two processes racing on the same round exactly one records it (the other's UPDATE matches
no row: SQLite has one writer at a time; on PostgreSQL the second UPDATE waits for the first's
row lock and then re-checks the guard against the committed row). The rows are the source of
truth: the sampler is rebuilt from them each round (see ``worker.search``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, func, insert, select, update

from store.db import has_table, retry_conflicts, transaction
from store.recording import insert_ignoring_existing, save_sweep
from store.records import CANCELLED, ENDED, JobRecord, SearchRecord, TrialRecord

RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass(frozen=True)
class SearchState:
    """A search as stored: its sampler, size, round and the trials asked so far."""

    sweep_id: str
    sampler: str
    trials: int
    round_size: int
    round: int  # rounds asked so far
    state: str
    error: str | None
    study_attrs: dict
    asked: int = 0  # trials asked so far

    @property
    def running(self) -> bool:
        return self.state == RUNNING


@dataclass(frozen=True)
class TrialRow:
    """A trial of a search with its job's outcome (status, mse, loss curve not included)."""

    number: int
    round: int
    job_id: str
    params: dict
    system_attrs: dict
    status: str
    mse: float | None
    #: Epochs trained (a job pruned by successive halving: the epoch its mse is of).
    epochs_done: int | None = None


def _has_tables(engine: Engine) -> bool:
    """Whether the database has the search tables (``store.db.has_table``)."""
    return has_table(engine, SearchRecord.__tablename__)


def search_state(engine: Engine, sweep_id: str) -> SearchState | None:
    """The search of a sweep, or None for a sweep that enumerates its jobs."""
    if not _has_tables(engine):
        return None
    with transaction(engine) as s:
        rec = s.get(SearchRecord, sweep_id)
        if rec is None:
            return None
        asked = s.scalar(select(func.count()).select_from(TrialRecord)
                         .where(TrialRecord.sweep_id == sweep_id)) or 0
        return _state(rec, asked)


def _state(rec: SearchRecord, asked: int) -> SearchState:
    return SearchState(rec.sweep_id, rec.sampler, rec.trials, rec.round_size, rec.round,
                       rec.state, rec.error, dict(rec.study_attrs or {}), asked)


def _trial_rows(round_no: int, trials: Sequence[dict]) -> list[dict]:
    return [{"round": round_no, **t} for t in trials]


def start_search(engine: Engine, sweep_id: str, name: str, spec: dict, *, sampler: str,
                 trials: int, round_size: int, first: Sequence[dict],
                 first_trials: Sequence[dict], study_attrs: dict) -> bool:
    """Record a search sweep with its first round (``first``: job rows; ``first_trials``:
    {number, job_id, params, system_attrs}). A search recorded already keeps its rounds (its
    ``trials`` and ``round_size`` become the spec's: a search grows as a sweep does). Returns
    whether the first round was recorded now."""
    save_sweep(engine, sweep_id, name, spec, (), reuse=False)
    with transaction(engine) as s:
        made = s.scalars(
            insert_ignoring_existing(engine, SearchRecord.__table__)
            .returning(SearchRecord.sweep_id),
            [{"sweep_id": sweep_id, "sampler": sampler, "trials": trials,
              "round_size": round_size, "round": 0, "state": RUNNING,
              "study_attrs": study_attrs}]).all()
        if not made:
            rec = s.get(SearchRecord, sweep_id)
            more = rec.state == DONE and trials > rec.trials
            s.execute(update(SearchRecord).where(SearchRecord.sweep_id == sweep_id)
                      .values(trials=trials, round_size=round_size,
                              **({"state": RUNNING} if more else {})))
            return False
        _insert_round(s, sweep_id, 0, first, first_trials)
        s.execute(update(SearchRecord).where(SearchRecord.sweep_id == sweep_id)
                  .values(round=1))
        return True


def _insert_round(s, sweep_id: str, round_no: int, jobs: Sequence[dict],
                  trials: Sequence[dict]) -> None:
    if jobs:
        s.execute(insert(JobRecord.__table__),
                  [{**row, "sweep_id": sweep_id, "status": "queued", "attempts": 0}
                   for row in jobs])
    if trials:
        s.execute(insert(TrialRecord.__table__),
                  [{"sweep_id": sweep_id, **t} for t in _trial_rows(round_no, trials)])


def round_ready(engine: Engine, sweep_id: str) -> SearchState | None:
    """The search's state when its last round has ended (every job of it succeeded, diverged
    or failed) and it is still running: the moment to ask the next round or to finish.
    None otherwise, also for a round with a cancelled job (a cancel stops the search until
    ``sweep resume``) and for a sweep that is not a search."""
    if not _has_tables(engine):
        return None
    with transaction(engine) as s:
        rec = s.get(SearchRecord, sweep_id)
        if rec is None or rec.state != RUNNING:
            return None
        jobs, trials = JobRecord.__table__, TrialRecord.__table__
        open_ = s.scalar(
            select(func.count()).select_from(trials.join(
                jobs, (jobs.c.sweep_id == trials.c.sweep_id) & (jobs.c.id == trials.c.job_id)))
            .where(trials.c.sweep_id == sweep_id, trials.c.round == rec.round - 1,
                   jobs.c.status.notin_([e for e in ENDED if e != CANCELLED])))
        if open_:
            return None
        asked = s.scalar(select(func.count()).select_from(trials)
                         .where(trials.c.sweep_id == sweep_id)) or 0
        return _state(rec, asked)


def history(engine: Engine, sweep_id: str) -> list[TrialRow]:
    """Every trial of the search in the order asked, with its job's status and mse."""
    if not _has_tables(engine):
        return []
    jobs, trials = JobRecord.__table__, TrialRecord.__table__
    with transaction(engine) as s:
        rows = s.execute(
            select(trials.c.number, trials.c.round, trials.c.job_id, trials.c.params,
                   trials.c.system_attrs, jobs.c.status, jobs.c.mse, jobs.c.epochs_done)
            .select_from(trials.outerjoin(
                jobs, (jobs.c.sweep_id == trials.c.sweep_id) & (jobs.c.id == trials.c.job_id)))
            .where(trials.c.sweep_id == sweep_id).order_by(trials.c.number)).all()
    return [TrialRow(r.number, r.round, r.job_id, dict(r.params or {}),
                     dict(r.system_attrs or {}), r.status, r.mse, r.epochs_done)
            for r in rows]


@retry_conflicts
def advance_round(engine: Engine, sweep_id: str, seen_round: int, jobs: Sequence[dict],
                  trials: Sequence[dict], study_attrs: dict) -> bool:
    """Record round ``seen_round`` (0-based: the round after the ``seen_round`` asked so far)
    with its jobs and trials, if the search is still at ``seen_round`` rounds and running:
    returns True for the one caller that did (see the module's docstring)."""
    with transaction(engine) as s:
        moved = s.execute(
            update(SearchRecord)
            .where(SearchRecord.sweep_id == sweep_id, SearchRecord.round == seen_round,
                   SearchRecord.state == RUNNING)
            .values(round=seen_round + 1, study_attrs=study_attrs)
            .execution_options(synchronize_session=False)).rowcount
        if moved != 1:
            return False
        _insert_round(s, sweep_id, seen_round, jobs, trials)
        return True


@retry_conflicts
def finish(engine: Engine, sweep_id: str, seen_round: int, state: str,
           error: str | None = None) -> bool:
    """End the search (``done``, or ``failed`` with ``error``) if it is still running at
    ``seen_round`` rounds; every stored result is kept. Returns whether this call ended it."""
    with transaction(engine) as s:
        return s.execute(
            update(SearchRecord)
            .where(SearchRecord.sweep_id == sweep_id, SearchRecord.round == seen_round,
                   SearchRecord.state == RUNNING)
            .values(state=state, error=None if error is None else error[:2000])
            .execution_options(synchronize_session=False)).rowcount == 1


@retry_conflicts
def reopen(engine: Engine, sweep_id: str) -> bool:
    """Let a failed search ask again (``sweep resume``: the sampler's failure may have been
    passing); returns whether it had failed."""
    if not _has_tables(engine):
        return False
    with transaction(engine) as s:
        return s.execute(
            update(SearchRecord)
            .where(SearchRecord.sweep_id == sweep_id, SearchRecord.state == FAILED)
            .values(state=RUNNING, error=None)
            .execution_options(synchronize_session=False)).rowcount == 1
