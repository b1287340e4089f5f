"""A polyfit variant from another package: ``y = sum_k c_k T_k(x / pi)``, the Chebyshev
polynomials of x / pi, trained on the mean squared error.

This module is what the entry point names, and the registry imports it in every polyfit process
(schedulers too): it declares the variant with NumPy only; the torch program is in ``train.py``,
imported when a worker trains a batch."""

from __future__ import annotations

import math

import numpy as np

from polyfit_models import Variant, make_defaults

SCALE = math.pi


def predict(coefficients: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    """Float64 values (B, N) of the fitted series, rows of ``coefficients`` being c_0..c_n."""
    basis = np.polynomial.chebyshev.chebvander(x / SCALE, coefficients.shape[1] - 1)
    return coefficients @ basis.T


def monomial(coefficients: np.ndarray, degree: int) -> list[float]:
    """The series as ascending powers of x (for the formula polyfit prints)."""
    in_u = np.polynomial.chebyshev.cheb2poly(np.asarray(coefficients, dtype=float))
    return [float(c) / SCALE ** k for k, c in enumerate(in_u)]


def train(specs, device, **options):
    from .train import train as train_batch  # torch, only where a batch is trained

    return train_batch(specs, device, **options)


VARIANT = Variant(
    name="chebyshev",
    summary="sum of c_k T_k(x / pi), Chebyshev polynomials, mean squared error",
    loss="mse",
    train=train,
    predict=predict,
    monomial=monomial,
    defaults=make_defaults(lr=0.01, degree=5, epochs=2000, optimizer="adam", dtype="float32"),
    live_rows=lambda degree: 5,
)
