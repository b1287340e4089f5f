"""The lifecycle of a ``polyfit worker`` child process, in one place: started in its own session
with the settings in its environment (never on the command line, where ``ps`` shows credentials),
signals forwarded to it, stopped warm with a grace period, then killed with its whole process
group (its pool processes with it). Used by ``polyfit sweep run`` for its local workers and by
``polyfit worker --gpus`` for its one process per GPU.

A child never outlives the process that started it, however that process ends (SIGKILL
included): the parent holds the write end of a pipe that only it has; the child reads the other
end (``watch_parent``), and the read returns when the parent is gone, since the kernel closes a
dead process's descriptors. The child then stops as its parent would have stopped it: warm,
then its whole process group killed after ``ORPHAN_GRACE_S``. (A pipe rather than Linux's
``PR_SET_PDEATHSIG``: that signal fires when the *thread* that forked the child ends, not the
process, is Linux-only, and races with a parent that dies before the child sets it; a pipe's
end-of-file cannot be missed, even by a child that starts reading late.)"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

#: The environment variable that hands a child the read end of its parent's pipe.
ENV_PARENT_FD = "POLYFIT_PARENT_FD"
#: A child whose parent is gone stops warm and is killed, with its pool, after this long.
ORPHAN_GRACE_S = 5.0


class WorkerProcess:
    """One worker child: ``python -m scheduler worker ARGS`` with ``env``."""

    def __init__(self, args: Sequence[str], env: dict[str, str],
                 log_path: Path | None = None) -> None:
        self.args, self.env, self.log_path = list(args), env, log_path
        self._proc: subprocess.Popen | None = None
        self._lifeline: int | None = None  # the write end of the child's pipe

    def start(self) -> WorkerProcess:
        out = open(self.log_path, "ab") if self.log_path else None
        # os.pipe's ends are not inherited by exec'd children: only this child gets the read
        # end (pass_fds), and no process but this one ever holds the write end.
        read_end, self._lifeline = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "worker", *self.args],
                env={**self.env, ENV_PARENT_FD: str(read_end)},
                stdout=out, stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL, pass_fds=(read_end,),
                # Its own session: a Ctrl-C (or a hangup) in the terminal reaches the parent
                # only, which stops the worker warm, instead of the worker dying mid-write.
                start_new_session=True,
            )
        except BaseException:
            os.close(self._lifeline)
            self._lifeline = None
            raise
        finally:
            os.close(read_end)
            if out:
                out.close()
        return self

    def adopt(self, early) -> WorkerProcess:
        """Become an interpreter started before its orders were known (``scheduler.early``):
        it gets this worker's arguments and environment now, and its pipe and log were made
        as ``start`` makes them."""
        early.order(self.args, self.env)
        self._proc, self._lifeline, self.log_path = early.proc, early.lifeline, early.log_path
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
        code = self._proc.wait(timeout)
        self._close_lifeline()
        return code

    def stop(self, grace_s: float) -> None:
        """Warm shutdown (SIGTERM to the main process: finish the batch in hand, stop the
        pool), and after ``grace_s`` the whole process group killed."""
        if not self.alive():
            self._close_lifeline()
            return
        if grace_s <= 0:
            self.kill()
            return
        self.send(signal.SIGTERM)
        try:
            self.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait()

    def _close_lifeline(self) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None


@contextmanager
def forwarding(processes: Sequence[WorkerProcess],
               signals: Mapping[int, int] | None = None) -> Iterator[None]:
    """While inside, the signals this process receives go to each worker instead (``signals``:
    received -> sent). By default every signal a terminal or a process manager sends to stop a
    process: SIGTERM and SIGINT as they are (Celery's warm shutdown), SIGQUIT as it is (cold
    shutdown), SIGHUP as SIGTERM (Celery would re-exec a worker on SIGHUP)."""
    if signals is None:
        signals = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT,
                   signal.SIGQUIT: signal.SIGQUIT, signal.SIGHUP: signal.SIGTERM}

    def forward(signum, _frame) -> None:
        for p in processes:
            p.send(signals[signum])

    with handling(signals, forward):
        yield


@contextmanager
def handling(signals: Iterable[int], handler: Callable[[int, object], None]) -> Iterator[None]:
    """While inside, ``handler`` receives each of ``signals``; the handlers they had before are
    put back at the end, however it comes."""
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


def watch_parent(grace_s: float = ORPHAN_GRACE_S) -> bool:
    """In a child started by ``WorkerProcess``: stop this process once its parent is gone.
    Returns whether there is a parent to watch (the variable is taken out of the environment,
    so that this process's own children do not watch a pipe that is not theirs)."""
    raw = os.environ.pop(ENV_PARENT_FD, "")
    if not raw.isdigit():
        return False
    fd = int(raw)
    try:
        os.set_inheritable(fd, False)
    except OSError:  # not open: the parent did not hand one over
        return False
    threading.Thread(target=_stop_when_closed, args=(fd, grace_s), name="polyfit-parent",
                     daemon=True).start()
    return True


def _stop_when_closed(fd: int, grace_s: float) -> None:
    try:
        while os.read(fd, 1):  # the parent never writes: this returns at its end
            pass
    except OSError:
        pass
    logging.getLogger("polyfit.worker").warning(
        "the process that started this worker is gone: stopping (killed in %.0f s)", grace_s)
    os.kill(os.getpid(), signal.SIGTERM)  # a Celery worker's warm shutdown, else the end
    time.sleep(grace_s)
    # Still here: the pool processes too (this process leads its group, see WorkerProcess).
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
