"""The pieces a plugin's batched program is built from (see docs/plugins.md): the training loop
with per-job divergence, early stop and live curves (``run``), the row-wise optimizers (a (B, 1)
learning-rate column: any mix of learning rates in one program), each job's seeded initial
parameters, and the job's grid and target in its dtype on its device.

This module imports torch: a plugin imports it from its training code, never from the module
that declares its :class:`~polyfit_models.Variant` (the registry loads that one everywhere,
schedulers included, which never import torch)."""

from __future__ import annotations

from .loop import Program, RawFits, run
from .optim import RowwiseOptimizer
from .problem import grid, target_values, torch_dtype, torch_grid
from .variants.common import initial_rows, lr_column

__all__ = ["Program", "RawFits", "RowwiseOptimizer", "grid", "initial_rows", "lr_column", "run",
           "target_values", "torch_dtype", "torch_grid"]
