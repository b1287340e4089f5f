"""The ``tensor`` variant: the lesson's NumPy program on torch tensors, gradients by hand.

No autograd (everything runs under ``torch.no_grad``): forward ``y_pred = C @ V.T``, loss the
sum of squared errors per job, backward ``grad = 2 (y_pred - y) @ V``, which is the lesson's
``sum(grad_y * x^k)`` for every k and every job at once. The update is any rule of ``optim.py``
with a per-job learning rate. Runs on the CPU or on a CUDA device.
"""

from __future__ import annotations

import torch

from .. import loop
from ..optim import RowwiseOptimizer
from ..problem import torch_grid
from .common import initial_rows, lr_column


class TensorProgram:
    """A batch of hand-differentiated polynomial fits (rows of ``coef`` are jobs)."""

    def __init__(self, specs, device: torch.device) -> None:
        spec = specs[0]
        _, self.y, self.V = torch_grid(spec, spec.degree, device)
        self.Vt = self.V.T.contiguous()
        self.coef = initial_rows(specs, spec.degree + 1, device)
        self.batch_size = len(specs)
        self.params = [self.coef]
        self.param_rows = [slice(None)]
        self.optimizer = RowwiseOptimizer(spec.optimizer, self.params, lr_column(specs, device))

    def evaluate(self, epoch: int, with_grads: bool):
        with torch.no_grad():
            y_pred = self.coef @ self.Vt
            err = y_pred.sub_(self.y)
            loss = (err * err).sum(dim=1)
            if not with_grads:
                return loss, None
            grad = (err @ self.V).mul_(2.0)  # == (2 * err) @ V exactly: scaling by 2 is exact
            return loss, [grad]

    def coefficients(self, params):
        return params[0]


def train(specs, device) -> loop.RawFits:
    return loop.run(TensorProgram(specs, device), specs[0].epochs)
