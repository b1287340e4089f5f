"""The cores of one host, shared fairly by every polyfit training process on it.

Each worker process sized its torch and BLAS threads from the whole machine divided by its own
``--concurrency``: two ``polyfit worker --concurrency 1`` on a 2-core host ran 2 x 2 threads,
and spin-waiting thread pools on oversubscribed cores trained 7.8x slower than one worker with
two processes. ``celery -A worker.app worker`` (prefork, one process per core, torch's own
threads) did the same. Here every training process of a host registers in one folder (a file
named after its pid, holding its start time, so a reused pid is not taken for it), and before
each batch it takes ``cores it may use // live training processes on the host`` threads, at
least one. A process that dies leaves its file behind; the next count sees the pid gone (or
reused) and removes it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV_FOLDER = "POLYFIT_CORES_DIR"


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def folder() -> Path:
    """Where this host's training processes register (one folder per user)."""
    given = os.environ.get(ENV_FOLDER)
    if given:
        return Path(given)
    return Path(tempfile.gettempdir()) / f"polyfit-cores-{os.getuid()}"


def _started(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    return stat[stat.rindex(")") + 2:].split()[19]


def register(pid: int | None = None) -> Path:
    """Count process ``pid`` (this one by default) among the host's training processes."""
    pid = pid or os.getpid()
    where = folder()
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry = where / str(pid)
    entry.write_text(_started(pid) or "")
    return entry


def unregister(pid: int | None = None) -> None:
    (folder() / str(pid or os.getpid())).unlink(missing_ok=True)


def live_processes() -> int:
    """How many registered training processes of this host are alive (at least 1: this one);
    entries of processes that are gone are removed."""
    where = folder()
    alive = 0
    try:
        entries = list(where.iterdir())
    except OSError:
        return 1
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            recorded = entry.read_text().strip()
        except OSError:
            continue
        started = _started(int(entry.name))
        if started is None or (recorded and recorded != started):
            entry.unlink(missing_ok=True)  # gone, or its pid now belongs to another process
            continue
        alive += 1
    return max(alive, 1)


def fair_threads() -> int:
    """This process's fair share of the cores it may use: at least one thread."""
    return max(1, usable_cores() // live_processes())
