"""The NumPy side of the variants: how each one's final parameters become a polynomial, in
float64, to score every variant the same way and to report its ordinary-basis coefficients.

This module imports NumPy only (never torch), so the registry, job specs and everything the
scheduler needs load without torch; the training code of each variant imports torch itself."""

from __future__ import annotations

import numpy as np


def monomial_predict(coefficients: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    """Values (B, N) of the polynomials with ascending-power rows ``coefficients`` at ``x``."""
    return coefficients @ np.vander(x, coefficients.shape[1], increasing=True).T


def monomial_identity(coefficients: np.ndarray, degree: int) -> list[float]:
    """The ordinary-basis coefficients of a monomial variant: its own parameters."""
    return [float(c) for c in coefficients]


def legendre_predict(coefficients: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    """Float64 values (B, N) of ``a + b P_n(c + d x)`` for rows ``[a, b, c, d]``."""
    a, b, c, d = (coefficients[:, i:i + 1] for i in range(4))
    unit = np.zeros(degree + 1)
    unit[degree] = 1.0
    return a + b * np.polynomial.legendre.legval(c + d * x, unit)


def legendre_monomial(coefficients: np.ndarray, degree: int) -> list[float]:
    """``a + b P_n(c + d x)`` expanded into ascending powers of x (length n + 1)."""
    a, b, c, d = (float(v) for v in coefficients)
    unit = np.zeros(degree + 1)
    unit[degree] = 1.0
    p_n = np.polynomial.Polynomial(np.polynomial.legendre.leg2poly(unit))
    expanded = a + b * p_n(np.polynomial.Polynomial([c, d]))
    out = np.zeros(degree + 1)
    out[: len(expanded.coef)] = expanded.coef
    return [float(v) for v in out]


def sharing_matrices(degree: int) -> np.ndarray:
    """``S[k - 4]`` for k = 4..degree: the (5, degree + 1) 0/1 matrix that puts a, b, c, d on
    the powers 0..3 and the one weight e on every power 4..k (the ``dynamic`` variant)."""
    S = np.zeros((degree - 3, 5, degree + 1))
    for k in range(4, degree + 1):
        S[k - 4, :4, :4] = np.eye(4)
        S[k - 4, 4, 4:k + 1] = 1.0
    return S


def dynamic_full_monomial(coefficients: np.ndarray, degree: int) -> np.ndarray:
    """Rows ``[a, b, c, d, e]`` -> ascending powers at full degree ``[a, b, c, d, e, ..., e]``."""
    coefficients = np.atleast_2d(coefficients)
    return coefficients @ sharing_matrices(degree)[-1]


def dynamic_predict(coefficients: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    full = dynamic_full_monomial(coefficients, degree)
    return full @ np.vander(x, degree + 1, increasing=True).T


def dynamic_monomial(coefficients: np.ndarray, degree: int) -> list[float]:
    return [float(v) for v in dynamic_full_monomial(coefficients, degree)[0]]
