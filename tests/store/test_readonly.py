"""``polyfit sql`` cannot write or run anything, on either backend, as any account.

PostgreSQL (the server of this machine, whose test account ``postgres`` is a superuser): the
statement runs over a connection that logs in as a role without powers (made by ``polyfit db
create-reader``), never as the superuser, so nothing it sets can widen what it may do; SQLite:
the file opened read-only with an authorizer. Every attack below is tried, and the data, the
server's settings and files, and the file system stay as they were. Statements are also stopped
at a time limit (the server stops executing them too) and results are capped."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from scheduler.cli import cli
from store import create_schema, make_engine
from store.recording import save_sweep
from tests.support.servers import PG_URL, pg_schema

# The reader roles are the server's, and `GRANT CONNECT ON DATABASE` changes one catalog row:
# two of these tests at once failed with "tuple concurrently updated". Under `pytest -n 2` a
# module's tests run in one process, one after another (`--dist loadfile`, pyproject.toml).


def _job(i: int) -> dict:
    return {"id": f"job{i}", "variant": "numpy", "lr": 1e-6, "degree": 3, "seed": i,
            "epochs": 10, "optimizer": "sgd", "device": "cpu", "target": "sin",
            "dtype": "float64", "x_start": -3.0, "x_stop": 3.0, "x_points": 100}


def _fill(url: str) -> None:
    eng = make_engine(url)
    create_schema(eng)
    save_sweep(eng, "s1", "demo", {}, [_job(i) for i in range(3)])
    eng.dispose()


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env=env or {})


class Db:
    """A results database and the environment ``polyfit sql`` runs with."""

    def __init__(self, url: str, env: dict | None = None) -> None:
        self.url, self.env = url, env or {}

    def sql(self, query: str, *more: str):
        return invoke("sql", query, "--format", "json", "--db", self.url, *more, env=self.env)


@pytest.fixture
def reader(request):
    """A fresh PostgreSQL schema with a sweep, and a reader role made by `polyfit db
    create-reader` for it (roles are global to the server: each test gets its own name)."""
    role = f"pf_reader_{uuid.uuid4().hex[:8]}"
    with pg_schema() as url:
        _fill(url)
        r = invoke("db", "create-reader", "--role", role, "--db", url)
        assert r.exit_code == 0, r.output
        sql_url = url.replace("postgres@", f"{role}@")
        assert sql_url in r.stdout
        try:
            yield Db(url, {"POLYFIT_SQL_URL": sql_url})
        finally:
            admin = create_engine(PG_URL)
            with admin.begin() as c:
                c.execute(text(f"DROP OWNED BY {role}"))
                c.execute(text(f"DROP ROLE {role}"))
            admin.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.sqlite'}"
        _fill(url)
        yield Db(url)
    else:
        yield request.getfixturevalue("reader")


def snapshot(url: str) -> tuple:
    eng = create_engine(url)
    with eng.connect() as c:
        jobs = c.execute(text("SELECT id, status, lr, attempts FROM jobs ORDER BY id")).all()
        tables = c.execute(text(
            "SELECT name FROM sqlite_master ORDER BY name" if url.startswith("sqlite") else
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            # Other tests' schemas (pf_...) come and go meanwhile (pytest -n 2): every schema
            # but theirs.
            "AND (table_schema = current_schema() OR table_schema NOT LIKE 'pf\\_%') "
            "ORDER BY 1")).all()
        extra = () if url.startswith("sqlite") else c.execute(text(
            "SELECT (SELECT count(*) FROM pg_largeobject_metadata), "
            "current_setting('default_transaction_read_only'), "
            "(SELECT count(*) FROM pg_roles)")).one()
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
    "SET ROLE postgres",
    "RESET ROLE",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config('transaction_read_only', 'off', true)",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT set_config('session_authorization', 'postgres', false)",
    "WITH gone AS (DELETE FROM jobs RETURNING id) SELECT * FROM gone",
    "SELECT * FROM jobs FOR UPDATE",
    "SELECT lo_import('/etc/hostname')",
    "SELECT pg_read_file('/etc/hostname')",
    "SELECT pg_ls_dir('.')",
    "ALTER SYSTEM SET work_mem = '1GB'",
    "SELECT set_config('role', 'postgres', false), pg_read_file('/etc/hostname')",
    # Undo the narrowing from inside the statement, then run a program on the server that
    # changes a row: the attack that worked against a session role.
    "SELECT set_config('role', 'none', false), (SELECT 1 FROM pg_read_file('/etc/hostname'))",
    "DO $$ BEGIN EXECUTE 'RESET ROLE'; EXECUTE 'DELETE FROM jobs'; END $$",
    "CREATE ROLE evil SUPERUSER LOGIN",
    "GRANT postgres TO CURRENT_USER",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'postgres'",
]
SQLITE_ONLY = [
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
    "VACUUM",
    "REINDEX",
    "SELECT load_extension('/nonexistent')",
]


def test_any_statement_that_would_write_or_escape_is_refused_with_one_line(db, tmp_path):
    before = snapshot(db.url)
    planted = tmp_path / "planted"
    sqlite = db.url.startswith("sqlite")
    statements = WRITES + (SQLITE_ONLY if sqlite else POSTGRES_ONLY) + [
        f"ATTACH DATABASE '{planted}' AS x" if sqlite else
        f"COPY (SELECT 1) TO PROGRAM 'touch {planted}'",
        f"VACUUM INTO '{planted}'" if sqlite else f"COPY jobs TO '{planted}'",
    ]
    if not sqlite:  # a program run by the server that writes a row, as the attacker had it
        statements.append(
            "COPY (SELECT 1) TO PROGRAM 'psql -U postgres -d test -c \"UPDATE "
            + db.url.split("search_path%3D")[1] + ".jobs SET lr = 99\"'")
    for statement in statements:
        r = db.sql(statement)
        # pg_terminate_backend may run (it finds nothing it is allowed to stop): a row of
        # falses, not an error; anything else must be refused.
        if "pg_terminate_backend" in statement and r.exit_code == 0:
            assert all(v is False for row in json.loads(r.stdout) for v in row.values())
            continue
        assert r.exit_code == 2, (statement, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (statement, r.stderr)
        assert "Traceback" not in r.output
    assert snapshot(db.url) == before
    assert not planted.exists()


def test_reads_still_work(db):
    r = db.sql("SELECT status, count(*) AS n FROM jobs GROUP BY status")
    assert r.exit_code == 0, r.output
    assert [dict(row) for row in json.loads(r.stdout)] == [{"status": "queued", "n": 3}]
    assert db.sql("SELECT '50%' AS p").exit_code == 0
    assert db.sql("SELECT * FROM best_jobs").exit_code == 0  # the views too
    if db.url.startswith("sqlite"):
        assert "variant" in db.sql("PRAGMA table_info(jobs)").stdout
        assert db.sql("PRAGMA journal_mode").exit_code == 0
    else:
        assert db.sql("EXPLAIN SELECT * FROM jobs").exit_code == 0
        assert db.sql("SHOW server_version").exit_code == 0
        assert db.sql("WITH a AS (SELECT 1 AS x) SELECT * FROM a;").exit_code == 0


def test_a_superuser_account_is_never_used_and_the_error_says_what_to_do():
    # No POLYFIT_SQL_URL and no polyfit_reader role for this schema's URL: the results URL's
    # account (a superuser) is refused, and so is a reader that cannot log in.
    with pg_schema() as url:
        _fill(url)
        r = Db(url).sql("SELECT 1 AS one")
    assert r.exit_code == 2
    assert "polyfit db create-reader" in r.stderr and "superuser" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("grant", [
    "GRANT INSERT ON {schema}.jobs TO {role}",
    # every table of polyfit's, the newer ones too (a search's rounds, stopped jobs' states)
    "GRANT UPDATE ON {schema}.searches TO {role}",
    "GRANT DELETE ON {schema}.trials TO {role}",
    "GRANT INSERT ON {schema}.job_state TO {role}",
    "GRANT pg_execute_server_program TO {role}",
    "GRANT pg_write_server_files TO {role}",
    "ALTER ROLE {role} CREATEROLE",
    "GRANT postgres TO {role}",
])
def test_a_reader_that_was_given_powers_is_refused(reader, grant):
    role = reader.env["POLYFIT_SQL_URL"].split("://")[1].split("@")[0]
    schema = reader.url.split("search_path%3D")[1]
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(grant.format(schema=schema, role=role)))
    admin.dispose()
    r = reader.sql("SELECT count(*) AS n FROM jobs")
    assert r.exit_code == 2 and "cannot be used" in r.stderr, r.output
    # Running the setup again takes the powers back (except role attributes it resets too).
    assert invoke("db", "create-reader", "--role", role, "--db", reader.url).exit_code == 0
    assert reader.sql("SELECT count(*) AS n FROM jobs").exit_code == 0


def test_create_reader_with_a_password_prints_a_line_that_works_as_printed():
    """The export line held `***` for the password; now the one typed (shell-quoted, its
    special characters escaped in the URL), and never the admin account's."""
    import shlex

    from sqlalchemy.engine import make_url

    role, password = f"pf_reader_{uuid.uuid4().hex[:8]}", "p@ss w:rd/$x'%"
    with pg_schema() as url:
        _fill(url)
        admin_url = url.replace("postgres@", "postgres:admin-s3cret@")
        try:
            r = invoke("db", "create-reader", "--role", role, "--password", password,
                       "--db", admin_url)
            assert r.exit_code == 0, r.output
            assert "***" not in r.stdout and "admin-s3cret" not in r.stdout
            (line,) = [x for x in r.stdout.splitlines() if "export POLYFIT_SQL_URL=" in x]
            words = shlex.split(line.split(": ", 1)[1])
            assert words[0] == "export" and len(words) == 2
            sql_url = words[1].split("=", 1)[1]
            assert make_url(sql_url).password == password
            assert make_url(sql_url).username == role
            out = Db(url, {"POLYFIT_SQL_URL": sql_url}).sql("SELECT current_user AS who")
            assert out.exit_code == 0, out.output
            assert json.loads(out.stdout) == [{"who": role}]
        finally:
            admin = create_engine(PG_URL)
            with admin.begin() as c:
                c.execute(text(f"DROP OWNED BY {role}"))
                c.execute(text(f"DROP ROLE {role}"))
            admin.dispose()


def test_a_long_statement_is_stopped_and_the_server_stops_it_too(db):
    slow = ("SELECT pg_sleep(30)" if not db.url.startswith("sqlite") else
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) "
            "SELECT max(n) FROM c")
    t0 = time.monotonic()
    r = db.sql(slow, "--timeout", "1")
    assert r.exit_code == 2 and "stopped after 1 s" in r.stderr, r.output
    assert time.monotonic() - t0 < 20
    if not db.url.startswith("sqlite"):
        eng = create_engine(PG_URL)
        with eng.connect() as c:
            running = c.execute(text("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE query LIKE 'SELECT pg_sleep(30)%'")).scalar()
        eng.dispose()
        assert running == 0


def test_results_are_capped_with_a_warning(db):
    many = ("SELECT n FROM generate_series(1, 5000) AS n" if not db.url.startswith("sqlite")
            else "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c LIMIT 5000) "
                 "SELECT n FROM c")
    r = db.sql(many, "--max-rows", "10")
    assert r.exit_code == 0, r.output
    assert [row["n"] for row in json.loads(r.stdout)] == list(range(1, 11))
    assert "only the first 10 rows" in r.stderr


def test_sqlite_strings_and_blobs_are_bounded(tmp_path):
    db = Db(f"sqlite:///{tmp_path / 'r.sqlite'}")
    _fill(db.url)
    r = db.sql("SELECT zeroblob(1000000000)")
    assert r.exit_code == 2 and "too big" in r.stderr.lower(), r.output
    # printf gives up with NULL where it would pass the limit: bounded either way.
    r = db.sql("SELECT length(printf('%.*c', 1000000000, 'x')) AS n")
    assert r.exit_code == 2 or json.loads(r.stdout) == [{"n": None}], r.output


def test_the_door_refuses_to_create_a_database(tmp_path):
    r = invoke("sql", "SELECT 1", "--db", f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert r.exit_code == 2 and not (tmp_path / "none.sqlite").exists()
    assert not any(Path(tmp_path).iterdir())


# -- the reader and polyfit's own locks -------------------------------------------------

# The advisory-lock keys polyfit's schema and views creation used to take (issue 22, item 8):
# any account may take an advisory lock, and the reader's held `sweep submit` up.
_OLD_SCHEMA_LOCKS = (0x706F6C7A, 0x706F6C79)


def test_the_reader_cannot_hold_up_schema_creation_or_a_submit(reader, tmp_path):
    """The reader takes every lock it can: the advisory keys, as its own session's, and the
    tables and views it may read in an open transaction; it cannot take polyfit's schema lock.
    A `sweep submit` (which makes sure of the schema, as every worker's start does) still
    completes, and so does a schema upgrade while the advisory locks are held."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.support.processes import polyfit, polyfit_env

    conninfo = make_url(reader.env["POLYFIT_SQL_URL"]).set(drivername="postgresql")
    conn = psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True)
    try:
        for key in _OLD_SCHEMA_LOCKS:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute("LOCK TABLE sweeps IN SHARE ROW EXCLUSIVE MODE")
        conn.execute("BEGIN")
        conn.execute("SELECT * FROM sweeps, jobs, best_jobs, sweep_summary, variant_summary "
                     "LIMIT 1")
        env = polyfit_env(POLYFIT_DB_URL=reader.url,
                          POLYFIT_BROKER_URL=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
        # A generous bound, not a timing: the submit waited as long as the lock was held.
        r = polyfit("sweep", "submit", "--variant", "numpy", "--seed", "0-2", "--epochs", "5",
                    env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        conn.execute("COMMIT")  # the tables free again; the advisory locks still held
        admin = create_engine(reader.url)
        with admin.begin() as c:
            c.execute(text("ALTER TABLE jobs DROP COLUMN ran_on"))
            c.execute(text("DROP VIEW best_jobs"))
        admin.dispose()
        r = subprocess.run([sys.executable, "-c", "import sys; from store import create_schema, "
                            "make_engine; create_schema(make_engine(sys.argv[1]))", reader.url],
                           env=env, capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        assert reader.sql("SELECT ran_on FROM jobs").exit_code == 0
        assert reader.sql("SELECT count(*) AS n FROM best_jobs").exit_code == 0
    finally:
        conn.close()


# -- memory: rows stream, a table is bounded -----------------------------------------------

# `polyfit sql` in a process of its own that reports its peak resident memory (MiB) last: the
# VmHWM of its own memory (ru_maxrss would count the parent's, which a fork starts from).
_MEASURED = ("import re, sys\n"
             "from scheduler.cli import main\n"
             "sys.argv = ['polyfit', *sys.argv[1:]]\n"
             "try:\n"
             "    main()\n"
             "finally:\n"
             "    status = open('/proc/self/status').read()\n"
             "    print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status)[1]) // 1024,"
             " file=sys.stderr)\n")
# A whole process of `polyfit sql "SELECT 1"` peaks near 80 MiB; these results are 400 MiB.
_FLAT_MIB = 250


def _measured_sql(db: Db, *args: str) -> tuple[int, int, str, int]:
    """Exit code, lines printed, stderr without the last line, and peak memory (MiB)."""
    from tests.support import ROOT
    from tests.support.processes import polyfit_env

    proc = subprocess.Popen([sys.executable, "-c", _MEASURED, "sql", *args, "--db", db.url],
                            env=polyfit_env(**db.env), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    lines = sum(chunk.count(b"\n") for chunk in iter(lambda: proc.stdout.read(1 << 20), b""))
    err = proc.stderr.read().decode()
    proc.wait(300)
    *rest, peak = err.strip().splitlines()
    return proc.returncode, lines, "\n".join(rest), int(peak)


def _rows_of(db: Db, n: int, width: int) -> str:
    if db.url.startswith("sqlite"):
        return (f"WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c LIMIT {n}) "
                f"SELECT n, printf('%.{width}c', 'x') AS pad FROM c")
    return f"SELECT n, repeat('x', {width}) AS pad FROM generate_series(1, {n}) AS n"


@pytest.mark.parametrize("fmt, lines_per_row", [("csv", 1), ("json", 4)])
def test_csv_and_json_stream_every_row_in_flat_memory(db, fmt, lines_per_row):
    """200,000 rows of 2 kB: 400 MiB that the process never holds (it held them all, 2.9 GB
    from one query in the issue; PostgreSQL's came in one FETCH of 100,001 rows)."""
    code, lines, err, peak = _measured_sql(db, _rows_of(db, 200_000, 2000), "--format", fmt,
                                           "--max-rows", "1000000000", "--timeout", "300")
    assert code == 0, err
    assert lines == 200_000 * lines_per_row + (1 if fmt == "csv" else 2)
    assert peak < _FLAT_MIB, f"{peak} MiB"


def test_a_table_holds_a_bounded_amount_and_says_so(db):
    code, lines, err, peak = _measured_sql(db, _rows_of(db, 20_000, 20_000), "--timeout", "300")
    assert code == 0, err
    assert "only the first" in err and "a table holds at most 8 MiB" in err
    assert 100 < lines < 1000
    assert peak < _FLAT_MIB, f"{peak} MiB"


def test_output_is_the_same_as_before_row_by_row(db):
    """The streamed formats write what ``report.render`` wrote, and the order, the empty
    result and its columns, and the row cap are kept."""
    from polyfit_results import report

    many = _rows_of(db, 5, 3).replace(
        "SELECT n,", "SELECT CAST(n AS DOUBLE PRECISION) * 1.5 AS half, n,")
    ordered = f"SELECT * FROM ({many}) AS t ORDER BY n DESC"
    for fmt in ("csv", "json", "table"):
        r = db.sql(ordered, "--format", fmt) if fmt != "json" else db.sql(ordered)
        rows = [{"half": n * 1.5, "n": n, "pad": "xxx"} for n in range(5, 0, -1)]
        assert r.exit_code == 0, r.output
        assert r.stdout == report.render(rows, ["half", "n", "pad"], fmt) + "\n"
    r = db.sql("SELECT 1 AS a, 'x' AS b WHERE 1 = 0")
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    r = invoke("sql", "SELECT 1 AS a, 'x' AS b WHERE 1 = 0", "--db", db.url, env=db.env)
    assert r.stdout.split() == ["a", "b", "--", "-", "(no", "rows)"]
    r = db.sql(ordered, "--max-rows", "2", "--format", "csv")
    assert r.stdout.splitlines()[1:] == ["7.5,5,xxx", "6.0,4,xxx"]
    assert "only the first 2 rows" in r.stderr


def test_postgresql_refuses_a_row_bigger_than_16_mib_before_it_is_sent(reader):
    r = reader.sql("SELECT 1 AS a, repeat('x', 20000000) AS b")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "a row of the result is 20,000,0" in r.stderr and "16 MiB" in r.stderr
    assert reader.sql("SELECT repeat('x', 1000000) AS b;").exit_code == 0


def test_json_holds_what_postgresql_returns_that_json_has_no_type_for(reader):
    r = reader.sql("SELECT 1.25 AS x, 'NaN'::numeric AS y, '\\x00ff'::bytea AS b, "
                   "interval '1 day' AS i")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == [{"x": 1.25, "y": None, "b": "00ff", "i": "1 day, 0:00:00"}]
