"""Pieces the torch variants share: a batch's seeded initial parameters, its learning rates, and
the polynomial on a batch, unfused or fused. (The float64 NumPy evaluation that scores every
variant is in ``bases``.)"""

from __future__ import annotations

import torch

from ..problem import seeded_generators, standard_normal_rows, torch_dtype


def initial_rows(specs, n: int, device: torch.device) -> torch.Tensor:
    """(B, n) standard normal initial parameters, each row from its own job's seed."""
    draws = standard_normal_rows(seeded_generators(s.seed for s in specs), n)
    return torch.from_numpy(draws).to(device=device, dtype=torch_dtype(specs[0].dtype))


def lr_column(specs, device: torch.device) -> torch.Tensor:
    """The jobs' learning rates as a (B, 1) column in the batch's dtype."""
    return torch.tensor([[s.lr] for s in specs], device=device, dtype=torch_dtype(specs[0].dtype))


def lr_blocks(specs) -> list[tuple[slice, float]]:
    """Runs of consecutive jobs sharing a learning rate, for ``torch.optim`` parameter groups
    (``fit_many`` sorts a batch by lr so that there is one run per distinct lr)."""
    blocks: list[tuple[slice, float]] = []
    start = 0
    for i in range(1, len(specs) + 1):
        if i == len(specs) or specs[i].lr != specs[start].lr:
            blocks.append((slice(start, i), specs[start].lr))
            start = i
    return blocks


def polynomial(coefficients: torch.Tensor, powers_t: torch.Tensor) -> torch.Tensor:
    """Values (B, N) of the polynomials with ascending-power rows ``coefficients`` (B, K) at the
    points whose powers are the columns of ``powers_t`` (``powers_t[k, n] = x[n] ** k``).

    Unfused it is one matrix product: the fastest single operation. Inside ``torch.compile``
    (the fused path, see ``fusion.py``) it is the lesson's sum of terms ``a + b x + c x^2 + ...``,
    which inductor fuses with the loss that follows into one pass over the points, where a
    matrix product would stay a library call that writes (B, N) values out. The constant term
    needs no product: ``x ** 0`` is exactly 1."""
    if not torch.compiler.is_compiling():
        return coefficients @ powers_t
    values = coefficients[:, :1] + coefficients[:, 1:2] * powers_t[1]
    for k in range(2, powers_t.shape[0]):
        values = values + coefficients[:, k:k + 1] * powers_t[k]
    return values
