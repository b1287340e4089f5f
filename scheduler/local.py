"""Local worker processes for ``polyfit sweep run``: one ``polyfit worker`` child (see
``worker.processes``) with its own random identity token, its output kept in a log file, that
reads the run's own queue only (``worker.queues.run_queue``): it trains this run's sweep and
nothing else, even on a broker that other users' sweeps share.

``stopping_signals``: the signals that ask a process to stop (a terminal's Ctrl-C and hangup,
a process manager's SIGTERM, SIGQUIT) all take the Ctrl-C path of ``sweep run``."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.early import take
from worker.launch import new_token, node_name
from worker.processes import WorkerProcess, handling
from worker.queues import run_queue
from worker.settings import ENV_BROKER, Settings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Stopped(KeyboardInterrupt):
    """Raised by ``stopping_signals`` when a stop signal arrives (a KeyboardInterrupt, so that
    every signal takes the path Ctrl-C takes)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stopping_signals() -> Iterator[None]:
    """While inside, the first of ``STOP_SIGNALS`` raises ``Stopped``; the ones after it are
    ignored, so that a second Ctrl-C (or SIGTERM after a hangup) cannot cut short the stopping
    of the workers and the release of their jobs."""
    fired: list[int] = []

    def stop(signum, _frame) -> None:
        if not fired:
            fired.append(signum)
            raise Stopped(signum)

    with handling(STOP_SIGNALS, stop):
        yield


@dataclass
class LocalWorkers:
    """The worker processes ``sweep run`` starts on this machine, and their stop."""

    settings: Settings
    processes: int
    sweep_id: str
    log_path: Path = field(default_factory=lambda: Path(
        tempfile.mkstemp(prefix="polyfit-worker-", suffix=".log")[1]))
    token: str = field(default_factory=new_token)
    _worker: WorkerProcess | None = None

    def start(self) -> None:
        env = {**os.environ, **self.settings.to_env()}
        if self.settings.broker is None:
            env.pop(ENV_BROKER, None)
        worker = WorkerProcess(self.args, env, self.log_path)
        early = take()  # the interpreter `polyfit sweep run` started first of all, if any
        if early is None:
            self._worker = worker.start()
            return
        self.log_path.unlink(missing_ok=True)
        self.log_path = early.log_path
        self._worker = worker.adopt(early)

    @property
    def args(self) -> list[str]:
        """The flags of its ``polyfit worker`` (see ``scheduler.early.local_flags``)."""
        return ["--device", "cpu", "--concurrency", str(self.processes), "--loglevel", "WARNING",
                "--token", self.token, "--only-sweep", self.sweep_id]

    @property
    def private(self) -> tuple[str, str]:
        """(the sweep, the queue only these workers read): where the sweep's CPU jobs go."""
        return self.sweep_id, run_queue(self.sweep_id, self.token)

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
