"""No message can stop a worker, on Redis and on the embedded broker: a family of malformed items
(not JSON, not UTF-8, a list where the envelope belongs, envelopes without properties or with a
body that is not base64, valid envelopes around bodies of every wrong shape, a pickle that would
run a command, unknown tasks) put straight into polyfit's queue are logged and dropped, the real
worker process keeps serving and then runs a real sweep to the end. A worker that does die on an
unrecoverable error exits non-zero."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import sqlite3
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.conftest import free_port, polyfit_env
from tests.helpers import cli, rows, wait_done, wait_for
from worker.settings import embedded_broker_url

pytestmark = pytest.mark.slow


class _Evil:
    """Unpickling this runs a shell command: what a worker that accepted pickle would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _envelope(body: bytes | str, headers=None, content_type="application/json", **props):
    properties = {"correlation_id": uuid.uuid4().hex, "reply_to": "", "delivery_mode": 2,
                  "delivery_info": {"exchange": "", "routing_key": "polyfit.cpu"},
                  "priority": 0, "body_encoding": "base64", "delivery_tag": uuid.uuid4().hex,
                  **props}
    return {"body": body if isinstance(body, str) else _b64(body),
            "content-encoding": "utf-8", "content-type": content_type,
            "headers": {"lang": "py", "task": "polyfit.run_batch", "id": uuid.uuid4().hex,
                        "retries": 0, "argsrepr": "", "kwargsrepr": "{}"}
            if headers is None else headers,
            "properties": properties}


def _task(args, kwargs=None, embed=None) -> bytes:
    return json.dumps([args, kwargs if kwargs is not None else {},
                       embed if embed is not None else {}]).encode()


def hostile_items(marker: Path, sweep_id: str, job_id: str) -> dict[str, bytes]:
    """Raw queue items, each one malformed in its own way."""
    good_batch = {"schema": 2, "sweep_id": sweep_id, "device": "cpu", "jobs": [job_id]}
    items: dict[str, object] = {
        "not JSON": b"{not json",
        "not UTF-8": b"\xff\xfe\xfd\x00",
        "a list for an envelope": [1, 2, 3],
        "a string for an envelope": "hello",
        "a number for an envelope": 42,
        "null for an envelope": None,
        "no properties": {"body": "eA==", "headers": {}},
        "properties not an object": {**_envelope(b"{}"), "properties": "nope"},
        "no delivery tag": {**_envelope(b"{}"), "properties": {"body_encoding": "base64"}},
        "body not base64": _envelope("***not base64***"),
        "body not JSON": _envelope(b"{oops"),
        "body an object": _envelope(b'{"x": 1}'),
        "body a number": _envelope(b"42"),
        "body a string": _envelope(b'"str"'),
        "body empty list": _envelope(b"[]"),
        "body one item": _envelope(b"[1]"),
        "no args": _envelope(_task([])),
        "arg a string": _envelope(_task(["a"])),
        "arg a list": _envelope(_task([[1, 2]])),
        "old batch with settings": _envelope(_task([{
            "schema": 1, "sweep_id": sweep_id, "device": "cpu",
            "jobs": [{"id": job_id, "spec": {"variant": "numpy", "degree": 9}}]}])),
        "bad batch": _envelope(_task([{"schema": 2}])),
        "unknown kwarg": _envelope(_task([good_batch], {"evil": 1})),
        "two args": _envelope(_task([good_batch, good_batch])),
        "kwargs a list": _envelope(_task([good_batch], [])),
        "embed a string": _envelope(_task([good_batch], {}, "embed")),
        "headers a string": _envelope(_task([good_batch]), headers="x"),
        "headers a list": _envelope(_task([good_batch]), headers=[1]),
        "unknown task": _envelope(_task([good_batch]), headers={"task": "os.system",
                                                              "id": "u"}),
        "no task, v1 body junk": _envelope(b'{"nope": 1}', headers={}),
        "garbage compression": _envelope(b"not gzip",
                                         headers={"task": "polyfit.run_batch", "id": "z",
                                                  "compression": "application/x-gzip"}),
        "pickle": _envelope(pickle.dumps(([{"x": 1}], {}, {}, _Evil(marker))),
                            content_type="application/x-python-serialize"),
        "delivery info not an object": _envelope(_task([good_batch]), delivery_info="x"),
    }
    return {name: item if isinstance(item, bytes) else json.dumps(item).encode()
            for name, item in items.items()}


class Broker:
    """A polyfit queue to put raw items into, on one of the two brokers."""

    def __init__(self, kind: str, db_url: str, redis_url: str | None) -> None:
        self.kind = kind
        self.url = redis_url if kind == "redis" else embedded_broker_url(db_url)

    def put(self, raw: bytes) -> None:
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            client.lpush("polyfit.cpu", raw)
            client.close()
            return
        path = self.url.split(":///", 1)[1]
        with sqlite3.connect(path) as c:
            queue_id = c.execute("SELECT id FROM kombu_queue WHERE name = 'polyfit.cpu'"
                                 ).fetchone()[0]
            try:
                payload: str | bytes = raw.decode()
            except UnicodeDecodeError:
                payload = raw  # stored as a BLOB: what a foreign writer could do
            c.execute("INSERT INTO kombu_message (visible, timestamp, payload, version, "
                      "queue_id) VALUES (1, datetime('now'), ?, 1, ?)", (payload, queue_id))

    def waiting(self) -> int:
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            try:
                return client.llen("polyfit.cpu") + client.hlen("unacked")
            finally:
                client.close()
        path = self.url.split(":///", 1)[1]
        with sqlite3.connect(path) as c:
            return c.execute("SELECT count(*) FROM kombu_message m JOIN kombu_queue q "
                             "ON q.id = m.queue_id WHERE q.name = 'polyfit.cpu' AND m.visible"
                             ).fetchone()[0]


@pytest.mark.parametrize("kind", ["redis", "embedded"])
def test_no_message_stops_a_worker_and_the_worker_goes_on_serving(
        kind, request, db_url, start_worker, tmp_path):
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else None
    settings = {"POLYFIT_DB_URL": db_url}
    if redis_url:
        settings["POLYFIT_BROKER_URL"] = redis_url
    env = polyfit_env(**settings)
    broker = Broker(kind, db_url, redis_url)
    # A recorded sweep whose messages never went out (the broker was down at submit): the bad
    # items below name its jobs, which must stay untouched.
    down = polyfit_env(POLYFIT_DB_URL=db_url,
                       POLYFIT_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    r = cli(down, "sweep", "submit", "--variant", "numpy", "--seed", "0-3", "--epochs", "5")
    assert r.exit_code == 1
    sweep_id = r.stderr.split("sweep resume ")[1].split("`")[0]
    job_id = rows(db_url, sweep_id)[0]["id"]

    w = start_worker("--concurrency", "1", **settings)
    if kind == "embedded":  # the worker declares the queue tables of the embedded broker
        wait_for(lambda: _has_queue(broker), 60, "the worker to declare its queues")
    marker = tmp_path / "pickle-ran"
    items = hostile_items(marker, sweep_id, job_id)
    for raw in items.values():
        broker.put(raw)
    wait_for(lambda: broker.waiting() == 0, 90, "every bad item to be taken and dropped")
    # Still serving: resume enqueues the recorded sweep and the same worker runs it to the end.
    r = cli(env, "sweep", "resume", sweep_id)
    assert r.exit_code == 0 and "4 jobs re-enqueued" in r.stdout, r.output
    got = wait_done(env, sweep_id, timeout=90)
    assert [(x["status"], x["attempts"]) for x in got] == [("succeeded", 1)] * 4
    assert w.proc.poll() is None, w.output()
    log = w.output()
    assert "Unrecoverable error" not in log
    assert not marker.exists()
    # Each kind of item was noticed where it belongs: dropped by the transport, refused by
    # Celery (pickle, unknown task), or by the task's own gate.
    for what in ("dropped an item that is not a message", "dropped a message the worker cannot "
                 "read", "rejected malformed batch message", "untrusted content",
                 "nregistered task"):
        assert what in log, what
    if kind == "redis":  # kombu reads Redis items as JSON first, the embedded one later
        assert "dropped an item that is not JSON" in log
    # The job whose settings a message tried to change was trained as stored (degree 3).
    eng = create_engine(db_url)
    with eng.connect() as c:
        degrees = {d for (d,) in c.execute(text("SELECT degree FROM jobs"))}
    eng.dispose()
    assert degrees == {3}


def _has_queue(broker: Broker) -> bool:
    path = broker.url.split(":///", 1)[1]
    if not Path(path).exists():
        return False
    try:
        with sqlite3.connect(path) as c:
            return bool(c.execute("SELECT 1 FROM kombu_queue WHERE name = 'polyfit.cpu'"
                                  ).fetchone())
    except sqlite3.OperationalError:
        return False


def test_a_worker_that_dies_on_an_unrecoverable_error_exits_non_zero(db_url, start_worker,
                                                                    tmp_path):
    # A fault planted in the worker process at start (sitecustomize runs before polyfit):
    # one of its bootsteps raises, which Celery reports as an unrecoverable error.
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(
        "import worker.reaper\n"
        "def _boom(self, worker):\n"
        "    raise RuntimeError('planted fault')\n"
        "worker.reaper.Reaper.start = _boom\n")
    w = start_worker("--concurrency", "1", POLYFIT_DB_URL=db_url,
                     PYTHONPATH=f"{plant}{os.pathsep}{polyfit_env()['PYTHONPATH']}")
    try:
        code = w.proc.wait(60)
    finally:
        if w.proc.poll() is None:
            os.killpg(w.proc.pid, signal.SIGKILL)
    assert "planted fault" in w.output()
    assert code != 0, w.output()[-2000:]
