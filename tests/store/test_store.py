"""The store against a real SQLite file and the real PostgreSQL server of this machine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from store import create_schema, make_engine, redact_url
from store.activity import status_counts
from store.claims import claim_jobs, save_results
from store.db import StoreError
from store.reads import list_jobs, loss_curves
from store.recording import save_sweep
from store.requeue import cancel_sweep, release_worker, requeue_missing
from store.rows import now
from store.sweeps import find_sweep, list_sweeps
from tests.support.database import fit_result, ids_of, job_row


def test_save_sweep_is_idempotent_and_keeps_existing_jobs(engine):
    assert save_sweep(engine, "s1", "demo", {"a": 1}, [job_row(i) for i in range(3)]).new == 3
    claim_jobs(engine, "s1", ["job0000"], "w1", 60)
    assert save_sweep(engine, "s1", "demo", {"a": 1}, [job_row(i) for i in range(4)]).new == 1
    counts = status_counts(engine, "s1")
    assert counts == {"queued": 3, "running": 1}


def test_claim_gives_a_job_to_one_worker_only(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(4)])
    first = ids_of(claim_jobs(engine, "s1", ["job0000", "job0001"], "w1", 60))
    second = ids_of(claim_jobs(engine, "s1", ["job0001", "job0002"], "w2", 60))
    assert sorted(first) == ["job0000", "job0001"]
    assert second == ["job0002"]


def test_a_stale_running_job_can_be_claimed_again(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(0)])
    assert ids_of(claim_jobs(engine, "s1", ["job0000"], "dead", 60)) == ["job0000"]
    # Heartbeat from the past: the worker died.
    from sqlalchemy import update

    from store.records import JobRecord
    with engine.begin() as c:
        c.execute(update(JobRecord).values(heartbeat_at=now() - timedelta(seconds=120)))
    assert ids_of(claim_jobs(engine, "s1", ["job0000"], "alive", 60)) == ["job0000"]
    job = list_jobs(engine, "s1")[0]
    assert job.worker == "alive" and job.attempts == 2


def test_a_result_is_written_once_and_a_redelivery_is_a_no_op(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(0)])
    claim_jobs(engine, "s1", ["job0000"], "w1", 60)
    assert save_results(engine, "s1", [("job0000", fit_result())], "w1", "cpu") == 1
    assert save_results(engine, "s1", [("job0000", fit_result(mse=9.0))], "w1", "cpu") == 0
    assert ids_of(claim_jobs(engine, "s1", ["job0000"], "w2", 0)) == []
    job = list_jobs(engine, "s1")[0]
    assert job.status == "succeeded" and job.mse == 0.01 and job.coefficients == [0.1, 0.2]
    assert loss_curves(engine, "s1", ["job0000"]) == {"job0000": [(99, 3.0), (199, 2.0)]}


def test_a_late_writer_that_lost_its_claim_writes_nothing(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(0)])
    claim_jobs(engine, "s1", ["job0000"], "w1", 60)
    claim_jobs(engine, "s1", ["job0000"], "w2", -1)  # w1 looked dead; w2 took over
    assert save_results(engine, "s1", [("job0000", fit_result())], "w1", "cpu") == 0
    assert save_results(engine, "s1", [("job0000", fit_result())], "w2", "cpu") == 1


def test_failed_outcome_keeps_its_error(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(0)])
    claim_jobs(engine, "s1", ["job0000"], "w1", 60)
    save_results(engine, "s1", [("job0000", {"status": "failed", "error": "Boom: x"})],
                   "w1", "cpu")
    job = list_jobs(engine, "s1")[0]
    assert job.status == "failed" and job.error == "Boom: x"


def test_requeue_takes_exactly_the_jobs_that_have_not_ended_well(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(5)])
    claim_jobs(engine, "s1", ["job0000", "job0001", "job0002"], "w1", 60)
    save_results(engine, "s1", [("job0000", fit_result()),
                                  ("job0001", {"status": "failed", "error": "x"})], "w1", "cpu")
    # job0002 is running on a live worker; job0003/4 are queued.
    ids = sorted(j.id for j in requeue_missing(engine, "s1", 60))
    assert ids == ["job0001", "job0003", "job0004"]
    assert status_counts(engine, "s1") == {"succeeded": 1, "queued": 3, "running": 1}
    # The running one counts as missing once its worker's heartbeat is stale.
    ids = sorted(j.id for j in requeue_missing(engine, "s1", -1))
    assert "job0002" in ids


def test_cancel_touches_only_jobs_that_have_not_started(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(3)])
    claim_jobs(engine, "s1", ["job0000"], "w1", 60)
    assert cancel_sweep(engine, "s1") == 2
    assert status_counts(engine, "s1") == {"running": 1, "cancelled": 2}


def test_find_sweep_by_id_name_or_latest(engine):
    save_sweep(engine, "aaa", "first", {}, [job_row(0)])
    save_sweep(engine, "bbb", "second", {}, [job_row(0)])
    assert find_sweep(engine, "aaa").name == "first"
    assert find_sweep(engine, "second").id == "bbb"
    assert find_sweep(engine, None).id == "bbb"
    assert find_sweep(engine, "nope") is None


def test_list_jobs_filters_and_sorts(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(0, lr=1e-3), job_row(1, lr=1e-6),
                                            job_row(2, variant="module", degree=5)])
    claim_jobs(engine, "s1", ["job0000", "job0001"], "w", 60)
    save_results(engine, "s1", [("job0000", fit_result(mse=0.5)),
                                  ("job0001", fit_result(mse=0.1))], "w", "cpu")
    assert [j.id for j in list_jobs(engine, "s1", sort="mse")] == [
        "job0001", "job0000", "job0002"]  # missing values last
    assert [j.id for j in list_jobs(engine, "s1", variants=["module"])] == ["job0002"]
    assert [j.id for j in list_jobs(engine, "s1", lr_min=1e-4)] == ["job0000"]
    assert [j.id for j in list_jobs(engine, "s1", degrees=[5])] == ["job0002"]
    assert len(list_jobs(engine, "s1", limit=1)) == 1
    with pytest.raises(StoreError):
        list_jobs(engine, "s1", sort="nope")


def test_release_worker_requeues_only_the_jobs_of_that_workers_processes(engine):
    # Two `sweep run` in two containers: both local workers have pid 4, on different hosts
    # (and a third whose host name starts like the first's); each identity carries a token.
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(4)])
    claim_jobs(engine, "s1", ["job0000"], "polyfit-cpu-4-a1b2c3d4@box/17", 60)
    claim_jobs(engine, "s1", ["job0001"], "polyfit-cpu-4-e5f6a7b8@other/17", 60)
    claim_jobs(engine, "s1", ["job0002"], "polyfit-cpu-4-a1b2c3d4@box2/17", 60)
    claim_jobs(engine, "s1", ["job0003"], "polyfit-cpu-4-a1b2c3d4@box/18", 60)
    assert release_worker(engine, "polyfit-cpu-4-a1b2c3d4@box") == 2
    running = {j.id: j.status for j in list_jobs(engine, "s1")}
    assert running == {"job0000": "queued", "job0001": "running", "job0002": "running",
                       "job0003": "queued"}
    # A name with LIKE wildcards in it matches literally.
    assert release_worker(engine, "polyfit-cpu-4-%@%") == 0


def test_redact_url_hides_passwords():
    assert redact_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert redact_url("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("sqlite:///x.sqlite") == "sqlite:///x.sqlite"


def test_unreachable_database_is_a_store_error(tmp_path):
    eng = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError):
        status_counts(eng, "s1")


def test_the_reapers_queries_have_an_index_also_in_databases_made_before_it(engine):
    from sqlalchemy import inspect

    # A database from before the index: drop it, as an older polyfit would not have made it.
    with engine.begin() as c:
        c.execute(text("DROP INDEX ix_jobs_status_heartbeat"))
    names = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert "ix_jobs_status_heartbeat" not in names
    create_schema(engine)  # what every command and worker does on start
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("jobs")}
    assert indexes["ix_jobs_status_heartbeat"] == ["status", "heartbeat_at"]
    if engine.dialect.name == "sqlite":
        with engine.connect() as c:
            plan = " ".join(str(r[-1]) for r in c.execute(text(
                "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE status = 'running' "
                "AND heartbeat_at < '2026-01-01'")))
        assert "ix_jobs_status_heartbeat" in plan, plan


def test_list_sweeps_counts_each_status_and_takes_the_best_ended_mse(engine):
    save_sweep(engine, "s1", "mixed", {}, [job_row(i) for i in range(5)])
    save_sweep(engine, "s2", "empty", {}, [])
    claim_jobs(engine, "s1", ["job0000", "job0001", "job0002", "job0003"], "w1", 60)
    save_results(engine, "s1", [("job0000", fit_result(mse=0.5)),
                                  ("job0001", fit_result("diverged", mse=0.2)),
                                  ("job0002", {"status": "failed", "error": "E: x"})],
                   "w1", "cpu")
    by_id = {s.id: s for s in list_sweeps(engine)}
    # 5 jobs: succeeded, diverged, failed, one running, one queued.
    assert (by_id["s1"].jobs, by_id["s1"].ended, by_id["s1"].failed) == (5, 3, 1)
    assert by_id["s1"].best_mse == 0.2  # the diverged job's last finite model is the best
    assert (by_id["s2"].jobs, by_id["s2"].ended, by_id["s2"].failed,
            by_id["s2"].best_mse) == (0, 0, 0, None)
