"""The batched program of the ``chebyshev`` variant: rows of ``coef`` are jobs, each with its
own learning rate and seed; ``polyfit_models.program.run`` does the epochs, divergence, early
stop and live curves."""

from __future__ import annotations

import numpy as np
import torch

from polyfit_models.program import (
    RawFits,
    RowwiseOptimizer,
    grid,
    initial_rows,
    lr_column,
    run,
    target_values,
    torch_dtype,
)

from . import SCALE


class ChebyshevProgram:
    def __init__(self, specs, device: torch.device) -> None:
        spec = specs[0]
        x = grid(spec.x_start, spec.x_stop, spec.x_points)
        basis = np.polynomial.chebyshev.chebvander(x / SCALE, spec.degree).T  # (n + 1, N)

        def put(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device, torch_dtype(spec.dtype))

        self.basis, self.y = put(basis), put(target_values(spec.target, x))
        self.coef = initial_rows(specs, spec.degree + 1, device).requires_grad_()
        self.batch_size = len(specs)
        self.params = [self.coef]
        self.param_rows = [slice(None)]
        self.optimizer = RowwiseOptimizer(spec.optimizer, self.params, lr_column(specs, device))

    def evaluate(self, epoch: int, with_grads: bool):
        loss = ((self.coef @ self.basis - self.y) ** 2).mean(dim=1)  # one loss per job
        if not with_grads:
            return loss.detach(), None
        loss.sum().backward()  # each job's loss depends on its own row only
        grad, self.coef.grad = self.coef.grad, None
        return loss.detach(), [grad]

    def coefficients(self, params):
        return params[0]


def train(specs, device, stop=None, watch=None) -> RawFits:
    return run(ChebyshevProgram(specs, device), specs[0].epochs, stop, watch)
