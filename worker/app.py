"""The one Celery app. JSON on the wire only, late acks with reject-on-worker-lost, prefetch 1,
a queue per device class, task events on (so Flower and ``celery inspect`` see the fleet).

``celery -A worker.app worker -Q polyfit.cpu,polyfit.any`` works as with any Celery project; the
module reads its settings from the environment once, at import, which is its process edge."""

from __future__ import annotations

from celery import Celery, signals
from kombu import Queue

from worker import queues
from worker.payload import TASK_NAME  # noqa: F401 - re-exported
from worker.settings import Settings


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
            # A broker that vanishes without closing the socket must not hang a publish.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "health_check_interval": 10,
        }
    if url.startswith(("sqla+sqlite", "sqlalchemy+sqlite")):
        # Passed to create_engine by kombu: several workers poll one file; wait, don't fail.
        return {"connect_args": {"timeout": 60}}
    return {}


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
        polyfit_settings=settings,
    )
    from worker.reaper import Reaper  # late: the reaper publishes through this module's app

    app.steps["worker"].add(Reaper)
    return app


app = make_app(Settings.from_env())


@signals.celeryd_init.connect
def _settle_settings(**_kwargs) -> None:
    # ``polyfit worker`` replaces the settings (flags win over the environment this module was
    # imported with) before the worker starts; the transport options must follow them.
    app.conf.broker_transport_options = transport_options(app.conf.polyfit_settings)


# A worker started by ``celery -A worker.app worker`` (not ``polyfit worker``) trains on the CPU
# with torch's default threads; ``polyfit worker`` replaces this before the worker starts.
from worker.runtime import Runtime

app.conf.polyfit_runtime = Runtime(settings=app.conf.polyfit_settings)
