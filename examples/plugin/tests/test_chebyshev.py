"""The plugin's own tests: it is installed as polyfit sees it, and it learns sin(x)."""

from __future__ import annotations

import numpy as np

from polyfit_models import VARIANTS, JobSpec, fit_many


def test_polyfit_finds_the_variant_through_its_entry_point():
    variant = VARIANTS["chebyshev"]
    assert variant.package == "polyfit-chebyshev" and variant.version == "0.1.0"


def test_a_batch_learns_sin_and_reports_what_it_trained():
    specs = [JobSpec.create("chebyshev", degree=5, seed=s, lr=lr, epochs=1500)
             for s, lr in ((0, 0.01), (1, 0.02))]
    results = fit_many(specs)
    for r in results:
        assert r.status == "succeeded"
        assert r.mse < 1e-3  # the degree-5 optimum is about 1e-4
        # Its own loss is the mse of the model it reports, and the monomial form is that model.
        assert abs(r.final_loss - r.mse) < 1e-4
        x = np.linspace(-np.pi, np.pi, 2000)
        from_monomial = np.polynomial.polynomial.polyval(x, r.monomial)
        from_basis = VARIANTS["chebyshev"].predict(np.array([r.coefficients]), x, 5)[0]
        assert np.allclose(from_monomial, from_basis, atol=1e-9)


def test_a_job_trains_the_same_alone_or_in_a_batch():
    alone = fit_many([JobSpec.create("chebyshev", seed=3, epochs=200)])[0]
    batch = fit_many([JobSpec.create("chebyshev", seed=s, epochs=200) for s in (1, 3, 5)])[1]
    assert np.allclose(alone.coefficients, batch.coefficients, rtol=1e-5)
