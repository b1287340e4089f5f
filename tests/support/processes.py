"""Real processes: the environment every started ``polyfit`` process gets, ``polyfit ARGS`` run
as a process, a ``polyfit worker`` started through production's ``WorkerProcess``, and finding
processes (by a mark in their environment, by parent) in /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT
from worker.processes import WorkerProcess


def polyfit_env(**settings: str) -> dict:
    """This environment without any ``POLYFIT_`` setting, polyfit imported from ``ROOT``, and
    ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(settings)
    return env


def polyfit(*args: str, env: dict, cwd=None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``polyfit ARGS`` as a real process."""
    return subprocess.run([sys.executable, "-m", "scheduler", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


class Worker(WorkerProcess):
    """A real ``polyfit worker`` process, started as ``polyfit sweep run`` starts its local
    workers, with what tests read of it: its ``Popen``, its log."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        # It runs in the test's folder: PYTHONSAFEPATH keeps that folder off its sys.path, so
        # that it imports polyfit from ROOT (first on PYTHONPATH) wherever the tests ran from.
        super().__init__(args, {**env, "PYTHONSAFEPATH": "1"}, log)
        self.start()

    @property
    def proc(self) -> subprocess.Popen:
        return self._proc

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def processes_with(mark: str) -> list[int]:
    """Pids of live processes (zombies left out) whose environment carries ``mark``: a test
    puts a unique variable in a command's environment, and its children inherit it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if mark.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    """Pids of the live (not zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pids) -> list[int]:
    """Those of ``pids`` that are still running (not gone, not zombies)."""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            left.append(pid)
    return left
