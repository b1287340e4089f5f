"""The six built-in variants: one :class:`Variant` per program of the lesson, each a module-level
object that the registry loads by ``module:object`` exactly as it loads a plugin's entry point
(see ``registry.py``). Defaults are the lesson's settings.

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
from collections.abc import Callable

from ..problem import OPTIMIZERS
from ..variant import MAX_DEGREE, VARIANT_AXES, Variant, make_defaults
from . import bases
from .bases import monomial_identity, monomial_predict


def _trainer(module: str) -> Callable:
    """The ``train`` function of ``variants.<module>``, imported on first use: the registry (and
    so job specs, validation and the whole scheduler) loads without importing torch."""

    def train(specs, device, **options):
        return importlib.import_module(f"{__package__}.{module}").train(specs, device, **options)

    train.__qualname__ = f"{module}.train"
    return train


_TORCH_DEVICES = ("cpu", "cuda")

NUMPY = Variant(
    name="numpy",
    summary="NumPy, hand-written forward and backward, plain gradient descent (CPU only)",
    loss="sse", axes=("lr", "degree", "seed", "epochs", "dtype"), devices=("cpu",),
    optimizers=("sgd",), min_degree=1, max_degree=MAX_DEGREE,
    defaults=make_defaults(1e-6, 3, 2000, "sgd", "float64"),
    train=_trainer("numpy_gd"), predict=monomial_predict, monomial=monomial_identity,
    live_rows=lambda degree: 2, fusable=False, resumable=True)

TENSOR = Variant(
    name="tensor",
    summary="torch tensors with hand-written gradients, no autograd (CPU or GPU)",
    loss="sse", axes=VARIANT_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
    min_degree=1, max_degree=MAX_DEGREE,
    defaults=make_defaults(1e-6, 3, 2000, "sgd", "float32"),
    train=_trainer("tensor"), predict=monomial_predict, monomial=monomial_identity,
    live_rows=lambda degree: 2, fusable=True, resumable=True)

AUTOGRAD = Variant(
    name="autograd",
    summary="torch tensors with requires_grad, loss.backward(), manual update",
    loss="sse", axes=VARIANT_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
    min_degree=1, max_degree=MAX_DEGREE,
    defaults=make_defaults(1e-6, 3, 2000, "sgd", "float32"),
    train=_trainer("autograd"), predict=monomial_predict, monomial=monomial_identity,
    live_rows=lambda degree: 4, fusable=True, resumable=True)

LEGENDRE = Variant(
    name="legendre",
    summary="y = a + b * P_n(c + d x) through a custom autograd Function (degree is n)",
    loss="sse", axes=VARIANT_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
    min_degree=1, max_degree=MAX_DEGREE,
    defaults=make_defaults(5e-6, 3, 2000, "sgd", "float32"),
    train=_trainer("legendre"), predict=bases.legendre_predict,
    monomial=bases.legendre_monomial,
    fixed_coefficients=4, live_rows=lambda degree: 10, fusable=True, resumable=True)

MODULE = Variant(
    name="module",
    summary="an nn.Module polynomial trained with torch.optim (Adam) and MSELoss",
    loss="mse", axes=VARIANT_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
    min_degree=1, max_degree=MAX_DEGREE,
    defaults=make_defaults(1e-3, 3, 2000, "adam", "float32"),
    train=_trainer("module"), predict=monomial_predict, monomial=monomial_identity,
    live_rows=lambda degree: 5, fusable=True, resumable=True)

DYNAMIC = Variant(
    name="dynamic",
    summary="a cubic plus a shared weight e on x^4..x^k, k drawn from [4, degree] each pass",
    loss="mse", axes=VARIANT_AXES, devices=_TORCH_DEVICES, optimizers=OPTIMIZERS,
    min_degree=4, max_degree=MAX_DEGREE,
    defaults=make_defaults(1e-8, 5, 30000, "momentum", "float32"),
    train=_trainer("dynamic"), predict=bases.dynamic_predict,
    monomial=bases.dynamic_monomial,
    fixed_coefficients=5, live_rows=lambda degree: 5, can_stop_at_optimum=False, fusable=True,
    resumable=True,
    # Measured on the default grid (2000 points), 30,000 epochs, seed 0.
    note=("the lesson's lr 1e-8 was for a summed loss; with the mean loss it barely "
          "moves (mse about 5 after 30,000 epochs): lr 1e-5 to 2e-5 learns (mse about "
          "0.005), 5e-5 diverges"))

#: The built-ins, name -> ``module:object``: what the registry loads first, through the same
#: loader as the entry points of installed plugins.
ENTRY_POINTS = {v.name: f"{__name__}:{v.name.upper()}"
                for v in (NUMPY, TENSOR, AUTOGRAD, LEGENDRE, MODULE, DYNAMIC)}
