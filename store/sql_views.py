"""SQL views over the results tables, so that plain ``sqlite3``/``psql`` users get the common
questions answered too: ``best_jobs`` (the lowest-mse job per sweep, variant and degree, with its
gap to the least-squares optimum), ``sweep_summary`` (jobs per status per sweep) and
``variant_summary`` (the same per variant, with the best and mean mse). One SQL text serves
SQLite and PostgreSQL (window functions and ``CASE`` work on both). ``create_views`` is called by
``create_schema`` in every process, so it only writes when a view is missing or its definition
changed: on SQLite it compares the text kept in ``sqlite_master``, on PostgreSQL a hash kept as
the view's comment; several processes starting at once are serialized by the write lock (SQLite)
or a lock on the ``sweeps`` table that accounts which may only read cannot take (PostgreSQL)."""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, Engine, inspect, text

from store.records import ENDED, OK, STATUSES

_ENDED_WELL = "(" + ", ".join(f"'{status}'" for status in OK) + ")"


def _count(status: str) -> str:
    return f"COALESCE(SUM(CASE WHEN j.status = '{status}' THEN 1 ELSE 0 END), 0) AS {status}"


# name -> SELECT. Column names are part of what users query: add, do not rename.
VIEWS: dict[str, str] = {
    "best_jobs": (
        "SELECT sweep_id, variant, degree, id AS job_id, lr, seed, epochs, optimizer, device, "
        "status, final_loss, mse, optimum_mse, mse - optimum_mse AS gap "
        "FROM (SELECT sweep_id, variant, degree, id, lr, seed, epochs, optimizer, device, "
        "status, final_loss, mse, optimum_mse, ROW_NUMBER() OVER ("
        "PARTITION BY sweep_id, variant, degree ORDER BY mse, id) AS pick "
        f"FROM jobs WHERE mse IS NOT NULL AND status IN {_ENDED_WELL}) ranked "
        "WHERE pick = 1"
    ),
    "sweep_summary": (
        "SELECT s.id AS sweep_id, s.name, s.created_at, COUNT(j.id) AS jobs, "
        + ", ".join(_count(st) for st in STATUSES)
        + ", MIN(CASE WHEN j.status IN " + _ENDED_WELL + " THEN j.mse END) AS best_mse, "
        "MIN(j.started_at) AS started_at, MAX(j.finished_at) AS finished_at, "
        "SUM(j.duration_s) AS fit_seconds "
        "FROM sweeps s LEFT JOIN jobs j ON j.sweep_id = s.id "
        "GROUP BY s.id, s.name, s.created_at"
    ),
    "variant_summary": (
        "SELECT j.sweep_id, j.variant, COUNT(*) AS jobs, "
        + ", ".join(_count(st) for st in ENDED)
        + ", MIN(CASE WHEN j.status IN " + _ENDED_WELL + " THEN j.mse END) AS best_mse, "
        "AVG(CASE WHEN j.status = 'succeeded' THEN j.mse END) AS mean_mse, "
        "MIN(j.optimum_mse) AS optimum_mse, AVG(j.duration_s) AS mean_duration_s "
        "FROM jobs j GROUP BY j.sweep_id, j.variant"
    ),
}

def _tag(body: str) -> str:
    return "polyfit view " + hashlib.sha256(body.encode()).hexdigest()[:16]


def _sqlite_sql(name: str, body: str) -> str:
    return f"CREATE VIEW {name} AS {body}"


def _sqlite_stale(conn: Connection) -> list[str]:
    stored = dict(conn.execute(
        text("SELECT name, sql FROM sqlite_master WHERE type = 'view'")).all())
    return [name for name, body in VIEWS.items() if stored.get(name) != _sqlite_sql(name, body)]


def _pg_stale(conn: Connection) -> list[str]:
    stale = []
    for name, body in VIEWS.items():
        comment = conn.execute(
            text("SELECT obj_description(to_regclass(:name), 'pg_class')"), {"name": name}
        ).scalar()
        if comment != _tag(body):
            stale.append(name)
    return stale


def create_views(engine: Engine) -> None:
    """Create the views that are missing and replace those whose definition changed."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        # One IMMEDIATE transaction (see store.db): the check and the change cannot interleave
        # with another process doing the same.
        with engine.begin() as conn:
            for name in _sqlite_stale(conn):
                conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
                conn.exec_driver_sql(_sqlite_sql(name, VIEWS[name]))
        return
    if dialect == "postgresql":
        with engine.connect() as conn:
            stale = _pg_stale(conn)
            conn.rollback()
        if not stale:
            return
        with engine.begin() as conn:
            # Not an advisory lock: any account may take one and hold it (polyfit sql's did),
            # and this one a read-only account can neither take nor hold (see create_schema).
            conn.exec_driver_sql("LOCK TABLE sweeps IN SHARE ROW EXCLUSIVE MODE")
            for name in _pg_stale(conn):
                # DROP + CREATE, not CREATE OR REPLACE: a changed definition may drop or
                # reorder columns, which CREATE OR REPLACE VIEW refuses.
                conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
                conn.exec_driver_sql(f"CREATE VIEW {name} AS {VIEWS[name]}")
                conn.exec_driver_sql(f"COMMENT ON VIEW {name} IS '{_tag(VIEWS[name])}'")
        return
    # Other databases: plain CREATE VIEW where missing, left as they are otherwise.
    with engine.begin() as conn:
        existing = set(inspect(conn).get_view_names())
        for name, body in VIEWS.items():
            if name not in existing:
                conn.exec_driver_sql(f"CREATE VIEW {name} AS {body}")
