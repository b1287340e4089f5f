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

    def rows_state(self) -> dict[str, torch.Tensor]:
        """The state as (B, ...) tensors by name, rows in batch order, and the step count as a
        (B,) column (see ``polyfit_models.state``)."""
        out = {key: torch.cat([state[key] for state in self.state])
               for key in self.state[0]}
        out["step"] = torch.full((self.params[0].shape[0],), float(self.steps))
        return out

    def load_rows_state(self, rows: dict[str, torch.Tensor], blocks: Sequence[slice]) -> None:
        """Take up ``rows_state``'s output (of this batch's jobs, in its order)."""
        self.steps = int(rows["step"][0])
        for state, block, p in zip(self.state, blocks, self.params):
            state.clear()
            state.update({key: value[block].to(p).clone() for key, value in rows.items()
                          if key != "step"})


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

    def rows_state(self) -> dict[str, torch.Tensor]:
        """As ``RowwiseOptimizer.rows_state``: torch.optim's per-parameter state, one block
        per learning rate, joined into (B, ...) rows; its scalar ``step`` as a (B,) column."""
        states = [self.optimizer.state[p] for p in self.params]
        rows = sum(p.shape[0] for p in self.params)
        out = {}
        for key, value in states[0].items():
            if torch.is_tensor(value) and value.dim() > 0:
                out[key] = torch.cat([state[key] for state in states])
            else:
                out[key] = torch.full((rows,), float(value))
        return out

    def load_rows_state(self, rows: dict[str, torch.Tensor], blocks: Sequence[slice]) -> None:
        """Take up ``rows_state``'s output through ``load_state_dict``, which places each value
        where torch.optim keeps it (a fused optimizer's step on the parameter's device, as
        float32; the moments in the parameter's dtype)."""
        saved = self.optimizer.state_dict()
        saved["state"] = {
            i: {key: (value[block] if value.dim() > 1 else
                      torch.tensor(float(value[0]), dtype=torch.float32))
                for key, value in rows.items()}
            for i, block in enumerate(blocks)}
        self.optimizer.load_state_dict(saved)
