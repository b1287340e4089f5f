"""Fused epochs: a variant's per-epoch forward compiled into one pass over the points.

Unfused, an epoch is a chain of separate tensor operations over (jobs x points) arrays: each one
streams the whole batch through memory and pays a dispatch, and that, not the arithmetic, is
most of the cost. Fused, ``torch.compile`` (inductor: C++ loops on the CPU, Triton on a GPU)
turns a variant's forward into one loop over each job's points that keeps only running sums,
and autograd's backward into one more: the (jobs x points) arrays are never stored. What is left
in Python each epoch is a few small operations on (jobs x parameters) tensors: the update and
``loop.py``'s divergence bookkeeping, identical to the unfused path.

The variants keep their mechanisms. The compiled region is the variant's own forward and loss:
``common.polynomial`` evaluates a polynomial as one matrix product when unfused (a library
call is the fastest single operation) and as the lesson's sum of terms ``a + b x + c x^2 ...``
when compiled (which fuses with the loss); autograd still differentiates it (``backward``, or
the Legendre Function's own backward, traced as written); updates run the same code. Only the
rounding differs from the unfused path (every reduction is still per job, so a job's result
does not depend on its batch-mates).

Compiling costs seconds, so each function is compiled once per configuration (``key``: degree,
dtype, device) with the batch size and the number of points symbolic: one compile serves every
batch of a configuration. Each configuration gets its own copy of the function's code, because
dynamo keeps at most ``recompile_limit`` (8) compiled versions per code object and a worker may
see more configurations than that. Inductor caches what it compiles on disk (its FX graph and
AOT autograd caches, in ``TORCHINDUCTOR_CACHE_DIR``, which the process edge may point at a
folder of its own), so a later process traces the function again but compiles nothing.

This module never reads the environment: whether to fuse is the caller's ``fit_many(fuse=...)``.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

import torch

_compiled: dict[tuple, Callable] = {}


def compiled(fn: Callable, key: tuple, batched: tuple[int, ...] = (0,)) -> Callable:
    """``fn`` compiled by ``torch.compile`` for the configuration ``key`` (made once per
    process and key; compiling happens at its first call).

    The first dimension of the arguments at the positions ``batched`` is the batch (jobs),
    compiled as a symbolic size; every other size is compiled as it comes (the number of points
    too: a second grid size recompiles once, with that size symbolic from then on). Leaving
    every size symbolic from the start (``dynamic=True``) would let dynamo give a batch size
    and a degree that happen to be equal the same symbol, and specialise both.

    The result always runs with autograd enabled, so that a call under ``torch.no_grad`` (the
    final scoring pass of ``loop.run``) reuses the training graph instead of compiling a
    second one; callers detach what they keep."""
    entry = _compiled.get((fn, key))
    if entry is None:
        from torch._dynamo import maybe_mark_dynamic  # only where something is compiled
        from torch._functorch import config as functorch_config

        compiled_fn = torch.compile(_own_copy(fn, key), fullgraph=True,
                                    options={"compile_threads": 1})
        first = [True]

        def call(*args):
            if not first[0]:
                return compiled_fn(*args)
            first[0] = False
            # The first call compiles. With no activation memory budget, AOT autograd's
            # partitioner recomputes in the backward what it needs from the inputs instead of
            # saving (B, N) tensors from the forward: recomputing costs a few flops per point,
            # a saved tensor a write and a read of the whole batch every epoch (the Legendre
            # model's c + d x: 1.8 against 2-3.7 us per job and epoch on a busy machine).
            with functorch_config.patch(activation_memory_budget=0.0):
                return compiled_fn(*args)

        @functools.wraps(fn)
        def entry(*args):
            for i in batched:
                maybe_mark_dynamic(args[i], 0)
            if torch.is_grad_enabled():
                return call(*args)
            with torch.enable_grad():
                return call(*args)

        _compiled[(fn, key)] = entry
    return entry


def joined(blocks: list[torch.Tensor]) -> torch.Tensor:
    """Parameter blocks (one per learning rate) as one tensor for a compiled function: always a
    new tensor that requires grad, also in the final pass under ``torch.no_grad``, because a
    change of type (a lone block is a ``Parameter``) or of ``requires_grad`` would compile the
    function again."""
    with torch.enable_grad():
        return torch.cat(blocks)


def _own_copy(fn: Callable, key: tuple) -> Callable:
    """A copy of ``fn`` with a code object of its own (dynamo's cache of compiled versions
    hangs off the code object), named after ``key`` for profiles and logs."""
    tag = "_".join(str(part).replace(":", "") for part in key)
    code = fn.__code__.replace(co_name=f"{fn.__name__}__{tag}")
    copy = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__,
                              fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def is_compile_error(error: BaseException) -> bool:
    """Whether ``error`` says that a function could not be compiled here (no C++ compiler, no
    Triton, an operation dynamo cannot trace), rather than that the fit itself failed. Running
    out of memory while compiling (autotuning runs kernels) is the batch's size, not the
    compiler: the caller's out-of-memory handling must see it."""
    from torch._dynamo.exc import TorchDynamoException  # loaded already if anything compiled

    if not isinstance(error, TorchDynamoException):
        return False
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, torch.OutOfMemoryError):
            return False
        cause = cause.__cause__ or cause.__context__
    return True
