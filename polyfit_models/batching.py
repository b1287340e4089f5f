"""Which jobs can share a vectorized program, and how much memory each adds to it: what the
scheduler needs to cut a sweep into batches, without importing torch."""

from __future__ import annotations

import numpy as np

from .problem import numpy_dtype
from .registry import VARIANTS
from .result import CURVE_EVERY
from .spec import JobSpec


def batch_key(spec: JobSpec) -> tuple:
    """The settings that must be equal for jobs to train as one vectorized program: all of a
    spec's fields except ``lr`` and ``seed``."""
    return (spec.variant, spec.degree, spec.epochs, spec.optimizer, spec.target, spec.x_start,
            spec.x_stop, spec.x_points, spec.dtype)


def bytes_per_job(spec: JobSpec) -> int:
    """Approximate peak memory one job adds to a batch: its (x_points,) rows of every live
    temporary of an epoch, its loss curve, its parameters and optimizer state."""
    variant = VARIANTS[spec.variant]
    itemsize = np.dtype(numpy_dtype(spec.dtype)).itemsize
    rows = variant.live_rows(spec.degree) * spec.x_points * itemsize
    curve = (spec.epochs // CURVE_EVERY) * itemsize
    params = 8 * variant.n_coefficients(spec.degree) * itemsize
    return rows + curve + params + 1024  # + draws and per-job bookkeeping
