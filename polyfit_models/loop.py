"""The training loop every torch variant shares, with per-job divergence.

A variant supplies a *program*: its stacked parameters (rows are jobs), an optimizer over them,
and ``evaluate(epoch, with_grads)`` returning the per-job training loss (and gradients). This
loop runs ``epochs`` updates plus one last forward pass that scores the final parameters, and
keeps, per job and with tensor operations only (no per-epoch host sync):

* the epoch at which the job's loss first went bad (not finite, or above ``EXPLOSION_FACTOR``
  times its initial loss floored at 1). From then on the job is frozen at the parameters of its
  last good epoch, which are what it reports; its batch-mates keep training untouched, because
  the freeze is a row mask and every rule is row-wise. ``diverged_at_epoch`` is the index of the
  forward pass that went bad, 0..epochs (epochs = the final scoring pass).
* its loss at every epoch with ``epoch % 100 == 99`` (the lesson's print schedule), written into
  a preallocated tensor.

The whole batch stops early once every job has diverged; that is checked every 100 epochs, the
only host sync in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

#: A loss this many times above the job's initial loss (or above this many units, for a tiny
#: initial loss) counts as divergence. Below the stability limit gradient descent on a
#: quadratic never raises the loss at all, and Adam's overshoots stay orders of magnitude below
#: this; past the limit the loss grows geometrically and crosses it within a few dozen epochs,
#: well before it would overflow.
EXPLOSION_FACTOR = 1e6
LOSS_FLOOR = 1.0
#: The lesson prints the loss when ``epoch % CURVE_EVERY == CURVE_EVERY - 1``.
CURVE_EVERY = 100


@dataclass
class RawFits:
    """Per-job outcome of one batch, as float64/int64 host arrays (rows are jobs)."""

    coefficients: np.ndarray  # (B, P); the last good parameters
    final_loss: np.ndarray  # (B,); NaN where no epoch was good
    diverged_at: np.ndarray  # (B,); -1 where the job never diverged
    curve: np.ndarray  # (B, epochs // CURVE_EVERY); loss at epochs 99, 199, ...


class Program(Protocol):
    batch_size: int
    params: list[torch.Tensor]  # leaves, updated in place by the optimizer
    param_rows: list[slice]  # the jobs (rows of the batch) each of params holds
    optimizer: object  # has step(grads)

    def evaluate(self, epoch: int, with_grads: bool
                 ) -> tuple[torch.Tensor, list[torch.Tensor] | None]: ...

    def coefficients(self, params: Sequence[torch.Tensor]) -> torch.Tensor: ...


def explosion_limit(initial_loss):
    """The per-job loss above which a job has diverged, from its initial loss (NumPy or torch);
    a loss is bad unless ``loss <= limit``, which also catches NaN and +inf."""
    return EXPLOSION_FACTOR * initial_loss.clip(min=LOSS_FLOOR)


def run(program: Program, epochs: int) -> RawFits:
    """Train ``program`` for ``epochs`` updates, then score it; see the module docstring."""
    params = program.params
    ref = params[0]
    batch = program.batch_size
    active = torch.ones(batch, dtype=torch.bool, device=ref.device)
    active_rows = [active[rows].unsqueeze(1) for rows in program.param_rows]  # views: see &=
    diverged_at = torch.full((batch,), -1, dtype=torch.int64, device=ref.device)
    final_loss = torch.full((batch,), float("nan"), dtype=ref.dtype, device=ref.device)
    curve = torch.full((batch, epochs // CURVE_EVERY), float("nan"), dtype=ref.dtype,
                       device=ref.device)
    good = [p.detach().clone() for p in params]
    limit = None
    with torch.no_grad():
        for epoch in range(epochs + 1):
            training = epoch < epochs
            with torch.enable_grad():
                loss, grads = program.evaluate(epoch, training)
            if limit is None:
                limit = explosion_limit(loss)
            bad = ~(loss <= limit)
            diverged_at.masked_fill_(bad & active, epoch)
            active.logical_and_(~bad)  # in place, so active_rows stay views of it
            torch.where(active, loss, final_loss, out=final_loss)
            if epoch % CURVE_EVERY == CURVE_EVERY - 1:
                curve[:, epoch // CURVE_EVERY] = loss
                if not bool(active.any()):
                    break
            for p, g, keep in zip(params, good, active_rows):
                torch.where(keep, p, g, out=g)
            if not training:
                break
            program.optimizer.step(grads)
            for p, g, keep in zip(params, good, active_rows):
                p.copy_(torch.where(keep, p, g))
        coefficients = program.coefficients(good)
    return RawFits(
        coefficients=coefficients.double().cpu().numpy(),
        final_loss=final_loss.double().cpu().numpy(),
        diverged_at=diverged_at.cpu().numpy(),
        curve=curve.double().cpu().numpy(),
    )
