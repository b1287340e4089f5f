"""A stored job's fitted model evaluated at given points: what the figure (``plot.py``) and
the dashboard's charts draw, in a module of its own so that the dashboard does not load
matplotlib."""

from __future__ import annotations

import numpy as np

from polyfit_models import VARIANTS
from store.jobs import JobRow


def fitted_values(job: JobRow, x: np.ndarray) -> np.ndarray | None:
    """The job's fitted model at ``x``: its own coefficients through its variant's
    ``predict`` (the model its mse was computed from), else its monomial coefficients; None
    when it left no finite model."""
    coefficients = job.coefficients
    if coefficients and all(isinstance(c, (int, float)) for c in coefficients):
        return VARIANTS[job.variant].predict(np.asarray([coefficients], dtype=float), x,
                                             job.degree)[0]
    if job.monomial and all(isinstance(c, (int, float)) for c in job.monomial):
        return np.polynomial.polynomial.polyval(x, np.asarray(job.monomial, dtype=float))
    return None
