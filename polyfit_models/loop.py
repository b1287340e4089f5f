"""The training loop every torch variant shares, with exact per-job divergence.

A variant supplies a *program*: its stacked parameters (rows are jobs), an optimizer over them,
and ``evaluate(epoch, with_grads)`` returning the per-job training loss (and gradients). This
loop runs ``epochs`` updates plus one last forward pass that scores the final parameters.

Divergence: a job diverges at the first forward pass whose loss is bad (not finite, or above
``EXPLOSION_FACTOR`` times its initial loss floored at ``LOSS_FLOOR``). It then reports the
parameters and loss of its last good epoch, and ``diverged_at_epoch`` is the index of the bad
pass, 0..epochs (epochs = the final scoring pass). Its batch-mates are untouched, because every
operation of a program is row-wise.

Why a window instead of a per-epoch mask: every tensor operation costs several microseconds of
dispatch whatever its size, which is most of an epoch's cost for one small fit. So each epoch
only copies the loss and the parameters into a ring of ``WINDOW`` slots (preallocated, two or
three copies an epoch), and once per window, with one host sync, the loop finds each job's first
bad epoch in the ring, restores that job's previous parameters from the ring, and retires it. A
retired row keeps being computed (its values are garbage and may be NaN) but never read again.
The whole batch stops early when no job is left. The window is the lesson's print interval, so
the loss curve (epoch % 100 == 99) falls out of the ring.

Stopping at the optimum: ``run(..., stop=...)`` gives each job a loss at or below which it has
reached its goal (its ``stop_gap`` above the least-squares optimum, in the variant's loss).
The same window settles it: a job whose loss reaches its goal at a training epoch before any
bad one retires there with that epoch's parameters and loss (``stopped_at``), and counts as
succeeded. Its batch-mates go on; the batch ends early once every job has retired.

Watching: ``run(..., watch=...)`` calls ``watch(epochs_done, snapshot)`` at the end of every
window (one Python call per 100 epochs); ``snapshot()``, only if the watcher wants it, copies
the loss curve so far and which jobs are still training to the host (see ``runner.fit_many``'s
``progress``: how a worker shows running jobs' curves).

Stopping and continuing: ``run(..., halt=...)`` calls ``halt(epochs_done)`` at the end of
every window too (after ``watch``); once it returns True, the batch stops right after that
window's last update and ``RawFits.suspended`` holds every job's state (``state.py``):
parameters, optimizer state and this tracker's per-job bookkeeping. ``run(...,
resume=suspended)`` loads them into a freshly built program and goes on from that epoch: the
same operations on the same values as a run that never stopped, so the same bits. Stopping
only at a window's end is what keeps the state small: the rings are refilled before they are
read again, so only the last slot (``carry``) is kept.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .result import CURVE_EVERY
from .state import Suspended

#: A loss this many times above the job's initial loss (or above EXPLOSION_FACTOR * LOSS_FLOOR
#: for a tiny initial loss) counts as divergence. Below the stability limit gradient descent on
#: a quadratic never raises the loss at all, and Adam's overshoots stay orders of magnitude
#: below this; past the limit the loss grows geometrically and crosses it within a few dozen
#: epochs, well before it would overflow.
EXPLOSION_FACTOR = 1e6
LOSS_FLOOR = 1.0
WINDOW = CURVE_EVERY


@dataclass
class RawFits:
    """Per-job outcome of one batch, as float64/int64 host arrays (rows are jobs)."""

    coefficients: np.ndarray  # (B, P); the last good parameters
    final_loss: np.ndarray  # (B,); NaN where no epoch was good
    diverged_at: np.ndarray  # (B,); -1 where the job never diverged
    curve: np.ndarray  # (B, epochs // CURVE_EVERY); loss at epochs 99, 199, ... (< epochs)
    stopped_at: np.ndarray  # (B,); the epoch a job reached its stop goal at, -1 where it did not
    #: Set when the batch stopped before the end (``halt``): every job's state; the fields
    #: above then describe the batch as it was, not a result.
    suspended: Suspended | None = None

    def rows(self, rows: slice) -> RawFits:
        """The outcome of some of the jobs only."""
        return RawFits(self.coefficients[rows], self.final_loss[rows], self.diverged_at[rows],
                       self.curve[rows], self.stopped_at[rows],
                       None if self.suspended is None else self.suspended.take(rows))


class Program(Protocol):
    """What the training loop drives: a batch of jobs' parameters, optimizer and loss."""

    batch_size: int
    params: list[torch.Tensor]  # (b, k) leaves, updated in place by the optimizer
    param_rows: list[slice]  # the jobs (rows of the batch) each of params holds
    optimizer: object  # has step(grads)

    def evaluate(self, epoch: int, with_grads: bool
                 ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The detached per-job loss at ``epoch`` and, if ``with_grads``, the gradients of the
        params (``run`` calls it under ``torch.no_grad`` when ``with_grads`` is False)."""

    def coefficients(self, params: Sequence[torch.Tensor]) -> torch.Tensor: ...


def explosion_limit(initial_loss):
    """The per-job loss above which a job has diverged, from its initial loss (NumPy array or
    tensor). A loss is good only if ``loss <= limit``; that is False for NaN, and the limit is
    NaN where the initial loss is not finite, so such a job is bad from the start."""
    limit = EXPLOSION_FACTOR * initial_loss.clip(min=LOSS_FLOOR)
    limit[~(initial_loss <= float("inf"))] = float("nan")
    return limit


class _Tracker:
    """The per-job bookkeeping of ``run``: rings, divergence, loss curve (see module doc)."""

    def __init__(self, program: Program, epochs: int, stop=None, watch=None,
                 halt=None) -> None:
        self.watch = watch
        self.halt = halt
        self.halted = False
        self.params = [p.detach() for p in program.params]  # aliases of the live storage
        self.rows = program.param_rows
        ref = self.params[0]
        batch, self.device = program.batch_size, ref.device
        self.epochs = epochs

        def full(shape, value, dtype=ref.dtype):
            return torch.full(shape, value, dtype=dtype, device=self.device)

        self.loss_ring = full((batch, WINDOW), float("nan"))
        self.loss_slots = self.loss_ring.unbind(1)
        self.param_rings = [full((p.shape[0], WINDOW, *p.shape[1:]), float("nan"))
                            for p in self.params]
        self.param_slots = [ring.unbind(1) for ring in self.param_rings]
        # What a job that goes bad in the first slot of a window falls back to: the last slot
        # of the previous window (for epoch 0, the initial parameters and no loss).
        self.carry = [p.clone() for p in self.params]
        self.carry_loss = full((batch,), float("nan"))
        self.frozen = [p.clone() for p in self.params]
        self.final_loss = full((batch,), float("nan"))
        self.active = torch.ones(batch, dtype=torch.bool, device=self.device)
        self.diverged_at = torch.full((batch,), -1, dtype=torch.int64, device=self.device)
        self.stopped_at = torch.full((batch,), -1, dtype=torch.int64, device=self.device)
        # Each job's stop goal as a loss (NaN: none, never reached), or None for no job.
        self.stop = None if stop is None else torch.as_tensor(stop, dtype=ref.dtype,
                                                              device=self.device)
        self.curve = full((batch, epochs // CURVE_EVERY), float("nan"))
        self.limit: torch.Tensor | None = None

    def record(self, epoch: int, loss: torch.Tensor) -> bool:
        """Note this epoch's loss and parameters; at a window's end, settle it. Returns False
        when no job is left training."""
        slot = epoch % WINDOW
        self.loss_slots[slot].copy_(loss)
        for slots, p in zip(self.param_slots, self.params):
            slots[slot].copy_(p)
        if self.limit is None:
            self.limit = explosion_limit(loss.detach().clone())
        if slot == WINDOW - 1 or epoch == self.epochs:
            return self._settle(epoch, slot + 1)
        return True

    def _settle(self, last_epoch: int, filled: int) -> bool:
        losses = self.loss_ring[:, :filled]
        first_epoch = last_epoch - filled + 1
        bad = ~(losses <= self.limit.unsqueeze(1)) & self.active.unsqueeze(1)
        has_bad = bad.any(dim=1)
        first = bad.to(torch.uint8).argmax(dim=1)  # first bad slot of each job
        if self.stop is not None:
            reach = (losses <= self.stop.unsqueeze(1)) & self.active.unsqueeze(1)
            if last_epoch == self.epochs:
                reach[:, filled - 1] = False  # the final scoring pass is no early stop
            reached = reach.to(torch.uint8).argmax(dim=1)
            stopped = reach.any(dim=1) & (~has_bad | (reached < first))
        else:
            stopped = torch.zeros_like(has_bad)
        newly = has_bad & ~stopped
        any_newly, any_stopped, any_active = torch.stack(
            [newly.any(), stopped.any(), (self.active & ~newly & ~stopped).any()]).tolist()
        if any_newly:
            self.diverged_at = torch.where(newly, first_epoch + first, self.diverged_at)
            before = (first - 1).clamp(min=0)
            in_ring = first > 0
            good_loss = torch.where(in_ring, losses.gather(1, before.unsqueeze(1)).squeeze(1),
                                    self.carry_loss)
            self.final_loss = torch.where(newly, good_loss, self.final_loss)
            for i, (ring, rows) in enumerate(zip(self.param_rings, self.rows)):
                local = torch.arange(ring.shape[0], device=self.device)
                good = torch.where(_column(in_ring[rows]), ring[local, before[rows]],
                                   self.carry[i])
                self.frozen[i] = torch.where(_column(newly[rows]), good, self.frozen[i])
            self.active &= ~newly
        if any_stopped:
            self.stopped_at = torch.where(stopped, first_epoch + reached, self.stopped_at)
            self.final_loss = torch.where(
                stopped, losses.gather(1, reached.unsqueeze(1)).squeeze(1), self.final_loss)
            for i, (ring, rows) in enumerate(zip(self.param_rings, self.rows)):
                local = torch.arange(ring.shape[0], device=self.device)
                self.frozen[i] = torch.where(_column(stopped[rows]), ring[local, reached[rows]],
                                             self.frozen[i])
            self.active &= ~stopped
        if filled == WINDOW and last_epoch < self.epochs:
            self.curve[:, last_epoch // CURVE_EVERY] = self.loss_slots[WINDOW - 1]
            if self.watch is not None:
                self.watch(last_epoch + 1, functools.partial(self._snapshot, last_epoch))
            if self.halt is not None and self.halt(last_epoch + 1):
                self.halted = True
        self.carry_loss = self.loss_slots[filled - 1].clone()
        self.carry = [slots[filled - 1].clone() for slots in self.param_slots]
        return bool(any_active)

    def _snapshot(self, last_epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The loss curve up to ``last_epoch`` (B, k) and which jobs still train (B,)."""
        return (self.curve[:, : last_epoch // CURVE_EVERY + 1].double().cpu().numpy(),
                self.active.cpu().numpy())

    def suspend(self, program: Program, epoch: int) -> RawFits:
        """The batch as it stands after ``epoch`` updates, with every job's state."""
        def host(t: torch.Tensor) -> np.ndarray:
            return t.detach().double().cpu().numpy()

        rows = {"params": torch.cat(self.params), "carry": torch.cat(self.carry),
                "frozen": torch.cat(self.frozen), "carry_loss": self.carry_loss,
                "final_loss": self.final_loss, "active": self.active,
                "diverged_at": self.diverged_at, "stopped_at": self.stopped_at,
                "limit": self.limit, "curve": self.curve[:, :epoch // CURVE_EVERY]}
        rows.update({f"opt.{k}": v for k, v in program.optimizer.rows_state().items()})
        raw = self.finish(program)
        raw.suspended = Suspended(epoch, {k: host(v) for k, v in rows.items()})
        return raw

    def resume(self, program: Program, suspended: Suspended) -> int:
        """Load a stopped batch's states into this tracker and ``program``; returns the epoch
        to go on from."""
        rows, epoch = suspended.rows, suspended.epoch
        ref = self.params[0]

        def dev(name, dtype=ref.dtype):
            return torch.from_numpy(rows[name]).to(device=self.device, dtype=dtype)

        def blocks(name):
            full = dev(name)
            return [full[r] for r in self.rows]

        for p, part in zip(self.params, blocks("params")):
            p.copy_(part)
        self.carry, self.frozen = blocks("carry"), blocks("frozen")
        self.carry_loss, self.final_loss = dev("carry_loss"), dev("final_loss")
        self.active = dev("active", torch.bool)
        self.diverged_at = dev("diverged_at", torch.int64)
        self.stopped_at = dev("stopped_at", torch.int64)
        self.limit = dev("limit")
        self.curve[:, :epoch // CURVE_EVERY] = dev("curve")
        program.optimizer.load_rows_state(
            {k[4:]: dev(k) for k in rows if k.startswith("opt.")}, self.rows)
        return epoch

    def finish(self, program: Program) -> RawFits:
        final = [torch.where(_column(self.active[rows]), p, frozen)
                 for p, frozen, rows in zip(self.params, self.frozen, self.rows)]
        final_loss = torch.where(self.active, self.carry_loss, self.final_loss)
        return RawFits(
            coefficients=program.coefficients(final).double().cpu().numpy(),
            final_loss=final_loss.double().cpu().numpy(),
            diverged_at=self.diverged_at.cpu().numpy(),
            curve=self.curve.double().cpu().numpy(),
            stopped_at=self.stopped_at.cpu().numpy(),
        )


def _column(mask: torch.Tensor) -> torch.Tensor:
    """A per-job mask as a column, to select whole rows of a (b, k) parameter."""
    return mask.unsqueeze(1)


def run(program: Program, epochs: int, stop=None, watch=None, halt=None,
        resume: Suspended | None = None) -> RawFits:
    """Train ``program`` for ``epochs`` updates, then score it; see the module docstring.
    ``stop``: each job's stop goal as a loss (NaN for none), or None; ``watch``, ``halt`` and
    ``resume``: see above.

    Training epochs run in the caller's grad mode (autograd on, by default) without entering
    any context per epoch; the bookkeeping touches detached tensors only."""
    tracker = _Tracker(program, epochs, stop, watch, halt)
    start = 0 if resume is None else tracker.resume(program, resume)
    for epoch in range(start, epochs):
        loss, grads = program.evaluate(epoch, True)
        if not tracker.record(epoch, loss):
            break
        program.optimizer.step(grads)
        if tracker.halted:
            return tracker.suspend(program, epoch + 1)
    else:
        with torch.no_grad():
            loss, _ = program.evaluate(epochs, False)
        tracker.record(epochs, loss)
    return tracker.finish(program)
