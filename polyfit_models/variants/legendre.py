"""The ``legendre`` variant: ``y = a + b * P_n(c + d x)`` through a custom autograd Function.

:class:`LegendreP` generalises the lesson's ``LegendrePolynomial3`` to any degree n >= 0. Its
forward evaluates P_n with Bonnet's recurrence ``(k+1) P_{k+1} = (2k+1) t P_k - k P_{k-1}`` and,
alongside, the derivative with ``P'_{k+1} = P'_{k-1} + (2k+1) P_k``; its hand-written backward
multiplies the incoming gradient by that saved P'_n. (The closed form
``P'_n = n (t P_n - P_{n-1}) / (t^2 - 1)`` is not used: it is 0/0 at t = +-1, which is inside the
range that ``c + d x`` sweeps.) The four parameters of every job are one row of a (B, 4) leaf
tensor; the loss is the sum of squared errors per job, as in the lesson.

Fused (``fused=True``), the model and its loss are one compiled function (``fusion.py``) with
``LegendreP`` inside it: dynamo traces the Function's forward and its hand-written backward as
they are written, and inductor fuses the recurrence, the affine maps and the loss into one pass
over each job's points, and the backward (the saved P_n' times the incoming gradient, and the
four sums) into another.

Initialisation: the PyTorch tutorial this lesson comes from starts from a = 0, b = -1, c = 0,
d = 0.3 and trains with lr 5e-6. The reason is numerical: d = 0.3 maps x in [-pi, pi] into
[-0.94, 0.94], where |P_n| <= 1, whereas a standard normal c and d can put ``c + d x`` far
outside [-1, 1], where P_n grows like t^n and the sum-of-squares gradient at lr 5e-6 explodes in
the first steps. So each job starts at the tutorial's values plus its own seeded normal noise of
``INIT_NOISE`` standard deviation: the seed still drives the start (different seeds give different
fits), and the default settings converge like the tutorial's.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .. import fusion, loop
from ..optim import RowwiseOptimizer
from ..problem import seeded_generators, standard_normal_rows, torch_dtype, torch_grid
from .common import lr_column

TUTORIAL_INIT = (0.0, -1.0, 0.0, 0.3)
INIT_NOISE = 0.05


def legendre_and_derivative(t: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P_n(t), P_n'(t))`` elementwise, by the two recurrences of the module docstring.

    Written for few passes over ``t`` (for a batch, each pass is a sweep over a
    (B, x_points) tensor): P_0 = 1, P'_0 = 0 and P'_1 = 1 stay numbers, and only the
    derivatives of n's parity are formed, since P'_n = P'_{n-2} + (2n-1) P_{n-1} never needs
    the others. n = 3 takes four passes."""
    if n == 0:
        return torch.ones_like(t), torch.zeros_like(t)
    if n == 1:
        return t.clone(), torch.ones_like(t)

    def const(value: float) -> torch.Tensor:
        if torch.compiler.is_compiling():  # compiled, a constant is folded into the kernel
            return torch.full((), value, dtype=t.dtype, device=t.device)
        return _constant(value, t.dtype, t.device)

    p_prev: torch.Tensor = t  # placeholder, replaced at k = 1 where P_0 = 1 is used
    p = t
    dp: torch.Tensor | float = 1.0 if n % 2 else 0.0  # P'_1 or P'_0
    for k in range(1, n):
        if (n - k) % 2 == 1:  # P'_{k+1} is on n's chain: P'_{k+1} = P'_{k-1} + (2k+1) P_k
            dp = (torch.add(const(dp), p, alpha=2 * k + 1) if isinstance(dp, float)
                  else dp.add_(p, alpha=2 * k + 1))
        # (k+1) P_{k+1} = (2k+1) t P_k - k P_{k-1}
        if k == 1:
            p_next = torch.addcmul(const(-0.5), t, t, value=1.5)
        elif k == 2:
            p_next = torch.mul(t, -2 / 3).addcmul_(t, p, value=5 / 3)  # P_1 is t: no in-place
        else:
            p_next = p_prev.mul_(-k / (k + 1)).addcmul_(t, p, value=(2 * k + 1) / (k + 1))
        p_prev, p = p, p_next
    return p, dp  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-dim constant to broadcast into one fused operation (only ever read, never written);
    cached, because making it costs as much as the operation on a small fit."""
    return torch.full((), value, dtype=dtype, device=device)


class LegendreP(torch.autograd.Function):
    """The Legendre polynomial P_n as an autograd Function with a hand-written backward."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, n: int) -> torch.Tensor:
        p, dp = legendre_and_derivative(t, n)
        ctx.save_for_backward(dp)
        return p

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (dp,) = ctx.saved_tensors
        return grad_output * dp, None  # no gradient for the integer degree n


def sum_of_squares(a, b, c, d, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """The sum of squared errors of ``a + b * P_n(c + d x)`` per job against the target ``y``
    (parameters (B, 1) each, ``x`` (1, N), ``y`` (N,))."""
    # d * x + c rather than addcmul(c, d, x): torch's addcmul takes a slow, unvectorized
    # path when its operands broadcast along different axes (4x slower here)
    y_pred = b * LegendreP.apply(d * x + c, n) + a
    return F.mse_loss(y_pred, y.expand_as(y_pred), reduction="none").sum(dim=1)


class LegendreProgram:
    """A batch of ``a + b * P_n(c + d x)`` fits (rows of ``abcd`` are jobs)."""

    def __init__(self, specs, device: torch.device, fused: bool = False) -> None:
        spec = specs[0]
        self.n = spec.degree
        x, self.y, _ = torch_grid(spec, 1, device)
        self.x = x.unsqueeze(0)
        noise = standard_normal_rows(seeded_generators(s.seed for s in specs), 4)
        init = np.asarray(TUTORIAL_INIT) + INIT_NOISE * noise
        # One (B, 4) storage for the optimizer and the bookkeeping, seen by autograd as four
        # (B, 1) leaves a, b, c, d (detached views of it): the lesson's four parameters, with
        # no split node in the graph. Every operation here is elementwise or a row reduction,
        # so a job computes the same bits in any batch (a matrix product, whose rounding
        # depends on the batch's size, would not: with RMSprop that is enough to diverge).
        self.abcd = torch.from_numpy(init).to(device=device, dtype=torch_dtype(spec.dtype))
        self.leaves = [self.abcd[:, i:i + 1].detach().requires_grad_() for i in range(4)]
        self.batch_size = len(specs)
        self.params = [self.abcd]
        self.param_rows = [slice(None)]
        self.optimizer = RowwiseOptimizer(spec.optimizer, self.params, lr_column(specs, device))
        self.loss = (fusion.compiled(sum_of_squares, (spec.degree, spec.dtype, device),
                                     batched=(0, 1, 2, 3)) if fused else sum_of_squares)

    def evaluate(self, epoch: int, with_grads: bool):
        loss = self.loss(*self.leaves, self.x, self.y, self.n)
        if not with_grads:
            return loss.detach(), None
        # Summed: a gradient tensor handed in makes torch import sympy (0.3 s) on the first call.
        grads = torch.autograd.grad(loss.sum(), self.leaves)
        return loss.detach(), [torch.cat(grads, dim=1)]

    def coefficients(self, params):
        return params[0]


def train(specs, device, fused: bool = False, **options) -> loop.RawFits:
    """``options``: ``loop.run``'s stop, watch, halt and resume."""
    return loop.run(LegendreProgram(specs, device, fused), specs[0].epochs, **options)
