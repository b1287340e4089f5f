"""Successive halving on the worker: training a job to its rung's end, and ranking a rung
once, by whichever process stores its last result.

A job in rung r of a sweep with ``halving`` trains to ``b = rung_epochs(r)``. The loop can
stop a batch only at a 100-epoch window's end (``polyfit_models.loop``), so a rung ends in two
steps: the batch trains to ``W``, the last window's end before ``b``, and stops there with
every job's state; then a copy of each job with ``epochs = b`` continues from that state for
the last ``b - W`` epochs (1 to 100) and is scored: the rung's result, the model of exactly
``b`` updates (the same operations as the first ``b`` epochs of an uninterrupted run). The
state kept for the next rung is the one at ``W``, so the next rung retrains those few epochs
and every job that reaches its own ``epochs`` ends with the bits of an uninterrupted run. A job
that diverges or stops at its gap inside a rung ends there as any job does.

``advance`` is the rung's guarded step (``store.halving.advance_rung``), called where a
search's round step is (``worker.rounds``): after a worker stores results, and on resume."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from polyfit_models import FitResult, JobSpec, JobState, StateError
from polyfit_models.result import CURVE_EVERY
from store import halving as store_halving
from store.sweeps import find_sweep
from worker.batches import BrokerError, batches_for_views, publish_stream
from worker.rounds import ROUND_SPREAD
from worker.settings import Settings

log = logging.getLogger("polyfit.worker")

Halt = Callable[[int], bool]


@dataclass(frozen=True)
class Held:
    """A job's outcome at its rung's end: the rung's result, the epochs it reached and the
    state its next rung continues from (None: it starts afresh, a rung of 100 epochs or
    fewer)."""

    result: FitResult
    reached: int
    state: JobState | None


def call_from(train: Callable, specs: Sequence[JobSpec], device: str,
              states: Sequence[JobState | None], **options) -> list:
    """``train(specs, device, **options)`` continuing each job from its state, if any; states
    that do not fit their jobs are dropped, and the batch starts afresh."""
    if not any(states):
        return train(specs, device, **options)
    try:
        return train(specs, device, states=list(states), **options)
    except StateError as e:
        log.warning("a batch of %d starts afresh: %s", len(specs), e)
        return train(specs, device, **options)


def rung_trainer(train: Callable, states: dict[int, JobState], budgets: dict[int, int],
                 halt: Halt) -> Callable:
    """The worker's trainer (``execute.Trainer``): each spec (keyed by its ``id()``) trains
    from its stored state, if any, to its budget: its rung's epochs in a halving sweep, its own
    ``epochs`` where ``budgets`` has none. A job whose budget is its own ``epochs`` gets its
    result; the others a ``Held`` or, when they ended inside the rung, their result; a job
    stopped by ``halt`` (a worker asked to stop) its ``JobState``."""
    def trainer(specs: Sequence[JobSpec], device: str) -> list:
        out: list = [None] * len(specs)
        groups: dict[int, list[int]] = {}
        for i, spec in enumerate(specs):
            groups.setdefault(budgets.get(id(spec), spec.epochs), []).append(i)
        for budget, rows in groups.items():
            part = [specs[i] for i in rows]
            mine = [states.get(id(spec)) for spec in part]
            if budget >= part[0].epochs:
                got = call_from(train, part, device, mine, halt=halt)
            else:
                got = _rung(train, part, device, mine, budget, halt)
            for i, outcome in zip(rows, got):
                out[i] = outcome
        return out

    return trainer


def _rung(train: Callable, specs: list[JobSpec], device: str, states: list, budget: int,
          halt: Halt) -> list:
    window = (budget - 1) // CURVE_EVERY * CURVE_EVERY
    if window > 0:
        got = call_from(train, specs, device, states,
                        halt=lambda done: halt(done) or done >= window)
    else:
        got = [None] * len(specs)
    out: list = list(got)
    go: list[int] = []
    for j, g in enumerate(got):
        if g is None or (isinstance(g, JobState) and g.epoch == window):
            go.append(j)  # at the window: on to the rung's end
        # else a result (every job of its batch ended inside the rung) or a stop
    if not go:
        return out
    short = [dataclasses.replace(specs[j], epochs=budget) for j in go]
    at = [got[j] for j in go]
    for j, r in zip(go, call_from(train, short, device, at, halt=halt)):
        if isinstance(r, JobState):  # asked to stop before the last few epochs
            out[j] = got[j] or r
        elif r.status == "diverged" or r.stopped_at_epoch is not None:
            out[j] = r  # ended inside the rung: its result is final
        else:
            out[j] = Held(r, budget, got[j])
    return out


def advance(engine: Engine, settings: Settings, app, sweep_id: str, *,
            private: tuple[str, str] | None = None) -> int:
    """Rank the sweep's complete rung, if any, and enqueue the jobs it promotes (only the
    process whose ranking moved the rows does); returns how many jobs this call enqueued."""
    sent = 0
    halving = None
    while True:
        rung = store_halving.rung_ready(engine, sweep_id)
        if rung is None:
            return sent
        if halving is None:
            sweep = find_sweep(engine, sweep_id)
            halving = store_halving.Halving.of(sweep.spec if sweep else None)
            if halving is None:
                return sent
        up = store_halving.advance_rung(engine, sweep_id, rung, halving.eta)
        if not up:
            return sent  # another process ranked it
        log.info("sweep %s: rung %d ranked, %d jobs continue to rung %d", sweep_id, rung,
                 len(up), rung + 1)
        try:
            sent += publish_stream(app, batches_for_views(up, settings, spread=ROUND_SPREAD),
                                   private=private)
        except BrokerError as e:
            # Recorded as queued: the reaper (jobs queued too long) or a resume enqueues them.
            log.warning("sweep %s: rung %d ranked but not enqueued: %s", sweep_id, rung + 1, e)
            return sent
