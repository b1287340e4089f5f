"""Clock skew: liveness is judged on the database's clock. Real workers whose wall clocks are
off by minutes (``tests/support/clockshift.py``, preloaded into every process of the worker) train
against the real PostgreSQL server and a real Redis, with a stale timeout of seconds: a worker
that reaches the database and beats keeps its jobs, whatever its clock says (a trigger records
every change of a job's status or worker), and says that its clock is off. Also: ``polyfit
status`` on a host whose clock is ahead does not report a sweep it just submitted as waiting
for a worker for minutes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import pytest
from sqlalchemy import text

from store import create_schema, make_engine
from store.requeue import reap_stale
from tests.support import ROOT
from tests.support.clockshift import ClockShiftError, build, offset_of, shifted
from tests.support.database import query, rows
from tests.support.processes import polyfit, polyfit_env
from tests.support.servers import pg_schema, wait_port
from tests.support.sweeps import numpy_epochs_per_second, submit, wait_done
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# Heartbeat every 2.5 s, reaper every 5 s: a clock 90 or 120 s off is many stale windows.
STALE_S = 10

MOVES = [
    "CREATE TABLE moves (n bigserial PRIMARY KEY, job_id text, old text, new text, worker text)",
    """CREATE FUNCTION note_move() RETURNS trigger AS $$ BEGIN
        INSERT INTO moves (job_id, old, new, worker)
        VALUES (NEW.id, OLD.status, NEW.status, NEW.worker);
        RETURN NEW; END $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER note_move AFTER UPDATE ON jobs FOR EACH ROW WHEN "
    "(OLD.status IS DISTINCT FROM NEW.status OR OLD.worker IS DISTINCT FROM NEW.worker) "
    "EXECUTE FUNCTION note_move()",
]


@pytest.fixture(scope="module")
def clock_lib(tmp_path_factory):
    try:
        return build(tmp_path_factory.mktemp("clockshift"))
    except ClockShiftError as e:
        pytest.fail(str(e))


@pytest.fixture
def pg_url():
    """A fresh schema with its tables, and a trigger that notes every move of a job."""
    with pg_schema() as url:
        eng = make_engine(url)
        create_schema(eng)
        with eng.begin() as c:
            for statement in MOVES:
                c.execute(text(statement))
        eng.dispose()
        yield url


def worker_name(w) -> str:
    return f"polyfit-cpu-{w.proc.pid}-"


def said_skew(w, direction: str) -> float | None:
    """The offset a worker said its clock has from the database's, in seconds."""
    found = re.findall(rf"clock is (\d+) s {direction} the database's", w.output())
    return float(found[0]) if found else None


def test_workers_whose_clocks_are_minutes_off_keep_their_live_jobs(
        pg_url, redis_url, start_worker, clock_lib):
    settings = {"POLYFIT_DB_URL": pg_url, "POLYFIT_BROKER_URL": redis_url,
                "POLYFIT_STALE_AFTER_S": str(STALE_S), "POLYFIT_MAX_JOB_WORK": str(10**11)}
    behind, ahead = shifted(clock_lib, -120), shifted(clock_lib, 90)
    # The skew is real: a process started like the workers reads a clock minutes off.
    assert -125 < offset_of(polyfit_env(**behind)) < -115
    assert 85 < offset_of(polyfit_env(**ahead)) < 95
    late = start_worker("--concurrency", "1", **settings, **behind)
    early = start_worker("--concurrency", "1", **settings, **ahead)
    env = polyfit_env(**settings)
    # Two jobs of about a minute each alone on a core: several stale windows.
    sub = polyfit("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs",
                  str(60 * numpy_epochs_per_second()), "--batch-size", "1", env=env)
    assert sub.returncode == 0, sub.stderr
    sweep_id = sub.stdout.split()[-1]

    def both_running():
        got = [r for r in rows(pg_url, sweep_id) if r["status"] == "running"]
        return got if len(got) == 2 else None

    # Each worker takes one job (one batch at a time, prefetch 1): the one whose clock is
    # behind trains, and the one ahead (by whose clock those heartbeats are 3.5 min old) reaps.
    running = wait_for(both_running, 180, "each worker to train one job")
    assert sorted(r["worker"][:len(worker_name(late))] for r in running) == sorted(
        [worker_name(late), worker_name(early)])
    # The stored heartbeats are fresh by the database's clock, and a reaper on this (right)
    # clock, in this process, finds nothing to take.
    ages = query(pg_url, "SELECT EXTRACT(EPOCH FROM now() - heartbeat_at) AS age FROM jobs "
                         "WHERE sweep_id = :s AND status = 'running'", s=sweep_id)
    assert all(r["age"] < STALE_S for r in ages), ages
    eng = make_engine(pg_url)
    try:
        assert reap_stale(eng, STALE_S, 3) == []
    finally:
        eng.dispose()

    got = wait_done(env, sweep_id, timeout=600)
    assert [r["status"] for r in got] == ["succeeded", "succeeded"], got
    assert [r["attempts"] for r in got] == [1, 1], got
    # Never taken from the worker that trained it: queued -> running -> succeeded, one worker.
    moves = query(pg_url, "SELECT job_id, old, new, worker FROM moves ORDER BY n")
    for job in got:
        mine = [(m["old"], m["new"]) for m in moves if m["job_id"] == job["id"]]
        assert mine == [("queued", "running"), ("running", "succeeded")], moves
        assert {m["worker"] for m in moves if m["job_id"] == job["id"]} == {job["worker"]}
    # The two jobs trained side by side for longer than a stale window and a reaper round:
    # the old reaper (local clocks) would have had its chance.
    times = query(pg_url, "SELECT EXTRACT(EPOCH FROM MIN(finished_at) - MAX(started_at)) AS "
                          "overlap FROM jobs WHERE sweep_id = :s", s=sweep_id)
    assert times[0]["overlap"] > STALE_S + STALE_S / 2, times
    # Each skewed worker says how far its clock is off the database's.
    assert 110 <= (said_skew(late, "behind") or 0) <= 130, late.output()[-3000:]
    assert 80 <= (said_skew(early, "ahead of") or 0) <= 100, early.output()[-3000:]


def test_readers_on_a_host_whose_clock_is_ahead_count_from_the_databases_clock(
        pg_url, clock_lib):
    env = polyfit_env(POLYFIT_DB_URL=pg_url)
    sweep_id = submit(env, "--variant", "numpy", "--seed", "0-1", "--epochs", "10")
    ahead = {**env, **shifted(clock_lib, 300)}
    # Just submitted, nothing serves it: by the database's clock it has waited a few seconds,
    # not the 5 minutes that a reader whose clock is 5 minutes ahead would count.
    out = subprocess.run([sys.executable, "-m", "scheduler", "status", sweep_id, "--json"],
                         env=ahead, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    progress = json.loads(out.stdout)
    assert progress["counts"] == {"queued": 2}
    assert progress["idle_s"] is None, progress
    assert "no worker has taken" not in out.stderr, out.stderr
    # The dashboard's "created ... ago" too.
    page = dashboard_page(ahead, f"/sweeps/{sweep_id}")
    created = re.search(r"created [^(]*\((\d+)s ago\)", page)
    assert created and int(created.group(1)) < 60, page[:2000]


def dashboard_page(env: dict, path: str) -> str:
    """``path`` as a real ``polyfit dashboard`` process started with ``env`` serves it."""
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", "dashboard", "--port", "0"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        port = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        assert port, f"the dashboard did not start: {line!r}"
        wait_port(int(port.group(1)))
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}{path}",
                                    timeout=30) as r:
            return r.read().decode()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
