"""Shared fixtures: a real redis-server on a free port per test session, a fresh SQLite results
file per test, a fresh schema on the real PostgreSQL server, and helpers to start real
``polyfit worker`` processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("POLYFIT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server; yields a URL whose tables live in it."""
    from sqlalchemy import create_engine, text

    schema = f"pf_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    try:
        with admin.begin() as c:
            c.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable: {e}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def ids_of(jobs) -> list[str]:
    """The ids of store views (``claim_jobs`` returns the claimed jobs, not their ids)."""
    return [job.id for job in jobs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class RedisServer:
    """A private redis-server (AOF on, as in docker-compose) that a test may restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def flush(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], check=False,
                       stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'results.sqlite'}"


def polyfit_env(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(settings)
    return env


class WorkerProcess:
    """A real ``polyfit worker`` process in its own process group."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "worker", *args], env=env, cwd=str(ROOT),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL goes to the whole process group (a crash); SIGTERM to the main process, as
        Celery's warm shutdown expects."""
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_worker(tmp_path):
    started: list[WorkerProcess] = []

    def _start(*args: str, **settings: str) -> WorkerProcess:
        w = WorkerProcess(list(args), polyfit_env(**settings),
                          tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    yield _start
    # Every worker is asked to stop at once, then each is waited for (one after the other, each
    # warm stop cost its seconds in turn). SIGTERM, not SIGKILL: a ``--gpus`` launcher forwards
    # it to its per-device workers, which run in sessions of their own and would outlive a
    # killed process group.
    for w in started:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in started:
        try:
            w.proc.wait(30)
        except subprocess.TimeoutExpired:
            w.kill()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """A fresh results database with its schema, on each backend (SQLite, PostgreSQL)."""
    from store import create_schema, make_engine

    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
        create_schema(eng)
        yield eng
        eng.dispose()
        return
    with pg_schema() as url:
        eng = make_engine(url)
        create_schema(eng)
        yield eng
        eng.dispose()
