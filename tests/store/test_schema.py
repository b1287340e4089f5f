"""``create_schema`` run by many processes at once (every worker's start and every submit runs
it): on a fresh database all of them succeed and the schema is whole, with no lock an account
that may only read could hold (on PostgreSQL, the second CREATE of a race is refused by the
catalog and looks again); on a complete one it changes nothing."""

from __future__ import annotations

import threading

from sqlalchemy import inspect

from store import create_schema, make_engine
from store.db import _missing
from store.sql_views import VIEWS


def test_many_at_once_on_a_fresh_database_all_succeed(any_db_url):
    n = 6
    engines = [make_engine(any_db_url) for _ in range(n)]
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def create(engine) -> None:
        start.wait()
        try:
            create_schema(engine)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=create, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        with engines[0].connect() as conn:
            assert _missing(conn) == []
            assert set(VIEWS) <= set(inspect(conn).get_view_names())
    finally:
        for e in engines:
            e.dispose()


def test_a_new_connection_waits_to_switch_a_fresh_file_to_wal(tmp_path, monkeypatch):
    # A fresh file is in rollback mode; switching it to WAL needs an exclusive lock, which
    # SQLite refuses at once (no busy handler) while another connection holds the write lock:
    # six create_schema at once on a new file failed with "database is locked" in CI. The
    # holder lets go while the new connection waits (its first pause), as another process
    # would: the connection must then switch, not have failed.
    import sqlite3

    import store.db

    path = tmp_path / "fresh.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE t (x)")
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        if not pauses:
            holder.execute("COMMIT")
        pauses.append(seconds)

    monkeypatch.setattr(store.db.time, "sleep", pause)
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
        holder.close()
    assert pauses  # it did wait for the holder
