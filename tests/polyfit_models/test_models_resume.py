"""Stopping a batch at an epoch boundary and continuing it later (``fit_many(halt=...,
states=...)``): the continued jobs end with exactly the bits of an uninterrupted run, for every
variant and update rule, also after a trip through the stored form and more than one stop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from polyfit_models import VARIANTS, JobState, StateError, fit_many
from tests.support.numerics import spec

CASES = [(name, rule) for name, variant in VARIANTS.items() for rule in variant.optimizers]
EPOCHS = 500


def _batch(name: str, rule: str, dtype: str = "float32", **extra) -> list:
    degree = max(3, VARIANTS[name].min_degree + 1)
    lr = VARIANTS[name].defaults["lr"]
    # Two learning rates (two torch.optim parameter groups), and one job that diverges
    # part-way (a retired row that must stay retired).
    return [spec(name, optimizer=rule, degree=degree, epochs=EPOCHS, x_points=64,
                 dtype=dtype, seed=seed, lr=rate, **extra)
            for seed, rate in ((0, lr), (1, lr), (2, lr * 3), (3, min(lr * 30000, 10.0)))]


def _halt_after(windows: int):
    """A ``halt`` that stops a batch once it has trained ``windows`` windows of 100 epochs."""
    return lambda epochs_done: epochs_done >= 100 * windows


def _same(a, b) -> None:
    got, want = dataclasses.asdict(a), dataclasses.asdict(b)
    got.pop("duration_s"), want.pop("duration_s")
    assert got == want


def _through_store(states):
    return [JobState.from_bytes(s.to_bytes()) for s in states]


@pytest.mark.parametrize("name,rule", CASES)
def test_a_stopped_batch_continues_to_the_bits_of_an_uninterrupted_run(name, rule):
    specs = _batch(name, rule)
    whole = fit_many(specs, fuse=False)
    first = fit_many(specs, fuse=False, halt=_halt_after(2))
    assert all(isinstance(s, JobState) and s.epoch == 200 for s in first)
    second = fit_many(specs, fuse=False, states=_through_store(first), halt=_halt_after(3))
    assert all(isinstance(s, JobState) and s.epoch == 300 for s in second)
    rest = fit_many(specs, fuse=False, states=_through_store(second))
    for got, want in zip(rest, whole):
        _same(got, want)


def test_retired_rows_stay_retired_and_stopped_rows_keep_their_epoch():
    specs = [dataclasses.replace(s, dtype="float64") for s in _batch("tensor", "sgd")]
    specs[0] = dataclasses.replace(specs[0], stop_gap=3.0)  # stops at epoch 238
    whole = fit_many(specs, fuse=False)
    assert whole[0].stopped_at_epoch is not None and whole[3].status == "diverged"
    states = fit_many(specs, fuse=False, halt=_halt_after(4))
    for got, want in zip(fit_many(specs, fuse=False, states=states), whole):
        _same(got, want)


def test_dynamic_continues_its_draws_past_a_block_of_them():
    """``dynamic`` draws its k's 1024 epochs at a time from each job's seed: a batch continued
    at epoch 1100 replays the first block and draws the second as if it had never stopped."""
    specs = [dataclasses.replace(s, epochs=1300) for s in _batch("dynamic", "momentum")[:2]]
    whole = fit_many(specs, fuse=False)
    states = fit_many(specs, fuse=False, halt=_halt_after(11))
    assert states[0].epoch == 1100
    for got, want in zip(fit_many(specs, fuse=False, states=_through_store(states)), whole):
        _same(got, want)


def test_batches_not_started_when_asked_to_stop_give_empty_states():
    specs = _batch("tensor", "sgd")
    out = fit_many(specs, fuse=False, halt=lambda epochs_done: True)
    assert all(isinstance(s, JobState) and s.epoch == 0 and not s.arrays for s in out)
    _same(fit_many(specs, fuse=False, states=out)[0], fit_many(specs, fuse=False)[0])


def test_a_state_that_is_not_the_jobs_is_refused():
    specs = _batch("tensor", "sgd")
    states = fit_many(specs, fuse=False, halt=_halt_after(2))
    shorter = [dataclasses.replace(s, epochs=200) for s in specs]
    for other in (_batch("dynamic", "momentum"), shorter):  # 5 parameters; no epochs left
        with pytest.raises(StateError):
            fit_many(other, fuse=False, states=states)
    for blob in (b"", b"nonsense", states[0].to_bytes()[:-8], states[0].to_bytes() + b"x"):
        with pytest.raises(StateError):
            JobState.from_bytes(blob)


def test_the_stored_form_is_exact():
    state = JobState(300, True, {"params": np.array([1 / 3, np.nan, -np.inf, 5e-324]),
                                 "curve": np.array([np.float32(0.1)], dtype=np.float64)})
    back = JobState.from_bytes(state.to_bytes())
    assert (back.epoch, back.fused) == (300, True)
    for k, v in state.arrays.items():
        assert back.arrays[k].tobytes() == v.tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 3])
def test_a_fused_batch_continues_fused_to_the_same_bits(jobs):
    """A fused batch's states say so, and it continues fused (the unfused path rounds
    differently); a lone job is trained padded to two rows both times."""
    specs = _batch("autograd", "adam")[:jobs]
    whole = fit_many(specs, fuse=True)
    states = fit_many(specs, fuse=True, halt=_halt_after(2))
    assert all(s.fused and s.epoch == 200 for s in states)
    for got, want in zip(fit_many(specs, fuse=False, states=states), whole):
        _same(got, want)
