"""Engines and the one session scope for the processes that write results (scheduler, workers).
SQLite gets WAL, a long busy timeout and ``BEGIN IMMEDIATE`` so that many worker processes can
write one file without "database is locked"; PostgreSQL gets TCP keepalives and timeouts, so a
worker cut off from the server notices instead of hanging. The read-only doors (read commands,
``polyfit sql``) are in ``store.reader``. Every URL or error shown anywhere passes
``redact_url``."""

from __future__ import annotations

import functools
import os
import random
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session

from polyfit_models.errors import BadInput, PolyfitError
from store.records import Base
from store.redact import redact_url

F = TypeVar("F", bound=Callable)

BUSY_TIMEOUT_MS = 60_000
#: Where results go when nothing says otherwise, and the variable that says otherwise.
DEFAULT_DB_URL = "sqlite:///polyfit.sqlite"
ENV_DB = "POLYFIT_DB_URL"


class StoreError(PolyfitError):
    """Raised when the results database cannot be opened, read or written."""


class MissingDriver(StoreError, BadInput):
    """Raised when a database URL names a driver that is not installed (a setup to fix, not a
    server that failed)."""


class StoreUnavailable(StoreError):
    """Raised when the results database cannot be reached or is busy (a connection refused,
    dropped or timed out, a lock not granted): worth retrying, unlike other store errors."""


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases or an in-memory one)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise StoreError(f"not a database URL: {redact_url(url)}") from e
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


# libpq connection options: give up on a connect after 10 s; probe an idle connection after 10 s,
# every 5 s, 3 times; drop a connection whose sent data stays unacknowledged for 30 s (a
# partition: keepalives alone do not fire while data waits to be sent).
_PG_CONNECT_ARGS = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10,
                    "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 30_000}


def db_url_from(env: Mapping[str, str]) -> str:
    """The results database an environment names (``POLYFIT_DB``), else the default file: the
    one rule for every command, worker and the Python API."""
    return env.get(ENV_DB) or DEFAULT_DB_URL


_shared: dict[tuple[int, str], Engine] = {}


def shared_engine(url: str) -> Engine:
    """This process's one engine for ``url``, made on first use (and again after a fork: pools
    do not survive one): every step of a command (record, enqueue, wait, release, the closing
    summary) and every batch of a worker share it, as rq's ``CliConfig`` keeps one connection
    per command. ``dispose_shared`` closes them when the command ends."""
    key = (os.getpid(), url)
    engine = _shared.get(key)
    if engine is None:
        engine = _shared[key] = make_engine(url)
    return engine


def dispose_shared() -> None:
    """Close this process's shared engines (a command's end)."""
    while _shared:
        _, engine = _shared.popitem()
        engine.dispose()


def dispose_all() -> None:
    """Close every engine this process made, the shared ones and any other (a command's end):
    no connection outlives the command, and a SQLite file's write-ahead log is folded back into
    the file when its last connection closes, not left to the interpreter's exit."""
    dispose_shared()
    for engine in list(_made):
        if engine.url.database not in (None, "", ":memory:"):  # disposing one loses it
            engine.dispose()


_made: weakref.WeakSet[Engine] = weakref.WeakSet()


def make_engine(url: str) -> Engine:
    """An engine for reading and writing results; creates a SQLite file's folder if needed."""
    engine = _new_engine(url)
    _made.add(engine)
    return engine


def _new_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise StoreError(f"not a database URL: {redact_url(url)}") from e
    if parsed.get_backend_name() != "sqlite":
        connect_args = _PG_CONNECT_ARGS if parsed.get_backend_name() == "postgresql" else {}
        return server_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no branch - trivial
        # Let SQLAlchemy (not pysqlite) emit BEGIN, so that we can make it IMMEDIATE below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _into_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # A deferred transaction that later needs to write can fail at once with SQLITE_BUSY
        # (the busy handler is not consulted for a lock upgrade); taking the write lock up front
        # makes writers queue on busy_timeout instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def server_engine(url: str, **options) -> Engine:
    """``create_engine`` for a server database, its errors as one-line ``StoreError``s: a
    driver that is not installed is a ``MissingDriver`` that says how to install it."""
    try:
        return create_engine(url, **options)
    except ImportError as e:
        extra = (" (pip install 'polyfit[postgres]')"
                 if make_url(url).get_backend_name() == "postgresql" else "")
        raise MissingDriver(redact_url(f"cannot use database {url}: its driver is not "
                                       f"installed: {e}{extra}")) from e
    except (ArgumentError, SQLAlchemyError) as e:
        raise StoreError(redact_url(f"cannot use database {url}: {e}")) from e


#: PostgreSQL SQLSTATEs of a CREATE that lost a race with another process's: the catalog's
#: unique index (unique_violation), or the object already there (duplicate table, object).
_CREATED_BY_ANOTHER = ("23505", "42P07", "42710")
_CREATE_TRIES = 3


def _into_wal(cur) -> None:
    """``PRAGMA journal_mode=WAL``, waiting as the busy timeout does. On a file still in
    rollback mode (a fresh database) the switch needs an exclusive lock, and SQLite refuses it
    at once, without its busy handler, while another connection holds the write lock: six
    processes making the schema of a new file at once failed with "database is locked"."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def create_schema(engine: Engine) -> None:
    """Create the tables, indexes and views if they are missing (idempotent), also when several
    processes do it at once. It looks first, without a lock: a complete schema (every start
    of a worker, every submit) is left alone and waits for nobody. Otherwise one transaction
    that holds SQLite's write lock, or on PostgreSQL ``LOCK TABLE sweeps IN SHARE ROW
    EXCLUSIVE MODE`` (a lock that an account allowed only to read, like ``polyfit sql``'s, can
    neither take nor hold: an advisory lock it could), and in a schema with no tables yet (no
    reader has been given anything in it) no lock: of two processes that create the tables at
    once, the second is refused by the catalog and looks again."""
    from store.sql_views import create_views

    try:
        with engine.connect() as conn:
            complete = not _missing(conn)
            conn.rollback()
        if not complete:
            for attempt in range(1, _CREATE_TRIES + 1):
                try:
                    _create_tables(engine)
                    break
                except DBAPIError as e:
                    if attempt == _CREATE_TRIES or getattr(
                            e.orig, "sqlstate", None) not in _CREATED_BY_ANOTHER:
                        raise
        create_views(engine)
    except SQLAlchemyError as e:
        raise store_error(engine, e) from e


def _missing(conn) -> list:
    """What the schema lacks: tables, then columns (as ``(table, column)``), then indexes."""
    found = inspect(conn)
    tables = set(found.get_table_names())
    out: list = [t for t in Base.metadata.sorted_tables if t.name not in tables]
    if out:
        return out
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        out += [(table, c) for c in table.columns if c.name not in have]
        indexes = {i["name"] for i in found.get_indexes(table.name)}
        out += [i for i in table.indexes if i.name not in indexes]
    return out


def _create_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql" and inspect(conn).has_table("sweeps"):
            conn.exec_driver_sql("LOCK TABLE sweeps IN SHARE ROW EXCLUSIVE MODE")
        Base.metadata.create_all(conn)
        # create_all makes the columns and indexes of the tables it creates; a database
        # made by an older polyfit gets those added since (nullable columns only).
        found = inspect(conn)
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in found.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    kind = column.type.compile(dialect=conn.dialect)
                    conn.exec_driver_sql(
                        f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
            for index in table.indexes:
                index.create(conn, checkfirst=True)


def store_error(engine: Engine, e: Exception) -> StoreError:
    """A driver or SQLAlchemy error as a one-line ``StoreError`` naming the database (redacted):
    ``StoreUnavailable`` for what a retry may cure (see ``is_transient``)."""
    first = str(e).splitlines()[0] if str(e) else ""
    cls = StoreUnavailable if is_transient(e) else StoreError
    return cls(redact_url(f"results database {engine.url.render_as_string()}: "
                          f"{e.__class__.__name__}: {first}"))


def is_transient(e: Exception) -> bool:
    """Whether a database error may go away by itself: the server unreachable, a connection
    dropped, a lock or a deadlock (SQLAlchemy's OperationalError covers these on both
    backends; a file that cannot be opened is one too, as when a disk is away)."""
    return isinstance(e, (OperationalError, InterfaceError)) or bool(
        isinstance(e, DBAPIError) and e.connection_invalidated)


#: PostgreSQL's SQLSTATEs for a transaction it rolled back to settle a conflict with another
#: one (a deadlock, a serialization failure): the same transaction run again succeeds.
_CONFLICTS = ("40P01", "40001")
#: How many times a conflicting transaction is run in all, and the longest pause between runs.
CONFLICT_TRIES = 6
_CONFLICT_PAUSE_S = 0.5


def is_conflict(e: BaseException) -> bool:
    """Whether ``e`` (a store or SQLAlchemy error, or the driver's) is PostgreSQL rolling a
    transaction back because it conflicted with another (see ``retry_conflicts``)."""
    seen = 0
    while e is not None and seen < 8:
        if getattr(e, "sqlstate", None) in _CONFLICTS:
            return True
        e = getattr(e, "orig", None) or e.__cause__
        seen += 1
    return False


def retry_conflicts(fn: F) -> F:
    """Run ``fn`` (one transaction of the store's, given whole: no one-shot iterator among
    its arguments) again when PostgreSQL rolled it back to settle a deadlock or serialization
    failure with another transaction: the server undid all of it, and running it again is what
    PostgreSQL's documentation asks of the application. A short random pause first, so that
    the two do not meet again; a conflict on every one of ``CONFLICT_TRIES`` runs is raised."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        for attempt in range(1, CONFLICT_TRIES + 1):
            try:
                return fn(*args, **kwargs)
            except StoreError as e:
                if attempt == CONFLICT_TRIES or not is_conflict(e):
                    raise
            time.sleep(random.uniform(0, _CONFLICT_PAUSE_S * attempt / CONFLICT_TRIES))
        raise AssertionError("unreachable")  # pragma: no cover

    return run  # type: ignore[return-value]


#: The tables each engine's database is known to have (a table once there stays there).
_TABLES: weakref.WeakKeyDictionary[Engine, set[str]] = weakref.WeakKeyDictionary()


def has_table(engine: Engine, name: str) -> bool:
    """Whether the database has the table ``name``: a database made before it existed (read,
    never upgraded, by the read commands) has not. Remembered per engine once true: a worker
    asks after every batch."""
    known = _TABLES.setdefault(engine, set())
    if name in known:
        return True
    try:
        with engine.connect() as conn:
            found = inspect(conn).has_table(name)
    except SQLAlchemyError as e:
        raise store_error(engine, e) from e
    if found:
        known.add(name)
    return found


_COLUMNS: weakref.WeakKeyDictionary[Engine, dict[str, frozenset[str]]] = (
    weakref.WeakKeyDictionary())


def columns_of(engine: Engine, table: str = "jobs") -> frozenset[str]:
    """The columns ``table`` of this database has (asked once per engine): a database made by
    an older polyfit lacks the newest ones, which a read takes as missing (a read never
    upgrades a database)."""
    known = _COLUMNS.setdefault(engine, {})
    if table not in known:
        try:
            known[table] = frozenset(c["name"] for c in inspect(engine).get_columns(table))
        except SQLAlchemyError as e:
            raise store_error(engine, e) from e
    return known[table]


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """``session_scope`` for the store's own operations: database errors come out as
    ``StoreError`` (the one way into the database)."""
    try:
        with session_scope(engine) as s:
            yield s
    except SQLAlchemyError as e:
        raise store_error(engine, e) from e


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error, always close."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
