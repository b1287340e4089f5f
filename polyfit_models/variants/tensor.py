"""The ``tensor`` variant: the lesson's NumPy program on torch tensors, gradients by hand.

No autograd (the coefficients do not require grad, so no graph is recorded): forward
``y_pred = C @ V.T``, loss the sum of squared errors per job, backward
``grad = 2 (y_pred - y) @ V``, which is the lesson's ``sum(grad_y * x^k)`` for every k and
every job at once. The update is any rule of ``optim.py`` with a per-job learning rate. Runs on
the CPU or on a CUDA device.

Fused (``fused=True``), the forward, the loss and the hand-written gradients are one compiled
function (``fusion.py``): a single pass over each job's points that sums the squared errors and
the gradient's terms together.
"""

from __future__ import annotations

import torch

from .. import fusion, loop
from ..optim import RowwiseOptimizer
from ..problem import torch_grid
from .common import initial_rows, lr_column, polynomial


def sum_of_squares_and_gradient(coef: torch.Tensor, powers_t: torch.Tensor, y: torch.Tensor):
    """Per job, the sum of squared errors of the polynomials ``coef`` against the (N,) target
    ``y`` and its gradient written by hand, ``grad_k = sum(2 (y_pred - y) x^k)``: the lesson's
    NumPy backward. Every output is a sum over the points of the same row, so compiled they are
    one loop over the points (the error is never stored)."""
    err = polynomial(coef, powers_t) - y
    loss = (err * err).sum(dim=1)
    grad = torch.stack([(err * powers_t[k]).sum(dim=1) for k in range(powers_t.shape[0])], dim=1)
    return loss, 2.0 * grad


class TensorProgram:
    """A batch of hand-differentiated polynomial fits (rows of ``coef`` are jobs)."""

    def __init__(self, specs, device: torch.device, fused: bool = False) -> None:
        spec = specs[0]
        _, y, Vt = torch_grid(spec, spec.degree, device)
        batch = len(specs)
        self.Vt, self.y = Vt, y
        self.fused = (fusion.compiled(sum_of_squares_and_gradient,
                                      (spec.degree, spec.dtype, device)) if fused else None)
        # The error y_pred - y = C @ V^T - y as one product: each row of coefficients carries
        # a constant -1 and the powers carry y as one more row. (addmm would first copy y into
        # the output and then add the product: two passes over the batch instead of one.)
        self.powers_and_y = torch.cat([Vt, y.unsqueeze(0)])
        self.coef_and_minus_one = torch.cat(
            [initial_rows(specs, spec.degree + 1, device), Vt.new_full((batch, 1), -1.0)], dim=1)
        self.coef = self.coef_and_minus_one[:, :-1]  # the trainable view, updated in place
        self.Vt_T = Vt.T
        # Every epoch writes into the same buffers: a fresh (B, x_points) tensor per epoch costs
        # page faults that take longer than the arithmetic.
        self.err = Vt.new_empty((batch, spec.x_points))
        self.loss = Vt.new_empty((batch,))
        self.grad = torch.empty_like(self.coef)
        self.batch_size = batch
        self.params = [self.coef]
        self.param_rows = [slice(None)]
        self.optimizer = RowwiseOptimizer(spec.optimizer, self.params, lr_column(specs, device))

    def evaluate(self, epoch: int, with_grads: bool):
        if self.fused is not None:
            loss, grad = self.fused(self.coef, self.Vt, self.y)
            return loss, [grad] if with_grads else None
        # forward, y_pred = C @ V^T, written straight as the error y_pred - y
        torch.mm(self.coef_and_minus_one, self.powers_and_y, out=self.err)
        # sum of squared errors, as the squared 2-norm of each row: one pass over the batch
        # without a (B, x_points) temporary, where (err * err).sum(1) takes two and one
        torch.linalg.vector_norm(self.err, dim=1, out=self.loss).square_()
        if not with_grads:
            return self.loss, None
        # backward: grad_k = sum(2 (y_pred - y) x^k), every k and job in one product
        torch.mm(self.err, self.Vt_T, out=self.grad).mul_(2.0)
        return self.loss, [self.grad]

    def coefficients(self, params):
        return params[0]


def train(specs, device, fused: bool = False, **options) -> loop.RawFits:
    """``options``: ``loop.run``'s stop, watch, halt and resume."""
    return loop.run(TensorProgram(specs, device, fused), specs[0].epochs, **options)
