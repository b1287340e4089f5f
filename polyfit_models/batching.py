"""Which jobs can share a vectorized program, and how much memory each adds to it: what the
scheduler needs to cut a sweep into batches, without importing torch."""

from __future__ import annotations

import operator

import numpy as np

from .fields import BATCH_KEY
from .problem import numpy_dtype
from .registry import VARIANTS
from .result import CURVE_EVERY
from .spec import JobSpec

_BATCH_KEY = operator.attrgetter(*BATCH_KEY)


def batch_key(spec: JobSpec) -> tuple:
    """The settings that must be equal for jobs to train as one vectorized program: all of a
    spec's fields except those each job of a batch has its own of (``fields.BATCH_KEY``: all
    but ``lr``, ``seed`` and ``stop_gap``)."""
    return _BATCH_KEY(spec)


#: float64 (x_points,) arrays a batch holds whatever its size, besides its powers: the grid, the
#: target, their copies in the batch's dtype, and the least-squares optimum's work.
_SHARED_ROWS = 8
#: float64 (x_points,) arrays of powers per degree: the powers in float64, in the batch's dtype,
#: and the Vandermonde matrices of the optimum (with LAPACK's copy) and of the final scoring.
_SHARED_ROWS_PER_POWER = 3
#: float64 (x_points,) rows per job of the final scoring (prediction, error, squared error).
_SCORING_ROWS = 3


def shared_bytes(spec: JobSpec) -> int:
    """Approximate memory a batch of ``spec``'s group holds whatever its size: grid, target,
    powers up to the degree (float64 and the batch's dtype) and the optimum's and the scoring's
    Vandermonde matrices. This is what grows with the degree: 10 million points at degree 14 is
    about 4 GiB before the first job."""
    return 8 * spec.x_points * (_SHARED_ROWS + _SHARED_ROWS_PER_POWER * (spec.degree + 1))


def bytes_per_job(spec: JobSpec) -> int:
    """Approximate peak memory one job adds to a batch: its (x_points,) rows of every live
    temporary of an epoch, its float64 scoring rows, its loss curve, its parameters and
    optimizer state."""
    variant = VARIANTS[spec.variant]
    itemsize = np.dtype(numpy_dtype(spec.dtype)).itemsize
    rows = variant.live_rows(spec.degree) * spec.x_points * itemsize
    scoring = _SCORING_ROWS * spec.x_points * 8
    curve = (spec.epochs // CURVE_EVERY) * itemsize
    params = 8 * variant.n_coefficients(spec.degree) * itemsize
    return rows + scoring + curve + params + 1024  # + draws and per-job bookkeeping


def batch_bytes(spec: JobSpec, jobs: int) -> int:
    """Approximate peak memory of training ``jobs`` jobs of ``spec``'s group as one batch (an
    upper bound: ``fit_many`` trains a CPU batch in cache-sized chunks, which use less)."""
    return shared_bytes(spec) + jobs * bytes_per_job(spec)


def jobs_within(spec: JobSpec, budget_bytes: int) -> int:
    """How many jobs of ``spec``'s group fit in ``budget_bytes`` as one batch (0: not even one)."""
    return max(0, (budget_bytes - shared_bytes(spec)) // bytes_per_job(spec))
