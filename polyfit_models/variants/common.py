"""Pieces the torch variants share: a batch's seeded initial parameters, its learning rates, and
the float64 NumPy evaluation of a polynomial used to score every variant the same way."""

from __future__ import annotations

import numpy as np
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


def monomial_predict(coefficients: np.ndarray, x: np.ndarray, degree: int) -> np.ndarray:
    """Values (B, N) of the polynomials with ascending-power rows ``coefficients`` at ``x``."""
    return coefficients @ np.vander(x, coefficients.shape[1], increasing=True).T


def monomial_identity(coefficients: np.ndarray, degree: int) -> list[float]:
    """The ordinary-basis coefficients of a monomial variant: its own parameters."""
    return [float(c) for c in coefficients]
