"""Watching and steering a fleet with real processes: Celery's own tools (``celery -A worker.app
inspect`` and ``events``, what Flower uses) see a running ``polyfit worker`` and its tasks; and
``polyfit cancel`` keeps jobs that had not started from ever running, though their messages are
still delivered to a worker."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from scheduler.cli import cli
from tests.support import ROOT
from tests.support.database import query
from tests.support.processes import polyfit_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


def polyfit(*args: str, db: str, broker: str | None = None):
    """A polyfit command in this process (the workers are the real processes under test)."""
    flags = ["--db", db] + (["--broker", broker] if broker else [])
    env = {"POLYFIT_DB_URL": None, "POLYFIT_BROKER_URL": None}
    return CliRunner().invoke(cli, [*args, *flags], env=env, catch_exceptions=False)


def celery(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "worker.app", *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_celery_inspect_and_events_see_a_polyfit_worker(redis_url, db_url, start_worker,
                                                        tmp_path):
    env = polyfit_env(POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
    # The event monitor first (Flower listens the same way), while the worker starts.
    log = tmp_path / "events.log"
    with open(log, "w") as out:
        events = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app",
                                   "events", "--dump"], env=env, cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        worker = start_worker("--device", "cpu", "--concurrency", "1",
                              POLYFIT_BROKER_URL=redis_url, POLYFIT_DB_URL=db_url)
        wait_for(lambda: " ready." in worker.output(), 60, "the worker to start")
        # Its node name, from its log; naming it lets inspect return on its reply.
        node = re.search(r"(\S+) ready\.", worker.output()).group(1)
        assert node.startswith("polyfit-cpu-")
        ping = celery("inspect", "ping", "--destination", node, "--json", "--timeout", "20",
                      env=env)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert json.loads(ping.stdout.strip().splitlines()[-1]) == {node: {"ok": "pong"}}
        queues = celery("inspect", "active_queues", "--destination", node, "--json",
                        "--timeout", "20", env=env)
        by_node = json.loads(queues.stdout.strip().splitlines()[-1])
        assert {q["name"] for q in by_node[node]} == {"polyfit.cpu", "polyfit.any"}

        # Task events, as Flower receives them: sent, received, started, succeeded.
        wait_for(lambda: f"{node} " in log.read_text(), 30, "the worker's heartbeat event")
        sub = polyfit("sweep", "submit", "--variant", "numpy", "--seed", "0-2", "--epochs",
                      "50", "--batch-size", "1", db=db_url, broker=redis_url)
        assert sub.exit_code == 0, sub.output
        done = polyfit("status", sub.stdout.split()[-1], "--wait", "--interval", "0.2",
                       db=db_url)
        assert done.exit_code == 0, done.output
        wait_for(lambda: log.read_text().count("task succeeded") >= 3, 15, "the events")
    finally:
        events.terminate()
        events.wait(10)
    dump = log.read_text()
    for kind in ("task sent", "task received", "task started", "task succeeded"):
        assert dump.count(f"{kind}: polyfit.run_batch") == 3, (kind, dump[-2000:])
    assert dump.count(f"{node} ") > 3  # the worker's own events carry its name


def test_cancelled_jobs_are_delivered_but_never_run(db_url, start_worker, tmp_path):
    # The embedded broker: messages wait in a file until a worker starts.
    sub = polyfit("sweep", "submit", "--variant", "numpy,autograd", "--seed", "0-2",
                  "--epochs", "100", "--batch-size", "3", "--name", "doomed", db=db_url)
    assert sub.exit_code == 0, sub.output
    doomed = sub.stdout.split()[-1]
    cancel = polyfit("cancel", "doomed", db=db_url)
    assert cancel.exit_code == 0 and "6 jobs cancelled" in cancel.stdout
    # A second sweep enqueued behind it, which must run.
    sub = polyfit("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "100",
                  "--batch-size", "2", "--name", "kept", db=db_url)
    kept = sub.stdout.split()[-1]
    worker = start_worker("--device", "cpu", "--concurrency", "1", POLYFIT_DB_URL=db_url)
    done = polyfit("status", kept, "--wait", "--json", "--interval", "0.2", db=db_url)
    assert done.exit_code == 0 and json.loads(done.stdout)["counts"] == {"succeeded": 2}
    # Every message, the cancelled sweep's included, has been taken from the broker...
    broker = sqlite3.connect(tmp_path / "results-broker.sqlite")
    try:
        # (taken messages are deleted, not kept invisible: the broker file does not grow)
        wait_for(lambda: broker.execute(
            "SELECT count(*) FROM kombu_message").fetchone() == (0,), 30,
            "the broker to be drained")
    finally:
        broker.close()
    # ...and handed to the worker, which claimed none of the cancelled jobs...
    wait_for(lambda: worker.output().count(f"'sweep_id': '{doomed}', 'ran': 0") == 2, 10,
              "the worker to log the cancelled sweep's tasks")
    # ...so that none was trained or stored.
    rows = query(db_url, "SELECT status, attempts, worker, started_at, mse FROM jobs "
                 "WHERE sweep_id = :s", s=doomed)
    assert len(rows) == 6
    assert all(r["status"] == "cancelled" and r["attempts"] == 0 and r["worker"] is None
               and r["started_at"] is None and r["mse"] is None for r in rows), rows
    assert query(db_url, "SELECT count(*) AS n FROM loss_curve WHERE sweep_id = :s",
                 s=doomed) == [{"n": 0}]
    status = polyfit("status", "doomed", "--json", db=db_url)
    assert json.loads(status.stdout)["counts"] == {"cancelled": 6}


def test_nothing_secret_reaches_celery_inspect_conf_or_report(tmp_path, start_worker):
    """Anyone who reaches the broker can run `celery inspect conf`; `celery report` prints the
    local configuration. Neither may show the database's or the broker's password."""
    from tests.support.servers import locked_redis, pg_schema

    with locked_redis(tmp_path, "brokersecret") as port:
        broker = f"redis://:brokersecret@127.0.0.1:{port}/0"
        with pg_schema() as pg:
            db = pg.replace("postgres@", "postgres:dbsecret@")
            env = polyfit_env(POLYFIT_BROKER_URL=broker, POLYFIT_DB_URL=db)
            worker = start_worker("--device", "cpu", "--concurrency", "1",
                                  POLYFIT_BROKER_URL=broker, POLYFIT_DB_URL=db)
            wait_for(lambda: " ready." in worker.output(), 60, "the worker to start")
            node = re.search(r"(\S+) ready\.", worker.output()).group(1)
            conf = celery("inspect", "conf", "--destination", node, "--json", "--timeout",
                          "20", env=env)
            assert conf.returncode == 0, conf.stdout + conf.stderr
            shown = json.loads(conf.stdout.strip().splitlines()[-1])[node]
            assert "broker_url" in shown  # the real configuration came back...
            report = celery("report", env=env)
            assert report.returncode == 0, report.stderr
            # ...and the embedded broker, whose URL is the database's, is masked too.
            embedded = celery("report", env=polyfit_env(POLYFIT_DB_URL=db))
            assert embedded.returncode == 0, embedded.stderr
        for text_ in (conf.stdout, conf.stderr, report.stdout, report.stderr, embedded.stdout,
                      embedded.stderr, worker.output()):
            assert "brokersecret" not in text_ and "dbsecret" not in text_


def test_a_malformed_database_url_is_never_echoed_with_its_password(tmp_path):
    urls = ("postgresql+psycopg:u:hunter7@host/db", "postgres//u:hunter7@host/db",
            "postgresql+nodriver://u:hunter7@host/db", "u:hunter7@host",
            "postgresql://u:hunter 7@host:notaport/db")
    for url in urls:
        for args in (["status"], ["results"], ["sweep", "submit", "--variant", "numpy"],
                     ["sql", "SELECT 1"], ["cancel", "x"]):
            r = CliRunner().invoke(cli, [*args, "--db", url], catch_exceptions=False,
                                   env={"POLYFIT_DB_URL": None, "POLYFIT_BROKER_URL": None})
            assert r.exit_code in (1, 2), (url, args, r.output)
            assert "hunter" not in r.output, (url, args, r.output)
    # A worker (its own process: it never returns to a caller) given such a URL.
    for url in urls[:2]:
        proc = subprocess.run([sys.executable, "-m", "scheduler", "worker", "--concurrency",
                               "1", "--db", url], env=polyfit_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode != 0
        assert "hunter" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
