"""Nothing in a message but the ids it names decides what a worker does, on Redis and on the
embedded broker. Messages sent with Celery's own API and by hand name real queued jobs and ask
for what Celery honours: time limits (a string, a soft one of 1 s, a hard one of 2 s, a list of
one), a far-future ``eta`` or ``countdown``, an expiry in the past, callbacks, chains, chords;
others run Celery's own tasks (``celery.chord_unlock``, ``celery.group``) or use protocol 1;
on Redis, remote-control broadcasts set time and rate limits and cancel the worker's queue.
The one real worker process keeps serving throughout, trains each named job exactly once and
to success, runs nothing the messages chained, holds nothing back, and then runs a real sweep
to the end."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from tests.support.database import query, rows
from tests.support.hostile import QUEUE, Broker, batch, envelope, task_body
from tests.support.processes import polyfit_env
from tests.support.servers import free_port
from tests.support.sweeps import cli, wait_done
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

TASK = "polyfit.run_batch"


def _recorded_sweep(db_url: str, *options: str) -> tuple[str, list[str]]:
    """A sweep recorded while the broker was down: its jobs are queued and no message names
    them, so only the messages of the test can."""
    down = polyfit_env(POLYFIT_DB_URL=db_url,
                       POLYFIT_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    r = cli(down, "sweep", "submit", "--variant", "numpy", *options)
    assert r.exit_code == 1, r.output
    sweep_id = r.stderr.split("sweep resume ")[1].split("`")[0]
    jobs = [x["id"] for x in rows(db_url, sweep_id)]
    assert all(x["status"] == "queued" for x in rows(db_url, sweep_id))
    return sweep_id, jobs


def _send_control(broker: Broker) -> None:
    """Remote-control broadcasts that would decide how batches run are refused."""
    app = broker.celery()
    try:
        wait_for(lambda: app.control.ping(timeout=1), 60, "the worker to answer a ping")
        replies = [
            app.control.time_limit(TASK, soft=1, hard=2, reply=True, limit=1, timeout=10),
            app.control.rate_limit(TASK, "1/h", reply=True, limit=1, timeout=10),
            app.control.broadcast("cancel_consumer", arguments={"queue": QUEUE}, reply=True,
                                  limit=1, timeout=10),
        ]
    finally:
        app.close()
    assert [[answer for one in r for answer in one.values()] for r in replies] == [
        [{"error": f"{name} is refused by polyfit workers"}]
        for name in ("time_limit", "rate_limit", "cancel_consumer")], replies


def _send_hostile(broker: Broker, fast: str, f: list[str], slow: str, s: list[str]) -> None:
    """Each message names one job of its own (``f[7]`` is named by none of them: only by the
    callbacks, chains and groups that must not run)."""
    app = broker.celery()
    now = datetime.now(timezone.utc)
    chained = app.signature(TASK, args=[batch(fast, f[7])], immutable=True, queue=QUEUE)

    def send(name: str, job: tuple[str, str], **options) -> None:
        app.send_task(name, args=[batch(*job)], queue=QUEUE, **options)

    try:
        send(TASK, (fast, f[0]), time_limit="a")            # stopped every worker
        send(TASK, (slow, s[0]), soft_time_limit=1)          # failed the job
        send(TASK, (slow, s[1]), time_limit=2)               # killed it, trained it twice
        send(TASK, (fast, f[1]), eta=now + timedelta(days=3650))  # held, copied, forever
        send(TASK, (fast, f[2]), countdown=10 ** 8)
        send(TASK, (fast, f[3]), expires=now - timedelta(hours=1))  # discarded
        send(TASK, (fast, f[4]), link=chained, link_error=chained)
        # Celery's own tasks: an unlock polling a result that never comes (it retried
        # forever), a group whose member trains f[7].
        group_id = uuid.uuid4().hex
        app.send_task("celery.chord_unlock", args=[group_id, None],
                      kwargs={"result": [[[uuid.uuid4().hex, None], None]]}, queue=QUEUE)
        app.send_task("celery.group", queue=QUEUE,
                      args=[[dict(chained)], [[group_id, None], None], group_id, []])
    finally:
        app.close()
    # By hand: a one-element time limit (wedged the worker), a workflow in the body's third
    # part, a protocol-1 message (the task named in the body), a hybrid of the two.
    one = envelope(task_body([batch(fast, f[5])]))
    one["headers"]["timelimit"] = [1]
    broker.put_json(one)
    broker.put_json(envelope(task_body([batch(fast, f[6])], {}, {
        "callbacks": [dict(chained)], "errbacks": [dict(chained)], "chain": [dict(chained)],
        "chord": dict(chained)})))
    v1 = {"task": TASK, "id": uuid.uuid4().hex, "args": [batch(fast, f[7])], "kwargs": {},
          "timelimit": [1], "retries": 0}
    broker.put_json(envelope(json.dumps(v1).encode(), headers={}))
    broker.put_json(envelope(json.dumps(v1).encode(), headers={"task": TASK, "id": v1["id"]}))


@pytest.mark.parametrize("kind", ["redis", "embedded"])
def test_a_message_names_jobs_and_nothing_else_decides_what_a_worker_does(
        kind, request, db_url, start_worker):
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    # The reaper must not rescue a job that a message failed to run: it would hide the break.
    settings = {"POLYFIT_DB_URL": db_url, "POLYFIT_STALE_AFTER_S": "3600"}
    if redis_url:
        settings["POLYFIT_BROKER_URL"] = redis_url
    env = polyfit_env(**settings)
    broker = Broker(kind, db_url, redis_url)
    fast, f = _recorded_sweep(db_url, "--name", "fast", "--seed", "0-7", "--epochs", "5")
    # Long enough that a time limit of 1 or 2 s would cut it short.
    slow, s = _recorded_sweep(db_url, "--name", "slow", "--seed", "0-1", "--epochs", "200000")

    w = start_worker("--concurrency", "1", **settings)
    wait_for(broker.declared, 60, "the worker to declare its queues")
    if kind == "redis":  # the embedded broker carries no broadcasts between processes
        _send_control(broker)
    _send_hostile(broker, fast, f, slow, s)

    named = {(fast, j) for j in f[:7]} | {(slow, j) for j in s}

    def ended() -> bool:
        got = {(x["sweep_id"], x["id"]): x for x in _rows(db_url)}
        return all(got[k]["status"] in ("succeeded", "failed") for k in named)

    wait_for(ended, 180, "every job a message named to end")
    wait_for(lambda: broker.waiting() == 0, 60, "no message left in the queue or held")
    got = {(x["sweep_id"], x["id"]): x for x in _rows(db_url)}
    assert {k: (got[k]["status"], got[k]["attempts"]) for k in named} == {
        k: ("succeeded", 1) for k in named}, w.output()[-3000:]
    # Nothing the messages chained, grouped or asked for in protocol 1 ran.
    assert got[(fast, f[7])]["status"] == "queued"
    assert w.proc.poll() is None, w.output()[-3000:]
    log = w.output()
    assert "Unrecoverable error" not in log
    # Celery never saw its own tasks (it logs "Task NAME[id] received" for each it takes).
    assert "Task celery." not in log
    for what in ("task 'celery.chord_unlock' is not polyfit.run_batch",
                 "task 'celery.group' is not polyfit.run_batch",
                 "no task header (protocol 2 only)",
                 "the body must be [args, kwargs, embed]",
                 "ignored time limits", "ignored a later start", "ignored an expiry",
                 "ignored callbacks, errbacks", "errbacks, a chain, a chord"):
        assert what in log, what

    # Still serving: the rest of the sweep runs to the end on the same worker.
    r = cli(env, "sweep", "resume", fast)
    assert r.exit_code == 0 and "1 job re-enqueued" in r.stdout, r.output
    done = wait_done(env, fast, timeout=90)
    assert [(x["status"], x["attempts"]) for x in done] == [("succeeded", 1)] * 8
    assert w.proc.poll() is None


def _rows(db_url: str) -> list[dict]:
    return query(db_url, "SELECT sweep_id, id, status, attempts FROM jobs")
