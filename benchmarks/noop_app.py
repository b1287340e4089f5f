"""Celery's own floor for the queue benchmark: a no-op task that counts itself in Redis."""

import os

import redis
from celery import Celery

URL = os.environ.get("NOOP_BROKER_URL", "redis://127.0.0.1:6379/15")
app = Celery("noop", broker=URL)
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                task_acks_late=True, worker_prefetch_multiplier=1, task_default_queue="noop")
_counter = redis.Redis.from_url(URL)


@app.task(name="noop.count")
def count() -> None:
    _counter.incr("noop:done")
