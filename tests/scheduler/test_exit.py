"""A command closes every connection it opened before it exits (``store.db.dispose_all``): the
entry point leaves the rest to the interpreter's exit without walking it (``gc.freeze``), so a
connection left open would leave a SQLite file's last writes in its write-ahead log."""

from __future__ import annotations

from sqlalchemy import text

from store.db import dispose_all, make_engine
from tests.support.processes import polyfit, polyfit_env


def test_a_command_that_changed_the_database_leaves_it_whole(tmp_path):
    db = tmp_path / "r.sqlite"
    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{db}")
    r = polyfit("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "5",
                "--name", "s", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = polyfit("cancel", "s", env=env, cwd=tmp_path)  # its engine is not the shared one
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("r.sqlite*")) == ["r.sqlite"]


def test_every_engine_made_is_closed_and_an_in_memory_one_kept(tmp_path):
    on_disk = make_engine(f"sqlite:///{tmp_path / 'a.sqlite'}")
    in_memory = make_engine("sqlite://")
    with on_disk.begin() as c:
        c.execute(text("CREATE TABLE t (x INTEGER)"))
    with in_memory.begin() as c:
        c.execute(text("CREATE TABLE t (x INTEGER)"))
    assert on_disk.pool.checkedin() == 1
    dispose_all()
    assert on_disk.pool.checkedin() == 0
    with in_memory.connect() as c:  # still there: disposing it would have dropped the table
        assert c.execute(text("SELECT count(*) FROM t")).scalar() == 0
