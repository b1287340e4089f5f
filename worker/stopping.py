"""A worker's warm shutdown, told to the batches in training: once the worker is asked to stop
(SIGTERM, SIGINT, a hangup, the process that started it gone; Celery's
``worker_shutting_down``, in its main process), every batch in training stops at its next
100-epoch boundary and hands its jobs back to the queue with their states
(``execute.run_batch``), instead of holding the worker until the batch ends or being killed.

The flag is a ``multiprocessing`` event made before Celery forks its pool, so the prefork
children that train see what the main process sets; with the solo pool (GPU workers) it is the
same process. Asking it costs a semaphore read, once per 100 epochs."""

from __future__ import annotations

import multiprocessing

_event = None


def arm() -> None:
    """Make the flag (in the worker's main process, before its pool starts)."""
    global _event
    if _event is None:
        _event = multiprocessing.get_context("fork").Event()


def request(**_kwargs) -> None:
    """Ask the batches in training to stop (a receiver of ``worker_shutting_down``)."""
    if _event is not None:
        _event.set()


def requested() -> bool:
    """Whether this worker has been asked to stop."""
    return _event is not None and _event.is_set()


def halt(_epochs_done: int) -> bool:
    """``fit_many``'s ``halt``: stop wherever the batch is, once asked."""
    return requested()
