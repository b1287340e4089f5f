"""Engines and the one session scope. SQLite gets WAL, a long busy timeout and ``BEGIN IMMEDIATE``
so that many worker processes can write one file without "database is locked"; PostgreSQL needs
nothing special. ``read_only_engine`` is the door ``polyfit sql`` goes through: read-only at the
database level, not by inspecting the statement."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from store.records import Base

BUSY_TIMEOUT_MS = 60_000


class StoreError(Exception):
    """Raised when the results database cannot be opened, read or written."""


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print or log: the one between
    ``user:`` and the host's ``@`` (up to the last ``@`` of the authority, as a password may hold
    one), and a ``password=`` query parameter."""
    url = re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", str(url))
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases or an in-memory one)."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"not a database URL: {redact_url(url)}") from e
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def make_engine(url: str) -> Engine:
    """An engine for reading and writing results; creates a SQLite file's folder if needed."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"not a database URL: {redact_url(url)}") from e
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True)
        except (ArgumentError, ImportError, SQLAlchemyError) as e:
            raise StoreError(f"cannot use database {redact_url(url)}: {e}") from e
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no branch - trivial
        # Let SQLAlchemy (not pysqlite) emit BEGIN, so that we can make it IMMEDIATE below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
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


# Pragmas ``polyfit sql`` may read. Those with an argument name a table or an index; the others
# would set something if given one (``journal_mode=DELETE``), so they are read-only without.
_PRAGMAS_ON_A_TABLE = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                       "foreign_key_list"}
_PRAGMAS_READ = {"table_list", "database_list", "collation_list", "function_list",
                 "pragma_list", "compile_options", "journal_mode", "page_count", "page_size",
                 "user_version", "schema_version", "data_version", "freelist_count",
                 "encoding", "foreign_keys", "busy_timeout", "query_only"}


def _deny_writes(action, arg1, arg2, dbname, source):
    """SQLite authorizer for the read-only door: reads only, no ATTACH, no pragma assignments."""
    allowed = {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_RECURSIVE,
    }
    if action in allowed:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in _PRAGMAS_ON_A_TABLE or (name in _PRAGMAS_READ and arg2 is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def read_only_engine(url: str) -> Engine:
    """An engine that cannot change the database, whatever SQL it is given.

    SQLite: the file opened read-only (``mode=ro``), ``query_only``, and an authorizer that
    allows reads only. PostgreSQL: every statement alone in a READ ONLY transaction, sent as one
    prepared statement (so the server refuses ``COMMIT; DELETE ...``), and, if the account is a
    superuser, under the ``pg_read_all_data`` role (so no ``COPY ... TO PROGRAM``, no reading of
    server files); each connection is closed after use, so nothing a statement sets lingers."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"not a database URL: {redact_url(url)}") from e
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is None or not path.is_file():
            raise StoreError(f"no results database at {path}")
        engine = create_engine(
            f"sqlite:///file:{path}?mode=ro&uri=true",
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
            poolclass=NullPool,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA query_only=ON")
            cur.close()
            dbapi_conn.set_authorizer(_deny_writes)

        return engine
    if parsed.get_backend_name() != "postgresql":
        raise StoreError(f"polyfit sql supports SQLite and PostgreSQL, not "
                         f"{parsed.get_backend_name()}")
    try:
        engine = create_engine(url, poolclass=NullPool)
    except (ArgumentError, ImportError, SQLAlchemyError) as e:
        raise StoreError(f"cannot use database {redact_url(url)}: {e}") from e
    if engine.dialect.driver != "psycopg":
        raise StoreError("polyfit sql on PostgreSQL needs the psycopg driver "
                         "(postgresql+psycopg://...)")

    @event.listens_for(engine, "do_execute")
    def _one_prepared(cursor, statement, parameters, context):
        # The extended query protocol takes exactly one statement.
        cursor.execute(statement, parameters, prepare=True)
        return True

    @event.listens_for(engine, "do_execute_no_params")
    def _one_prepared_no_params(cursor, statement, context):
        cursor.execute(statement, prepare=True)
        return True

    @event.listens_for(engine, "begin")
    def _drop_privileges(conn):
        # Runs inside the READ ONLY transaction, before the caller's statement.
        superuser = conn.exec_driver_sql(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").scalar()
        if superuser:
            has_role = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_roles WHERE rolname = 'pg_read_all_data'").scalar()
            if not has_role:
                raise StoreError("polyfit sql will not run as a PostgreSQL superuser on a "
                                 "server older than 14; connect as a read-only user")
            conn.exec_driver_sql("SET LOCAL ROLE pg_read_all_data")

    # Every transaction on this engine is READ ONLY; the caller also rolls back.
    return engine.execution_options(postgresql_readonly=True)


def create_schema(engine: Engine) -> None:
    """Create the tables and views if they are missing (idempotent)."""
    from store.views import create_views

    try:
        Base.metadata.create_all(engine)
        # create_all makes the indexes of the tables it creates; a database made by an older
        # polyfit gets the indexes added since.
        for table in Base.metadata.sorted_tables:
            for index in table.indexes:
                index.create(engine, checkfirst=True)
        create_views(engine)
    except SQLAlchemyError as e:
        raise StoreError(f"cannot create tables in {redact_url(str(engine.url))}: {e}") from e


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
