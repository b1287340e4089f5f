"""Which queue a job's device sends it to, and which queues a worker's device serves.

Queues are per device class so a job that needs a GPU waits for a GPU worker instead of running
silently on a CPU, while CPU jobs of the same sweep are not held up behind it."""

from __future__ import annotations

import re

CPU = "polyfit.cpu"
CUDA = "polyfit.cuda"
ANY = "polyfit.any"

_CUDA_N = re.compile(r"^cuda:(\d+)$")


def is_device(value: str) -> bool:
    return value in ("cpu", "cuda", "any") or bool(_CUDA_N.match(value))


def queue_for(device: str) -> str:
    """The queue a job with this ``device`` axis value goes to."""
    if device == "cpu":
        return CPU
    if device == "any":
        return ANY
    if device == "cuda":
        return CUDA
    m = _CUDA_N.match(device)
    if m:
        return f"{CUDA}.{m.group(1)}"
    raise ValueError(f"unknown device {device!r}")


def queues_served(device: str, gpu: str | int | None = None) -> list[str]:
    """The queues a worker pinned to ``device`` consumes (``gpu``: the machine's id of its GPU,
    as nvidia-smi numbers them, so a job for ``cuda:N`` lands on that card)."""
    if device == "cpu":
        return [CPU, ANY]
    served = [CUDA, ANY]
    if gpu is not None:
        served.insert(1, f"{CUDA}.{gpu}")
    return served
