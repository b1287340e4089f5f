"""The ``legendre`` variant: ``y = a + b * P_n(c + d x)`` through a custom autograd Function.

:class:`LegendreP` generalises the lesson's ``LegendrePolynomial3`` to any degree n >= 0. Its
forward evaluates P_n with Bonnet's recurrence ``(k+1) P_{k+1} = (2k+1) t P_k - k P_{k-1}`` and,
alongside, the derivative with ``P'_{k+1} = P'_{k-1} + (2k+1) P_k``; its hand-written backward
multiplies the incoming gradient by that saved P'_n. (The closed form
``P'_n = n (t P_n - P_{n-1}) / (t^2 - 1)`` is not used: it is 0/0 at t = +-1, which is inside the
range that ``c + d x`` sweeps.) The four parameters of every job are one row of a (B, 4) leaf
tensor; the loss is the sum of squared errors per job, as in the lesson.

Initialisation: the PyTorch tutorial this lesson comes from starts from a = 0, b = -1, c = 0,
d = 0.3 and trains with lr 5e-6. The reason is numerical: d = 0.3 maps x in [-pi, pi] into
[-0.94, 0.94], where |P_n| <= 1, whereas a standard normal c and d can put ``c + d x`` far
outside [-1, 1], where P_n grows like t^n and the sum-of-squares gradient at lr 5e-6 explodes in
the first steps. So each job starts at the tutorial's values plus its own seeded normal noise of
``INIT_NOISE`` standard deviation: the seed still drives the start (different seeds give different
fits), and the default settings converge like the tutorial's.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import loop
from ..optim import RowwiseOptimizer
from ..problem import seeded_generators, standard_normal_rows, torch_dtype, torch_grid
from .common import lr_column

TUTORIAL_INIT = (0.0, -1.0, 0.0, 0.3)
INIT_NOISE = 0.05


def legendre_and_derivative(t: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P_n(t), P_n'(t))`` elementwise, by the two recurrences of the module docstring.

    P_0 = 1, P_0' = 0 and P_1' = 1 are kept as Python numbers rather than tensors: for small n
    (the lesson's n = 3 takes five tensor operations) the cost of a fit is the number of tensor
    operations per epoch, not their size."""
    if n == 0:
        return torch.ones_like(t), torch.zeros_like(t)
    p_prev: torch.Tensor | float = 1.0
    p: torch.Tensor = t
    dp_prev: torch.Tensor | float = 0.0
    dp: torch.Tensor | float = 1.0
    for k in range(1, n):
        # (k+1) P_{k+1} = (2k+1) t P_k - k P_{k-1}
        scaled_prev = p_prev * (-k / (k + 1))
        if isinstance(scaled_prev, float):
            p_next = torch.mul(t, p).mul_((2 * k + 1) / (k + 1)).add_(scaled_prev)
        else:
            p_next = scaled_prev.addcmul_(t, p, value=(2 * k + 1) / (k + 1))
        # P'_{k+1} = P'_{k-1} + (2k+1) P_k
        if isinstance(dp_prev, float):
            dp_next = torch.mul(p, 2 * k + 1)
            if dp_prev != 0.0:
                dp_next.add_(dp_prev)
        else:
            dp_next = torch.add(dp_prev, p, alpha=2 * k + 1)
        p_prev, p, dp_prev, dp = p, p_next, dp, dp_next
    if isinstance(dp, float):  # n == 1
        return t.clone(), torch.ones_like(t)
    return p, dp


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


class LegendreProgram:
    """A batch of ``a + b * P_n(c + d x)`` fits (rows of ``abcd`` are jobs)."""

    def __init__(self, specs, device: torch.device) -> None:
        spec = specs[0]
        self.n = spec.degree
        x, self.y, _ = torch_grid(spec, 1, device)
        self.x = x.unsqueeze(0)
        noise = standard_normal_rows(seeded_generators(s.seed for s in specs), 4)
        init = np.asarray(TUTORIAL_INIT) + INIT_NOISE * noise
        self.abcd = torch.from_numpy(init).to(device=device, dtype=torch_dtype(spec.dtype))
        self.abcd.requires_grad_()
        self.batch_size = len(specs)
        self.params = [self.abcd]
        self.param_rows = [slice(None)]
        self.optimizer = RowwiseOptimizer(spec.optimizer, self.params, lr_column(specs, device))

    def evaluate(self, epoch: int, with_grads: bool):
        with torch.set_grad_enabled(with_grads):
            a, b, c, d = self.abcd.split(1, dim=1)  # (B, 1) each
            y_pred = torch.addcmul(a, b, LegendreP.apply(torch.addcmul(c, d, self.x), self.n))
            loss = (y_pred - self.y).pow(2).sum(dim=1)
        if not with_grads:
            return loss, None
        loss.sum().backward()
        grad, self.abcd.grad = self.abcd.grad, None
        return loss.detach(), [grad]

    def coefficients(self, params):
        return params[0]


def train(specs, device) -> loop.RawFits:
    return loop.run(LegendreProgram(specs, device), specs[0].epochs)


def predict(coefficients: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    """Float64 values (B, N) of ``a + b P_n(c + d x)`` for rows ``[a, b, c, d]``."""
    a, b, c, d = (coefficients[:, i:i + 1] for i in range(4))
    unit = np.zeros(degree + 1)
    unit[degree] = 1.0
    return a + b * np.polynomial.legendre.legval(c + d * x, unit)


def monomial(coefficients: np.ndarray, degree: int) -> list[float]:
    """``a + b P_n(c + d x)`` expanded into ascending powers of x (length n + 1)."""
    a, b, c, d = (float(v) for v in coefficients)
    unit = np.zeros(degree + 1)
    unit[degree] = 1.0
    p_n = np.polynomial.Polynomial(np.polynomial.legendre.leg2poly(unit))
    expanded = a + b * p_n(np.polynomial.Polynomial([c, d]))
    out = np.zeros(degree + 1)
    out[: len(expanded.coef)] = expanded.coef
    return [float(v) for v in out]
