"""The envelope gate (``worker.payload.admit``): a Celery message reaches the worker's Celery
rebuilt from its batch and id; the task's own retries keep their backoff and their count."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from worker.payload import ETA_MAX_S, RETRY_DELAY_MAX_S, BadMessage, admit
from worker.tasks import run_batch

BATCH = {"schema": 2, "sweep_id": "s1", "device": "cpu", "jobs": ["j1"]}
NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _message(countdown=None, **options):
    """The headers and JSON body Celery itself builds for run_batch (protocol 2)."""
    app = run_batch.app
    msg = app.amqp.as_task_v2("id-1", run_batch.name, args=[BATCH], kwargs={},
                              countdown=countdown, now=NOW, **options)
    return msg.headers, json.dumps(msg.body).encode()


def test_a_retry_keeps_its_backoff_and_its_count():
    assert run_batch.retry_backoff_max == RETRY_DELAY_MAX_S < ETA_MAX_S
    headers, body = _message(countdown=RETRY_DELAY_MAX_S, retries=3)
    got = admit(headers, body, "application/json", now=NOW)
    assert datetime.fromisoformat(got.headers["eta"]) == NOW + timedelta(seconds=60)
    assert got.headers["retries"] == 3 and got.ignored == ()


def test_what_celery_honours_is_rebuilt_from_the_batch_and_id():
    headers, body = _message(countdown=10 ** 8, time_limit="a", soft_time_limit=1,
                             expires=NOW - timedelta(hours=1), shadow="other",
                             callbacks=[{"task": "x"}], errbacks=[{"task": "x"}],
                             chain=[{"task": "x"}], chord={"task": "x"}, group_id="g",
                             retries=-5)
    got = admit(headers, body, "application/json", now=NOW)
    assert got.headers == {
        "lang": "py", "task": "polyfit.run_batch", "id": "id-1", "root_id": "id-1",
        "parent_id": None, "group": None, "eta": None, "expires": None, "retries": 0,
        "timelimit": [None, None], "ignore_result": True,
        "argsrepr": headers["argsrepr"], "kwargsrepr": "{}", "origin": headers["origin"]}
    assert json.loads(got.body) == [[BATCH], {}, {"callbacks": None, "errbacks": None,
                                                  "chain": None, "chord": None}]
    assert set(got.ignored) == {"time limits", "an expiry", "another name", "a group",
                                "callbacks", "errbacks", "a chain", "a chord",
                                "a later start", "a retry count"}


@pytest.mark.parametrize("headers, body, content_type, why", [
    ({"task": "celery.chord_unlock", "id": "x"}, [["g", None], {}, {}], "application/json",
     "is not polyfit.run_batch"),
    ({"id": "x"}, {"task": "polyfit.run_batch", "args": [BATCH]}, "application/json",
     "no task header"),
    ({"task": "polyfit.run_batch", "id": "x"}, {"args": [BATCH], "kwargs": {}},
     "application/json", "[args, kwargs, embed]"),
    ({"task": "polyfit.run_batch", "id": ["x"]}, [[BATCH], {}, {}], "application/json",
     "task id"),
    ({"task": "polyfit.run_batch", "id": "x"}, [[BATCH], {}, {}], "application/x-yaml",
     "content type"),
    ({"task": "polyfit.run_batch", "id": "x", "compression": "zlib"}, [[BATCH], {}, {}],
     "application/json", "compressed"),
    ({"task": "polyfit.run_batch", "id": "x"}, [[BATCH], {"payload": 1}, {}],
     "application/json", "keyword"),
    ({"task": "polyfit.run_batch", "id": "x"}, [[{"schema": 2}], {}, {}],
     "application/json", "sweep_id"),
])
def test_anything_but_a_well_formed_run_batch_is_refused(headers, body, content_type, why):
    with pytest.raises(BadMessage, match=why.replace("[", r"\[").replace("]", r"\]")):
        admit(headers, json.dumps(body).encode(), content_type, now=NOW)
