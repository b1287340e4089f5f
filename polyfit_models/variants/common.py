"""Pieces the torch variants share: a batch's seeded initial parameters and its learning rates.
(The float64 NumPy evaluation that scores every variant is in ``bases``.)"""

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
