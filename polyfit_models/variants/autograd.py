"""The ``autograd`` variant: the lesson's second program, gradients by ``loss.backward()``.

The coefficients are a leaf tensor with ``requires_grad``; the forward pass builds the graph
``y_pred = C @ V.T``, ``loss = sum((y_pred - y)^2)`` per job, and autograd fills
``C.grad``. Summing the per-job losses before ``backward`` gives each row exactly its own
gradient, because a job's loss depends on its own row only. ``sgd`` is the lesson's manual
``p -= lr * p.grad``; the other rules come from ``optim.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import loop
from ..optim import RowwiseOptimizer
from ..problem import torch_dtype, torch_grid
from .common import initial_rows, lr_column


class AutogradProgram:
    """A batch of polynomial fits differentiated by autograd (rows of ``coef`` are jobs)."""

    def __init__(self, specs, device: torch.device) -> None:
        spec = specs[0]
        _, y, self.Vt = torch_grid(spec, spec.degree, device)
        self.y = y.expand(len(specs), -1)
        self.coef = initial_rows(specs, spec.degree + 1, device).requires_grad_()
        self.batch_size = len(specs)
        self.seed_grad = torch.ones(len(specs), dtype=torch_dtype(spec.dtype), device=device)
        self.params = [self.coef]
        self.param_rows = [slice(None)]
        self.optimizer = RowwiseOptimizer(spec.optimizer, self.params, lr_column(specs, device))

    def evaluate(self, epoch: int, with_grads: bool):
        y_pred = self.coef @ self.Vt
        # The lesson's (y_pred - y).pow(2).sum() per job; mse_loss with no reduction is
        # that same elementwise (y_pred - y)^2 in one kernel, and its backward is one pass
        # over the batch where pow's takes three.
        loss = F.mse_loss(y_pred, self.y, reduction="none").sum(dim=1)
        if not with_grads:
            return loss, None
        loss.backward(self.seed_grad)  # = loss.sum().backward(), without the sum
        grad, self.coef.grad = self.coef.grad, None
        return loss.detach(), [grad]

    def coefficients(self, params):
        return params[0]


def train(specs, device) -> loop.RawFits:
    return loop.run(AutogradProgram(specs, device), specs[0].epochs)
