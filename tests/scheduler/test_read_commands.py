"""Read commands never create or change anything: a file that is not a polyfit database (another
program's SQLite file, a text file) is reported with exit 2 and left byte-identical, with no
side files and its journal mode as it was; and a results database on read-only storage (a
read-only bind mount, as root cannot be kept from writing a file by its mode) still answers."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scheduler.cli import cli
from store import create_schema, make_engine
from store.activity import status_counts
from store.claims import claim_jobs, save_results
from store.recording import save_sweep
from tests.support import ROOT
from tests.support.processes import polyfit_env

READ_COMMANDS = [["status"], ["results"], ["best"], ["sql", "SELECT 1 AS x"],
                 ["status", "--json"]]
CHANGE_COMMANDS = [["cancel", "s1"], ["sweep", "resume", "s1"]]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False,
                              env={"POLYFIT_DB_URL": None, "POLYFIT_BROKER_URL": None})


def _fingerprint(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as c:  # another program's database, rollback journal
        c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        c.execute("INSERT INTO notes (body) VALUES ('keep me')")
    sqlite3.connect(path).close()


def _foreign_wal_sqlite(path: Path) -> None:
    """Another program's database in WAL mode, closed (SQLite removed its -wal and -shm)."""
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    c.execute("INSERT INTO notes (body) VALUES ('keep me')")
    c.commit()
    c.close()


@pytest.mark.parametrize("make", ["foreign sqlite", "foreign WAL sqlite", "text file",
                                  "empty file", "sqlite with a jobs table of its own"])
@pytest.mark.parametrize("args", READ_COMMANDS + CHANGE_COMMANDS + [["plot", "s1", "-o", "x.png"]],
                         ids=" ".join)
def test_a_file_that_is_not_a_polyfit_database_is_reported_and_left_as_it_was(
        tmp_path, make, args):
    path = tmp_path / "other.db"
    if make == "foreign sqlite":
        _foreign_sqlite(path)
    elif make == "foreign WAL sqlite":
        _foreign_wal_sqlite(path)
    elif make == "text file":
        path.write_text("hello, I am not a database\n" * 100)
    elif make == "empty file":
        path.write_bytes(b"")
    else:
        with sqlite3.connect(path) as c:
            c.execute("CREATE TABLE jobs (id TEXT, payload BLOB)")
            c.execute("CREATE TABLE sweeps (id TEXT)")
    before = _fingerprint(tmp_path)
    r = invoke(*[a.replace("x.png", str(tmp_path / "x.png")) for a in args],
               "--db", f"sqlite:///{path}")
    assert r.exit_code == 2, r.output
    assert "not a polyfit results database" in r.stderr or "no results database" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert _fingerprint(tmp_path) == before  # byte-identical, and no -wal, -shm or plot
    if make.startswith("foreign"):
        assert str(path) in r.stderr  # the file is named, not "the file"
        # The journal mode as it was: the header's read and write versions, 2 for WAL.
        assert path.read_bytes()[18:20] == (b"\x02\x02" if "WAL" in make else b"\x01\x01")


def test_the_python_api_does_not_write_either(tmp_path):
    pytest.importorskip("pandas")
    from polyfit_results.api import jobs_frame
    from store.reader import NotResultsDatabase

    path = tmp_path / "other.db"
    _foreign_sqlite(path)
    before = _fingerprint(tmp_path)
    with pytest.raises(NotResultsDatabase):
        jobs_frame(db_url=f"sqlite:///{path}")
    assert _fingerprint(tmp_path) == before


def _results_db(folder: Path) -> str:
    url = f"sqlite:///{folder / 'results.sqlite'}"
    engine = make_engine(url)
    create_schema(engine)
    job = {"id": "j1", "variant": "numpy", "lr": 1e-6, "degree": 3, "seed": 0, "epochs": 10,
           "optimizer": "sgd", "device": "cpu", "target": "sin", "dtype": "float64",
           "x_start": -3.0, "x_stop": 3.0, "x_points": 100}
    save_sweep(engine, "s1", "demo", {}, [job])
    claim_jobs(engine, "s1", ["j1"], "w/1", 60)
    save_results(engine, "s1", [("j1", {
        "status": "succeeded", "final_loss": 1.0, "mse": 0.01, "optimum_mse": 0.005,
        "coefficients": [0.1, 0.2, 0.3, 0.4], "monomial": [0.1, 0.2, 0.3, 0.4],
        "diverged_at_epoch": None, "duration_s": 0.1, "loss_curve": [[9, 1.0]]})],
        "w/1", "cpu")
    engine.dispose()  # the last connection checkpoints and removes -wal and -shm
    return url


@pytest.mark.parametrize("stale", [False, True], ids=["no side files", "stale side files"])
@pytest.mark.parametrize("args", READ_COMMANDS + [["results", "--format", "json"],
                                                  ["sweeps"]], ids=" ".join)
def test_read_commands_leave_no_side_files_beside_an_idle_results_database(
        tmp_path, args, stale):
    url = _results_db(tmp_path)
    path = tmp_path / "results.sqlite"
    if stale:  # what a reader that could not clean up (mode=ro) left behind
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        c.execute("SELECT count(*) FROM jobs").fetchone()
        c.close()
        assert (tmp_path / "results.sqlite-wal").exists()
    r = invoke(*args, "--db", url)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


def test_a_reader_beside_a_writer_leaves_the_writers_side_files_alone(tmp_path):
    """A read command while a worker has the file open: the -wal and -shm are the writer's
    (SQLite removes them when the last connection closes), and its writes go on."""
    url = _results_db(tmp_path)
    writer = sqlite3.connect(tmp_path / "results.sqlite")
    writer.execute("UPDATE jobs SET attempts = attempts + 1")
    writer.commit()
    assert invoke("results", "--db", url).exit_code == 0
    assert (tmp_path / "results.sqlite-wal").exists()  # the writer is still open
    writer.execute("UPDATE jobs SET attempts = attempts + 1")
    writer.commit()
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    assert "j1" in invoke("results", "--db", url, "--format", "csv").stdout


def test_a_reader_never_drops_the_locks_of_its_own_process_writer(tmp_path):
    """POSIX locks belong to a process, and closing any descriptor of a file drops all of them:
    a reader that opened the database file itself (to read its header) dropped the locks of a
    connection the same process kept open (``polyfit.run()`` in a notebook, the dashboard, a
    test), so another process, closing last, removed the -wal and -shm under it; every later
    connection of the process then read the removed ones, and never saw a worker's results."""
    from store.reader import open_results

    url = _results_db(tmp_path)
    path = tmp_path / "results.sqlite"
    kept = make_engine(url)  # this process's writer, its pooled connection left open
    with kept.begin() as c:
        c.exec_driver_sql("UPDATE jobs SET attempts = attempts + 1")
    reader = open_results(url)
    assert status_counts(reader, "s1") == {"succeeded": 1}
    closing = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
               "c.execute('SELECT count(*) FROM jobs').fetchone(); c.close()")
    subprocess.run([sys.executable, "-c", closing, str(path)], check=True, timeout=60)
    # A worker: it writes a result and keeps its connection open.
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
         "c.execute(\"UPDATE jobs SET status = 'failed'\"); c.commit(); print('ok', flush=True); "
         "sys.stdin.read()", str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert worker.stdout.readline() == "ok\n"
        assert status_counts(reader, "s1") == {"failed": 1}
        assert status_counts(kept, "s1") == {"failed": 1}
    finally:
        worker.communicate("", timeout=60)
        reader.dispose()
        kept.dispose()


@pytest.mark.parametrize("args", [
    ["results", "-o", "{db}"], ["results", "--format", "csv", "-o", "{db}"],
    ["results", "--format", "json", "-o", "{link}"], ["results", "-o", "{db}-wal"],
    ["results", "-o", "{broker}"], ["plot", "-o", "{png}"]],
    ids=["table", "csv", "a link to it", "its -wal", "the embedded broker", "plot"])
def test_an_export_never_replaces_the_results_database(tmp_path, args):
    """``-o`` is written whole, then renamed over its target: aimed at the database (or its
    side files, or the embedded broker's file), it would have replaced every result."""
    url = _results_db(tmp_path)
    png = tmp_path / "results.png"  # a database whose name looks like a figure's
    shutil.copy(tmp_path / "results.sqlite", png)
    (tmp_path / "link.csv").symlink_to(tmp_path / "results.sqlite")
    (tmp_path / "results-broker.sqlite").write_bytes(b"")
    db = f"sqlite:///{png}" if "{png}" in args else url
    before = _fingerprint(tmp_path)
    given = [a.format(db=tmp_path / "results.sqlite", link=tmp_path / "link.csv", png=png,
                      broker=tmp_path / "results-broker.sqlite") for a in args]
    r = invoke(*given, "--db", db)
    assert r.exit_code == 2, r.output
    assert "the results database's own file" in r.output and len(r.output.splitlines()) == 1
    assert _fingerprint(tmp_path) == before
    assert invoke("results", "--db", url, "-o", str(tmp_path / "out.csv"), "--format",
                  "csv").exit_code == 0  # another file is written as before


def _can_bind_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro / / 2>/dev/null"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_bind_mount_read_only(),
                    reason="needs root and `unshare -m` to bind-mount a folder read-only")
@pytest.mark.parametrize("args", READ_COMMANDS + [["results", "--format", "json"]],
                         ids=" ".join)
def test_read_commands_answer_from_read_only_storage(tmp_path, args):
    url = _results_db(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]
    before = _fingerprint(tmp_path)
    command = " ".join(["'" + a + "'" for a in args])
    script = (f"mount --bind -o ro '{tmp_path}' '{tmp_path}' && "
              f"exec '{sys.executable}' -m scheduler {command} --db '{url}'")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, env=polyfit_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert _fingerprint(tmp_path) == before
