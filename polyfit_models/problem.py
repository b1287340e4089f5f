"""The fitting problem every variant shares: the target functions, the x grid, the dtypes, and
the closed-form least-squares optimum that results are judged against.

The grid and the target values are computed once in float64 with NumPy and only then cast to the
job's dtype and moved to its device, so a job sees the same data on any device and in any batch.
The optimum is computed in float64 in a Legendre basis on x rescaled to [-1, 1] (a well
conditioned least-squares problem), never from the monomial normal equations, whose condition
number explodes with the degree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import MappingProxyType

import numpy as np

#: Names of the update rules a torch variant may train with (see ``optim.py``).
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop")

#: Floating point types a job may train in.
DTYPES: tuple[str, ...] = ("float32", "float64")

#: Target name -> its NumPy function (targets are evaluated in float64 with NumPy only, then
#: cast: see the module docstring).
TARGETS: MappingProxyType[str, Callable] = MappingProxyType({
    "sin": np.sin,
    "cos": np.cos,
    "exp": np.exp,
    "tanh": np.tanh,
})

_NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64}

#: Headroom between the largest sum of squared powers a grid can produce and the dtype's
#: largest finite value: random initial coefficients of a few units and the early, growing
#: losses of a fit must still be representable, or divergence could not be told from overflow.
POWER_HEADROOM = 1e6


def numpy_dtype(name: str) -> type:
    return _NUMPY_DTYPES[name]


def torch_dtype(name: str):
    import torch  # torch is imported only where a fit runs: the scheduler never needs it

    return {"float32": torch.float32, "float64": torch.float64}[name]


def grid(x_start: float, x_stop: float, x_points: int) -> np.ndarray:
    """The float64 x grid, exactly ``numpy.linspace`` as the lesson builds it."""
    return np.linspace(x_start, x_stop, x_points)


def target_values(target: str, x: np.ndarray) -> np.ndarray:
    """The float64 target values on ``x``."""
    return TARGETS[target](x)


def powers(x: np.ndarray, degree: int) -> np.ndarray:
    """The Vandermonde matrix ``V[n, k] = x[n] ** k`` for k = 0..degree, in x's dtype."""
    return np.vander(x, degree + 1, increasing=True)


def power_sum_is_safe(degree: int, x_start: float, x_stop: float, x_points: int,
                      dtype: str) -> bool:
    """Whether ``x_points * max|x| ** (2 * degree)`` stays below the dtype's largest value with
    ``POWER_HEADROOM`` to spare (that sum is the scale of the sum-of-squares loss and of the
    gradient of the top coefficient, so it must be finite for a fit to mean anything)."""
    max_abs = max(abs(x_start), abs(x_stop))
    if max_abs == 0.0:
        return True
    log_sum = 2 * degree * math.log(max_abs) + math.log(x_points)
    return log_sum + math.log(POWER_HEADROOM) < math.log(float(np.finfo(_NUMPY_DTYPES[dtype]).max))


@functools.lru_cache(maxsize=256)
def optimum_mse(target: str, x_start: float, x_stop: float, x_points: int, degree: int) -> float:
    """Least-squares optimum of the mean squared error of a degree-``degree`` polynomial on the
    grid, in float64 (a Legendre basis on the grid mapped onto [-1, 1], solved by LAPACK)."""
    x = grid(x_start, x_stop, x_points)
    y = target_values(target, x)
    t = (2.0 * x - (x_start + x_stop)) / (x_stop - x_start)
    basis = np.polynomial.legendre.legvander(t, degree)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.mean((basis @ coef - y) ** 2))


def seeded_generators(seeds) -> list[np.random.Generator]:
    """One private generator per job, seeded by the job's seed alone: a job's draws never depend
    on its batch-mates, on the order of jobs, or on NumPy's or torch's global RNG state."""
    return [np.random.default_rng(seed) for seed in seeds]


def standard_normal_rows(generators, n: int) -> np.ndarray:
    """``n`` float64 standard normal draws per job, shape (B, n)."""
    return np.stack([g.standard_normal(n) for g in generators])


def torch_grid(spec, degree: int, device):
    """``(x, y, Vt)`` for a job on ``device`` in its dtype: the grid, the target values and the
    transposed powers ``Vt[k, n] = x[n] ** k`` (k = 0..degree), all computed in float64 first.

    The powers are stored one row per power, so that both products of a batch, ``C @ Vt``
    forward and ``E @ Vt.T`` backward, stream along the points: the BLAS kernel for
    ``E @ V`` with a column-major ``V`` of four columns is several times slower."""
    import torch

    x64 = grid(spec.x_start, spec.x_stop, spec.x_points)
    dtype = torch_dtype(spec.dtype)

    def put(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return put(x64), put(target_values(spec.target, x64)), put(powers(x64, degree).T)
