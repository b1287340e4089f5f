"""A halving rung's training (``worker.halving.rung_trainer``): a rung's result is the model of
exactly its epochs, and jobs continued rung after rung end with the bits of an uninterrupted
run of the same batch."""

from __future__ import annotations

import dataclasses

import pytest

from polyfit_models import FitResult, JobSpec, JobState, fit_many
from worker.halving import Held, rung_trainer


def _specs(variant="autograd", lrs=(1e-3, 3e-3, 1e-2, 3e-2), **kw):
    kw = {"degree": 4, "optimizer": "adam", **kw}
    return [JobSpec.create(variant, lr=lr, epochs=450, x_points=64, seed=i, **kw)
            for i, lr in enumerate(lrs)]


def _never(_done: int) -> bool:
    return False


def _rung(specs, budget, states=None, halt=_never):
    states = {id(s): st for s, st in zip(specs, states or []) if st is not None}
    return rung_trainer(fit_many, states, {id(s): budget for s in specs}, halt)(specs, "cpu")


@pytest.mark.parametrize("variant", ["autograd", "module", "dynamic"])
def test_jobs_continued_rung_after_rung_end_as_an_uninterrupted_run(variant):
    specs = _specs(variant)
    whole = fit_many(specs, "cpu")
    first = _rung(specs, 150)  # rung 0: to epoch 100 and on to 150; kept at 100
    assert all(isinstance(h, Held) and h.reached == 150 and h.state.epoch == 100
               for h in first)
    short = fit_many([dataclasses.replace(s, epochs=150) for s in specs], "cpu")
    assert [h.result.coefficients for h in first] == [r.coefficients for r in short]
    assert [h.result.mse for h in first] == [r.mse for r in short]
    second = _rung(specs, 300, [h.state for h in first])  # rung 1: from 100, kept at 200
    assert [h.state.epoch for h in second] == [200] * 4
    last = _rung(specs, 450, [h.state for h in second])  # the last rung: the job's epochs
    assert all(isinstance(r, FitResult) for r in last)
    assert [r.coefficients for r in last] == [r.coefficients for r in whole]
    assert [r.loss_curve for r in last] == [r.loss_curve for r in whole]


def test_a_rung_of_at_most_a_window_keeps_no_state():
    first = _rung(_specs(), 60)
    assert all(isinstance(h, Held) and h.state is None and h.reached == 60 for h in first)


def test_a_job_that_diverges_inside_a_rung_ends_there():
    specs = _specs(lrs=(1e-5, 5.0), degree=3, optimizer="sgd")
    out = _rung(specs, 250)
    assert isinstance(out[0], Held)
    assert isinstance(out[1], FitResult) and out[1].status == "diverged"
    assert out[1].diverged_at_epoch == fit_many([specs[1]], "cpu")[0].diverged_at_epoch


def test_a_worker_asked_to_stop_hands_back_states_inside_a_rung():
    out = _rung(_specs(), 350, halt=lambda done: done >= 100)
    assert all(isinstance(s, JobState) and s.epoch == 100 for s in out)


def test_a_rung_stopped_midway_continues_to_the_rungs_own_result():
    specs = _specs()
    whole = _rung(specs, 350)  # to 300, kept there, on to 350
    stopped = _rung(specs, 350, halt=lambda done: done >= 200)
    assert [s.epoch for s in stopped] == [200] * 4
    again = _rung(specs, 350, stopped)
    assert [h.result.coefficients for h in again] == [h.result.coefficients for h in whole]
    assert [h.state.arrays["params"].tolist() for h in again] == [
        h.state.arrays["params"].tolist() for h in whole]
