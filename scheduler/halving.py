"""The ``halving: {eta, min_epochs}`` setting of a sweep (or ``--halving ETA:MIN_EPOCHS``),
validated against the epochs its jobs train. Its rungs are trained and ranked by the workers
(``worker.halving``, ``store.halving``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from polyfit_models import VARIANTS
from polyfit_models.spec import MAX_EPOCHS
from store.halving import MIN_ETA

HALVING_KEYS = ("eta", "min_epochs")


def halving_setting(raw: object, flag: str | None, grids: Sequence[Mapping],
                    default_variants: Sequence[str], error: type[Exception]) -> dict | None:
    """{eta, min_epochs} from the spec's ``halving`` or the flag (which wins), or None;
    ``error`` (the caller's spec error) for anything that is not one, or a ``min_epochs``
    above the epochs of some job of ``grids`` (normalized grid mappings: lists, or a
    search's ``{log|linear: [low, high]}`` ranges)."""
    if flag is not None:
        eta, sep, low = flag.partition(":")
        if not sep:
            raise error(f"--halving: expected ETA:MIN_EPOCHS such as 4:125, got {flag!r}")
        raw = {"eta": eta.strip(), "min_epochs": low.strip()}
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != set(HALVING_KEYS):
        raise error("halving: expected {eta: N, min_epochs: N} (or --halving ETA:MIN_EPOCHS), "
                    f"got {raw!r}"[:300])
    eta = _whole("halving.eta", raw["eta"], MIN_ETA, 1000, error)
    min_epochs = _whole("halving.min_epochs", raw["min_epochs"], 1, MAX_EPOCHS, error)
    for grid in grids:  # a rung stops its jobs and continues them later: each variant must
        variants = grid.get("variant") or default_variants
        for name in variants if isinstance(variants, (list, tuple)) else [variants]:
            if name in VARIANTS and not VARIANTS[name].resumable:
                raise error(f"halving: variant {name} cannot stop its training and continue it "
                            "(its plugin does not declare resumable=True)")
    least = min(_epochs(g, default_variants) for g in grids)
    if min_epochs > least:
        raise error(f"halving.min_epochs: {min_epochs} is more than the {least} epochs of "
                    "some of the grid's jobs")
    return {"eta": eta, "min_epochs": min_epochs}


def _whole(key: str, raw: object, low: int, high: int, error: type[Exception]) -> int:
    try:
        value = int(raw) if isinstance(raw, str) else raw
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{key}: expected a whole number in {low}..{high:,}, got {raw!r}"[:300])
    return value


def _epochs(grid: Mapping, default_variants: Sequence[str]) -> int:
    """The fewest epochs a job of this grid trains."""
    values = grid.get("epochs")
    if isinstance(values, Mapping):  # a search's continuous range
        return int(min(min(ends) for ends in values.values()))
    if isinstance(values, (list, tuple)) and values:
        return int(min(values))
    return min(int(VARIANTS[v].defaults["epochs"]) for v in
               (grid.get("variant") or default_variants) if v in VARIANTS)
