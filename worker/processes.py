"""The lifecycle of a ``polyfit worker`` child process, in one place: started in its own session
with the settings in its environment (never on the command line, where ``ps`` shows credentials),
signals forwarded to it, stopped warm with a grace period, then killed with its whole process
group (its pool processes with it). Used by ``polyfit sweep run`` for its local workers and by
``polyfit worker --gpus`` for its one process per GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class WorkerProcess:
    """One worker child: ``python -m scheduler worker ARGS`` with ``env``."""

    def __init__(self, args: Sequence[str], env: dict[str, str],
                 log_path: Path | None = None) -> None:
        self.args, self.env, self.log_path = list(args), env, log_path
        self._proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        out = open(self.log_path, "ab") if self.log_path else None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "worker", *self.args], env=self.env,
                stdout=out, stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches the parent only, which
                # stops the worker warm, instead of the worker dying mid-write.
                start_new_session=True,
            )
        finally:
            if out:
                out.close()
        return self

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def send(self, signum: int) -> None:
        """Signal the worker's main process (SIGTERM: Celery's warm shutdown)."""
        if self.alive():
            self._proc.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        return self._proc.wait(timeout)

    def stop(self, grace_s: float) -> None:
        """Warm shutdown (SIGTERM to the main process: finish the batch in hand, stop the
        pool), and after ``grace_s`` the whole process group killed."""
        if not self.alive():
            return
        if grace_s <= 0:
            self.kill()
            return
        self.send(signal.SIGTERM)
        try:
            self._proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()


@contextmanager
def forwarding(processes: Sequence[WorkerProcess],
               signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """While inside, the signals this process receives go to each worker instead."""

    def forward(signum, _frame) -> None:
        for p in processes:
            p.send(signum)

    previous = {s: signal.signal(s, forward) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
