"""No message can stop a worker, on Redis and on the embedded broker: a family of malformed items
(not JSON, not UTF-8, a list where the envelope belongs, envelopes without properties or with a
body that is not base64, valid envelopes around bodies of every wrong shape, a pickle that would
run a command, unknown tasks) put straight into polyfit's queue are logged and dropped, the real
worker process keeps serving and then runs a real sweep to the end. A worker that does die on an
unrecoverable error exits non-zero."""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.database import rows
from tests.support.hostile import Broker, envelope, task_body
from tests.support.processes import polyfit_env
from tests.support.servers import free_port
from tests.support.sweeps import cli, wait_done
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


class _Evil:
    """Unpickling this runs a shell command: what a worker that accepted pickle would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


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
        "properties not an object": {**envelope(b"{}"), "properties": "nope"},
        "no delivery tag": {**envelope(b"{}"), "properties": {"body_encoding": "base64"}},
        "body not base64": envelope("***not base64***"),
        "body not JSON": envelope(b"{oops"),
        "body an object": envelope(b'{"x": 1}'),
        "body a number": envelope(b"42"),
        "body a string": envelope(b'"str"'),
        "body empty list": envelope(b"[]"),
        "body one item": envelope(b"[1]"),
        "no args": envelope(task_body([])),
        "arg a string": envelope(task_body(["a"])),
        "arg a list": envelope(task_body([[1, 2]])),
        "old batch with settings": envelope(task_body([{
            "schema": 1, "sweep_id": sweep_id, "device": "cpu",
            "jobs": [{"id": job_id, "spec": {"variant": "numpy", "degree": 9}}]}])),
        "bad batch": envelope(task_body([{"schema": 2}])),
        "unknown kwarg": envelope(task_body([good_batch], {"evil": 1})),
        "two args": envelope(task_body([good_batch, good_batch])),
        "kwargs a list": envelope(task_body([good_batch], [])),
        "embed a string": envelope(task_body([good_batch], {}, "embed")),
        "headers a string": envelope(task_body([good_batch]), headers="x"),
        "headers a list": envelope(task_body([good_batch]), headers=[1]),
        "unknown task": envelope(task_body([good_batch]), headers={"task": "os.system",
                                                              "id": "u"}),
        "no task, v1 body junk": envelope(b'{"nope": 1}', headers={}),
        "garbage compression": envelope(b"not gzip",
                                         headers={"task": "polyfit.run_batch", "id": "z",
                                                  "compression": "application/x-gzip"}),
        "pickle": envelope(pickle.dumps(([{"x": 1}], {}, {}, _Evil(marker))),
                            content_type="application/x-python-serialize"),
        "delivery info not an object": envelope(task_body([good_batch]), delivery_info="x"),
    }
    return {name: item if isinstance(item, bytes) else json.dumps(item).encode()
            for name, item in items.items()}


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
        wait_for(broker.declared, 60, "the worker to declare its queues")
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
    # Each kind of item was noticed where it belongs: dropped by the transport (not a
    # message), or by the worker's gate in front of Celery (the rest: pickle, unknown tasks
    # and bad batches never reach Celery).
    for what in ("dropped an item that is not a message", "rejected malformed batch message",
                 "'application/x-python-serialize' is not application/json",
                 "task 'os.system' is not polyfit.run_batch", "no task header",
                 "unknown batch schema 1", "the task takes no keyword arguments"):
        assert what in log, what
    if kind == "redis":  # kombu reads Redis items as JSON first, the embedded one later
        assert "dropped an item that is not JSON" in log
    # The job whose settings a message tried to change was trained as stored (degree 3).
    eng = create_engine(db_url)
    with eng.connect() as c:
        degrees = {d for (d,) in c.execute(text("SELECT degree FROM jobs"))}
    eng.dispose()
    assert degrees == {3}


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
