"""The fits against the mathematics: the closed-form optimum, the stability limit of gradient
descent on the sum of squares, and a well-conditioned fit reaching the optimum."""

from __future__ import annotations

import numpy as np
import pytest

from polyfit_models import VARIANTS, fit, fit_many
from polyfit_models.problem import optimum_mse
from tests.support.numerics import SSE_MONOMIAL_VARIANTS, spec, stability_limit


@pytest.mark.parametrize("target", ["sin", "cos", "exp", "tanh"])
@pytest.mark.parametrize("degree", [1, 3, 6])
def test_optimum_matches_monomial_least_squares(target, degree):
    x = np.linspace(-2.0, 1.5, 500)
    y = {"sin": np.sin, "cos": np.cos, "exp": np.exp, "tanh": np.tanh}[target](x)
    V = np.vander(x, degree + 1, increasing=True)
    coef, *_ = np.linalg.lstsq(V, y, rcond=None)
    expected = np.mean((V @ coef - y) ** 2)
    assert optimum_mse(target, -2.0, 1.5, 500, degree) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_reported_optimum_is_the_optimum_of_the_jobs_degree(name):
    s = spec(name, epochs=100)
    assert fit(s).optimum_mse == pytest.approx(optimum_mse("sin", s.x_start, s.x_stop,
                                                            s.x_points, s.degree), rel=1e-12)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_no_fit_beats_the_optimum(name):
    r = fit(spec(name, epochs=300))
    assert r.mse >= r.optimum_mse * (1 - 1e-9)


@pytest.mark.parametrize("name", SSE_MONOMIAL_VARIANTS)
@pytest.mark.parametrize("degree", [1, 2, 3])
def test_gradient_descent_below_the_stability_limit_converges_above_it_diverges(name, degree):
    dtype = "float64" if name == "numpy" else "float32"
    limit = stability_limit(degree, dtype=np.float32 if dtype == "float32" else np.float64)
    below, above = fit_many([spec(name, degree=degree, lr=0.95 * limit, epochs=600, seed=s)
                             for s in (1, 2)]), \
        fit_many([spec(name, degree=degree, lr=1.05 * limit, epochs=600, seed=s)
                  for s in (1, 2)])
    for r in below:
        assert r.status == "succeeded" and r.diverged_at_epoch is None
        assert r.loss_curve[-1][1] <= r.loss_curve[0][1] * (1 + 1e-5)  # flat once converged
    for r in above:
        assert r.status == "diverged" and 0 < r.diverged_at_epoch <= 600
        assert r.final_loss is not None and np.isfinite(r.final_loss)


@pytest.mark.parametrize("name,degree", [("autograd", 1), ("autograd", 2), ("tensor", 2),
                                         ("numpy", 1)])
def test_well_conditioned_gradient_descent_reaches_the_optimum(name, degree):
    r = fit(spec(name, degree=degree, lr=0.5 * stability_limit(degree), epochs=2000))
    assert r.status == "succeeded"
    assert r.mse == pytest.approx(r.optimum_mse, rel=1e-3)


@pytest.mark.parametrize("degree", [1, 3])
def test_module_with_adam_gets_near_the_optimum(degree):
    r = fit(spec("module", degree=degree, lr=1e-2, epochs=3000, dtype="float64"))
    assert r.mse <= 1.5 * r.optimum_mse


@pytest.mark.parametrize("name", list(VARIANTS))
def test_default_settings_reduce_the_loss_and_stay_finite(name):
    r = fit(spec(name, epochs=1000, seed=3))
    assert r.status == "succeeded"
    losses = [loss for _, loss in r.loss_curve]
    assert [e for e, _ in r.loss_curve] == list(range(99, 1000, 100))
    assert losses[-1] < losses[0] and r.final_loss <= losses[-1] * 1.01


@pytest.mark.parametrize("name", ["numpy", "tensor", "autograd"])
def test_lesson_defaults_converge_like_the_lesson(name):
    # The lesson's cubic, lr 1e-6, 2000 epochs, ends near y = 0.84 x - 0.09 x^3 from any start
    # (the slow directions of the ill-conditioned problem keep a trace of the start).
    for r in fit_many([spec(name, seed=seed) for seed in (0, 11)]):
        a, b, c, d = r.coefficients
        assert b == pytest.approx(0.84, abs=0.05) and d == pytest.approx(-0.091, abs=0.006)
        assert r.mse < 2 * r.optimum_mse


def test_final_loss_is_the_training_objective_of_the_reported_coefficients():
    for name in VARIANTS:
        r = fit(spec(name, epochs=200))
        s = spec(name)
        n = s.x_points
        if VARIANTS[name].loss == "sse":
            assert r.final_loss == pytest.approx(r.mse * n, rel=1e-3), name
        elif name == "module":
            assert r.final_loss == pytest.approx(r.mse, rel=1e-3), name
