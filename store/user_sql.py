"""``polyfit sql``: a user's statement, run so that it cannot write or run anything, within a
time limit, its rows handed over one at a time as they come (``sql_rows``), so that what a
caller holds is what it keeps: a query of millions of rows streams in flat memory.

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
  ``store.reader.create_reader_role`` (``polyfit db create-reader``) makes once. The statement
  then runs alone (the extended protocol takes exactly one) in a READ ONLY transaction with a
  ``statement_timeout`` that it cannot lift for itself, and is rolled back. Its rows come in
  libpq's single-row mode (one row in memory at a time; the server waits while the reader
  does, and is cancelled when the reader stops early), and a query's rows are checked on the
  server: one whose text is longer than ``MAX_ROW`` stops the query before it is sent."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from store.db import StoreError, sqlite_path
from store.reader import (
    TABLES,
    NotResultsDatabase,
    QueryError,
    UnsafeAccount,
    _conninfo,
    _first_line,
    _sqlite_connect,
    _sqlite_uri,
    _tidy_uri,
    open_results,
    reader_url,
)
from store.redact import redact_url

#: SQLite: the longest string or blob a statement may build (``repeat``, ``zeroblob``,
#: ``group_concat``), and the heap the process may use while ``polyfit sql`` runs.
SQLITE_MAX_LENGTH = 16 * 2**20
SQLITE_HEAP_LIMIT = 512 * 2**20
#: PostgreSQL: the longest row (as text, as it travels) a query may return.
MAX_ROW = 16 * 2**20
#: Built-in PostgreSQL roles whose members reach the server's files or programs, write
#: everything, or signal other sessions (the workers').
_DANGEROUS_ROLES = ("pg_execute_server_program", "pg_read_server_files",
                    "pg_write_server_files", "pg_write_all_data", "pg_signal_backend")


@dataclass(frozen=True)
class SqlRows:
    """A statement's column names, and its rows as they come (``QueryError`` if it fails or
    runs out of time on the way)."""

    columns: list[str]
    rows: Iterator[tuple]


@dataclass(frozen=True)
class SqlResult:
    """The rows of a user's query, and whether they were cut at the row limit."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool


@contextmanager
def sql_rows(url: str, query: str, *, timeout_s: float,
             sql_url: str | None = None) -> Iterator[SqlRows]:
    """Run one statement through the read-only door (see the module docstring); its rows are
    read while the context is open, and it is rolled back and closed when the context ends."""
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
        with _sqlite_rows(path, query, timeout_s) as out:
            yield out
        return
    if backend == "postgresql":
        with _postgres_rows(url, sql_url, query, timeout_s) as out:
            yield out
        return
    raise StoreError(f"polyfit sql supports SQLite and PostgreSQL, not {backend}")


def run_sql(url: str, query: str, *, timeout_s: float, max_rows: int,
            sql_url: str | None = None) -> SqlResult:
    """The first ``max_rows`` rows of one statement (``sql_rows``, kept in a list)."""
    with sql_rows(url, query, timeout_s=timeout_s, sql_url=sql_url) as out:
        rows = list(islice(out.rows, max_rows + 1))
    return SqlResult(out.columns, rows[:max_rows], len(rows) > max_rows)


# -- SQLite --------------------------------------------------------------------------------------

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


def _sqlite_error(e: Exception, deadline: float, timeout_s: float) -> QueryError:
    if isinstance(e, sqlite3.OperationalError) and time.monotonic() > deadline:
        return QueryError(f"query stopped after {timeout_s:g} s (POLYFIT_SQL_TIMEOUT_S)")
    return QueryError(f"query refused: {_first_line(e)}")


_SQLITE_ERRORS = (sqlite3.Error, sqlite3.Warning, MemoryError, OverflowError, ValueError)


@contextmanager
def _sqlite_rows(path: Path, query: str, timeout_s: float) -> Iterator[SqlRows]:
    # The user's statement runs on a mode=ro connection. A WAL file's -wal and -shm, which it
    # cannot remove, are removed by a connection that may (it runs nothing of the user's),
    # opened before it and closed after it, so that it is the last one to close.
    tidy_uri = _tidy_uri(path, ours=True)
    tidy = _sqlite_connect(tidy_uri) if tidy_uri else None
    try:
        if tidy is not None:
            tidy.execute("SELECT count(*) FROM sqlite_master").fetchone()
        with _sqlite_ro_rows(path, query, timeout_s) as out:
            yield out
    finally:
        if tidy is not None:
            tidy.close()


@contextmanager
def _sqlite_ro_rows(path: Path, query: str, timeout_s: float) -> Iterator[SqlRows]:
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
        except _SQLITE_ERRORS as e:
            raise _sqlite_error(e, deadline, timeout_s) from e
        if cur.description is None:
            raise QueryError("the statement returned no rows (polyfit sql is read-only)")

        def rows() -> Iterator[tuple]:
            while True:  # one row at a time, as SQLite steps
                try:
                    row = cur.fetchone()
                except _SQLITE_ERRORS as e:
                    raise _sqlite_error(e, deadline, timeout_s) from e
                if row is None:
                    return
                yield row

        try:
            yield SqlRows([d[0] for d in cur.description], rows())
        finally:
            conn.rollback()
    finally:
        conn.close()


# -- PostgreSQL ----------------------------------------------------------------------------------

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

# Queries (what may stand in FROM (...)): their rows are checked for size on the server. Other
# statements (EXPLAIN, SHOW) run as they are; their output is small.
_QUERY_START = re.compile(r"^\s*(\(\s*)*(select|with|values|table)\b", re.IGNORECASE)
_TRAILING = re.compile(r"[\s;]+$")
_ALIAS = "polyfit_sql_row"
_TOO_BIG = "polyfit-row-too-big"
_TOO_BIG_SEEN = re.compile(_TOO_BIG + r" (\d+)")


def bounded_query(query: str) -> str:
    """``query`` with each row checked on the server before it is sent: a row whose text is
    longer than ``MAX_ROW`` stops the query (a cast that fails, naming its size; the planner
    cannot fold it away, as it depends on the row). Same columns, same rows, same order."""
    size = f"octet_length(CAST({_ALIAS}.* AS text))"
    return (f"SELECT {_ALIAS}.* FROM (\n{_TRAILING.sub('', query)}\n) AS {_ALIAS} "
            f"WHERE CASE WHEN {size} <= {MAX_ROW} THEN true "
            f"ELSE CAST('{_TOO_BIG} ' || {size} AS boolean) END")


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


@contextmanager
def _postgres_rows(url: str, sql_url: str | None, query: str,
                   timeout_s: float) -> Iterator[SqlRows]:
    import psycopg

    candidates = [sql_url] if sql_url else [url, reader_url(url)]
    problems = []
    for candidate in candidates:
        try:
            conn = psycopg.connect(_conninfo(candidate), connect_timeout=10, autocommit=False)
        except (psycopg.OperationalError, psycopg.ProgrammingError) as e:
            problems.append(f"{redact_url(make_url(candidate).render_as_string())} cannot "
                            f"connect: {_first_line(e)}")
            continue
        try:
            conn.read_only = True
            with conn.transaction(force_rollback=True):
                problem = _account_problem(conn)
                if problem is None:
                    with _stream(conn, query, timeout_s) as out:
                        yield out
                    return
            problems.append(f"the account {make_url(candidate).username!r} cannot be used: "
                            f"{problem}")
        finally:
            conn.close()
    raise UnsafeAccount(
        "polyfit sql runs only as a PostgreSQL account that cannot write or escalate; "
        + "; ".join(problems)
        + ". Create the read-only role once with `polyfit db create-reader` (as an account "
          "that may create roles), or set POLYFIT_SQL_URL to a read-only account")


def _pg_error(e: Exception, ms: int) -> QueryError:
    import psycopg

    if isinstance(e, psycopg.errors.QueryCanceled):
        return QueryError(f"query stopped after {ms / 1000:g} s (POLYFIT_SQL_TIMEOUT_S)")
    seen = _TOO_BIG_SEEN.search(str(e))
    if seen is not None:
        return QueryError(f"a row of the result is {int(seen.group(1)):,} bytes long, more "
                          f"than the {MAX_ROW // 2**20} MiB polyfit sql takes: select fewer or "
                          "shorter columns")
    if isinstance(e, psycopg.ProgrammingError) and "didn't produce a result" in str(e):
        return QueryError("the statement returned no rows (polyfit sql is read-only)")
    return QueryError(f"query refused: {_first_line(e)}")


@contextmanager
def _stream(conn, query: str, timeout_s: float) -> Iterator[SqlRows]:
    import psycopg

    ms = max(1, int(timeout_s * 1000))
    conn.execute(f"SET LOCAL statement_timeout = {ms}")
    conn.execute(f"SET LOCAL lock_timeout = {ms}")
    conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {ms + 5000}")
    is_query = bool(_QUERY_START.match(query))
    statement = bounded_query(query) if is_query else query
    cur = conn.cursor()
    # Single-row mode over the extended protocol: exactly one statement, one row at a time.
    stream = cur.stream(statement)
    try:
        try:
            first = next(stream, None)
            if cur.description is None and is_query:  # no rows: ask for the columns alone
                cur.execute(statement + "\nLIMIT 0")
        except psycopg.Error as e:
            raise _pg_error(e, ms) from e
        if cur.description is None:
            raise QueryError("the statement returned no rows (polyfit sql is read-only)")

        def rows() -> Iterator[tuple]:
            if first is None:
                return
            yield first
            while True:
                try:
                    row = next(stream, None)
                except psycopg.Error as e:
                    raise _pg_error(e, ms) from e
                if row is None:
                    return
                yield row

        yield SqlRows([d.name for d in cur.description], rows())
    finally:
        stream.close()  # a query read only in part is cancelled on the server
