"""What the read side knows of a stored job's variant: its fitted model evaluated at given
points, its loss on the per-point scale, its place in tables and figures. What the figure
(``plot.py``) and the dashboard's charts draw, in a module of its own so that the dashboard does
not load matplotlib.

A job may be of a variant this process does not have: a plugin's (``docs/plugins.md``), read
where its package is not installed. Its rows, curves and numbers read as stored; what needs the
variant's code (its model between the points, its loss's kind) is left out, never guessed."""

from __future__ import annotations

import math
import zlib

import numpy as np

from polyfit_models import VARIANTS
from store.rows import JobRow

_ORDER = {name: i for i, name in enumerate(VARIANTS)}


def variant_rank(name: str) -> int:
    """A variant's place (colours, legends, tables): the registry's order, and a variant not
    installed here after the built-ins, by a number its name fixes (sort by (rank, name))."""
    rank = _ORDER.get(name)
    return rank if rank is not None else len(_ORDER) + zlib.crc32(name.encode()) % 89


def loss_kind(name: str) -> str | None:
    """"sse" or "mse": the loss the variant trains; None for one not installed here."""
    variant = VARIANTS.get(name)
    return variant.loss if variant is not None else None


def per_point(job: JobRow, loss: float | None) -> float | None:
    """Every variant's training loss on one scale: sum-of-squares losses divided by the
    number of points (a variant not installed here: as stored)."""
    if loss is None or not math.isfinite(loss):
        return None
    return loss / job.x_points if loss_kind(job.variant) == "sse" else loss


def fitted_values(job: JobRow, x: np.ndarray) -> np.ndarray | None:
    """The job's fitted model at ``x``: its own coefficients through its variant's
    ``predict`` (the model its mse was computed from), else its monomial coefficients; None
    when it left no finite model."""
    coefficients = job.coefficients
    variant = VARIANTS.get(job.variant)
    if variant is not None and coefficients and all(isinstance(c, (int, float))
                                                     for c in coefficients):
        return variant.predict(np.asarray([coefficients], dtype=float), x,
                                             job.degree)[0]
    if job.monomial and all(isinstance(c, (int, float)) for c in job.monomial):
        return np.polynomial.polynomial.polyval(x, np.asarray(job.monomial, dtype=float))
    return None
