"""Helpers for the numerics tests of ``polyfit_models`` (no servers, no databases: these tests
are pure): the variants by family, a spec, the learning rate where gradient descent starts to
diverge, and a CUDA device or a skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyfit_models import JobSpec

TORCH_VARIANTS = ("tensor", "autograd", "legendre", "module", "dynamic")
SSE_MONOMIAL_VARIANTS = ("numpy", "tensor", "autograd")


def stability_limit(degree: int, x_points: int = 2000, dtype=np.float64) -> float:
    """2 / lambda_max of the Hessian 2 V^T V of the sum-of-squares loss on the default grid:
    gradient descent converges below this learning rate and diverges above it."""
    x = np.linspace(-np.pi, np.pi, x_points)
    V = np.vander(x, degree + 1, increasing=True).astype(dtype).astype(np.float64)
    return 2.0 / np.linalg.eigvalsh(2.0 * V.T @ V)[-1]


def spec(variant: str, **overrides) -> JobSpec:
    return JobSpec.create(variant, **overrides)


def cuda_or_skip() -> str:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return "cuda"
