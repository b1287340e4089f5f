"""Exactly once, counted by the database itself: triggers record every claim of a job, every
write of a result, and every result undone, while real workers train a sweep over a real Redis
and `sweep resume`, `sweep submit` of the same spec and a second `sweep run` hammer it from
other processes; on PostgreSQL and on SQLite. Also: two `sweep run` of one spec started
together both succeed."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter

import pytest
from sqlalchemy import create_engine, text

from store import create_schema, make_engine
from tests.support import ROOT
from tests.support.database import rows
from tests.support.processes import polyfit_env
from tests.support.servers import pg_schema
from tests.support.sweeps import wait_done
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

ENDED = "('succeeded', 'diverged', 'failed')"

TRIGGERS = {
    "postgresql": [
        "CREATE TABLE writes (kind text, job_id text, worker text)",
        f"""CREATE FUNCTION count_writes() RETURNS trigger AS $$ BEGIN
            IF NEW.status = 'running' AND (OLD.status <> 'running'
                                           OR OLD.worker IS DISTINCT FROM NEW.worker) THEN
              INSERT INTO writes VALUES ('claim', NEW.id, NEW.worker); END IF;
            IF NEW.status IN {ENDED} AND OLD.status <> NEW.status THEN
              INSERT INTO writes VALUES ('result', NEW.id, NEW.worker); END IF;
            IF OLD.status IN ('succeeded', 'diverged') AND NEW.status <> OLD.status THEN
              INSERT INTO writes VALUES ('undone', NEW.id, NEW.worker); END IF;
            RETURN NEW; END $$ LANGUAGE plpgsql""",
        "CREATE TRIGGER count_writes AFTER UPDATE ON jobs FOR EACH ROW "
        "EXECUTE FUNCTION count_writes()",
    ],
    "sqlite": [
        "CREATE TABLE writes (kind text, job_id text, worker text)",
        "CREATE TRIGGER count_claims AFTER UPDATE ON jobs WHEN NEW.status = 'running' AND "
        "(OLD.status <> 'running' OR OLD.worker IS NOT NEW.worker) BEGIN "
        "INSERT INTO writes VALUES ('claim', NEW.id, NEW.worker); END",
        f"CREATE TRIGGER count_results AFTER UPDATE ON jobs WHEN NEW.status IN {ENDED} AND "
        "OLD.status <> NEW.status BEGIN "
        "INSERT INTO writes VALUES ('result', NEW.id, NEW.worker); END",
        "CREATE TRIGGER count_undone AFTER UPDATE ON jobs WHEN OLD.status IN "
        "('succeeded', 'diverged') AND NEW.status <> OLD.status BEGIN "
        "INSERT INTO writes VALUES ('undone', NEW.id, NEW.worker); END",
    ],
}


@pytest.fixture(params=["postgres", "sqlite"])
def results_db(request, tmp_path):
    """A results database (schema made) with the counting triggers installed."""
    def install(url: str) -> str:
        eng = make_engine(url)
        create_schema(eng)
        with eng.begin() as c:
            for statement in TRIGGERS[eng.dialect.name]:
                c.execute(text(statement))
        eng.dispose()
        return url

    if request.param == "sqlite":
        yield install(f"sqlite:///{tmp_path / 'results.sqlite'}")
    else:
        with pg_schema() as url:
            yield install(url)


def polyfit_cmd(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)


def writes(url: str) -> dict[str, Counter]:
    eng = create_engine(url)
    with eng.connect() as c:
        out: dict[str, Counter] = {"claim": Counter(), "result": Counter(), "undone": Counter()}
        for kind, job_id in c.execute(text("SELECT kind, job_id FROM writes")):
            out[kind][job_id] += 1
    eng.dispose()
    return out


SPEC = ["--variant", "numpy", "--seed", "0-299", "--lr", "1e-6,2e-6", "--epochs", "40",
        "--batch-size", "5", "--name", "hammered"]


def test_resumes_resubmits_and_a_second_run_never_record_a_job_twice(
        results_db, redis_url, start_worker):
    settings = {"POLYFIT_DB_URL": results_db, "POLYFIT_BROKER_URL": redis_url}
    env = polyfit_env(**settings)
    workers = [start_worker("--concurrency", "1", **settings) for _ in range(2)]
    sub = polyfit_cmd(env, "sweep", "submit", *SPEC)
    assert sub.returncode == 0, sub.stderr
    sweep_id = sub.stdout.split()[-1]
    wait_for(lambda: any(r["status"] == "succeeded" for r in rows(results_db, sweep_id)), 120,
             "the first results")

    outcomes: list[tuple[str, int, str]] = []

    def hammer(*args: str, times: int) -> None:
        for _ in range(times):
            r = polyfit_cmd(env, *args)
            outcomes.append((args[1], r.returncode, r.stderr[-300:]))

    threads = [threading.Thread(target=hammer, args=("sweep", "resume", sweep_id), kwargs={
                   "times": 4}),
               threading.Thread(target=hammer, args=("sweep", "submit", *SPEC),
                                kwargs={"times": 4}),
               threading.Thread(target=hammer, args=("sweep", "run", *SPEC, "--workers", "1"),
                                kwargs={"times": 1})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = wait_done(env, sweep_id, timeout=300)

    assert all(code == 0 for _, code, _ in outcomes), outcomes
    assert len(got) == 600 and {r["status"] for r in got} == {"succeeded"}
    counted = writes(results_db)
    assert set(counted["result"]) == {r["id"] for r in got}
    assert max(counted["result"].values()) == 1, counted["result"].most_common(3)
    assert max(counted["claim"].values()) == 1, counted["claim"].most_common(3)
    assert not counted["undone"], counted["undone"].most_common(3)
    assert {r["attempts"] for r in got} == {1}
    assert all(w.proc.poll() is None for w in workers)


def test_two_runs_of_one_spec_started_together_both_succeed(results_db):
    # --debug's traceback in the error: this failed once in about 25 runs, under a full
    # two-process suite, with "internal error: AttributeError: 'NoneType' object has no
    # attribute 'client'" (kombu's channel used after it was closed) and no trace of where.
    env = polyfit_env(POLYFIT_DB_URL=results_db, POLYFIT_DEBUG="1")
    spec = ["--variant", "numpy", "--seed", "0-7", "--epochs", "30", "--name", "twice",
            "--workers", "1"]
    procs = [subprocess.Popen([sys.executable, "-m", "scheduler", "sweep", "run", *spec],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert results[0][0].splitlines()[0] == results[1][0].splitlines()[0]  # the same sweep
    counted = writes(results_db)
    assert len(counted["result"]) == 8 and max(counted["result"].values()) == 1
