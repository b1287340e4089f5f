"""The registry of model variants: one :class:`Variant` per program of the lesson.

``VARIANTS`` is the single place where a variant's name, defaults, limits and implementation
meet; validation, ``fit_many`` and the CLI all read it, so nothing elsewhere branches on a
variant's name. Defaults are the lesson's settings.

Degree cap (``max_degree`` = 14 for every variant): the sum-of-squares loss and the gradient
of the top coefficient scale like ``x_points * max|x|^(2 degree)``, which for x up to pi and 2000
points stays finite in float32 up to degree ~29; but gradient descent on monomials stops meaning
anything long before that. On [-pi, pi] the condition number of ``V^T V`` is ~3e2 at degree 3,
~1e7 (float32's 1/eps) at degree 7, ~1e13 at degree 12, and at degree 15 it passes float64's
1/eps (~5e16): the Gram matrix is singular to working precision and no learning rate can move
the top coefficients. 14 is the last degree where the problem is still well posed in float64.
``JobSpec`` also checks the degree against the job's own x range and dtype (see
``problem.power_sum_is_safe``), which is what protects wide x ranges.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from .problem import OPTIMIZERS
from .variants import bases
from .variants.bases import monomial_identity, monomial_predict

ALL_AXES = ("lr", "degree", "seed", "epochs", "optimizer", "dtype", "device")
MAX_DEGREE = 14


@dataclass(frozen=True, eq=False)
class Variant:
    """One model variant: what it is, what it accepts, and how it trains a batch."""

    name: str
    summary: str  # one line, for ``polyfit variants``
    loss: str  # "sse" (sum of squared errors) or "mse" (mean squared error)
    axes: tuple[str, ...]  # the JobSpec/sweep axes this variant uses
    devices: tuple[str, ...]  # device types it runs on
    optimizers: tuple[str, ...]
    min_degree: int
    max_degree: int
    defaults: Mapping[str, object]  # lr, degree, epochs, optimizer, dtype
    #: Trains one batch (specs equal except lr and seed) on a torch.device -> loop.RawFits;
    #: ``train(specs, device, fused=True)`` with its epoch compiled (see ``fusion.py``).
    train: Callable
    #: Float64 values (B, N) of the fitted models, from (B, P) coefficients, x and the degree.
    predict: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    #: The ordinary-basis (ascending power) coefficients of one fit, or None.
    monomial: Callable[[np.ndarray, int], list[float] | None]
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
    fusable: bool = True
    #: Whether its training loss is that of the model it reports, so that a job can stop once
    #: that loss is within ``stop_gap`` of the optimum (not ``dynamic``: each forward pass draws
    #: its own model).
    can_stop_at_optimum: bool = True
    #: Whether ``train`` takes ``halt`` and ``resume`` (``loop.run``'s): a batch of it can stop
    #: at an epoch boundary and continue later. Built-in variants do; a plugin's trains to the
    #: end unless it says so.
    resumable: bool = False

    def n_coefficients(self, degree: int) -> int:
        """How many trainable coefficients a fit of this degree has."""
        return self.fixed_coefficients if self.fixed_coefficients is not None else degree + 1


def _trainer(module: str) -> Callable:
    """The ``train`` function of ``variants.<module>``, imported on first use: the registry (and
    so job specs, validation and the whole scheduler) loads without importing torch."""

    def train(specs, device, **options):
        return importlib.import_module(f"{__package__}.variants.{module}").train(specs, device,
                                                                                   **options)

    train.__qualname__ = f"{module}.train"
    return train


def _defaults(lr: float, degree: int, epochs: int, optimizer: str, dtype: str):
    return MappingProxyType(dict(lr=lr, degree=degree, epochs=epochs, optimizer=optimizer,
                                 dtype=dtype))


_TORCH_DEVICES = ("cpu", "cuda")

VARIANTS: Mapping[str, Variant] = MappingProxyType({v.name: v for v in (
    Variant(
        name="numpy",
        summary="NumPy, hand-written forward and backward, plain gradient descent (CPU only)",
        loss="sse", axes=("lr", "degree", "seed", "epochs", "dtype"), devices=("cpu",),
        optimizers=("sgd",), min_degree=1, max_degree=MAX_DEGREE,
        defaults=_defaults(1e-6, 3, 2000, "sgd", "float64"),
        resumable=True,
        train=_trainer("numpy_gd"), predict=monomial_predict, monomial=monomial_identity,
        live_rows=lambda degree: 2, fusable=False),
    Variant(
        name="tensor",
        summary="torch tensors with hand-written gradients, no autograd (CPU or GPU)",
        loss="sse", axes=ALL_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
        min_degree=1, max_degree=MAX_DEGREE,
        defaults=_defaults(1e-6, 3, 2000, "sgd", "float32"),
        resumable=True,
        train=_trainer("tensor"), predict=monomial_predict, monomial=monomial_identity,
        live_rows=lambda degree: 2),
    Variant(
        name="autograd",
        summary="torch tensors with requires_grad, loss.backward(), manual update",
        loss="sse", axes=ALL_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
        min_degree=1, max_degree=MAX_DEGREE,
        defaults=_defaults(1e-6, 3, 2000, "sgd", "float32"),
        resumable=True,
        train=_trainer("autograd"), predict=monomial_predict, monomial=monomial_identity,
        live_rows=lambda degree: 4),
    Variant(
        name="legendre",
        summary="y = a + b * P_n(c + d x) through a custom autograd Function (degree is n)",
        loss="sse", axes=ALL_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
        min_degree=1, max_degree=MAX_DEGREE,
        defaults=_defaults(5e-6, 3, 2000, "sgd", "float32"),
        resumable=True,
        train=_trainer("legendre"), predict=bases.legendre_predict,
        monomial=bases.legendre_monomial,
        fixed_coefficients=4, live_rows=lambda degree: 10),
    Variant(
        name="module",
        summary="an nn.Module polynomial trained with torch.optim (Adam) and MSELoss",
        loss="mse", axes=ALL_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
        min_degree=1, max_degree=MAX_DEGREE,
        defaults=_defaults(1e-3, 3, 2000, "adam", "float32"),
        resumable=True,
        train=_trainer("module"), predict=monomial_predict, monomial=monomial_identity,
        live_rows=lambda degree: 5),
    Variant(
        name="dynamic",
        summary="a cubic plus a shared weight e on x^4..x^k, k drawn from [4, degree] each pass",
        loss="mse", axes=ALL_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
        min_degree=4, max_degree=MAX_DEGREE,
        defaults=_defaults(1e-8, 5, 30000, "momentum", "float32"),
        resumable=True,
        train=_trainer("dynamic"), predict=bases.dynamic_predict,
        monomial=bases.dynamic_monomial,
        fixed_coefficients=5, live_rows=lambda degree: 5, can_stop_at_optimum=False,
        # Measured on the default grid (2000 points), 30,000 epochs, seed 0.
        note=("the lesson's lr 1e-8 was for a summed loss; with the mean loss it barely "
              "moves (mse about 5 after 30,000 epochs): lr 1e-5 to 2e-5 learns (mse about "
              "0.005), 5e-5 diverges")),
)})
