"""The ``dynamic`` variant: the lesson's dynamic graph with a shared weight.

``y = a + b x + c x^2 + d x^3 + e x^4 + ... + e x^k`` where k is drawn anew, uniformly from
[4, degree], at every forward pass, and the one weight ``e`` is shared by all the powers above 3.
A batch keeps ``[a, b, c, d]`` as a (b, 4) parameter and ``e`` as a (b, 1) parameter per block
of rows sharing a learning rate (``torch.optim`` parameter groups, SGD with momentum 0.9 by
default, as in the lesson). Each forward pass builds, per job, the coefficient row
``[a, b, c, d, e*[4 <= k], ..., e*[degree <= k]]`` and multiplies it with the powers; autograd
then sums e's gradient over exactly the powers that job used, which is the weight sharing the
lesson demonstrates. Loss: mean squared error per job (``torch.nn.MSELoss``).

Draws: job j's k sequence comes from ``numpy.random.default_rng(seed_j)`` (after its five
initial parameters), so it is the same whatever the batch. The final scoring pass of
``loop.run`` draws one more k. Results score the model at its full degree (all the powers
x^4..x^degree, i.e. k = degree): that is the polynomial reported as ``monomial`` and the one
``mse`` measures.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import loop
from ..optim import TorchOptimizer
from ..problem import seeded_generators, torch_dtype, torch_grid
from .common import lr_blocks

#: Epochs of k draws generated at a time (bounds the memory of the draws for long fits).
DRAW_BLOCK = 1024


class DynamicPolynomial(torch.nn.Module):
    """The lesson's ``DynamicHighOrder`` for a batch: a cubic plus a shared weight e on
    x^4..x^k, k per job and per call."""

    def __init__(self, init: torch.Tensor, blocks: list[slice], degree: int) -> None:
        super().__init__()
        self.abcd = torch.nn.ParameterList(
            [torch.nn.Parameter(init[rows, :4].clone()) for rows in blocks])
        self.e = torch.nn.ParameterList(
            [torch.nn.Parameter(init[rows, 4:].clone()) for rows in blocks])
        self.register_buffer("high_powers", torch.arange(4, degree + 1, device=init.device))

    def forward(self, powers: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Values (B, N) at the points whose powers 0..degree are the rows of ``powers``, with
        job j summing the powers 4..k[j]."""
        abcd = torch.cat(list(self.abcd), dim=0)
        e = torch.cat(list(self.e), dim=0)
        used = (self.high_powers <= k.unsqueeze(1)).to(e.dtype)  # (B, degree - 3)
        return torch.cat([abcd, e * used], dim=1) @ powers.T


class DynamicProgram:
    def __init__(self, specs, device: torch.device) -> None:
        spec = specs[0]
        self.degree = spec.degree
        _, y, self.V = torch_grid(spec, spec.degree, device)
        self.generators = seeded_generators(s.seed for s in specs)
        init = np.stack([g.standard_normal(5) for g in self.generators])
        init_t = torch.from_numpy(init).to(device=device, dtype=torch_dtype(spec.dtype))
        blocks = lr_blocks(specs)
        self.model = DynamicPolynomial(init_t, [rows for rows, _ in blocks], spec.degree)
        self.criterion = torch.nn.MSELoss(reduction="none")
        self.target = y.expand(len(specs), -1)
        self.device = device
        self.draws = None
        self.drawn_block = -1
        self.batch_size = len(specs)
        self.params = [p for pair in zip(self.model.abcd, self.model.e) for p in pair]
        self.param_rows = [rows for rows, _ in blocks for _ in range(2)]
        self.optimizer = TorchOptimizer(
            spec.optimizer, [([abcd, e], lr) for abcd, e, (_, lr)
                             in zip(self.model.abcd, self.model.e, blocks)])

    def degrees(self, epoch: int) -> torch.Tensor:
        """The top power k each job uses at ``epoch`` (epochs are visited in order; the draws
        are made DRAW_BLOCK epochs at a time, so asking twice for one epoch is harmless)."""
        while epoch // DRAW_BLOCK > self.drawn_block:
            draws = np.stack([g.integers(4, self.degree + 1, size=DRAW_BLOCK)
                              for g in self.generators])
            self.draws = torch.from_numpy(draws).to(self.device)
            self.drawn_block += 1
        return self.draws[:, epoch % DRAW_BLOCK]

    def evaluate(self, epoch: int, with_grads: bool):
        k = self.degrees(epoch)
        with torch.set_grad_enabled(with_grads):
            loss = self.criterion(self.model(self.V, k), self.target).mean(dim=1)
        if not with_grads:
            return loss, None
        loss.sum().backward()
        grads = [p.grad for p in self.params]
        self.model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    def coefficients(self, params):
        abcd = torch.cat(list(params[0::2]), dim=0)
        e = torch.cat(list(params[1::2]), dim=0)
        return torch.cat([abcd, e], dim=1)


def train(specs, device) -> loop.RawFits:
    return loop.run(DynamicProgram(specs, device), specs[0].epochs)


def full_degree_monomial(coefficients: np.ndarray, degree: int) -> np.ndarray:
    """Rows ``[a, b, c, d, e]`` -> ascending powers at full degree ``[a, b, c, d, e, ..., e]``."""
    coefficients = np.atleast_2d(coefficients)
    e = coefficients[:, 4:5]
    return np.concatenate([coefficients[:, :4], np.repeat(e, degree - 3, axis=1)], axis=1)


def predict(coefficients: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    full = full_degree_monomial(coefficients, degree)
    return full @ np.vander(x, degree + 1, increasing=True).T


def monomial(coefficients: np.ndarray, degree: int) -> list[float]:
    return [float(v) for v in full_degree_monomial(coefficients, degree)[0]]
