"""``polyfit sql`` is read-only at the database level: on PostgreSQL (the server of this machine)
every statement runs alone, in a READ ONLY transaction, without superuser powers; on SQLite the
file is opened read-only. Whatever it is given, the data, the settings and the server's files
stay as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from scheduler.cli import cli
from store import create_schema, make_engine
from store import jobs as J
from tests.conftest import pg_schema


def _job(i: int) -> dict:
    return {"id": f"job{i}", "variant": "numpy", "lr": 1e-6, "degree": 3, "seed": i,
            "epochs": 10, "optimizer": "sgd", "device": "cpu", "target": "sin",
            "dtype": "float64", "x_start": -3.0, "x_stop": 3.0, "x_points": 100}


@pytest.fixture(params=["postgres", "sqlite"])
def db(request, tmp_path):
    """A results database with one sweep of three queued jobs, as a URL."""
    def fill(url: str) -> None:
        eng = make_engine(url)
        create_schema(eng)
        J.save_sweep(eng, "s1", "demo", {}, [_job(i) for i in range(3)])
        eng.dispose()

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.sqlite'}"
        fill(url)
        yield url
        return
    with pg_schema() as url:
        fill(url)
        yield url


def sql(url: str, query: str):
    return CliRunner().invoke(cli, ["sql", query, "--format", "json", "--db", url],
                              catch_exceptions=False)


def snapshot(url: str) -> tuple:
    eng = create_engine(url)
    with eng.connect() as c:
        jobs = c.execute(text("SELECT id, status, lr, attempts FROM jobs ORDER BY id")).all()
        tables = c.execute(text(
            "SELECT name FROM sqlite_master ORDER BY name" if url.startswith("sqlite") else
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")).all()
        extra = () if url.startswith("sqlite") else c.execute(text(
            "SELECT (SELECT count(*) FROM pg_largeobject_metadata), "
            "current_setting('default_transaction_read_only')")).one()
    eng.dispose()
    return list(jobs), list(tables), tuple(extra)


WRITES = [
    "DELETE FROM jobs",
    "UPDATE jobs SET lr = 1",
    "INSERT INTO jobs (id) VALUES ('x')",
    "DROP TABLE jobs",
    "CREATE TABLE t (a int)",
    "CREATE TEMP TABLE t (a int)",
    "SELECT 1; DELETE FROM jobs",
    "COMMIT; DELETE FROM jobs",
    "END; DELETE FROM jobs",
    "BEGIN; DELETE FROM jobs; COMMIT",
]
POSTGRES_ONLY = [
    "SET transaction_read_only = off; DELETE FROM jobs",
    "SET ROLE postgres; DELETE FROM jobs",
    "SELECT set_config('transaction_read_only', 'off', true)",
    "WITH gone AS (DELETE FROM jobs RETURNING id) SELECT * FROM gone",
    "SELECT * FROM jobs FOR UPDATE",
    "SELECT lo_import('/etc/hostname')",
    "SELECT pg_read_file('/etc/hostname')",
    "ALTER SYSTEM SET work_mem = '1GB'",
    "SELECT set_config('role', 'postgres', false), pg_read_file('/etc/hostname')",
]
SQLITE_ONLY = [
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
    "VACUUM",
    "REINDEX",
    "SELECT load_extension('/nonexistent')",
]


def test_any_statement_that_would_write_is_refused_with_one_line(db, tmp_path):
    before = snapshot(db)
    attach = tmp_path / "attached.sqlite"
    statements = WRITES + (SQLITE_ONLY if db.startswith("sqlite") else POSTGRES_ONLY) + [
        f"ATTACH DATABASE '{attach}' AS x" if db.startswith("sqlite") else
        f"COPY (SELECT 1) TO PROGRAM 'touch {attach}'",
        f"VACUUM INTO '{attach}'" if db.startswith("sqlite") else
        f"COPY jobs TO '{attach}'",
    ]
    for statement in statements:
        r = sql(db, statement)
        assert r.exit_code == 2, (statement, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (statement, r.stderr)
        assert "Traceback" not in r.output
    assert snapshot(db) == before
    assert not attach.exists()


def test_a_setting_changed_by_one_query_does_not_reach_the_next():
    with pg_schema() as url:
        _settings_do_not_linger(url)


def _settings_do_not_linger(db: str) -> None:
    eng = make_engine(db)
    create_schema(eng)
    J.save_sweep(eng, "s1", "demo", {}, [_job(i) for i in range(3)])
    eng.dispose()
    # Allowed (a read-only transaction may change its own settings), and then forgotten:
    # every query gets a fresh connection in a fresh READ ONLY transaction.
    for setting in ("SELECT set_config('default_transaction_read_only', 'off', false)",
                    "SELECT set_config('role', 'postgres', false)"):
        assert sql(db, setting).exit_code == 0
        assert sql(db, "DELETE FROM jobs").exit_code == 2
    assert len(snapshot(db)[0]) == 3


def test_reads_still_work(db):
    r = sql(db, "SELECT status, count(*) AS n FROM jobs GROUP BY status")
    assert r.exit_code == 0, r.output
    assert [dict(row) for row in json.loads(r.stdout)] == [{"status": "queued", "n": 3}]
    assert sql(db, "SELECT '50%' AS p").exit_code == 0
    if db.startswith("sqlite"):
        assert "variant" in sql(db, "PRAGMA table_info(jobs)").stdout
        assert sql(db, "PRAGMA journal_mode").exit_code == 0
    else:
        assert sql(db, "EXPLAIN SELECT * FROM jobs").exit_code == 0


def test_the_door_refuses_to_create_a_database(tmp_path):
    r = sql(f"sqlite:///{tmp_path / 'none.sqlite'}", "SELECT 1")
    assert r.exit_code == 2 and not (tmp_path / "none.sqlite").exists()
    assert not any(Path(tmp_path).iterdir())
