"""A search's next round, asked and enqueued once, by whichever process gets there first.

After a worker stores results (``worker.tasks``), and when a search is resumed, ``advance``
looks whether the search's last round has ended; if so it asks the sampler for the next round
(``worker.search``), records it with the store's compare-and-set (``store.search``) and, if
this call is the one that recorded it, publishes its batches. Two workers storing a round's
last two results at once may both ask (the same trials: the asking is deterministic); only one
records and enqueues them. A search that has asked its ``trials`` ends ``done``; one whose
sampler raised ends ``failed`` with the reason, every stored result kept.

``advance`` is written as one step (round r ended -> round r + 1) so that a later kind of
round, such as a rung of successive halving, can take the same guarded path."""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from store import search as store_search
from store.sweeps import find_sweep
from worker.batches import BrokerError, plan_batches, publish_stream
from worker.search import SamplerFailed, SearchError, ask_round
from worker.settings import Settings

log = logging.getLogger("polyfit.worker")

#: Batches a round's group of compatible jobs is cut into, at least: a round is small, and a
#: batch of one job wastes the vectorised training a search is for (the asking worker does
#: not know the fleet's size; rounds are sized to it with ``round``).
ROUND_SPREAD = 2


def advance(engine: Engine, settings: Settings, app, sweep_id: str, *,
            private: tuple[str, str] | None = None) -> int:
    """Ask, record and enqueue the search's next round if its last one has ended; returns how
    many jobs this call enqueued (0: not a search, not ready, ended, or another process
    recorded the round). Loops while a round adds nothing to train (never in practice)."""
    sent = 0
    while True:
        state = store_search.round_ready(engine, sweep_id)
        if state is None:
            return sent
        if state.asked >= state.trials:
            if store_search.finish(engine, sweep_id, state.round, store_search.DONE):
                log.info("search %s done: %d trials in %d rounds", sweep_id, state.asked,
                         state.round)
            return sent
        past = store_search.history(engine, sweep_id)
        spec = find_sweep(engine, sweep_id).spec
        spec = {**spec, "search": {**spec["search"], "trials": state.trials,
                                   "round": state.round_size}}
        try:
            asked, attrs = ask_round(spec, past, state.round, state.study_attrs)
        except SearchError as e:
            # This host cannot ask (no Optuna): not the sampler's failure. The round waits for
            # `sweep resume` from a host that can.
            log.error("search %s: round %d not asked here: %s", sweep_id, state.round + 1, e)
            return sent
        except SamplerFailed as e:
            if store_search.finish(engine, sweep_id, state.round, store_search.FAILED, str(e)):
                log.error("search %s failed: %s", sweep_id, e)
            return sent
        if not store_search.advance_round(engine, sweep_id, state.round,
                                          [a.row for a in asked], [a.trial() for a in asked],
                                          attrs):
            return sent  # another process recorded this round
        log.info("search %s: round %d asked (%d jobs)", sweep_id, state.round + 1, len(asked))
        try:
            sent += publish_round(settings, app, sweep_id, asked, private=private)[0]
        except BrokerError as e:
            # Recorded as queued: the reaper (jobs queued too long) or a resume enqueues them.
            log.warning("search %s: round %d recorded but not enqueued: %s", sweep_id,
                        state.round + 1, e)
            return sent


def publish_round(settings: Settings, app, sweep_id: str, asked, *,
                  private: tuple[str, str] | None = None, spread: int = ROUND_SPREAD,
                  batch_size: int | None = None) -> tuple[int, int]:
    """Publish a round's jobs (``worker.search.Asked``) in batches; returns (jobs, batches)."""
    batches = plan_batches(sweep_id, [(a.job_id, a.spec, a.device) for a in asked], settings,
                           batch_size=batch_size, spread=spread)
    return publish_stream(app, batches, private=private), len(batches)
