"""The local worker of ``polyfit sweep run``, started before the command has read its spec.

Most of a small ``sweep run``'s time is the local worker's start: its interpreter imports torch,
Celery, kombu and SQLAlchemy (about 1.8 s here) before it can take a batch. The command itself
first imports its own modules and plans the sweep (about 0.6 s), and only then knew the
worker's orders (its queue, its settings). So ``polyfit`` starts the worker's interpreter as its
very first step (``prestart``), where it imports what every worker needs and nothing that reads
the settings; the command hands it its orders once it knows them (``WorkerProcess.adopt``): the
arguments and environment ``polyfit worker`` would have been started with. The two starts
overlap on two cores.

An interpreter that gets no orders (a bad spec, ``--help``, every result reused, a killed
command) never trains: it reads its orders on a pipe from the command, and the pipe's end, the
command's exit however it comes (SIGKILL included), ends it at once; ``discard`` ends it sooner,
when the command is done. ``POLYFIT_EARLY_WORKER=0`` turns the early start off (the worker is
then started when the orders are known, as before)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ENV_EARLY = "POLYFIT_EARLY_WORKER"
#: What a worker imports that reads no setting and no environment variable of polyfit's at
#: import (``polyfit_models`` never reads the environment; torch, Celery, kombu and SQLAlchemy
#: read theirs when used, not when imported): all but ``worker.app``, which makes the Celery app
#: from the settings (a test holds that).
PRELOAD = ("torch", "sqlalchemy.orm", "sqlalchemy.dialects.sqlite", "celery.app",
           "celery.apps.worker", "celery.app.control", "celery.events",
           "celery.concurrency.prefork", "kombu.transport.redis", "kombu.transport.sqlalchemy",
           "polyfit_models", "polyfit_models.runner", "store.records", "worker.launch")


#: The flags ``scheduler.local`` starts its worker with, each with its value.
LOCAL_FLAGS = ("--device", "--concurrency", "--loglevel", "--token", "--only-sweep")


@dataclass
class Early:
    """An interpreter started early, waiting for its orders on its stdin."""

    proc: subprocess.Popen
    log_path: Path
    lifeline: int  # the write end of its parent pipe (see ``worker.processes``)

    def order(self, args: list[str], env: dict[str, str]) -> None:
        """Hand it what ``polyfit worker`` would have been started with."""
        orders = json.dumps({"args": list(args), "env": env}).encode() + b"\n"
        try:
            self.proc.stdin.write(orders)
            self.proc.stdin.close()
        except OSError:  # it died since ``take``: the command sees a worker that exited
            pass


_early: Early | None = None


def wanted(argv: list[str], environ=os.environ) -> bool:
    """Whether these command-line words are a ``sweep run`` that will start a local worker."""
    if environ.get(ENV_EARLY, "1") == "0":
        return False
    words = [a for a in argv if a != "--debug"]
    return words[:2] == ["sweep", "run"] and not {"-h", "--help"} & set(words)


def prestart(argv: list[str]) -> None:
    """Start the local worker's interpreter now if ``argv`` is a ``sweep run``; nothing else.
    Never fails the command: without it, the worker is started later, as it always was."""
    global _early
    if _early is not None or not wanted(argv):
        return
    from worker.processes import ENV_PARENT_FD

    try:  # a folder for temporary files that is not there: the command says so, later
        fd, name = tempfile.mkstemp(prefix="polyfit-worker-", suffix=".log")
    except OSError:
        return
    read_end, lifeline = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler.early"],
            env={**os.environ, ENV_PARENT_FD: str(read_end)}, stdin=subprocess.PIPE,
            stdout=fd, stderr=subprocess.STDOUT, pass_fds=(read_end,),
            start_new_session=True)  # as WorkerProcess: Ctrl-C reaches the command only
    except OSError:
        os.close(lifeline)
        Path(name).unlink(missing_ok=True)
        return
    finally:
        os.close(fd)
        os.close(read_end)
    _early = Early(proc, Path(name), lifeline)


def take() -> Early | None:
    """The interpreter started early, handed over once (to ``WorkerProcess.adopt``)."""
    global _early
    early, _early = _early, None
    if early is not None and early.proc.poll() is not None:  # it died: start one the old way
        _close(early)
        early.log_path.unlink(missing_ok=True)
        return None
    return early


def discard() -> None:
    """End an interpreter that was started early and never given orders, with its log."""
    early = take()
    if early is None:
        return
    try:
        os.killpg(early.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    early.proc.wait()
    _close(early)
    early.log_path.unlink(missing_ok=True)


def _close(early: Early) -> None:
    os.close(early.lifeline)
    if early.proc.stdin is not None:
        early.proc.stdin.close()


def local_flags(args: list[str]) -> dict[str, str] | None:
    """The flags of ``sweep run``'s local worker (``scheduler.local``), by name; None for any
    other command line (which ``polyfit worker`` then parses and checks)."""
    flags = dict(zip(args[::2], args[1::2]))
    if len(args) % 2 or set(flags) != set(LOCAL_FLAGS) or flags["--device"] != "cpu":
        return None
    return flags


def _serve_orders() -> None:
    """``python -m scheduler.early``: import, then wait for the orders and become the worker."""
    from worker.processes import ENV_PARENT_FD

    orders: dict = {}
    given = threading.Event()

    def read() -> None:
        line = sys.stdin.buffer.readline()
        if not line:  # the command ended without orders: nothing to train
            os._exit(0)
        orders.update(json.loads(line))
        given.set()

    threading.Thread(target=read, name="polyfit-orders", daemon=True).start()
    for module in PRELOAD:
        importlib.import_module(module)
    given.wait()
    lifeline = os.environ.get(ENV_PARENT_FD)
    os.environ.clear()
    os.environ.update(orders["env"])
    if lifeline is not None:
        os.environ[ENV_PARENT_FD] = lifeline
    flags = local_flags(orders["args"])
    if flags is None:
        sys.argv = ["polyfit", "worker", *orders["args"]]  # not a local worker's flags
        from scheduler.cli import main

        main()
        return
    # What ``polyfit worker`` would do with these flags (they come from ``scheduler.local``),
    # without importing the whole command line first.
    from worker.launch import run_cpu_worker
    from worker.processes import watch_parent
    from worker.settings import Settings

    watch_parent()
    run_cpu_worker(Settings.from_env(), int(flags["--concurrency"]), flags["--loglevel"],
                   flags["--token"], flags["--only-sweep"])


if __name__ == "__main__":
    _serve_orders()
