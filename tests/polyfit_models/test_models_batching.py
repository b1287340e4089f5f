"""Batched training: a job's result does not depend on its batch-mates, divergence is per job
and exact, and nothing a job does makes ``fit`` raise."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import polyfit_models.runner as runner
from polyfit_models import VARIANTS, fit, fit_many
from tests.support.numerics import spec, stability_limit

EPOCHS = 300
# (variant, optimizer) -> lrs: an ordinary one, a faster one, and one far past stability.
# Adam and RMSprop steps are bounded by the lr, so no lr <= 10 makes them blow up: no mate of
# theirs diverges; their rows still differ in lr and seed.
MIXES = {
    ("numpy", "sgd"): (1e-6, 3e-6, 1e-2), ("tensor", "sgd"): (1e-6, 3e-6, 1e-2),
    ("autograd", "sgd"): (1e-6, 3e-6, 1e-2), ("legendre", "sgd"): (5e-6, 1e-5, 5.0),
    ("module", "adam"): (1e-3, 1e-2, 1e-1), ("dynamic", "momentum"): (1e-8, 2e-8, 1.0),
    ("module", "momentum"): (1e-3, 3e-3, 1.0), ("tensor", "momentum"): (1e-7, 3e-7, 1e-2),
    ("autograd", "adam"): (1e-3, 1e-2, 1e-1), ("legendre", "rmsprop"): (1e-3, 1e-2, 1e-1),
    ("dynamic", "sgd"): (1e-8, 3e-8, 1.0),
}


def close(a, b, rtol):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)))


def mixed_batch(name, optimizer, dtype):
    lrs = MIXES[name, optimizer]
    return [spec(name, lr=lr, seed=seed, epochs=EPOCHS, dtype=dtype, optimizer=optimizer)
            for seed, lr in [(0, lrs[0]), (5, lrs[1]), (1, lrs[2]), (9, lrs[0]), (123, lrs[1])]]


@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-4), ("float64", 1e-6)])
@pytest.mark.parametrize("name,optimizer", list(MIXES))
def test_a_job_in_a_mixed_batch_equals_the_job_alone(name, optimizer, dtype, rtol):
    specs = mixed_batch(name, optimizer, dtype)
    together = fit_many(specs)
    if optimizer not in ("adam", "rmsprop"):
        assert together[2].status == "diverged"  # the diverging mate
    for s, r in zip(specs, together):
        alone = fit(s)
        assert r.status == alone.status and r.diverged_at_epoch == alone.diverged_at_epoch
        assert close(r.coefficients, alone.coefficients, rtol), (s, r.coefficients,
                                                                 alone.coefficients)
        assert r.final_loss == pytest.approx(alone.final_loss, rel=rtol * 10)
        assert [e for e, _ in r.loss_curve] == [e for e, _ in alone.loss_curve]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_results_come_back_in_input_order_across_groups(name):
    specs = [spec(name, seed=s, epochs=100, degree=d) for s, d in
             [(0, 4), (1, 5), (2, 4), (3, 5)]]
    shuffled = [specs[i] for i in (3, 0, 2, 1)]
    by_spec = dict(zip(specs, fit_many(specs)))
    for s, r in zip(shuffled, fit_many(shuffled)):
        assert r.coefficients == by_spec[s].coefficients


def test_cpu_chunks_do_not_change_results(monkeypatch):
    specs = [spec("autograd", seed=s, lr=lr, epochs=EPOCHS) for s in range(6)
             for lr in (1e-6, 3e-6)]
    whole = fit_many(specs)
    monkeypatch.setattr(runner, "CPU_CHUNK_BYTES", 1)  # one job per chunk
    for a, b in zip(whole, fit_many(specs)):
        assert close(a.coefficients, b.coefficients, 1e-4)


def test_diverged_job_does_not_stop_its_batch():
    limit = stability_limit(3, dtype=np.float32)
    ok, bad = spec("tensor", lr=0.5 * limit, seed=1, epochs=EPOCHS), \
        spec("tensor", lr=1.3 * limit, seed=2, epochs=EPOCHS)
    together = fit_many([bad, ok])
    assert together[0].status == "diverged" and together[1].status == "succeeded"
    alone_bad = fit(bad)
    assert together[0].diverged_at_epoch == alone_bad.diverged_at_epoch
    assert 0 < together[0].diverged_at_epoch < EPOCHS
    assert close(together[1].coefficients, fit(ok).coefficients, 1e-5)
    assert together[1].loss_curve[-1][0] == EPOCHS - 1


@pytest.mark.parametrize("name", ["numpy", "tensor", "autograd"])
def test_diverged_at_epoch_is_the_first_bad_epoch(name):
    # Replay the job by hand in float64 to find the first epoch whose loss leaves the bounds.
    limit = stability_limit(2)
    s = spec(name, degree=2, lr=1.2 * limit, seed=4, epochs=EPOCHS, dtype="float64")
    r = fit(s)
    x = np.linspace(s.x_start, s.x_stop, s.x_points)
    y, V = np.sin(x), np.vander(x, 3, increasing=True)
    coef = np.random.default_rng(4).standard_normal(3)
    first_loss, last_good = None, coef
    for epoch in range(EPOCHS + 1):
        err = V @ coef - y
        loss = err @ err
        first_loss = loss if first_loss is None else first_loss
        if not loss <= 1e6 * max(first_loss, 1.0):
            break
        last_good = coef
        coef = coef - s.lr * 2 * (err @ V)
    assert r.diverged_at_epoch == epoch
    assert close(r.coefficients, last_good, 1e-9)
    assert all(e < epoch for e, _ in r.loss_curve)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_divergence_never_raises_and_results_stay_json_safe(name):
    # sgd, because Adam and RMSprop steps are bounded by the lr and never blow up.
    specs = [spec(name, lr=10.0, epochs=500, seed=1, optimizer="sgd"),
             spec(name, lr=10.0, epochs=500, seed=2, optimizer="sgd",
                  degree=VARIANTS[name].max_degree),
             spec(name, epochs=150, seed=3)]
    results = fit_many(specs)
    assert [r.status for r in results[:2]] == ["diverged", "diverged"]
    for r in results:
        d = r.to_dict()
        json.dumps(d, allow_nan=False)
        assert json.loads(json.dumps(d)) == d  # every value JSON-safe, none changed
    assert results[2].status == "succeeded"


def test_whole_batch_diverging_stops_early():
    r = fit(spec("autograd", lr=10.0, epochs=200_000))
    assert r.status == "diverged" and r.diverged_at_epoch < 10 and r.duration_s < 5


@pytest.mark.parametrize("name", list(VARIANTS))
def test_same_spec_gives_bit_identical_results_whatever_ran_before(name):
    s = spec(name, epochs=200, seed=42)
    first = fit(s)
    fit_many([spec(name, epochs=50, seed=k) for k in range(3)])
    torch.manual_seed(1234)
    np.random.seed(99)
    random.seed(7)
    torch.rand(10), np.random.rand(10), random.random()
    again = fit(s)
    assert again.coefficients == first.coefficients and again.loss_curve == first.loss_curve


@pytest.mark.parametrize("name", list(VARIANTS))
def test_seed_drives_the_start(name):
    a, b = fit_many([spec(name, epochs=1, seed=1), spec(name, epochs=1, seed=2)])
    assert a.coefficients != b.coefficients


def test_fit_leaves_torch_threads_and_global_rngs_alone():
    threads = torch.get_num_threads()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    fit_many([spec(name, epochs=20) for name in VARIANTS])
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for a, b in zip(np.random.get_state(), np_state))
