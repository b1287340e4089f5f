"""Running fits: ``fit`` for one job, ``fit_many`` for many as vectorized batches.

``fit_many`` groups jobs by :func:`batch_key` (every setting except lr and seed), and trains each
group as one tensor program through its variant's ``train`` (jobs stacked along a leading axis,
per-job learning rates and seeds). On the CPU a group is cut into chunks small enough for their
(B, x_points) temporaries to stay in cache (``CPU_CHUNK_BYTES``); on a GPU a group runs whole
unless it would need more than half the device's free memory (by ``bytes_per_job``).
Either way a job's result does not depend on its batch-mates beyond rounding (every operation
is row-wise). ``fit(spec)`` is ``fit_many([spec])``. The device is passed in, never looked up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from .batching import batch_key, bytes_per_job, jobs_within
from .errors import DeviceError, SpecError
from .loop import RawFits
from .problem import grid, optimum_mse, target_values
from .registry import VARIANTS
from .result import CURVE_EVERY, FitResult, finite_or_none
from .spec import JobSpec

#: Rough per-chunk working-set budget on the CPU: (B, x_points) temporaries of a chunk this size
#: stay within the caches of a small machine, which beats streaming one huge batch through
#: memory, while a chunk is still big enough to hide the per-operation overhead.
CPU_CHUNK_BYTES = 8 * 2 ** 20


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` -> a usable torch.device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SpecError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise SpecError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    return dev


def _check_available(dev: torch.device) -> None:
    if dev.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise DeviceError(f"device {dev} is not available: torch sees no CUDA device here")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {dev} is not available: torch sees "
                          f"{torch.cuda.device_count()} CUDA device(s)")


def fit(spec: JobSpec, device: str | torch.device = "cpu") -> FitResult:
    """Train one job on ``device`` and return its result (divergence is a result, not an
    error)."""
    return fit_many([spec], device)[0]


def fit_many(specs: Sequence[JobSpec], device: str | torch.device = "cpu") -> list[FitResult]:
    """Train many jobs on ``device``, batching compatible ones; results in input order."""
    dev = resolve_device(device)
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, JobSpec):
            raise SpecError(f"fit expects JobSpec objects, got {type(spec).__name__}")
        if dev.type not in VARIANTS[spec.variant].devices:
            raise SpecError(f"variant {spec.variant} runs on "
                            f"{' or '.join(VARIANTS[spec.variant].devices)} only, not {dev}")
        groups.setdefault(batch_key(spec), []).append(i)
    _check_available(dev)

    results: list[FitResult | None] = [None] * len(specs)
    for indices in groups.values():
        # Sorting by lr gives torch.optim variants one parameter group per distinct lr; sorting
        # by seed too makes a batch's row order a function of its contents, not of the input
        # order, so the same set of jobs gives bit-identical results however it is listed.
        indices.sort(key=lambda i: (specs[i].lr, specs[i].seed))
        for chunk in _chunks(indices, specs[indices[0]], dev):
            batch = [specs[i] for i in chunk]
            started = time.perf_counter()
            raw = VARIANTS[batch[0].variant].train(batch, dev)
            mses = _model_mse(batch[0], raw.coefficients)
            share = (time.perf_counter() - started) / len(batch)
            for row, i in enumerate(chunk):
                results[i] = _result(specs[i], raw, row, mses[row], share)
    return results  # type: ignore[return-value]


def _chunks(indices: list[int], spec: JobSpec, dev: torch.device) -> list[list[int]]:
    if dev.type == "cpu":
        size = max(1, CPU_CHUNK_BYTES // bytes_per_job(spec))
    else:  # a GPU batch runs whole, as far as half the device's free memory allows
        size = max(1, jobs_within(spec, torch.cuda.mem_get_info(dev)[0] // 2))
    return [indices[i:i + size] for i in range(0, len(indices), size)]


#: Rows of a batch scored at a time: the float64 scoring needs a few (rows, x_points) arrays,
#: which for a GPU batch of a hundred thousand jobs would otherwise take gigabytes of host memory.
SCORE_ROWS = 1024


def _model_mse(spec: JobSpec, coefficients: np.ndarray) -> np.ndarray:
    """Mean squared error of each final model (rows of ``coefficients``) on the grid, in
    float64 with the variant's own model; NaN where it is not finite."""
    x = grid(spec.x_start, spec.x_stop, spec.x_points)
    y = target_values(spec.target, x)
    predict = VARIANTS[spec.variant].predict
    out = np.empty(len(coefficients))
    with np.errstate(all="ignore"):
        for start in range(0, len(coefficients), SCORE_ROWS):
            rows = slice(start, start + SCORE_ROWS)
            out[rows] = np.mean((predict(coefficients[rows], x, spec.degree) - y) ** 2, axis=1)
    return out


def _result(spec: JobSpec, raw: RawFits, row: int, mse: float, duration_s: float) -> FitResult:
    variant = VARIANTS[spec.variant]
    coefficients = raw.coefficients[row]
    at = int(raw.diverged_at[row])
    diverged = at >= 0
    finite = bool(np.all(np.isfinite(coefficients)))
    curve = []
    for j, loss in enumerate(raw.curve[row]):
        epoch = (j + 1) * CURVE_EVERY - 1
        if (not diverged or epoch < at) and np.isfinite(loss):
            curve.append([epoch, float(loss)])
    return FitResult(
        status="diverged" if diverged else "succeeded",
        final_loss=finite_or_none(raw.final_loss[row]),
        mse=finite_or_none(mse),
        optimum_mse=optimum_mse(spec.target, spec.x_start, spec.x_stop, spec.x_points,
                                spec.degree),
        coefficients=[finite_or_none(c) for c in coefficients],
        monomial=variant.monomial(coefficients, spec.degree) if finite else None,
        loss_curve=curve,
        diverged_at_epoch=at if diverged else None,
        duration_s=duration_s,
    )
