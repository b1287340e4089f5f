"""The read-only doors into the results database.

``open_results`` is how every read command (``status``, ``results``, ``best``, ``plot``, the
Python API) opens the database: it never creates, upgrades or changes anything, a file that is
not a polyfit database is reported (``NotResultsDatabase``) and left byte-identical, and a file
that is read-only to the user still opens. No -wal and -shm are left beside a WAL-mode file
(polyfit's or another program's): SQLite makes them for any connection, and only one that may
write removes them, as the last to close; such a file is read over ``mode=rw`` with
``query_only`` where that is safe (see ``_tidy_uri``), else ``mode=ro``.

``create_reader_role`` (``polyfit db create-reader``) makes the PostgreSQL login role that
``polyfit sql`` runs users' statements as; ``store.user_sql`` is that door."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from polyfit_models.errors import BadInput
from store.db import BUSY_TIMEOUT_MS, StoreError, server_engine, sqlite_path, store_error
from store.records import Base
from store.redact import redact_url

#: The role ``polyfit sql`` logs in as on PostgreSQL unless told otherwise.
READER_ROLE = "polyfit_reader"
#: Tables (and their columns) that make a database a polyfit results database.
REQUIRED = {"sweeps": {"id", "name", "spec", "created_at"},
            "jobs": {"id", "sweep_id", "variant", "status", "mse", "worker", "attempts"}}
#: polyfit's tables, which the account behind ``polyfit sql`` must not be able to change: every
#: table the records declare (a hand-kept list missed the ones added later).
TABLES = tuple(t.name for t in Base.metadata.sorted_tables)
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class NotResultsDatabase(StoreError, BadInput):
    """Raised when a database holds no polyfit results (a foreign file, or nothing yet)."""


class QueryError(BadInput, ValueError):
    """Raised when a user's SQL statement is refused, fails, or runs past its limits."""


class UnsafeAccount(StoreError, BadInput):
    """Raised when ``polyfit sql`` would run on a PostgreSQL account that can write or escalate."""


# -- read commands ------------------------------------------------------------------------------

def open_results(url: str) -> Engine:
    """An engine on the results database that only reads (see the module docstring)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise StoreError(f"not a database URL: {redact_url(url)}") from e
    door = None
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise StoreError("an in-memory database holds no results")
        if not path.is_file():
            raise NotResultsDatabase(f"no results database at {path} (run or submit a sweep "
                                     "first)")
        door = _SqliteDoor(path)
        engine = create_engine("sqlite://", poolclass=NullPool, creator=door.connect)
    else:
        engine = server_engine(url, poolclass=NullPool, pool_pre_ping=True,
                               execution_options={"postgresql_readonly": True})
    try:
        _check_schema(engine, str(door.path) if door else None)
    except BaseException:
        engine.dispose()
        raise
    if door is not None:
        door.ours = True
    return engine


class _SqliteDoor:
    """The connections of a read command to a SQLite file (see ``_sqlite_uri``); ``ours`` once
    the file is known to be a polyfit database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ours = False

    def connect(self) -> sqlite3.Connection:
        return _sqlite_connect(_sqlite_uri(self.path, tidy=True, ours=self.ours))


def _tidy_uri(path: Path, ours: bool) -> str | None:
    """``mode=rw`` (the connection still writes nothing: ``query_only``) where the reader may
    write the file: SQLite makes -wal and -shm for any connection to a WAL file, and only a
    connection that may write removes them, as the last one to close (after a checkpoint, of
    nothing when the -wal was not there); on a file in another journal mode it makes nothing.
    For another program's file only when no -wal or -journal is there (no connection open,
    nothing awaiting a checkpoint or a rollback: the file stays byte-identical); None where
    ``mode=ro`` is the way.

    The file's own bytes are never read here (its header would say its journal mode): POSIX
    locks belong to the process, and closing any descriptor of a file drops every lock the
    process holds on it, so a connection this process keeps open (``polyfit.run()``, the
    dashboard) would lose its locks; another process closing last would then remove the -wal
    and -shm that connection still uses, and this process would read the removed ones ever
    after, never seeing another process's writes."""
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return None
    if not ours and any(path.with_name(path.name + side).exists()
                        for side in ("-wal", "-journal")):
        return None
    return f"file:{path}?mode=rw"


def _sqlite_uri(path: Path, tidy: bool = False, ours: bool = False) -> str:
    """SQLite, read-only. ``tidy``: leave no -wal and -shm behind (``_tidy_uri``). A WAL
    database whose side files (-wal, -shm) are missing in a folder the user cannot write to
    cannot be opened ``mode=ro``; with no -wal file nothing awaits a checkpoint, so it is opened
    ``immutable`` (as a file on read-only media)."""
    if tidy and (uri := _tidy_uri(path, ours)) is not None:
        return uri
    uri = f"file:{path}?mode=ro"
    try:
        probe = sqlite3.connect(uri, uri=True)
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            probe.close()
    except sqlite3.DatabaseError as e:
        if "not a database" in str(e) or "malformed" in str(e):
            raise NotResultsDatabase(f"{path} is not a polyfit results database "
                                     f"(not a SQLite database)") from e
        if path.with_name(path.name + "-wal").exists():
            raise StoreError(f"cannot read {path}: {e}") from e
        uri += "&immutable=1"
    return uri


def _sqlite_connect(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    return conn


def _check_schema(engine: Engine, where: str | None = None) -> None:
    try:
        found = inspect(engine)
        tables = set(found.get_table_names())
        for table, columns in REQUIRED.items():
            if table not in tables:
                raise NotResultsDatabase(_not_ours(engine, where, f"no table {table!r}"))
            have = {c["name"] for c in found.get_columns(table)}
            if not columns <= have:
                raise NotResultsDatabase(_not_ours(engine, where, f"table {table!r} lacks "
                                                                  f"{sorted(columns - have)[0]!r}"))
    except SQLAlchemyError as e:
        if isinstance(getattr(e, "orig", None), sqlite3.DatabaseError):
            raise NotResultsDatabase(_not_ours(engine, where, "not a SQLite database")) from e
        raise store_error(engine, e) from e


def _not_ours(engine: Engine, where: str | None, why: str) -> str:
    where = where or redact_url(engine.url.render_as_string())
    return f"{where} is not a polyfit results database ({why})"


# -- the reader role (PostgreSQL) ---------------------------------------------------------------

def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return redact_url(lines[0]) if lines else e.__class__.__name__


def _conninfo(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername not in ("postgresql", "postgresql+psycopg"):
        raise StoreError("polyfit sql on PostgreSQL needs the psycopg driver "
                         "(postgresql+psycopg://...)")
    from psycopg.conninfo import make_conninfo

    # libpq keywords, not a URL: a password with a space (which SQLAlchemy's URLs keep as it
    # is and libpq's refuse) or any other character reaches the server as it was given.
    query = {k: v if isinstance(v, str) else v[-1] for k, v in parsed.query.items()}
    parts = {"host": parsed.host, "port": parsed.port, "user": parsed.username,
             "password": parsed.password, "dbname": parsed.database}
    return make_conninfo(**{k: v for k, v in parts.items() if v is not None}, **query)


def shareable_url(url: str, password: str | None = None) -> str:
    """``url`` as text that SQLAlchemy and libpq both read back, with ``password`` (None: none):
    SQLAlchemy leaves a space as it is, which libpq refuses."""
    text = make_url(url).set(password=password).render_as_string(hide_password=False)
    return text.replace(" ", "%20")


def reader_url(url: str) -> str:
    """The results URL with the user ``polyfit_reader`` and no password (libpq then takes it
    from ~/.pgpass or PGPASSWORD, or the server trusts the host)."""
    return make_url(url).set(username=READER_ROLE, password=None).render_as_string(
        hide_password=False)

def create_reader_role(url: str, role: str = READER_ROLE, password: str | None = None) -> str:
    """Create (or repair) the login role ``polyfit sql`` uses on PostgreSQL: no powers, SELECT
    on polyfit's tables and views (and on those made later by their owner), read-only by
    default. Run once, as an account that may create roles. Returns the URL to reach it with,
    without a password (the results URL's, the admin's, is never in it)."""
    import psycopg
    from psycopg import sql

    if not _ROLE_NAME.match(role):
        raise StoreError(f"not a role name: {role!r} (lowercase letters, digits, _)")
    try:
        conn = psycopg.connect(_conninfo(url), connect_timeout=10, autocommit=False)
    except psycopg.Error as e:
        raise StoreError(redact_url(f"cannot connect to {url}: {_first_line(e)}")) from e
    r = sql.Identifier(role)
    try:
        with conn.transaction():
            schema, database, owner = conn.execute(
                "SELECT current_schema(), current_database(), "
                "(SELECT tableowner FROM pg_tables WHERE schemaname = current_schema() "
                " AND tablename = 'jobs')").fetchone()
            if owner is None:
                raise NotResultsDatabase("no polyfit tables in this database's schema "
                                         f"{schema!r}: run or submit a sweep first")
            powers = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                             "NOBYPASSRLS NOINHERIT")
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  (role,)).fetchone()
            conn.execute(sql.SQL("{} ROLE {} {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), r, powers))
            if password is not None:
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    r, sql.Literal(password)))
            # Whatever it was given before: it must be able to write nothing of polyfit's.
            for table in TABLES:
                if conn.execute("SELECT to_regclass(%s)",
                                (f'"{schema}"."{table}"',)).fetchone()[0] is None:
                    continue  # a database made before the table existed
                conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(
                    sql.Identifier(schema, table), r))
            for granted in conn.execute(
                    "SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b "
                    "ON b.oid = m.roleid WHERE m.member = (SELECT oid FROM pg_roles "
                    "WHERE rolname = %s)", (role,)).fetchall():
                conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(granted[0]), r))
            conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on")
                         .format(r))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), r))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), r))
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), r))
            conn.execute(sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}"
            ).format(sql.Identifier(owner), sql.Identifier(schema), r))
    except psycopg.Error as e:
        raise StoreError(f"cannot create the role {role!r}: {_first_line(e)}") from e
    finally:
        conn.close()
    return make_url(url).set(username=role, password=None).render_as_string(
        hide_password=False)
