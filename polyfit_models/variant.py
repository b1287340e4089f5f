"""What a model variant is: :class:`Variant`, the record the registry keeps per variant, and the
protocol a plugin fills in (see docs/plugins.md).

A variant is a name, the axes and defaults it takes, the loss it trains and a batched program:
``train(specs, device, **options)`` trains a batch of jobs (rows are jobs, each with its own lr
and seed) and returns ``loop.RawFits``; ``predict`` turns the final parameters into values in
float64 NumPy, which is how every variant is scored the same way. This module imports NumPy and
the standard library only: the registry, job specs and the scheduler load without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from .fields import VARIANT_AXES
from .problem import OPTIMIZERS

DEVICES = ("cpu", "cuda")
MAX_DEGREE = 14
#: The settings every variant gives a default for.
DEFAULT_KEYS = ("lr", "degree", "epochs", "optimizer", "dtype")


def make_defaults(lr: float, degree: int, epochs: int, optimizer: str, dtype: str
                  ) -> Mapping[str, object]:
    """A variant's defaults, read-only."""
    return MappingProxyType(dict(lr=lr, degree=degree, epochs=epochs, optimizer=optimizer,
                                 dtype=dtype))


def no_monomial(coefficients: np.ndarray, degree: int) -> None:
    """For a variant whose model has no ordinary-basis form to report."""
    return None


@dataclass(frozen=True, eq=False)
class Variant:
    """One model variant: what it is, what it accepts, and how it trains a batch."""

    name: str
    summary: str  # one line, for ``polyfit variants``
    loss: str  # "sse" (sum of squared errors) or "mse" (mean squared error)
    #: Trains one batch (specs equal except lr and seed) on a torch.device -> loop.RawFits;
    #: ``train(specs, device, fused=True)`` with its epoch compiled (see ``fusion.py``) when
    #: ``fusable``; ``stop=`` and ``watch=`` are passed on to ``loop.run``.
    train: Callable
    #: Float64 values (B, N) of the fitted models, from (B, P) coefficients, x and the degree.
    predict: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    axes: tuple[str, ...] = VARIANT_AXES  # the JobSpec/sweep axes this variant uses
    devices: tuple[str, ...] = DEVICES  # device types it runs on
    optimizers: tuple[str, ...] = OPTIMIZERS
    min_degree: int = 1
    max_degree: int = MAX_DEGREE
    defaults: Mapping[str, object] = field(
        default_factory=lambda: make_defaults(1e-3, 3, 2000, "adam", "float32"))
    #: The ordinary-basis (ascending power) coefficients of one fit, or None.
    monomial: Callable[[np.ndarray, int], list[float] | None] = no_monomial
    #: Number of trainable parameters when it does not follow the degree (legendre, dynamic).
    fixed_coefficients: int | None = None
    #: Approximate number of (B, x_points) arrays alive at the peak of one epoch (buffers,
    #: tensors saved for backward, temporaries), counted from the variant's graph with a
    #: little margin; ``bytes_per_job`` builds on it.
    live_rows: Callable[[int], int] = lambda degree: 6
    #: What a user should know of the variant's defaults (``polyfit variants`` and the plot
    #: show it), or "".
    note: str = ""
    #: Whether ``train`` has a fused path (``fused=True``).
    fusable: bool = False
    #: Whether its training loss is that of the model it reports, so that a job can stop once
    #: that loss is within ``stop_gap`` of the optimum (not ``dynamic``: each forward pass draws
    #: its own model).
    can_stop_at_optimum: bool = True
    #: Whether ``train`` takes ``halt`` and ``resume`` (``loop.run``'s): a batch of it can stop
    #: at an epoch boundary and continue later. Built-in variants do; a plugin's trains to the
    #: end unless it says so.
    resumable: bool = False
    #: The installed distribution that declared it, and its version (the registry fills them
    #: in: "polyfit" for the built-ins).
    package: str = ""
    version: str = ""

    def n_coefficients(self, degree: int) -> int:
        """How many trainable coefficients a fit of this degree has."""
        return self.fixed_coefficients if self.fixed_coefficients is not None else degree + 1
