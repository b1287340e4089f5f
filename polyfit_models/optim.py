"""Update rules for a batch of jobs trained as one tensor program.

Every rule is elementwise, so a row of the parameter matrix (one job) is updated from its own
gradient, its own optimizer state and its own learning rate only: that is what makes batching
invisible to a job. Two implementations sit behind one small interface:

* :class:`RowwiseOptimizer` applies the rules itself with a ``(B, 1)`` learning-rate column, so
  any mix of learning rates trains in one program. ``sgd`` is the lesson's manual
  ``p -= lr * p.grad``; the others follow ``torch.optim``'s formulas and defaults exactly
  (``momentum`` is ``torch.optim.SGD(momentum=0.9)``, the lesson's dynamic-model optimizer).
* :class:`TorchOptimizer` hands the step to ``torch.optim`` with one parameter group per block
  of rows that share a learning rate (the ``module`` and ``dynamic`` variants, whose lesson
  programs use ``torch.optim``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

#: ``torch.optim`` defaults, written out so that both implementations agree on them.
MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8


def _sgd(p, g, state, lr, steps) -> None:
    p.addcmul_(lr, g, value=-1.0)  # p -= lr * g, in one operation


def _momentum(p, g, state, lr, steps) -> None:
    buf = state.get("buf")
    if buf is None:
        buf = state["buf"] = g.clone()  # torch.optim.SGD's first step: buf = grad
    else:
        buf.mul_(MOMENTUM).add_(g)
    p.addcmul_(lr, buf, value=-1.0)


def _adam(p, g, state, lr, steps) -> None:
    if not state:
        state["m"] = torch.zeros_like(p)
        state["v"] = torch.zeros_like(p)
    m, v = state["m"], state["v"]
    beta1, beta2 = ADAM_BETAS
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (v.sqrt() / math.sqrt(1 - beta2 ** steps)).add_(ADAM_EPS)
    p.sub_((lr / (1 - beta1 ** steps)) * m / denom)


def _rmsprop(p, g, state, lr, steps) -> None:
    v = state.get("v")
    if v is None:
        v = state["v"] = torch.zeros_like(p)
    v.mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
    p.sub_(lr * g / v.sqrt().add_(RMSPROP_EPS))


#: rule name -> in-place elementwise update ``(param, grad, state, lr column, step count)``.
ROWWISE_RULES: dict[str, Callable] = {
    "sgd": _sgd, "momentum": _momentum, "adam": _adam, "rmsprop": _rmsprop,
}

#: rule name -> ``torch.optim`` constructor taking parameter groups that carry their own lr.
#: ``fused=True`` where torch has a fused kernel: one kernel per step instead of a Python loop
#: of small operations, with the same results (RMSprop has no fused kernel).
TORCH_RULES: dict[str, Callable[[list[dict]], torch.optim.Optimizer]] = {
    "sgd": lambda groups: torch.optim.SGD(groups, fused=True),
    "momentum": lambda groups: torch.optim.SGD(groups, momentum=MOMENTUM, fused=True),
    "adam": lambda groups: torch.optim.Adam(groups, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True),
    "rmsprop": lambda groups: torch.optim.RMSprop(groups, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS),
}


class RowwiseOptimizer:
    """Elementwise update rules with a per-row learning rate column (one row = one job)."""

    def __init__(self, rule: str, params: Sequence[torch.Tensor], lr: torch.Tensor) -> None:
        # Detached aliases of the parameters' storage: updating them needs no no_grad context
        # (a per-step cost that shows on small fits), and no graph is alive at step time.
        self.params = [p.detach() for p in params]
        self.lr = lr  # (B, 1): broadcasts over each parameter's columns
        self.state: list[dict] = [{} for _ in self.params]
        self.steps = 0
        self._rule = ROWWISE_RULES[rule]

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.steps += 1
        for p, g, state in zip(self.params, grads, self.state):
            self._rule(p, g, state, self.lr, self.steps)


class TorchOptimizer:
    """``torch.optim`` behind the same ``step(grads)`` interface as :class:`RowwiseOptimizer`:
    one parameter group per block of rows that share a learning rate."""

    def __init__(self, rule: str, groups: Sequence[tuple[Sequence[torch.Tensor], float]]) -> None:
        self.params = [p for params, _ in groups for p in params]
        self.optimizer = TORCH_RULES[rule]([{"params": list(params), "lr": lr}
                                            for params, lr in groups])

    def step(self, grads: Sequence[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        for p in self.params:
            p.grad = None
