"""Running fits: ``fit`` for one job, ``fit_many`` for many as vectorized batches.

``fit_many`` groups jobs by :func:`batch_key` (every setting except lr and seed), and trains each
group as one tensor program through its variant's ``train`` (jobs stacked along a leading axis,
per-job learning rates and seeds). On the CPU a group is cut into chunks small enough for their
(B, x_points) temporaries to stay in cache (``CPU_CHUNK_BYTES``); on a GPU a group runs whole
unless it would need more than half the device's free memory (by ``bytes_per_job``).
Either way a job's result does not depend on its batch-mates beyond rounding (every operation
is row-wise). ``fit(spec)`` is ``fit_many([spec])``. The device is passed in, never looked up.

Fusing (``fuse``; see ``fusion.py``): a variant with a fused path can train a chunk with its
epoch compiled into a few fused passes, which costs a compile (seconds, paid once per
configuration and process, and much less with inductor's disk cache warm) and then trains
several times faster. ``fuse=None`` (the default) fuses a chunk when that configuration is
compiled in this process already, or when the chunk is big enough for the compile to pay for
itself: ``AUTO_FUSE_WORK`` where inductor's disk cache holds the compile already,
``AUTO_FUSE_WORK_COLD`` where this machine never compiled it (``remember_compiles``), so that a
first sweep on a fresh machine is never slower for fusing; ``True`` fuses every chunk that can
be; ``False`` never fuses. A fused chunk is not cut for the cache (it keeps no (B, x_points)
arrays) and has at least two jobs; a configuration that fails to compile here (no C++
compiler, no Triton) is trained unfused from then on, with a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import fusion
from .batching import batch_key, bytes_per_job, jobs_within
from .errors import DeviceError, SpecError, StateError
from .loop import RawFits
from .problem import grid, optimum_mse, target_values
from .registry import VARIANTS
from .result import CURVE_EVERY, FitResult, finite_or_none
from .spec import JobSpec
from .state import JobState, Suspended, stack, unstack

#: Rough per-chunk working-set budget on the CPU: (B, x_points) temporaries of a chunk this size
#: stay within the caches of a small machine, which beats streaming one huge batch through
#: memory, while a chunk is still big enough to hide the per-operation overhead.
CPU_CHUNK_BYTES = 8 * 2 ** 20

#: ``fuse=None`` fuses a group of a configuration not yet compiled in this process when its
#: jobs x epochs x x_points reaches this: 1,000 fits of the lesson's 2000 epochs on 2000 points,
#: 6 to 9 s of unfused autograd training on one CPU core against 2 s fused plus the 5 s a
#: process pays for its first compile with inductor's disk cache warm (18 s cold; each further
#: configuration 0.3 to 1.6 s warm, 2 to 6.5 s cold): about where fusing starts to pay.
AUTO_FUSE_WORK = 4_000_000_000

#: ... and this much for a configuration never compiled on this machine (see
#: ``remember_compiles``): its first compile takes 18 to 23 s instead of 5, so the group must be
#: about four times as big before fusing it is not slower than training it unfused.
AUTO_FUSE_WORK_COLD = 16_000_000_000

#: ... and only a group of at least this many jobs: below it, the compiled epoch's fixed cost
#: (dynamo's guards and autograd's wrappers, about 0.1 to 0.3 ms an epoch) is more than the
#: unfused arithmetic it saves (measured crossover: 32 to 64 jobs).
AUTO_FUSE_MIN_JOBS = 64

#: Jobs per fused chunk on the CPU: a fused epoch keeps no (B, x_points) arrays, so the chunk
#: only needs to be big enough to hide the fixed cost of an epoch's Python and dispatch work
#: (about 0.1 to 0.2 ms, against about 1 microsecond per job of arithmetic).
FUSED_CPU_CHUNK_JOBS = 4096

log = logging.getLogger(__name__)

#: The configurations (variant, degree, dtype, device: what a compiled function is specific to)
#: trained fused in this process, and those that failed to compile here.
_fused_ready: set[tuple] = set()
_fuse_failed: set[tuple] = set()

#: Where this machine notes the configurations it has compiled (``remember_compiles``).
_compile_marks: Path | None = None


def remember_compiles(folder: str | Path | None) -> None:
    """Note in ``folder`` (the folder the process edge points inductor's disk cache at), one
    empty file per configuration, what this machine has compiled, and read it back: with it,
    ``fuse=None`` tells a configuration whose compile inductor has on disk (a later process
    only traces it: seconds) from one never compiled here (a cold compile), and fuses the
    latter only for a group big enough to pay for it. Without it every configuration not yet
    trained fused in this process counts as cold."""
    global _compile_marks
    _compile_marks = None if folder is None else Path(folder) / "polyfit-fused"


def _mark_name(config: tuple) -> str:
    # The compile is torch's: another torch version compiles anew.
    return "-".join(str(part) for part in (*config, "torch", torch.__version__)).replace("/", "_")


def _compiled_here(config: tuple) -> bool:
    return _compile_marks is not None and (_compile_marks / _mark_name(config)).exists()


def _note_compiled(config: tuple) -> None:
    if _compile_marks is None:
        return
    try:
        _compile_marks.mkdir(parents=True, exist_ok=True)
        (_compile_marks / _mark_name(config)).touch()
    except OSError:  # a read-only cache folder: the next process compiles as if cold
        pass


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


def fit(spec: JobSpec, device: str | torch.device = "cpu",
        fuse: bool | None = None) -> FitResult:
    """Train one job on ``device`` and return its result (divergence is a result, not an
    error); ``fuse`` as for ``fit_many``."""
    return fit_many([spec], device, fuse)[0]


def fit_many(specs: Sequence[JobSpec], device: str | torch.device = "cpu",
             fuse: bool | None = None, progress: Progress | None = None,
             states: Sequence[JobState | None] | None = None,
             halt: Callable[[int], bool] | None = None,
             group_jobs: int = 0) -> list[FitResult | JobState]:
    """Train many jobs on ``device``, batching compatible ones; results in input order.

    ``fuse``: None fuses the chunks where it pays, True every chunk that can be, False none
    (see the module docstring). ``group_jobs``: how many jobs of their configuration ``specs``
    are one slice of (a worker trains a message's batch in slices its memory budget allows,
    one call each): the compile is paid once for all of them, so ``fuse=None`` weighs it
    against the work of them all. ``progress(specs, epochs_done, snapshot)``, if given, is called
    every 100 epochs of a batch with the specs it trains (objects of ``specs``, one per row)
    and how many epochs it has done; ``snapshot()`` returns, if called, each row's loss curve
    so far ((rows, k) float64: the loss at epochs 99, 199, ...) and whether it is still
    training (a diverged or stopped row is not: its curve has ended). It runs in the training
    thread: it should return at once when it has nothing to do.

    ``halt(epochs_done)``, if given, is asked after ``progress`` every 100 epochs, and before
    a batch starts (with the epochs its jobs have done): once it says True, each batch in
    training stops there (right after that epoch's update) and batches not started do not;
    their jobs get a :class:`JobState` instead of a result (epoch 0 and no arrays: not
    started).
    ``states`` (one per spec, None for a fresh start) continues jobs from such states: jobs
    continue as a batch with the others stopped at the same epoch, on the path (fused or not)
    they trained on, and end with the result an uninterrupted run would have given."""
    dev = resolve_device(device)
    states = [None] * len(specs) if states is None else list(states)
    if len(states) != len(specs):
        raise SpecError("fit_many needs one state (or None) per spec")
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, JobSpec):
            raise SpecError(f"fit expects JobSpec objects, got {type(spec).__name__}")
        if dev.type not in VARIANTS[spec.variant].devices:
            raise SpecError(f"variant {spec.variant} runs on "
                            f"{' or '.join(VARIANTS[spec.variant].devices)} only, not {dev}")
        state = states[i] = _usable(spec, states[i])
        groups.setdefault(batch_key(spec) + _continues(state), []).append(i)
    _check_available(dev)

    results: list[FitResult | JobState | None] = [None] * len(specs)
    for indices in groups.values():
        # Sorting by lr gives torch.optim variants one parameter group per distinct lr; sorting
        # by seed too makes a batch's row order a function of its contents, not of the input
        # order, so the same set of jobs gives bit-identical results however it is listed.
        indices.sort(key=lambda i: (specs[i].lr, specs[i].seed))
        first, state = specs[indices[0]], states[indices[0]]
        if state is None:
            fused = _fuses(fuse, first, len(indices), dev, group_jobs)
        else:  # the path it started on: the other one rounds differently
            fused = state.fused and _fuses(True, first, len(indices), dev)
        for chunk in _chunks(indices, first, dev, fused):
            batch = [specs[i] for i in chunk]
            if halt is not None and halt(0 if state is None else state.epoch):
                for i in chunk:
                    results[i] = states[i] or JobState(0, False)
                continue
            started = time.perf_counter()
            watch = None if progress is None else _watcher(progress, batch)
            resume = None if state is None else stack([states[i] for i in chunk])
            raw, ran_fused = _train(batch, dev, fused, _stop_goals(batch), watch, halt, resume)
            if raw.suspended is not None:
                for i, job_state in zip(chunk, unstack(raw.suspended, ran_fused)):
                    results[i] = job_state
                continue
            mses = _model_mse(batch[0], raw.coefficients)
            share = (time.perf_counter() - started) / len(batch)
            for row, i in enumerate(chunk):
                results[i] = _result(specs[i], raw, row, mses[row], share)
    return results  # type: ignore[return-value]


def _usable(spec: JobSpec, state: JobState | None) -> JobState | None:
    """``state`` if a batch of ``spec`` can continue from it (None: start afresh); a state
    that does not belong to the job raises ``StateError``."""
    if state is None or state.epoch == 0:
        return None
    if not isinstance(state, JobState):
        raise StateError(f"a training state must be a JobState, got {type(state).__name__}")
    n = VARIANTS[spec.variant].n_coefficients(spec.degree)
    params = state.arrays.get("params")
    curve = state.arrays.get("curve")
    if (not VARIANTS[spec.variant].resumable or state.epoch % CURVE_EVERY
            or state.epoch >= spec.epochs or params is None or params.shape != (n,)
            or curve is None or curve.shape != (state.epoch // CURVE_EVERY,)):
        raise StateError(f"the training state (epoch {state.epoch}) does not fit this "
                         f"{spec.variant} job of {spec.epochs} epochs")
    return state


def _continues(state: JobState | None) -> tuple:
    """What must also be equal for jobs to continue as one batch."""
    return (0, False) if state is None else (state.epoch, state.fused)


def _fuses(fuse: bool | None, spec: JobSpec, jobs: int, dev: torch.device,
           group: int = 0) -> bool:
    """Whether to train ``jobs`` jobs of ``spec``'s group fused (see the module docstring), as
    a slice of ``group`` jobs of the same configuration that one compile serves."""
    config = _fuse_config(spec, dev)
    if fuse is False or not VARIANTS[spec.variant].fusable or config in _fuse_failed:
        return False
    if fuse is True:
        return True
    if jobs < AUTO_FUSE_MIN_JOBS:
        return False
    if config in _fused_ready:
        return True
    pays = AUTO_FUSE_WORK if _compiled_here(config) else AUTO_FUSE_WORK_COLD
    return max(jobs, group) * spec.epochs * spec.x_points >= pays


def _fuse_config(spec: JobSpec, dev: torch.device) -> tuple:
    return spec.variant, spec.degree, spec.dtype, str(dev)


def _stop_goals(batch: list[JobSpec]) -> np.ndarray | None:
    """Each job's ``stop_gap`` goal as a value of its variant's training loss (the loss at or
    below which its model is within the gap of the least-squares optimum; NaN for a job with
    none), or None when no job of the batch has one."""
    if all(spec.stop_gap is None for spec in batch):
        return None
    spec = batch[0]
    per_mse = spec.x_points if VARIANTS[spec.variant].loss == "sse" else 1
    best = optimum_mse(spec.target, spec.x_start, spec.x_stop, spec.x_points, spec.degree)
    return np.array([np.nan if s.stop_gap is None else (best + s.stop_gap) * per_mse
                     for s in batch])


Progress = Callable[[Sequence[JobSpec], int, Callable[[], tuple[np.ndarray, np.ndarray]]],
                    None]


def _watcher(progress: Progress, batch: list[JobSpec]) -> Callable:
    """The loop's ``watch`` for ``batch``: its rows are ``batch`` (a padded fused batch has
    more, which the snapshot leaves out)."""
    rows = len(batch)

    def watch(epochs_done: int, snapshot: Callable) -> None:
        progress(batch, epochs_done, lambda: tuple(a[:rows] for a in snapshot()))

    return watch


def _train(batch: list[JobSpec], dev: torch.device, fused: bool,
           stop: np.ndarray | None = None, watch: Callable | None = None,
           halt: Callable | None = None, resume: Suspended | None = None
           ) -> tuple[RawFits, bool]:
    """The batch's raw outcome, and whether it trained fused."""
    variant = VARIANTS[batch[0].variant]
    options: dict = {} if stop is None else {"stop": stop}
    if watch is not None:
        options["watch"] = watch
    if variant.resumable:
        options.update({k: v for k, v in (("halt", halt), ("resume", resume)) if v is not None})
    if not fused:
        return variant.train(batch, dev, **options), False
    config = _fuse_config(batch[0], dev)
    # A batch of one job would be compiled as a case of its own (dynamo specialises sizes 0
    # and 1): it trains next to a copy of itself instead (rows never interact).
    padded = batch * 2 if len(batch) == 1 else batch
    twice = dict(options)
    if len(batch) == 1:
        if stop is not None:
            twice["stop"] = np.concatenate([stop, stop])
        if "resume" in twice:
            twice["resume"] = Suspended(resume.epoch, {k: np.concatenate([v, v])
                                                       for k, v in resume.rows.items()})
    try:
        raw = variant.train(padded, dev, fused=True, **twice)
    except RuntimeError as e:
        if not fusion.is_compile_error(e):
            raise
        _fuse_failed.add(config)
        log.warning("polyfit: cannot compile the fused %s epoch on %s, training it unfused "
                    "(%s)", batch[0].variant, dev, str(e).strip().splitlines()[0][:300])
        return variant.train(batch, dev, **options), False
    if config not in _fused_ready:
        _fused_ready.add(config)
        _note_compiled(config)
    return raw.rows(slice(0, len(batch))), True


def _chunks(indices: list[int], spec: JobSpec, dev: torch.device,
            fused: bool) -> list[list[int]]:
    if dev.type == "cpu" and fused:
        size = FUSED_CPU_CHUNK_JOBS
    elif dev.type == "cpu":
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
    stopped = int(raw.stopped_at[row])
    # The curve ends where training did: before a bad epoch, at the epoch a job stopped.
    end = at - 1 if diverged else stopped if stopped >= 0 else spec.epochs
    finite = bool(np.all(np.isfinite(coefficients)))
    curve = []
    for j, loss in enumerate(raw.curve[row]):
        epoch = (j + 1) * CURVE_EVERY - 1
        if epoch <= end and np.isfinite(loss):
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
        stopped_at_epoch=stopped if stopped >= 0 else None,
    )
