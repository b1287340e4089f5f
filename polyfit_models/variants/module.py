"""The ``module`` variant: the lesson's ``nn.Module`` polynomial trained with ``torch.optim``.

:class:`PolynomialModel` holds the coefficients of a batch of polynomials as parameters, one
(b, degree + 1) block per learning rate, so that ``torch.optim`` (Adam by default) can give each
block its own parameter group and lr; its forward evaluates every job's polynomial on the grid.
The loss is ``torch.nn.MSELoss`` per job (``reduction="none"``, then the mean over the points),
summed over jobs before ``backward``: a job's loss depends on its own coefficients only, so each
gets exactly the gradient of its own mean squared error.

Fused (``fused=True``), the module's polynomial and its ``MSELoss`` are one compiled function of
the module's coefficients (``fusion.py``), differentiated by ``backward`` into the module's
parameters and stepped by the same ``torch.optim`` optimizer. The compiled function takes the
coefficients as one (B, degree + 1) tensor rather than the module itself: dynamo compiles a
module's parameters as fixed sizes, and the sizes of the per-lr blocks change from batch to
batch, so compiling the module would compile again for nearly every batch.
"""

from __future__ import annotations

import torch

from .. import fusion, loop
from ..optim import TorchOptimizer
from ..problem import torch_grid
from .common import initial_rows, lr_blocks, polynomial

_SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def describe_polynomial(coefficients) -> str:
    """The lesson's ``y = a + bx + cx² + dx³`` text for ascending-power coefficients."""
    terms = []
    for k, c in enumerate(coefficients):
        power = "" if k == 0 else "x" if k == 1 else "x" + str(k).translate(_SUPERSCRIPTS)
        terms.append(f"{float(c):.3f}{power}")
    return "y = " + " + ".join(terms)


class PolynomialModel(torch.nn.Module):
    """Polynomials ``sum_k c_k x^k`` for a batch of jobs (one row of coefficients per job),
    stored as one parameter per block of rows that share a learning rate."""

    def __init__(self, coefficients: torch.Tensor, blocks: list[slice]) -> None:
        super().__init__()
        self.blocks = torch.nn.ParameterList(
            [torch.nn.Parameter(coefficients[rows].clone()) for rows in blocks])

    def coefficients(self) -> torch.Tensor:
        """All jobs' coefficients, (B, degree + 1), in batch order."""
        blocks = list(self.blocks)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)

    def forward(self, powers_t: torch.Tensor) -> torch.Tensor:
        """Every job's polynomial at the points whose powers are the columns of ``powers_t``
        (``powers_t[k, n] = x[n] ** k``)."""
        return polynomial(self.coefficients(), powers_t)

    def describe(self, job: int = 0) -> str:
        """The fitted polynomial of one job as text, as the lesson prints it."""
        return describe_polynomial(self.coefficients()[job].tolist())


_CRITERION = torch.nn.MSELoss(reduction="none")


def mean_squared_error(coefficients: torch.Tensor, powers_t: torch.Tensor,
                       y: torch.Tensor) -> torch.Tensor:
    """``MSELoss`` per job of the polynomials with rows ``coefficients`` against the (N,) target
    ``y``: what the fused path compiles (``PolynomialModel.forward`` and the criterion)."""
    y_pred = polynomial(coefficients, powers_t)
    return _CRITERION(y_pred, y.expand_as(y_pred)).mean(dim=1)


class ModuleProgram:
    """The module variant's batch: an ``nn.Module`` polynomial trained with ``torch.optim``."""

    def __init__(self, specs, device: torch.device, fused: bool = False) -> None:
        spec = specs[0]
        _, y, self.Vt = torch_grid(spec, spec.degree, device)
        self.y = y
        blocks = lr_blocks(specs)
        self.model = PolynomialModel(initial_rows(specs, spec.degree + 1, device),
                                     [rows for rows, _ in blocks])
        self.criterion = torch.nn.MSELoss(reduction="none")
        self.target = y.expand(len(specs), -1)
        self.batch_size = len(specs)
        self.params = list(self.model.blocks)
        self.param_rows = [rows for rows, _ in blocks]
        self.optimizer = TorchOptimizer(spec.optimizer,
                                        [([p], lr) for p, (_, lr) in zip(self.params, blocks)])
        self.fused = (fusion.compiled(mean_squared_error, (spec.degree, spec.dtype, device))
                      if fused else None)

    def evaluate(self, epoch: int, with_grads: bool):
        if self.fused is not None:
            loss = self.fused(fusion.joined(self.params), self.Vt, self.y)
        else:
            loss = self.criterion(self.model(self.Vt), self.target).mean(dim=1)
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
    return loop.run(ModuleProgram(specs, device, fused), specs[0].epochs, **options)
