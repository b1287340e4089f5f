"""Which queue a job's device sends it to, and which queues a worker's device serves.

Queues are per device class so a job that needs a GPU waits for a GPU worker instead of running
silently on a CPU, while CPU jobs of the same sweep are not held up behind it.

``polyfit sweep run`` is the exception: its local workers train its own sweep and nothing else,
so the CPU (and ``any``) jobs of that sweep go to a queue of that run's own, which only its
local workers read (``run_queue``), and those workers read no other queue. On a broker shared
with other users or other runs, a `sweep run` never takes (and so never kills, when it ends)
another sweep's job, and the fleet's workers leave its jobs to it.

A plugin variant's jobs (one an installed package adds, see ``polyfit_models.registry``) go to
a queue of that variant's own beside its device's, ``polyfit.cpu.v.NAME``, which only workers
that have the plugin installed read: a worker without it never takes them, and they wait for
one that has it. The built-ins' jobs stay on the device queues."""

from __future__ import annotations

import re
from collections.abc import Sequence

from polyfit_models.registry import is_plugin

CPU = "polyfit.cpu"
CUDA = "polyfit.cuda"
ANY = "polyfit.any"
RUN = "polyfit.run"
#: The jobs a ``sweep run``'s local (CPU) workers train: the ones that go to its own queue.
LOCAL_DEVICES = ("cpu", "any")

_CUDA_N = re.compile(r"^cuda:(\d+)$")


def is_device(value: str) -> bool:
    return value in ("cpu", "cuda", "any") or bool(_CUDA_N.match(value))


def queue_for(device: str, variant: str = "") -> str:
    """The queue a job with this ``device`` axis value (and ``variant``) goes to."""
    if device == "cpu":
        queue = CPU
    elif device == "any":
        queue = ANY
    elif device == "cuda":
        queue = CUDA
    elif m := _CUDA_N.match(device):
        queue = f"{CUDA}.{m.group(1)}"
    else:
        raise ValueError(f"unknown device {device!r}")
    return plugin_queue(queue, variant) if variant and is_plugin(variant) else queue


def plugin_queue(queue: str, variant: str) -> str:
    """The queue of a plugin variant's jobs beside the device queue ``queue``."""
    return f"{queue}.v.{variant}"


def queues_served(device: str, gpu: str | int | None = None,
                  plugins: Sequence[str] = ()) -> list[str]:
    """The queues a worker pinned to ``device`` consumes (``gpu``: the machine's id of its GPU,
    as nvidia-smi numbers them, so a job for ``cuda:N`` lands on that card; ``plugins``: the
    plugin variants installed here, whose queues it reads too)."""
    if device == "cpu":
        served = [CPU, ANY]
    else:
        served = [CUDA, ANY]
        if gpu is not None:
            served.insert(1, f"{CUDA}.{gpu}")
    return served + [plugin_queue(q, name) for name in plugins for q in served]


def run_queue(sweep_id: str, token: str) -> str:
    """The private queue of the ``sweep run`` of ``sweep_id`` whose local workers carry the
    random ``token`` (two runs of one sweep each have their own)."""
    return f"{RUN}.{sweep_id}.{token}"


def route(device: str, sweep_id: str, private: tuple[str, str] | None = None,
          variant: str = "") -> str:
    """The queue of a batch of ``sweep_id``'s jobs of ``variant`` for ``device``; ``private``:
    (the sweep a ``sweep run`` trains, its queue), where that sweep's CPU and ``any`` jobs go
    (its local workers run where the ``sweep run`` does, with the same plugins)."""
    if private is not None and sweep_id == private[0] and device in LOCAL_DEVICES:
        return private[1]
    return queue_for(device, variant)
