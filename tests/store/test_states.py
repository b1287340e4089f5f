"""Training states of stopped jobs (``store.states``): a stopped job goes back to the queue
with its state and its attempt given back; its result, once stored, deletes the state."""

from __future__ import annotations

from sqlalchemy import inspect, text

from store import create_schema
from store import states as S
from store.claims import claim_jobs, save_results
from store.reads import list_jobs
from store.recording import save_sweep
from store.requeue import cancel_sweep
from tests.support.database import fit_result, ids_of, job_row


def test_a_stopped_job_is_queued_again_with_its_state_and_no_attempt_spent(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(3)])
    claim_jobs(engine, "s1", ["job0000", "job0001", "job0002"], "w1", 60)
    back = S.suspend_jobs(engine, "s1", [("job0000", 300, b"state-0"),
                                         ("job0001", 0, None)], "w1")
    assert back == 2
    jobs = {j.id: j for j in list_jobs(engine, "s1")}
    assert [(jobs[i].status, jobs[i].attempts, jobs[i].worker) for i in ("job0000", "job0001")
            ] == [("queued", 0, None)] * 2
    assert jobs["job0000"].epochs_done == 300 and jobs["job0001"].epochs_done is None
    assert jobs["job0002"].status == "running" and jobs["job0002"].attempts == 1
    assert S.load_states(engine, "s1", ["job0000", "job0001"]) == {"job0000": b"state-0"}
    # Stopped again later: the newer state replaces the older one.
    claim_jobs(engine, "s1", ["job0000"], "w2", 60)
    S.suspend_jobs(engine, "s1", [("job0000", 600, b"state-1")], "w2")
    assert S.load_states(engine, "s1", ["job0000"]) == {"job0000": b"state-1"}


def test_only_the_holder_can_hand_a_job_back(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(0)])
    claim_jobs(engine, "s1", ["job0000"], "w1", 60)
    claim_jobs(engine, "s1", ["job0000"], "w2", -1)  # w1 looked dead; w2 took over
    assert S.suspend_jobs(engine, "s1", [("job0000", 100, b"old")], "w1") == 0
    assert S.load_states(engine, "s1", ["job0000"]) == {}
    assert list_jobs(engine, "s1")[0].worker == "w2"


def test_a_stored_result_deletes_the_state(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(0)])
    claim_jobs(engine, "s1", ["job0000"], "w1", 60)
    S.suspend_jobs(engine, "s1", [("job0000", 100, b"state")], "w1")
    assert ids_of(claim_jobs(engine, "s1", ["job0000"], "w1", 60)) == ["job0000"]
    save_results(engine, "s1", [("job0000", fit_result())], "w1", "cpu")
    assert S.load_states(engine, "s1", ["job0000"]) == {}
    assert list_jobs(engine, "s1")[0].attempts == 1


def test_a_database_made_before_states_gets_the_table(engine):
    with engine.begin() as c:
        c.execute(text("DROP TABLE job_state"))
    create_schema(engine)  # what every command and worker does on start
    assert {"sweep_id", "job_id", "epoch", "state"} <= {
        c["name"] for c in inspect(engine).get_columns("job_state")}


def test_a_renamed_sweep_keeps_its_states_and_a_deleted_one_leaves_none(engine):
    """A cancelled sweep's stopped jobs keep their states for a resume: they go with a rename
    (under the new id) and with a delete."""
    from store import manage as M

    save_sweep(engine, "s1", "demo", {}, [job_row(0), job_row(1)])
    claim_jobs(engine, "s1", ["job0000", "job0001"], "w1", 60)
    S.suspend_jobs(engine, "s1", [("job0000", 100, b"a"), ("job0001", 100, b"b")], "w1")
    cancel_sweep(engine, "s1")
    M.rename_sweep(engine, "s1", "s2", "renamed")
    assert S.load_states(engine, "s2", ["job0000", "job0001"]) == {"job0000": b"a",
                                                                   "job0001": b"b"}
    M.delete_sweep(engine, "s2")
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM job_state")).scalar_one() == 0
