"""Successive halving's rungs in the store (``store.halving``): a job at its rung's end is held
``paused`` with its result and state; a complete rung is ranked once (the best 1/eta continue,
ties by job id; the others end ``pruned`` with their result), whoever races to rank it."""

from __future__ import annotations

from store import halving as H
from store import states as S
from store.activity import all_ended, status_counts
from store.claims import claim_jobs, save_results
from store.reads import list_jobs
from store.recording import save_sweep
from store.records import ENDED
from store.requeue import cancel_sweep
from tests.support.database import fit_result, job_row, race

IDS = [f"job{i:04d}" for i in range(8)]


def _at_rung_end(engine, mses, rung_of=None):
    """Eight jobs trained to their rung's end (job i with mse ``mses[i]``), held paused."""
    save_sweep(engine, "s1", "demo", {"halving": {"eta": 4, "min_epochs": 5}},
                 [job_row(i) for i in range(len(mses))])
    claim_jobs(engine, "s1", IDS[:len(mses)], "w1", 60)
    save_results(engine, "s1", [(IDS[i], fit_result(mse=m)) for i, m in enumerate(mses)],
                   "w1", "cpu", held={IDS[i]: (5, 0, None) if i % 2 else (5, 4, b"st")
                                      for i in range(len(mses))})


def test_a_job_at_its_rungs_end_is_paused_with_its_result_state_and_attempt_back(engine):
    _at_rung_end(engine, [0.5, 0.1])
    jobs = {j.id: j for j in list_jobs(engine, "s1")}
    assert [(j.status, j.epochs_done, j.attempts, j.mse, j.finished_at)
            for _, j in sorted(jobs.items())
            ] == [("paused", 5, 0, 0.5, None), ("paused", 5, 0, 0.1, None)]
    assert S.load_states(engine, "s1", IDS[:2]) == {"job0000": b"st"}
    assert H.rungs_of(engine, "s1", IDS[:2]) == {"job0000": 0, "job0001": 0}
    assert "paused" not in ENDED and not all_ended(status_counts(engine, "s1"))


def test_a_complete_rung_keeps_its_best_quarter_and_prunes_the_rest(engine):
    # Ties at 0.2 are broken by job id; a job with no finite mse ranks last.
    _at_rung_end(engine, [0.3, 0.2, 0.9, 0.2, None, 0.05, 0.7, 0.8])
    assert H.rung_ready(engine, "s1") == 0
    up = H.advance_rung(engine, "s1", 0, 4)
    assert sorted(j.id for j in up) == ["job0001", "job0005"]
    jobs = {j.id: j for j in list_jobs(engine, "s1")}
    assert {i for i, j in jobs.items() if j.status == "queued"} == {"job0001", "job0005"}
    pruned = {i: j for i, j in jobs.items() if j.status == "pruned"}
    assert len(pruned) == 6 and all(j.finished_at and j.epochs_done == 5
                                    for j in pruned.values())
    assert pruned["job0000"].mse == 0.3  # the result of the epoch it reached is kept
    assert H.rungs_of(engine, "s1", ["job0001", "job0000"]) == {"job0001": 1, "job0000": 0}
    assert S.load_states(engine, "s1", IDS) == {}  # the pruned ones' states are gone
    assert H.current_rung(engine, "s1") == 1
    assert H.rung_ready(engine, "s1") is None and H.advance_rung(engine, "s1", 0, 4) == []


def test_a_rung_is_not_ranked_while_one_of_its_jobs_trains(engine):
    save_sweep(engine, "s1", "demo", {}, [job_row(i) for i in range(3)])
    claim_jobs(engine, "s1", IDS[:3], "w1", 60)
    save_results(engine, "s1", [(IDS[0], fit_result())], "w1", "cpu",
                   held={IDS[0]: (5, 0, None)})
    save_results(engine, "s1", [(IDS[1], fit_result(status="diverged"))], "w1", "cpu")
    assert H.rung_ready(engine, "s1") is None and H.advance_rung(engine, "s1", 0, 2) == []
    save_results(engine, "s1", [(IDS[2], fit_result())], "w1", "cpu",
                   held={IDS[2]: (5, 0, None)})
    assert H.rung_ready(engine, "s1") == 0
    # Two paused, eta 2: one continues (the diverged job is out of the ranking).
    assert [j.id for j in H.advance_rung(engine, "s1", 0, 2)] == ["job0000"]


def test_two_processes_racing_on_a_rung_rank_it_once(engine):
    _at_rung_end(engine, [0.1 * (i + 1) for i in range(8)])
    won = race(lambda: H.advance_rung(engine, "s1", 0, 4))
    assert sorted(len(w) for w in won) == [0, 0, 0, 2]
    counts = status_counts(engine, "s1")
    assert counts == {"queued": 2, "pruned": 6}


def test_cancel_ends_paused_jobs_too(engine):
    _at_rung_end(engine, [0.1, 0.2])
    assert cancel_sweep(engine, "s1") == 2
    assert status_counts(engine, "s1") == {"cancelled": 2}


def test_the_rungs_of_a_halving():
    h = H.Halving(eta=4, min_epochs=125)
    assert [h.rung_epochs(r, 2000) for r in range(4)] == [125, 500, 2000, 2000]
    assert h.rungs(2000) == 3 and h.rungs(125) == 1 and h.rungs(600) == 3
    assert H.Halving.of({"halving": {"eta": 3, "min_epochs": 10}}) == H.Halving(3, 10)
    assert H.Halving.of({}) is None
