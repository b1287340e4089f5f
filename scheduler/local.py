"""Local worker processes for ``polyfit sweep run``: one ``polyfit worker`` child (see
``worker.processes``) with its own random identity token, its output kept in a log file."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from worker.launch import new_token, node_name
from worker.processes import WorkerProcess
from worker.settings import ENV_BROKER, Settings


@dataclass
class LocalWorkers:
    settings: Settings
    processes: int
    log_path: Path = field(default_factory=lambda: Path(
        tempfile.mkstemp(prefix="polyfit-worker-", suffix=".log")[1]))
    token: str = field(default_factory=new_token)
    _worker: WorkerProcess | None = None

    def start(self) -> None:
        env = {**os.environ, **self.settings.to_env()}
        if self.settings.broker is None:
            env.pop(ENV_BROKER, None)
        self._worker = WorkerProcess(
            ["--device", "cpu", "--concurrency", str(self.processes), "--loglevel", "WARNING",
             "--token", self.token], env, self.log_path).start()

    @property
    def identity(self) -> str | None:
        """The local worker's identity in the store (its Celery node name, see
        ``worker.launch.node_name``); the jobs its processes hold carry it."""
        if self._worker is None:
            return None
        return node_name("cpu", self.token, pid=self._worker.pid).replace(
            "%h", socket.gethostname())

    def alive(self) -> bool:
        return self._worker is not None and self._worker.alive()

    def returncode(self) -> int | None:
        return None if self._worker is None else self._worker.returncode()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> None:
        if self._worker is not None:
            self._worker.stop(grace_s=timeout_s)
