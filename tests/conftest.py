"""Shared fixtures: a real redis-server on a free port per test session, a fresh SQLite results
file per test, a fresh results database on each backend, and real ``polyfit worker`` processes
stopped at the end of a test. Their helpers live in ``tests/support/``."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest

from store.db import dispose_shared
from tests.support.processes import Worker, polyfit_env
from tests.support.servers import RedisServer, pg_schema


@pytest.fixture(autouse=True)
def _commands_connection():
    """What a command does at its end, done after each test that ran scheduler code in this
    process: its shared engines closed (``store.db.shared_engine``)."""
    yield
    dispose_shared()


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request, tmp_path):
    """The URL of a fresh, empty results database on each backend (a SQLite file, a schema on
    the test PostgreSQL server)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.sqlite'}"
        return
    with pg_schema() as url:
        yield url


@pytest.fixture
def start_worker(tmp_path):
    started: list[Worker] = []

    def _start(*args: str, **settings: str) -> Worker:
        w = Worker(list(args), polyfit_env(**settings), tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    yield _start
    # Every worker is asked to stop at once, then each is waited for (one after the other, each
    # warm stop cost its seconds in turn). SIGTERM, not SIGKILL: a ``--gpus`` launcher forwards
    # it to its per-device workers, which run in sessions of their own and would outlive a
    # killed process group.
    for w in started:
        w.send(signal.SIGTERM)
    for w in started:
        try:
            w.wait(30)
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
