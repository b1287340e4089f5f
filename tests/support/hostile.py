"""What the hostile-message tests share: raw queue items built by hand (envelopes, task bodies)
put straight into polyfit's CPU queue on Redis or on the embedded broker, and a plain Celery app
that sends through Celery's own API, as a stranger with access to the broker would."""

from __future__ import annotations

import base64
import json
import sqlite3
import uuid
from pathlib import Path

import redis
from celery import Celery

from worker.settings import embedded_broker_url

QUEUE = "polyfit.cpu"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def envelope(body: bytes | str, headers=None, content_type="application/json", **props) -> dict:
    """A kombu queue item around ``body`` (``headers`` default to a protocol-2 run_batch)."""
    properties = {"correlation_id": uuid.uuid4().hex, "reply_to": "", "delivery_mode": 2,
                  "delivery_info": {"exchange": "", "routing_key": QUEUE},
                  "priority": 0, "body_encoding": "base64", "delivery_tag": uuid.uuid4().hex,
                  **props}
    return {"body": body if isinstance(body, str) else b64(body),
            "content-encoding": "utf-8", "content-type": content_type,
            "headers": {"lang": "py", "task": "polyfit.run_batch", "id": uuid.uuid4().hex,
                        "retries": 0, "argsrepr": "", "kwargsrepr": "{}"}
            if headers is None else headers,
            "properties": properties}


def task_body(args, kwargs=None, embed=None) -> bytes:
    """A protocol-2 task body: ``[args, kwargs, embed]``."""
    return json.dumps([args, kwargs if kwargs is not None else {},
                       embed if embed is not None else {}]).encode()


def batch(sweep_id: str, *job_ids: str) -> dict:
    """A well-formed batch naming stored jobs."""
    return {"schema": 2, "sweep_id": sweep_id, "device": "cpu", "jobs": list(job_ids)}


class Broker:
    """A polyfit queue to put raw items into, on one of the two brokers."""

    def __init__(self, kind: str, db_url: str, redis_url: str | None) -> None:
        self.kind = kind
        self.url = redis_url if kind == "redis" else embedded_broker_url(db_url)

    def put(self, raw: bytes) -> None:
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            client.lpush(QUEUE, raw)
            client.close()
            return
        with sqlite3.connect(self._path()) as c:
            queue_id = c.execute("SELECT id FROM kombu_queue WHERE name = ?", (QUEUE,)
                                 ).fetchone()[0]
            try:
                payload: str | bytes = raw.decode()
            except UnicodeDecodeError:
                payload = raw  # stored as a BLOB: what a foreign writer could do
            c.execute("INSERT INTO kombu_message (visible, timestamp, payload, version, "
                      "queue_id) VALUES (1, datetime('now'), ?, 1, ?)", (payload, queue_id))

    def put_json(self, item: object) -> None:
        self.put(json.dumps(item).encode())

    def waiting(self) -> int:
        """Messages in the queue, and on Redis those taken and not yet acknowledged."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            try:
                return client.llen(QUEUE) + client.hlen("unacked")
            finally:
                client.close()
        with sqlite3.connect(self._path()) as c:
            return c.execute("SELECT count(*) FROM kombu_message m JOIN kombu_queue q "
                             "ON q.id = m.queue_id WHERE q.name = ? AND m.visible", (QUEUE,)
                             ).fetchone()[0]

    def declared(self) -> bool:
        """Whether the worker has declared its queues (the embedded broker's tables exist)."""
        if self.kind == "redis":
            return True
        if not Path(self._path()).exists():
            return False
        try:
            with sqlite3.connect(self._path()) as c:
                return bool(c.execute("SELECT 1 FROM kombu_queue WHERE name = ?", (QUEUE,)
                                      ).fetchone())
        except sqlite3.OperationalError:
            return False

    def celery(self) -> Celery:
        """A plain Celery app on this broker (JSON, no result backend): Celery's own API."""
        app = Celery("stranger", broker=self.url, set_as_current=False)
        app.conf.update(task_serializer="json", accept_content=["json"],
                        broker_connection_retry_on_startup=True)
        return app

    def _path(self) -> str:
        return self.url.split(":///", 1)[1]
