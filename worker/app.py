"""The one Celery app. JSON on the wire only, late acks with reject-on-worker-lost, prefetch 1,
a queue per device class, task events on (so Flower and ``celery inspect`` see the fleet),
broker transports that no malformed message can stop (``worker.transport``), and a consumer
that hands Celery only well-formed ``polyfit.run_batch`` messages, rebuilt from their batch
(``worker.payload.admit``): nothing else in a message decides how, when or whether it runs.

``celery -A worker.app worker -Q polyfit.cpu,polyfit.any`` works as with any Celery project; the
module reads its settings from the environment once, at import, which is its process edge.
Nothing secret goes into the app's configuration, which ``celery inspect conf`` and ``celery
report`` show: polyfit's settings live in ``worker.runtime``, and the broker URL Celery keeps
there is shown by Celery with its password masked."""

from __future__ import annotations

import logging

from celery import Celery, signals
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Queue

from worker import queues, runtime, transport
from worker.payload import BadMessage, admit
from worker.reaper import Reaper
from worker.settings import Settings

transport.install()

log = logging.getLogger("polyfit.worker")


# Remote-control commands a worker refuses (it logs them and answers with an error).
REFUSED_CONTROL = frozenset({
    "time_limit", "rate_limit", "revoke", "revoke_by_stamped_headers", "terminate",
    "add_consumer", "cancel_consumer", "pool_grow", "pool_shrink", "pool_restart", "autoscale",
})


class Consumer(CeleryConsumer):
    """Celery's consumer, with a gate in front of its task handler: a message that is not a
    well-formed ``polyfit.run_batch`` task (``celery.chord_unlock``, ``celery.group``, any other
    name, protocol 1, a bad batch) is logged, acknowledged and dropped; the others reach Celery
    rebuilt from their batch alone, without the time limits, expiry, far ``eta``, callbacks,
    chains or chords they asked for (each of which Celery honours as it finds them).

    Here, not in the transport, because only the task consumer reads these messages (the
    remote-control mailbox and event receivers go through the same transports) and because
    it holds for any broker.

    Its remote-control mailbox (a broadcast anyone on the broker can send) answers the
    read-only ``celery inspect`` commands and ``shutdown``, and refuses those that would
    decide how batches run: time and rate limits, revoking or killing a batch, changing the
    queues served or the size of the pool."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for step in self.blueprint.order:
            node = getattr(getattr(step, "box", None), "node", None)  # the Control step's
            if node is not None:
                node.handlers = {**node.handlers,
                                 **{name: _refuse(name) for name in REFUSED_CONTROL}}

    def create_task_handler(self, *args, **kwargs):
        handle = super().create_task_handler(*args, **kwargs)
        connection_errors = self.connection_errors

        def on_task_received(message):
            try:
                admitted = admit(message.headers, message.body, message.content_type)
                delivery = message.delivery_info
                if not (isinstance(delivery, dict)
                        and isinstance(delivery.get("exchange", ""), str)
                        and isinstance(delivery.get("routing_key", ""), str)):
                    raise BadMessage("delivery info must name an exchange and a routing key")
            except BadMessage as e:
                log.error("rejected malformed batch message %s: %s",
                          _shown_id(message.headers), e)
                message.ack_log_error(log, connection_errors)
                return None
            if admitted.ignored:
                log.warning("message %s for sweep %s: ignored %s", admitted.headers["id"],
                            admitted.batch.sweep_id, ", ".join(admitted.ignored))
            message.headers = admitted.headers
            message.body = admitted.body
            message.content_type, message.content_encoding = "application/json", "utf-8"
            message._decoded_cache = None
            properties = message.properties if isinstance(message.properties, dict) else {}
            priority = properties.get("priority")
            message.properties = {
                **properties, "correlation_id": admitted.headers["id"], "reply_to": None,
                "priority": priority if isinstance(priority, int)
                and not isinstance(priority, bool) and 0 <= priority <= 255 else 0}
            return handle(message)

        return on_task_received


def _refuse(name: str):
    def refused(_state, **_arguments) -> dict:
        log.warning("refused the remote-control command %s", name)
        return {"error": f"{name} is refused by polyfit workers"}

    return refused


def _shown_id(headers: object) -> str:
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return " ".join(repr(task_id).split())[:70] if task_id is not None else "(no id)"


def transport_options(settings: Settings) -> dict:
    """Broker transport options for the settings' broker."""
    url = settings.broker_url
    if url.startswith(("redis://", "rediss://", "redis+socket://")):
        vt = settings.visibility_timeout_s
        return {
            # How long Redis keeps an unacknowledged message (the batch of a worker that was
            # SIGKILLed, or that lost its connection) before handing it to another consumer.
            # A redelivery while the first worker is still alive is harmless: the store lets a
            # job be claimed again only once its heartbeat has gone stale.
            "visibility_timeout": vt,
            # Look for such messages every few seconds, not every 100 s (kombu's default
            # 10 s x throttle 10), so that they come back within about the timeout.
            "unacked_restore_interval": max(1, min(10, int(vt // 3))),
            "unacked_restore_throttle": 1,
            # A broker that vanishes without closing the socket (a partition, a host that
            # died) must not hang a publish or a consumer forever: TCP keepalives notice a
            # dead peer, timeouts bound every wait, a health check probes idle connections.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "socket_keepalive_options": _keepalive_options(),
            "health_check_interval": 10,
            "retry_on_timeout": True,
        }
    if url.startswith(("sqla+sqlite", "sqlalchemy+sqlite")):
        # Passed to create_engine by kombu: several workers poll one file; wait, don't fail.
        return {"connect_args": {"timeout": 60}}
    return {}


def _keepalive_options() -> dict:
    """Probe an idle connection after 10 s, every 5 s, give up after 3 unanswered probes."""
    import socket

    options = {}
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options[getattr(socket, name)] = value
    return options


def make_app(settings: Settings) -> Celery:
    app = Celery("polyfit", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=queues.CPU,
        task_queues=[Queue(q) for q in (queues.CPU, queues.CUDA, queues.ANY)],
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings),
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2,
                                   "interval_step": 0.5, "interval_max": 2},
        worker_hijack_root_logger=False,
        worker_consumer=f"{__name__}:Consumer",
        # No task of polyfit's has a rate limit; none can be given one (see REFUSED_CONTROL).
        worker_disable_rate_limits=True,
    )
    app.steps["worker"].add(Reaper)
    return app


app = make_app(runtime.current().settings)


@signals.celeryd_init.connect
def _settle_settings(**_kwargs) -> None:
    # ``polyfit worker`` installs its runtime (flags win over the environment this module was
    # imported with) before the worker starts; the broker and its options must follow it.
    settings = runtime.current().settings
    app.conf.broker_url = settings.broker_url
    app.conf.broker_transport_options = transport_options(settings)
