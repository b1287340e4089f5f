"""The one clock of the store: the database's.

Every time the store writes (a heartbeat, a claim, a finish, when a job was queued, when a sweep
was recorded) and every "older than N seconds" it judges (a stale heartbeat, a lost message)
is the database's time, never the clock of the process that asks: a fleet spans hosts, and a
worker whose clock is minutes behind (or ahead) must neither have its live jobs taken nor take
others'. A worker that reaches the database and beats is alive, whatever its clock says.

- PostgreSQL: the server's ``now()``, evaluated by the server (the start of the writing
  transaction: one time for every row and statement of it).
- SQLite: the file has no server; it serves the processes of one host, which share that host's
  clock. SQLite's own ``'now'`` (the host's clock when the statement runs, after any wait for
  the write lock), in the text form SQLAlchemy stores times in.

``now_sql`` and ``ago_sql`` are SQL expressions for a statement; ``db_now`` reads the clock
into Python (a reader's "now", a time shared by the statements of one operation); ``skew_s``
measures how far this process's clock is from the database's (a worker says so at start)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import DateTime, Engine, String, func, literal, select, type_coerce
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from store.db import store_error

# SQLAlchemy keeps SQLite times as 'YYYY-MM-DD HH:MM:SS.ffffff'; SQLite's %f gives 'SS.SSS',
# so three zeros make the same width (times compare as text there).
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f"


def now_sql(engine: Engine) -> ColumnElement:
    """The database's current time, as a SQL expression (see the module docstring)."""
    return ago_sql(engine, 0.0)


def ago_sql(engine: Engine, seconds: float) -> ColumnElement:
    """The database's current time less ``seconds``, as a SQL expression."""
    if engine.dialect.name == "postgresql":
        t = func.now()
        return t if not seconds else t - literal(timedelta(seconds=seconds))
    shift = literal(f"{-seconds:+.6f} seconds", String)
    text = func.strftime(literal(_SQLITE_FORMAT, String), literal("now", String), shift,
                         type_=String)
    return type_coerce(text.op("||")(literal("000", String)), DateTime(timezone=True))


def db_now(engine: Engine) -> datetime:
    """The database's current time (UTC): PostgreSQL's ``now()``, asked of the server; on
    SQLite this host's clock, which is the one the file's other users read."""
    if engine.dialect.name != "postgresql":
        return datetime.now(UTC)
    try:
        with engine.connect() as conn:
            t = conn.execute(select(func.now())).scalar_one()
    except SQLAlchemyError as e:
        raise store_error(engine, e) from e
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def skew_s(engine: Engine) -> float:
    """How many seconds this process's clock is ahead of the database's (negative: behind),
    give or take half a round trip. Always 0 on SQLite (one host, one clock)."""
    if engine.dialect.name != "postgresql":
        return 0.0
    before = time.time()
    theirs = db_now(engine).timestamp()
    after = time.time()
    return (before + after) / 2 - theirs
