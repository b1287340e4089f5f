"""The read-only doors into the results database.

``open_results`` is how every read command (``status``, ``results``, ``best``, ``plot``, the
Python API) opens the database: it never creates, upgrades or changes anything, a file that is
not a polyfit database is reported (``NotResultsDatabase``) and left byte-identical, and a file
that is read-only to the user still opens. No -wal and -shm are left beside a WAL-mode file
(polyfit's or another program's): SQLite makes them for any connection, and only one that may
write removes them, as the last to close; such a file is read over ``mode=rw`` with
``query_only`` where that is safe (see ``_tidy_uri``), else ``mode=ro``.

``run_sql`` is ``polyfit sql``: a user's statement, run so that it cannot write or run anything,
within a time limit and a cap on the rows returned.
- SQLite: the file opened ``mode=ro``, ``query_only``, an authorizer that allows reads only (no
  ATTACH, no pragma assignment), one statement, a progress handler that stops it at the time
  limit, and limits on the length of a string or blob and on the heap.
- PostgreSQL: the statement runs over a connection that logs in as an account that can neither
  write polyfit's tables nor escalate (no superuser, CREATEROLE, CREATEDB, REPLICATION or
  BYPASSRLS attribute, no membership of a role that has one, nor of the built-in roles that
  reach the server's files, programs or other sessions), checked before every statement. A role
  set on a session is no boundary against the statement that runs in it (``RESET ROLE``), a
  login role is. That account is ``POLYFIT_SQL_URL`` if set, else the results URL's own account
  if it passes the check, else the results URL with the user ``polyfit_reader``, the role that
  ``create_reader_role`` (``polyfit db create-reader``) makes once. The statement then runs alone
  (one prepared statement, or a server-side cursor for queries), in a READ ONLY transaction with
  a ``statement_timeout`` that it cannot lift for itself, and is rolled back."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from store.db import (
    BUSY_TIMEOUT_MS,
    StoreError,
    redact_url,
    server_engine,
    sqlite_path,
    store_error,
)

#: The role ``polyfit sql`` logs in as on PostgreSQL unless told otherwise.
READER_ROLE = "polyfit_reader"
#: Tables (and their columns) that make a database a polyfit results database.
REQUIRED = {"sweeps": {"id", "name", "spec", "created_at"},
            "jobs": {"id", "sweep_id", "variant", "status", "mse", "worker", "attempts"}}
#: polyfit's tables, which the account behind ``polyfit sql`` must not be able to change.
TABLES = ("sweeps", "jobs", "loss_curve")
#: Built-in PostgreSQL roles whose members reach the server's files or programs, write
#: everything, or signal other sessions (the workers').
_DANGEROUS_ROLES = ("pg_execute_server_program", "pg_read_server_files",
                    "pg_write_server_files", "pg_write_all_data", "pg_signal_backend")
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: SQLite: the longest string or blob a statement may build (``repeat``, ``zeroblob``,
#: ``group_concat``), and the heap the process may use while ``polyfit sql`` runs.
SQLITE_MAX_LENGTH = 16 * 2**20
SQLITE_HEAP_LIMIT = 512 * 2**20


class NotResultsDatabase(StoreError):
    """Raised when a database holds no polyfit results (a foreign file, or nothing yet)."""


class QueryError(ValueError):
    """Raised when a user's SQL statement is refused, fails, or runs past its limits."""


class UnsafeAccount(StoreError):
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


def _is_wal(path: Path) -> bool:
    """Whether the SQLite file is in WAL mode (its header's read and write versions are 2)."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return False
    return header.startswith(b"SQLite format 3\x00") and header[18:20] == b"\x02\x02"


def _tidy_uri(path: Path, ours: bool) -> str | None:
    """``mode=rw`` (the connection still writes nothing: ``query_only``) for a WAL file whose
    side files this reader would otherwise leave behind: SQLite makes -wal and -shm for any
    connection to a WAL file, and only a connection that may write removes them, as the last
    one to close (after a checkpoint, of nothing when the -wal was not there). For another
    program's file only when it has no -wal (no connection open, nothing awaiting a
    checkpoint: the file stays byte-identical); None where ``mode=ro`` is the way."""
    if not (_is_wal(path) and os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return None
    if not ours and path.with_name(path.name + "-wal").exists():
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


# -- polyfit sql ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SqlResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool


def run_sql(url: str, query: str, *, timeout_s: float, max_rows: int,
            sql_url: str | None = None) -> SqlResult:
    """Run one statement through the read-only door (see the module docstring)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise StoreError(f"not a database URL: {redact_url(url)}") from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None or not path.is_file():
            raise NotResultsDatabase(f"no results database at {path}")
        open_results(url).dispose()  # a polyfit database, or refused like every read command
        return _sqlite_sql(path, query, timeout_s, max_rows)
    if backend == "postgresql":
        return _postgres_sql(url, sql_url, query, timeout_s, max_rows)
    raise StoreError(f"polyfit sql supports SQLite and PostgreSQL, not {backend}")


# SQLite pragmas ``polyfit sql`` may read. Those with an argument name a table or an index; the
# others would set something if given one (``journal_mode=DELETE``), so they are read-only
# without.
_PRAGMAS_ON_A_TABLE = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                       "foreign_key_list"}
_PRAGMAS_READ = {"table_list", "database_list", "collation_list", "function_list",
                 "pragma_list", "compile_options", "journal_mode", "page_count", "page_size",
                 "user_version", "schema_version", "data_version", "freelist_count",
                 "encoding", "foreign_keys", "busy_timeout", "query_only"}


def _deny_writes(action, arg1, arg2, dbname, source):
    """SQLite authorizer: reads only, no ATTACH, no pragma assignments."""
    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                  sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in _PRAGMAS_ON_A_TABLE or (name in _PRAGMAS_READ and arg2 is None):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _sqlite_sql(path: Path, query: str, timeout_s: float, max_rows: int) -> SqlResult:
    # The user's statement runs on a mode=ro connection. A WAL file's -wal and -shm, which it
    # cannot remove, are removed by a connection that may (it runs nothing of the user's),
    # opened before it and closed after it, so that it is the last one to close.
    tidy_uri = _tidy_uri(path, ours=True)
    tidy = _sqlite_connect(tidy_uri) if tidy_uri else None
    try:
        if tidy is not None:
            tidy.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return _sqlite_sql_ro(path, query, timeout_s, max_rows)
    finally:
        if tidy is not None:
            tidy.close()


def _sqlite_sql_ro(path: Path, query: str, timeout_s: float, max_rows: int) -> SqlResult:
    conn = _sqlite_connect(_sqlite_uri(path))  # read-only, whatever the file
    try:
        conn.execute(f"PRAGMA hard_heap_limit={SQLITE_HEAP_LIMIT}")
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_MAX_LENGTH)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.set_authorizer(_deny_writes)
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            cur = conn.execute(query)  # one statement: sqlite3 refuses several
            if cur.description is None:
                raise QueryError("the statement returned no rows (polyfit sql is read-only)")
            columns = [d[0] for d in cur.description]
            rows = cur.fetchmany(max_rows + 1)
        except sqlite3.OperationalError as e:
            if time.monotonic() > deadline:
                raise QueryError(f"query stopped after {timeout_s:g} s "
                                 "(POLYFIT_SQL_TIMEOUT_S)") from e
            raise QueryError(f"query refused: {_first_line(e)}") from e
        except (sqlite3.Error, sqlite3.Warning, MemoryError, OverflowError, ValueError) as e:
            raise QueryError(f"query refused: {_first_line(e)}") from e
        finally:
            conn.rollback()
    finally:
        conn.close()
    return SqlResult(columns, rows[:max_rows], len(rows) > max_rows)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return redact_url(lines[0]) if lines else e.__class__.__name__


# PostgreSQL ---------------------------------------------------------------------------------------

_ACCOUNT_CHECK = f"""
SELECT
  (SELECT string_agg(r.rolname, ', ') FROM pg_roles r
    WHERE pg_has_role(current_user, r.oid, 'MEMBER')
      AND (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication
           OR r.rolbypassrls)),
  (SELECT string_agg(r.rolname, ', ') FROM pg_roles r
    WHERE pg_has_role(current_user, r.oid, 'MEMBER')
      AND r.rolname IN ({", ".join(f"'{r}'" for r in _DANGEROUS_ROLES)})),
  (SELECT string_agg(DISTINCT c.relname, ', ') FROM pg_class c, pg_roles r
    WHERE c.relnamespace = current_schema()::regnamespace
      AND c.relname IN ({", ".join(f"'{t}'" for t in TABLES)})
      AND pg_has_role(current_user, r.oid, 'MEMBER')
      AND has_table_privilege(r.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER'))
"""

# Statements that a server-side cursor can run (DECLARE ... CURSOR FOR takes a query): their
# rows are fetched in batches, so a huge result never sits whole in memory. Others (EXPLAIN,
# SHOW) run as one prepared statement; their output is small.
_QUERY_START = re.compile(r"^\s*(\(\s*)*(select|with|values|table)\b", re.IGNORECASE)


def _conninfo(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername not in ("postgresql", "postgresql+psycopg"):
        raise StoreError("polyfit sql on PostgreSQL needs the psycopg driver "
                         "(postgresql+psycopg://...)")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def reader_url(url: str) -> str:
    """The results URL with the user ``polyfit_reader`` and no password (libpq then takes it
    from ~/.pgpass or PGPASSWORD, or the server trusts the host)."""
    return make_url(url).set(username=READER_ROLE, password=None).render_as_string(
        hide_password=False)


def _account_problem(conn) -> str | None:
    """Why this connection's account must not run users' SQL, or None."""
    powerful, dangerous, writable = conn.execute(_ACCOUNT_CHECK).fetchone()
    if powerful:
        return f"it is, or is a member of, a role with superuser or similar powers ({powerful})"
    if dangerous:
        return f"it is a member of {dangerous}"
    if writable:
        return f"it can write the table(s) {writable}"
    return None


def _postgres_sql(url: str, sql_url: str | None, query: str, timeout_s: float,
                  max_rows: int) -> SqlResult:
    import psycopg

    candidates = [sql_url] if sql_url else [url, reader_url(url)]
    problems = []
    for candidate in candidates:
        try:
            conn = psycopg.connect(_conninfo(candidate), connect_timeout=10, autocommit=False)
        except psycopg.OperationalError as e:
            problems.append(f"{redact_url(make_url(candidate).render_as_string())} cannot "
                            f"connect: {_first_line(e)}")
            continue
        try:
            conn.read_only = True
            with conn.transaction(force_rollback=True):
                problem = _account_problem(conn)
                if problem is None:
                    return _run_on(conn, query, timeout_s, max_rows)
            problems.append(f"the account {make_url(candidate).username!r} cannot be used: "
                            f"{problem}")
        finally:
            conn.close()
    raise UnsafeAccount(
        "polyfit sql runs only as a PostgreSQL account that cannot write or escalate; "
        + "; ".join(problems)
        + ". Create the read-only role once with `polyfit db create-reader` (as an account "
          "that may create roles), or set POLYFIT_SQL_URL to a read-only account")


def _run_on(conn, query: str, timeout_s: float, max_rows: int) -> SqlResult:
    import psycopg

    ms = max(1, int(timeout_s * 1000))
    conn.execute(f"SET LOCAL statement_timeout = {ms}")
    conn.execute(f"SET LOCAL lock_timeout = {ms}")
    conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {ms + 5000}")
    try:
        if _QUERY_START.match(query):
            cur = conn.cursor(name="polyfit_sql")  # DECLARE: one statement, fetched in batches
            cur.itersize = min(max_rows + 1, 10_000)
            cur.execute(query)
        else:
            cur = conn.cursor()
            cur.execute(query, prepare=True)  # extended protocol: exactly one statement
        if cur.description is None:
            raise QueryError("the statement returned no rows (polyfit sql is read-only)")
        columns = [d.name for d in cur.description]
        rows = cur.fetchmany(max_rows + 1)
    except psycopg.errors.QueryCanceled as e:
        raise QueryError(f"query stopped after {ms / 1000:g} s (POLYFIT_SQL_TIMEOUT_S)") from e
    except psycopg.Error as e:
        raise QueryError(f"query refused: {_first_line(e)}") from e
    return SqlResult(columns, rows[:max_rows], len(rows) > max_rows)


def create_reader_role(url: str, role: str = READER_ROLE, password: str | None = None) -> str:
    """Create (or repair) the login role ``polyfit sql`` uses on PostgreSQL: no powers, SELECT
    on polyfit's tables and views (and on those made later by their owner), read-only by
    default. Run once, as an account that may create roles. Returns the URL to reach it with
    (its password, if any, hidden)."""
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
    shown = make_url(url).set(username=role, password=None if password is None else "***")
    return shown.render_as_string(hide_password=False)
