"""The ``dynamic`` variant: the lesson's dynamic graph with a shared weight.

``y = a + b x + c x^2 + d x^3 + e x^4 + ... + e x^k`` where k is drawn anew, uniformly from
[4, degree], at every forward pass, and the one weight ``e`` is shared by all the powers above 3.
Each job's five parameters ``[a, b, c, d, e]`` are a row of a (b, 5) parameter, one per block of
rows sharing a learning rate (``torch.optim`` parameter groups; SGD with momentum 0.9 by default,
as in the lesson). A forward pass maps every row onto its polynomial's coefficients with the 0/1
sharing matrix of its k, ``[a, b, c, d, e] @ S_k = [a, b, c, d, e, ..., e, 0, ..., 0]`` (e on the
powers 4..k), and multiplies those with the powers. Autograd then sums e's gradient over exactly
the powers that job used: the weight sharing the lesson demonstrates. Loss: mean squared error
per job (``torch.nn.MSELoss``).

Draws: job j's k sequence comes from ``numpy.random.default_rng(seed_j)`` (after its five
initial parameters), so it is the same whatever the batch. The final scoring pass of
``loop.run`` draws one more k. Results score the model at its full degree (all the powers
x^4..x^degree, i.e. k = degree): that is the polynomial reported as ``monomial`` and the one
``mse`` measures.

Fused (``fused=True``), the model's forward and its ``MSELoss`` are one compiled function of the
parameters (as one (B, 5) tensor: see ``module.py`` for why not of the module), the sharing
matrices and the drawn k (``fusion.py``); autograd's ``backward`` and ``torch.optim`` as above.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import fusion, loop
from ..optim import TorchOptimizer
from ..problem import seeded_generators, torch_dtype, torch_grid
from .bases import sharing_matrices
from .common import lr_blocks, polynomial

#: Epochs of k draws generated at a time (bounds the memory of the draws for long fits).
DRAW_BLOCK = 1024


class DynamicPolynomial(torch.nn.Module):
    """The lesson's ``DynamicHighOrder`` for a batch: a cubic plus a shared weight e on
    x^4..x^k, k per job and per call."""

    def __init__(self, init: torch.Tensor, blocks: list[slice], degree: int) -> None:
        super().__init__()
        self.blocks = torch.nn.ParameterList(
            [torch.nn.Parameter(init[rows].clone()) for rows in blocks])
        self.register_buffer("sharing", torch.from_numpy(sharing_matrices(degree)).to(init))

    def parameters_by_job(self) -> torch.Tensor:
        blocks = list(self.blocks)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)

    def forward(self, powers_t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Values (B, N) at the points whose powers 0..degree are the columns of ``powers_t``,
        job j summing the powers 4..k[j] with its shared weight."""
        return shared_weight_polynomial(self.parameters_by_job(), self.sharing, k, powers_t)


def shared_weight_polynomial(params, sharing, k, powers_t) -> torch.Tensor:
    """``DynamicPolynomial.forward`` for parameter rows ``params`` (B, 5): each row mapped onto
    its polynomial's coefficients by the sharing matrix of its k, then evaluated."""
    S = sharing.index_select(0, k - 4)  # (B, 5, degree + 1)
    coefficients = torch.bmm(params.unsqueeze(1), S).squeeze(1)
    return polynomial(coefficients, powers_t)


_CRITERION = torch.nn.MSELoss(reduction="none")


def mean_squared_error(params, sharing, k, powers_t, y) -> torch.Tensor:
    """``MSELoss`` per job of the model against the (N,) target ``y``: what the fused path
    compiles."""
    y_pred = shared_weight_polynomial(params, sharing, k, powers_t)
    return _CRITERION(y_pred, y.expand_as(y_pred)).mean(dim=1)


class DynamicProgram:
    """The dynamic variant's batch: a cubic plus one shared weight on x^4..x^k, k drawn per pass."""

    def __init__(self, specs, device: torch.device, fused: bool = False) -> None:
        spec = specs[0]
        self.degree = spec.degree
        _, y, self.Vt = torch_grid(spec, spec.degree, device)
        self.y = y
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
        self.params = list(self.model.blocks)
        self.param_rows = [rows for rows, _ in blocks]
        self.optimizer = TorchOptimizer(spec.optimizer,
                                        [([p], lr) for p, (_, lr) in zip(self.params, blocks)])
        self.fused = (fusion.compiled(mean_squared_error, (spec.degree, spec.dtype, device),
                                      batched=(0, 2)) if fused else None)

    def degrees(self, epoch: int) -> torch.Tensor:
        """The top power k each job uses at ``epoch`` (epochs are visited in order; the draws
        are made DRAW_BLOCK epochs at a time, so asking twice for one epoch is harmless)."""
        while epoch // DRAW_BLOCK > self.drawn_block:
            draws = np.stack([g.integers(4, self.degree + 1, size=DRAW_BLOCK)
                              for g in self.generators])
            # column-major, so that one epoch's draws are a contiguous index vector
            self.draws = torch.from_numpy(draws.T.copy()).to(self.device)
            self.drawn_block += 1
        return self.draws[epoch % DRAW_BLOCK]

    def evaluate(self, epoch: int, with_grads: bool):
        k = self.degrees(epoch)
        if self.fused is not None:
            loss = self.fused(fusion.joined(self.params), self.model.sharing, k, self.Vt, self.y)
        else:
            loss = self.criterion(self.model(self.Vt, k), self.target).mean(dim=1)
        if not with_grads:
            return loss.detach(), None
        # Summed, not loss.backward(ones): a gradient tensor handed to backward makes torch import
        # sympy (0.3 s) on the first call. The gradient of each job's loss is the same.
        loss.sum().backward()
        grads = [p.grad for p in self.params]
        self.model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    def coefficients(self, params):
        return params[0] if len(params) == 1 else torch.cat(list(params), dim=0)


def train(specs, device, fused: bool = False, **options) -> loop.RawFits:
    """``options``: ``loop.run``'s stop, watch, halt and resume."""
    return loop.run(DynamicProgram(specs, device, fused), specs[0].epochs, **options)
