"""A search spec (``search: {sampler, trials, round, seed}``) validated, and its first round
recorded and enqueued.

In a search a range without ``num`` is continuous (``{log: [a, b]}``, ``{linear: [a, b]}``, or
the flag form ``log:A:B``), a list of several values a categorical choice. The next rounds are
asked by whichever worker stores a round's last result (``worker.rounds``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from scheduler.axes import RANGE_AXES, parse_axis, parse_lr, parse_number, show_value
from scheduler.specfile import SweepSpecError
from store import search as store_search
from store.db import create_schema, shared_engine
from worker.app import make_app
from worker.rounds import advance, publish_round
from worker.search import (
    MAX_TRIALS,
    SAMPLERS,
    SamplerFailed,
    SearchError,
    ask_round,
    check_space,
)
from worker.settings import Settings

SEARCH_KEYS = ("sampler", "trials", "round", "seed")


def search_settings(raw: object, flags: Mapping) -> dict:
    """{sampler, trials, round, seed} from the spec's ``search`` and the flags (which win)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SweepSpecError(f"search: expected {{sampler: S, trials: N, round: R, seed: S}}, "
                             f"got {show_value(raw)}")
    unknown = set(raw) - set(SEARCH_KEYS)
    if unknown:
        raise SweepSpecError(f"search: unknown key {sorted(unknown)[0]!r} "
                             f"(keys: {', '.join(SEARCH_KEYS)})")
    merged = {"sampler": "tpe", "seed": 0, **raw, **flags}
    sampler = merged["sampler"]
    if sampler not in SAMPLERS:
        raise SweepSpecError(f"search.sampler: unknown sampler {show_value(sampler)} "
                             f"(choose from {', '.join(SAMPLERS)})")
    if "trials" not in merged:
        raise SweepSpecError("search.trials: how many jobs the search asks for in all "
                             "(e.g. trials: 256, or --trials 256)")
    trials = _whole("search.trials", merged["trials"], 1, MAX_TRIALS)
    size = _whole("search.round", merged.get("round", min(trials, 64)), 1, MAX_TRIALS)
    if size > trials:
        raise SweepSpecError(f"search.round: {size} is more than the {trials} trials")
    seed = _whole("search.seed", merged["seed"], 0, 2**32 - 1)
    return {"sampler": sampler, "trials": trials, "round": size, "seed": seed}


def _whole(key: str, raw: object, low: int, high: int) -> int:
    value = parse_number(key, raw)
    if value != int(value) or not low <= value <= high:
        raise SweepSpecError(f"{key}: expected a whole number in {low}..{high:,}, "
                             f"got {show_value(raw)}")
    return int(value)


def _continuous(axis: str, raw: object) -> dict | None:
    """A continuous range ``{log|linear: [a, b]}`` of one axis, checked; None if ``raw`` is
    not one (a list, or a range with ``num``: its values, a categorical choice)."""
    if isinstance(raw, str) and raw.split(":", 1)[0] in ("log", "linear") \
            and len(raw.split(":")) == 3:
        kind, a, b = raw.split(":")
        raw = {kind: [a, b]}
    if not isinstance(raw, Mapping) or "num" in raw:
        return None
    if axis not in RANGE_AXES:
        raise SweepSpecError(f"{axis}: a continuous range is for {', '.join(RANGE_AXES)}, "
                             f"not {axis}")
    kinds = [k for k in ("log", "linear") if k in raw]
    if len(kinds) != 1 or len(raw) != 1:
        raise SweepSpecError(f"{axis}: a continuous range is {{log: [low, high]}} or "
                             f"{{linear: [low, high]}}, got {show_value(raw)}")
    kind, ends = kinds[0], raw[kinds[0]]
    if not isinstance(ends, (list, tuple)) or len(ends) != 2:
        raise SweepSpecError(f"{axis}: {kind} takes [low, high], got {show_value(ends)}")
    if axis == "lr":
        low, high = (parse_lr(v) for v in ends)
    else:  # each end checked as the axis's values are
        low, high = (parse_axis(axis, [v])[0] for v in ends)
    if not low < high:
        raise SweepSpecError(f"{axis}: a continuous range needs low < high, got {show_value(ends)}")
    if kind == "log" and low <= 0:
        raise SweepSpecError(f"{axis}: a log range needs positive ends, got {show_value(ends)}")
    return {kind: [low, high]}


def search_plan(raw: object, flags: Mapping, grids: Sequence[dict], settings: dict,
                make: Callable[[dict, dict], object]):
    """Validate a search (its settings and its one grid) and return ``make(search,
    normalized spec)``."""
    search = search_settings(raw, flags)
    if len(grids) != 1:
        raise SweepSpecError("grid: a search takes one grid mapping, not a list")
    grid: dict = {}
    for axis, values in grids[0].items():
        if isinstance(values, (list, tuple)) and len(values) == 1:
            values = values[0]
        cont = _continuous(axis, values)
        grid[axis] = cont if cont is not None else parse_axis(axis, values, MAX_TRIALS)
    if "variant" not in grid:
        raise SweepSpecError("grid: a search needs the variant axis (e.g. variant: "
                             "[autograd])")
    normalized = {**settings, "grid": [grid], "search": search}
    try:
        check_space(normalized)
    except SearchError as e:
        raise SweepSpecError(str(e)) from None
    return make(search, normalized)


def submit_search(settings: Settings, plan, *, batch_size: int | None = None,
                  spread: int = 8, private: tuple[str, str] | None = None):
    """Record a search with its first round and enqueue it (a search recorded already is
    continued: what is queued is enqueued, and a round that ended is followed by the next)."""
    from scheduler.submit import Submitted, carry_on, check_growth

    search = plan.search
    asked, attrs = [], {}
    engine = shared_engine(settings.db_url)
    create_schema(engine)
    check_growth(engine, plan)
    if store_search.search_state(engine, plan.sweep_id) is None:
        try:
            asked, attrs = ask_round(plan.spec, [], 0, {})
        except SamplerFailed as e:
            raise SweepSpecError(str(e)) from None
    new = store_search.start_search(
        engine, plan.sweep_id, plan.name, plan.spec, sampler=search["sampler"],
        trials=search["trials"], round_size=search["round"],
        first=[a.row for a in asked], first_trials=[a.trial() for a in asked],
        study_attrs=attrs)
    if new:
        sent, batches = publish_round(settings, make_app(settings), plan.sweep_id, asked,
                                      private=private, spread=spread,
                                      batch_size=batch_size)
        return Submitted(plan.sweep_id, len(asked), sent, batches, 0, search["trials"])
    done = carry_on(settings, plan.sweep_id, batch_size=batch_size, spread=spread,
                    private=private)
    return Submitted(plan.sweep_id, 0, done.enqueued_jobs + continue_search(
        settings, plan.sweep_id, private=private), done.batches, 0, search["trials"])


def continue_search(settings: Settings, sweep_id: str, *,
                    private: tuple[str, str] | None = None, reopen: bool = False) -> int:
    """Ask and enqueue the next round of a search whose last round ended with nobody to ask
    it (a worker stopped between storing the last result and asking, or had no Optuna);
    ``reopen`` (``sweep resume``): a search that failed asks again. Returns the jobs sent."""
    engine = shared_engine(settings.db_url)
    if reopen:
        store_search.reopen(engine, sweep_id)
    return advance(engine, settings, make_app(settings), sweep_id, private=private)
