"""The embedded broker's queue rows, made by processes that start together: kombu checks for a
queue's row and then inserts it under a lock of its own process only, so a process whose check
came before another's insert fails on the unique name (two `sweep run` of one folder started
together died that way in CI). polyfit's transport reads the other's row instead. A real
SQLite broker file; the other process's insert is made by a second connection at the moment
between the check and the insert."""

from __future__ import annotations

import sqlite3

from kombu import Connection

from worker import transport
from worker.settings import embedded_broker_url


def _channel(tmp_path):
    transport.install()
    conn = Connection(embedded_broker_url(f"sqlite:///{tmp_path / 'results.sqlite'}"))
    channel = conn.channel()
    assert isinstance(channel, transport.SQLAChannel)
    channel.session  # opens the file and makes kombu's tables
    return conn, channel


def test_a_queue_made_by_another_process_meanwhile_is_read_not_made_twice(tmp_path):
    conn, channel = _channel(tmp_path)
    broker = tmp_path / "results-broker.sqlite"
    real_add = channel.session.add

    def add_after_the_other_process(obj):
        other = sqlite3.connect(broker)
        other.execute("INSERT INTO kombu_queue (name) VALUES ('polyfit.cpu')")
        other.commit()
        other.close()
        real_add(obj)

    channel.session.add = add_after_the_other_process
    try:
        queue = channel._get_or_create("polyfit.cpu")
    finally:
        conn.release()
    with sqlite3.connect(broker) as c:
        made = c.execute("SELECT id FROM kombu_queue WHERE name = 'polyfit.cpu'").fetchall()
    assert made == [(queue.id,)]


def test_messages_go_through_a_queue_made_that_way(tmp_path):
    conn, channel = _channel(tmp_path)
    try:
        channel._put("polyfit.cpu", {"body": "x"})
        assert channel._get("polyfit.cpu") == {"body": "x"}
    finally:
        conn.release()
