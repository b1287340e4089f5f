"""A broker that refuses a worker's password (changed on the server, or wrong from the start):
the worker stops promptly with one clear error, instead of reconnecting without end; a warm
shutdown (SIGTERM) ends once the batch in hand is stored. A real redis-server with
``requirepass``, real worker processes."""

from __future__ import annotations

import signal

import pytest
import redis

from tests.support import servers
from tests.support.database import rows
from tests.support.sweeps import submit
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

REFUSED = "the broker refused the login"


@pytest.fixture
def locked_redis(tmp_path):
    """A private redis-server that asks for the password ``pw1``."""
    with servers.locked_redis(tmp_path, "pw1") as port:
        yield port


def _change_password(port: int) -> redis.Redis:
    """The password becomes ``pw2`` and every client is dropped (as a restart of the server
    with its new configuration would): the worker must log in again, with ``pw1``."""
    admin = redis.Redis(port=port, password="pw1")
    admin.config_set("requirepass", "pw2")
    admin = redis.Redis(port=port, password="pw2")
    admin.client_kill_filter(_type="normal", skipme=True)
    return admin


def _refused_logins(admin: redis.Redis) -> int:
    """Logins the server refused (its ACL log; INFO's counter is Redis 7.2+ only)."""
    return sum(int(e["count"]) for e in admin.acl_log() if e["reason"] == "auth")


def _env(tmp_path, port: int, password: str = "pw1") -> dict:
    return {"POLYFIT_DB_URL": f"sqlite:///{tmp_path / 'r.sqlite'}",
            "POLYFIT_BROKER_URL": f"redis://:{password}@127.0.0.1:{port}/0"}


def test_a_worker_whose_password_was_changed_stops_with_one_clear_error(
        tmp_path, locked_redis, start_worker):
    env = _env(tmp_path, locked_redis)
    w = start_worker("--concurrency", "1", **env)
    wait_for(lambda: "ready" in w.output(), 90, "the worker to be ready")
    _change_password(locked_redis)
    code = wait_for(lambda: w.proc.poll() is not None and [w.proc.returncode], 60,
                    "the worker to stop (it reconnected for ever)")[0]
    assert code != 0
    assert REFUSED in w.output() and "pw1" not in w.output()


def test_a_worker_with_a_wrong_password_stops_at_once(tmp_path, locked_redis, start_worker):
    password = "wrong pass\tword"  # and one with a space and a tab is never shown either
    w = start_worker("--concurrency", "1", **_env(tmp_path, locked_redis, password))
    code = wait_for(lambda: w.proc.poll() is not None and [w.proc.returncode], 90,
                    "the worker to stop (it retried 100 times)")[0]
    assert code != 0 and REFUSED in w.output()
    assert "wrong" not in w.output() and "pass word" not in w.output()


def test_a_busy_worker_whose_password_was_changed_stops_warm_after_its_batch(
        tmp_path, locked_redis, start_worker):
    """While it trains, only the worker's heartbeat uses the broker: it retried its login for
    ever, in the event loop, and SIGTERM's warm shutdown never ended. Now it ends, and the
    batch in hand is handed back (its jobs queued again with their training state and their
    attempt), as any warm stop does."""
    env = _env(tmp_path, locked_redis)
    sweep_id = submit(env, "--variant", "numpy", "--epochs", "500000", "--seed", "0-1")
    w = start_worker("--concurrency", "1", **env)
    wait_for(lambda: any(r["status"] == "running" for r in rows(env["POLYFIT_DB_URL"],
                                                                sweep_id)),
             120, "a job to run")
    admin = _change_password(locked_redis)
    # A few refusals: the heartbeat has met the dropped connection and is logging in again.
    wait_for(lambda: _refused_logins(admin) >= 3, 60, "the worker to try the old password")
    w.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: w.proc.poll() is not None, 240,
             "the warm shutdown to end (the batch in hand, then the worker)")
    left = rows(env["POLYFIT_DB_URL"], sweep_id)
    assert [(r["status"], r["attempts"]) for r in left] == [("queued", 0)] * 2, left
    assert "pw1" not in w.output()
