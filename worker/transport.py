"""Broker transports that no message can stop: kombu's Redis and SQLAlchemy (embedded broker)
transports, each with a guard around the one place where a raw item from the queue becomes a
message and is handed to Celery.

Out of the box, an item on a queue that kombu cannot read (not JSON, not UTF-8, a JSON list
where the envelope belongs, an envelope without properties, a body that is not valid base64)
or that makes Celery's consumer raise (a valid envelope around a body of the wrong shape)
escapes from the consumer, and the worker stops with "Unrecoverable error"; the item goes back
to the queue and stops every worker that reads it. Here such an item is logged, acknowledged
and dropped, and the worker goes on. Connection errors still propagate: they are how the
consumer learns that it must reconnect. (Which well-formed messages Celery may see, and what
it may take from them, is decided after this, in front of its task handler: ``worker.app``.)

The embedded transport also deletes a message when a worker takes it (kombu's marks it
invisible and keeps it forever, so the broker file grew with every sweep ever run) and polls
every 0.1 s instead of every second.

``install()`` registers these classes under kombu's own transport names (``redis``,
``rediss``, ``sqla``, ``sqlalchemy``) in this process, so that every connection polyfit's
Celery app makes, whatever broker URL it was given, goes through them."""

from __future__ import annotations

import logging
import time
from queue import Empty

from kombu import transport as kombu_transport
from kombu.exceptions import KombuError
from kombu.transport import redis as kombu_redis
from kombu.transport import sqlalchemy as kombu_sqla
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis import exceptions as redis_errors
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from store.redact import redact_url

log = logging.getLogger("polyfit.worker")


def _drop(queue: str, what: str, error: BaseException) -> None:
    log.error("dropped %s on queue %s: %s: %s", what, queue, error.__class__.__name__,
              redact_url(" ".join(str(error).split()))[:300])


class _Guarded:
    """Mixin for a kombu virtual channel: a raw item that cannot become a message, or whose
    message Celery's callback cannot handle, is logged, acknowledged and dropped."""

    def _passes_through(self) -> tuple:
        return (Empty, *self.connection.connection_errors, *self.connection.channel_errors)

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        result = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

        def _callback(raw_message):
            try:
                message = self.Message(raw_message, channel=self)
            except Exception as e:  # noqa: BLE001 - any unreadable envelope
                _drop(queue, "an item that is not a message", e)
                return None
            if not no_ack:
                self.qos.append(message, message.delivery_tag)
            try:
                return callback(message)
            except self._passes_through():
                raise
            except Exception as e:  # noqa: BLE001 - a message Celery's consumer cannot handle
                _drop(queue, "a message the worker cannot read", e)
                if not no_ack and not message.acknowledged:
                    message.ack()
                return None

        # Replaces the callback the base class registered for this queue (the same four steps,
        # guarded).
        self.connection._callbacks[queue] = _callback
        return result


class RedisChannel(_Guarded, kombu_redis.Channel):
    """kombu's Redis channel, with a broker that went away told apart from other errors."""

    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except self._passes_through():
            raise
        except Exception as e:  # noqa: BLE001 - the item was popped; it is gone, and logged
            _drop("(redis)", "an item that is not JSON", e)
            return True

    def _get(self, queue):
        try:
            return super()._get(queue)
        except self._passes_through():
            raise
        except Exception as e:
            _drop(queue, "an item that is not JSON", e)
            raise Empty() from e


class BrokerAuthError(KombuError):
    """The broker refused the credentials (a wrong or changed password): not a connection
    error that a retry cures, so that the worker stops with this one error instead of
    reconnecting without end (redis-py's AuthenticationError is a ConnectionError, which kombu
    and Celery retry; a heartbeat retried it for ever and held a warm shutdown)."""


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport, with a refused login as one clear error."""

    Channel = RedisChannel

    def establish_connection(self):
        try:
            return super().establish_connection()
        except redis_errors.AuthenticationError as e:
            raise BrokerAuthError(f"the broker refused the login: {e}") from None


class SQLAChannel(_Guarded, kombu_sqla.Channel):
    """kombu's SQLAlchemy channel (the embedded broker), safe for processes starting at once."""

    def _open(self):
        # kombu creates its tables on first use with a check-then-create, which two processes
        # starting at once on PostgreSQL (the embedded broker on a server database) race on:
        # the loser's CREATE fails. Its tables exist by then; trying again finds them.
        for attempt in range(3):
            try:
                return super()._open()
            except (IntegrityError, ProgrammingError):
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    def _get_or_create(self, queue):
        # kombu checks for the queue's row, then inserts it under a thread lock: two processes
        # doing so at once (two `sweep run` of one folder starting together) both insert, and
        # the second fails on the unique name (kombu lets that escape), or, when the database
        # is busy, kombu rolls back and returns a queue that was never stored. Here the loser
        # rolls back and reads the winner's row.
        error: Exception | None = None
        for attempt in range(5):
            obj = (self.session.query(self.queue_cls)
                   .filter(self.queue_cls.name == queue).first())
            if obj is not None:
                return obj
            self.session.add(self.queue_cls(queue))
            try:
                self.session.commit()
            except (IntegrityError, OperationalError) as e:
                self.session.rollback()
                error = e
                time.sleep(0.05 * attempt)
        raise error if error is not None else RuntimeError(f"queue {queue} cannot be made")

    def _get(self, queue):
        obj = self._get_or_create(queue)
        if self.session.bind.name == "sqlite":
            self.session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            msg = (self.session.query(self.message_cls)
                   .with_for_update()
                   .filter(self.message_cls.queue_id == obj.id)
                   .filter(self.message_cls.visible != False)  # noqa: E712 - SQL, not Python
                   .order_by(self.message_cls.sent_at)
                   .order_by(self.message_cls.id)
                   .limit(1)
                   .first())
            if msg is None:
                raise Empty()
            raw = msg.payload
            # Taken is gone: kombu would keep the row (invisible) forever. A message in a
            # worker's hands that is never acknowledged (the worker was killed) is found again
            # by the reaper, as with kombu's own transport, which only restores unacknowledged
            # messages on a clean shutdown (and puts them back as new rows then, too).
            self.session.delete(msg)
        finally:
            self.session.commit()
        try:
            return loads(bytes_to_str(raw))
        except Exception as e:
            _drop(queue, "an item that is not JSON", e)
            raise Empty() from e


class SQLATransport(kombu_sqla.Transport):
    """The embedded broker's transport: kombu's SQLAlchemy one, polled every 0.1 s."""

    Channel = SQLAChannel
    # kombu's default is 1 s: a worker of the embedded broker waited that long for each batch.
    polling_interval = 0.1


_ALIASES = {
    "redis": f"{__name__}:RedisTransport",
    "rediss": f"{__name__}:RedisTransport",
    "sqla": f"{__name__}:SQLATransport",
    "sqlalchemy": f"{__name__}:SQLATransport",
}


def install() -> None:
    """Make kombu's names for these brokers resolve to the guarded transports in this
    process (see the module docstring)."""
    kombu_transport.TRANSPORT_ALIASES.update(_ALIASES)
    for name in _ALIASES:
        kombu_transport._transport_cache.pop(name, None)
