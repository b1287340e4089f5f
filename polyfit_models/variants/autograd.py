"""The ``autograd`` variant: the lesson's second program, gradients by ``loss.backward()``.

The coefficients are a leaf tensor with ``requires_grad``; the forward pass builds the graph
``y_pred = C @ V.T``, ``loss = sum((y_pred - y)^2)`` per job, and autograd fills
``C.grad``. Summing the per-job losses before ``backward`` gives each row exactly its own
gradient, because a job's loss depends on its own row only. ``sgd`` is the lesson's manual
``p -= lr * p.grad``; the other rules come from ``optim.py``.

Fused (``fused=True``), the forward and loss are one compiled function of the coefficients
(``fusion.py``): one pass over each job's points for the loss, and one for the gradients that
autograd's ``backward`` computes through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import fusion, loop
from ..optim import RowwiseOptimizer
from ..problem import torch_grid
from .common import initial_rows, lr_column, polynomial


def sum_of_squares(coef: torch.Tensor, powers_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The lesson's ``(y_pred - y).pow(2).sum()`` per job, ``y_pred`` the polynomials ``coef``
    and ``y`` the (N,) target.

    ``mse_loss`` with no reduction is that same elementwise (y_pred - y)^2 in one kernel, and
    its backward is one pass over the batch where pow's takes three."""
    y_pred = polynomial(coef, powers_t)
    return F.mse_loss(y_pred, y.expand_as(y_pred), reduction="none").sum(dim=1)


class AutogradProgram:
    """A batch of polynomial fits differentiated by autograd (rows of ``coef`` are jobs)."""

    def __init__(self, specs, device: torch.device, fused: bool = False) -> None:
        spec = specs[0]
        _, self.y, self.Vt = torch_grid(spec, spec.degree, device)
        self.coef = initial_rows(specs, spec.degree + 1, device).requires_grad_()
        self.batch_size = len(specs)
        self.params = [self.coef]
        self.param_rows = [slice(None)]
        self.optimizer = RowwiseOptimizer(spec.optimizer, self.params, lr_column(specs, device))
        self.loss = (fusion.compiled(sum_of_squares, (spec.degree, spec.dtype, device)) if fused
                     else sum_of_squares)

    def evaluate(self, epoch: int, with_grads: bool):
        loss = self.loss(self.coef, self.Vt, self.y)
        if not with_grads:
            return loss.detach(), None
        # Summed, not loss.backward(ones): a gradient tensor handed to backward makes torch import
        # sympy (0.3 s) on the first call. The gradient of each job's loss is the same.
        loss.sum().backward()
        grad, self.coef.grad = self.coef.grad, None
        return loss.detach(), [grad]

    def coefficients(self, params):
        return params[0]


def train(specs, device, fused: bool = False, **options) -> loop.RawFits:
    """``options``: ``loop.run``'s stop, watch, halt and resume."""
    return loop.run(AutogradProgram(specs, device, fused), specs[0].epochs, **options)
