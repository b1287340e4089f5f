"""Local worker processes for ``polyfit sweep run``: started as ``polyfit worker`` children,
settings passed through the environment (never on the command line, where credentials would
show in ``ps``), their output kept in a log file, stopped with a warm shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from worker.launch import new_token, node_name
from worker.settings import Settings


@dataclass
class LocalWorkers:
    settings: Settings
    processes: int
    log_path: Path = field(default_factory=lambda: Path(
        tempfile.mkstemp(prefix="polyfit-worker-", suffix=".log")[1]))
    _proc: subprocess.Popen | None = None
    token: str = field(default_factory=new_token)

    def start(self) -> None:
        env = {**os.environ, **self.settings.to_env()}
        if self.settings.broker is None:
            env.pop("POLYFIT_BROKER_URL", None)
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "worker", "--device", "cpu",
             "--concurrency", str(self.processes), "--loglevel", "WARNING",
             "--token", self.token],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Own process group: Ctrl-C in the terminal reaches us, and we stop the workers
            # ourselves (warm shutdown), instead of them dying mid-write.
            start_new_session=True,
        )
        log.close()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def identity(self) -> str | None:
        """The local worker's identity in the store (its Celery node name, see
        ``worker.launch.node_name``); the jobs its processes hold carry it."""
        if self._proc is None:
            return None
        return node_name("cpu", self.token, pid=self._proc.pid).replace(
            "%h", socket.gethostname())

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        # SIGTERM to the main process = Celery's warm shutdown: finish the batch in hand, stop
        # the pool, exit. (Signalling the whole group would kill the pool children under it.)
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
