"""The ``numpy`` variant: the lesson's first program, NumPy only.

Forward ``y_pred = sum_k c_k x^k``, loss the sum of squared errors, hand-written backward
``grad_y = 2 (y_pred - y)``, ``grad_k = sum(grad_y * x^k)``, plain gradient descent. A batch
stacks its jobs' coefficients as the rows of ``C`` and keeps the powers ``x^k`` as the columns of
``V``, so the lesson's per-coefficient sums become two matrix products, ``C @ V.T`` forward and
``grad_y @ V`` backward, one row per job. Divergence follows ``loop.py``'s rule
(``explosion_limit``), checked every epoch with NumPy masks (NumPy's per-call cost is small
enough not to need the torch loop's windowed bookkeeping), so this variant never touches torch.
"""

from __future__ import annotations

import numpy as np

from ..loop import CURVE_EVERY, RawFits, explosion_limit
from ..problem import (
    grid,
    numpy_dtype,
    powers,
    seeded_generators,
    standard_normal_rows,
    target_values,
)
from ..state import Suspended


def train(specs, device, stop=None, watch=None, halt=None,
          resume: Suspended | None = None) -> RawFits:
    """Train ``specs`` (one batch: equal except lr and seed) on the CPU with NumPy; ``stop``:
    each job's stop goal as a loss (NaN for none), or None; ``watch``, ``halt`` and ``resume``
    as ``loop.run``'s (plain gradient descent has no optimizer state, and this loop checks
    every epoch, so it keeps no fallback window either)."""
    spec = specs[0]
    dtype = numpy_dtype(spec.dtype)
    x = grid(spec.x_start, spec.x_stop, spec.x_points)
    y = target_values(spec.target, x).astype(dtype)
    V = powers(x, spec.degree).astype(dtype)
    coef = standard_normal_rows(seeded_generators(s.seed for s in specs),
                                spec.degree + 1).astype(dtype)
    lr = np.array([[s.lr] for s in specs], dtype=dtype)
    batch, epochs = len(specs), spec.epochs
    # y_pred - y = C @ V^T - y as one product: each coefficient row carries a constant -1 and
    # the powers carry y as one more row (a separate subtraction is one more pass over the
    # batch). Powers are stored one row per power, so both products stream along the points.
    powers_and_y = np.concatenate([V.T, y[None, :]]).astype(dtype)
    coef_and_minus_one = np.concatenate([coef, np.full((batch, 1), -1.0, dtype=dtype)], axis=1)
    coef = coef_and_minus_one[:, :-1]  # the trainable view, updated in place
    Vt_T = powers_and_y[:-1].T
    err = np.empty((batch, spec.x_points), dtype=dtype)  # reused: no page faults per epoch
    loss = np.empty(batch, dtype=dtype)
    grad = np.empty_like(coef)

    active = np.ones(batch, dtype=bool)
    diverged_at = np.full(batch, -1, dtype=np.int64)
    stopped_at = np.full(batch, -1, dtype=np.int64)
    final_loss = np.full(batch, np.nan, dtype=dtype)
    curve = np.full((batch, epochs // CURVE_EVERY), np.nan, dtype=dtype)
    good = coef.copy()
    limit = None
    start, halted = 0, False
    if resume is not None:
        start, rows = resume.epoch, resume.rows
        coef[...], good[...] = rows["params"], rows["frozen"]
        final_loss[...], limit = rows["final_loss"], rows["limit"].astype(dtype)
        active[...] = rows["active"].astype(bool)
        diverged_at[...], stopped_at[...] = rows["diverged_at"], rows["stopped_at"]
        curve[:, :start // CURVE_EVERY] = rows["curve"]
    with np.errstate(all="ignore"):  # a diverging job overflows; that is detected, not an error
        for epoch in range(start, epochs + 1):
            np.matmul(coef_and_minus_one, powers_and_y, out=err)  # y_pred - y
            np.einsum("ij,ij->i", err, err, out=loss)  # sum of squared errors
            if limit is None:
                limit = explosion_limit(loss.copy())
            bad = ~(loss <= limit)
            diverged_at[bad & active] = epoch
            active &= ~bad
            kept = active
            if stop is not None and epoch < epochs:
                reached = active & (loss <= stop)
                if reached.any():  # these keep this epoch's model and loss, and retire
                    stopped_at[reached] = epoch
                    kept = active.copy()
                    active &= ~reached
            np.copyto(final_loss, loss, where=kept)
            np.copyto(good, coef, where=kept[:, None])
            if epoch % CURVE_EVERY == CURVE_EVERY - 1 and epoch < epochs:
                curve[:, epoch // CURVE_EVERY] = loss
                if watch is not None:
                    k = epoch // CURVE_EVERY + 1
                    watch(epoch + 1, lambda k=k: (curve[:, :k].astype(np.float64), active.copy()))
                halted = halt is not None and halt(epoch + 1)
            if epoch == epochs or not active.any():
                break
            # grad_y = 2 (y_pred - y); grad_k = sum(grad_y * x^k) for every k and job at once
            # (the factor 2 is applied after the sum: scaling by 2 is exact either way)
            np.matmul(err, Vt_T, out=grad)
            grad *= 2.0
            coef -= lr * grad
            np.copyto(coef, good, where=~active[:, None])
            if halted:
                return _suspend(epoch + 1, coef, good, final_loss, active, diverged_at,
                                stopped_at, limit, curve)
    return RawFits(coefficients=good.astype(np.float64), final_loss=final_loss.astype(np.float64),
                   diverged_at=diverged_at, curve=curve.astype(np.float64), stopped_at=stopped_at)


def _suspend(epoch, coef, good, final_loss, active, diverged_at, stopped_at, limit,
             curve) -> RawFits:
    """The batch stopped after ``epoch`` updates, with every job's state (``state.py``)."""
    rows = {"params": coef, "frozen": good, "final_loss": final_loss, "active": active,
            "diverged_at": diverged_at, "stopped_at": stopped_at, "limit": limit,
            "curve": curve[:, :epoch // CURVE_EVERY]}
    return RawFits(coefficients=good.astype(np.float64),
                   final_loss=final_loss.astype(np.float64), diverged_at=diverged_at.copy(),
                   curve=curve.astype(np.float64), stopped_at=stopped_at.copy(),
                   suspended=Suspended(epoch, {k: np.asarray(v, dtype=np.float64)
                                               for k, v in rows.items()}))
