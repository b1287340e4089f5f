"""The ``halving`` setting of a spec and ``--halving ETA:MIN_EPOCHS``: normalized into the
sweep's spec, and bad input refused in one line with exit code 2, nothing recorded."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from scheduler.cli import cli
from scheduler.plan import build_plan
from scheduler.specfile import SweepSpecError

GRID = {"variant": ["autograd"], "lr": [1e-3, 1e-2], "epochs": [500, 2000]}


def test_halving_is_kept_in_the_sweeps_spec_and_the_flag_wins():
    plan = build_plan({"grid": GRID, "halving": {"eta": 4, "min_epochs": 125}})
    assert plan.spec["halving"] == {"eta": 4, "min_epochs": 125} and plan.size == 4
    assert build_plan({"grid": GRID}, halving="3:100").spec["halving"] == {
        "eta": 3, "min_epochs": 100}
    assert "halving" not in build_plan({"grid": GRID}).spec


def test_a_search_takes_halving_too():
    pytest.importorskip("optuna")
    plan = build_plan({"grid": {**GRID, "lr": {"log": [1e-4, 1e-2]}, "epochs": [800]},
                       "search": {"sampler": "random", "trials": 8, "round": 4}},
                      halving="2:100")
    assert plan.spec["halving"] == {"eta": 2, "min_epochs": 100}
    with pytest.raises(SweepSpecError, match="900 is more than the 800 epochs"):
        build_plan({"grid": {**GRID, "epochs": [800]},
                    "search": {"sampler": "random", "trials": 8}}, halving="2:900")


@pytest.mark.parametrize("args, says", [
    (["--halving", "1:100"], "halving.eta: expected a whole number in 2..1,000, got '1'"),
    (["--halving", "4:600"], "halving.min_epochs: 600 is more than the 500 epochs"),
    (["--halving", "4:0"], "halving.min_epochs"),
    (["--halving", "4"], "--halving: expected ETA:MIN_EPOCHS"),
    (["--halving", "four:100"], "halving.eta"),
])
def test_bad_halving_is_one_line_and_exit_2_with_nothing_recorded(tmp_path, monkeypatch,
                                                                   args, says):
    monkeypatch.chdir(tmp_path)
    for var in ("POLYFIT_DB_URL", "POLYFIT_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    r = CliRunner().invoke(cli, ["sweep", "submit", "--variant", "autograd", "--epochs",
                                 "500,2000", *args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.output, lines
    assert not (tmp_path / "polyfit.sqlite").exists()


@pytest.mark.parametrize("raw", [{"eta": 4}, {"eta": 4, "min_epochs": 10, "x": 1}, [4, 10],
                                 {"eta": 2.5, "min_epochs": 10}, {"eta": True, "min_epochs": 5}])
def test_a_halving_mapping_that_is_not_one_is_refused(raw):
    with pytest.raises(SweepSpecError, match="halving"):
        build_plan({"grid": GRID, "halving": raw})


def test_resume_ranks_the_rung_nobody_ranked(tmp_path):
    """A worker stopped between storing a rung's last result and ranking it: `sweep resume`
    ranks it and enqueues the best (on the embedded broker; no worker needed to see it)."""
    from scheduler.submit import resume
    from store import create_schema, make_engine
    from store.claims import claim_jobs, save_results
    from store.reads import list_jobs
    from store.recording import save_sweep
    from tests.support.database import fit_result, job_row
    from worker.settings import Settings

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    engine = make_engine(url)
    create_schema(engine)
    ids = [f"job{i:04d}" for i in range(8)]
    save_sweep(engine, "s1", "demo", {"halving": {"eta": 4, "min_epochs": 5}},
                          [job_row(i) for i in range(8)])
    claim_jobs(engine, "s1", ids, "w1", 60)
    save_results(engine, "s1", [(i, fit_result(mse=1.0 / (n + 1)))
                                           for n, i in enumerate(ids)], "w1", "cpu",
                            held={i: (5, 0, None) for i in ids})
    done = resume(Settings(db_url=url), "s1")
    assert done.enqueued_jobs == 2
    jobs = {j.id: j.status for j in list_jobs(engine, "s1")}
    assert sorted(i for i, s in jobs.items() if s == "queued") == ["job0006", "job0007"]
    assert list(jobs.values()).count("pruned") == 6
    engine.dispose()


def test_a_pruned_trial_is_told_to_the_sampler_as_pruned_at_the_epoch_it_reached():
    optuna = pytest.importorskip("optuna")
    from store.search import TrialRow
    from worker.search import _frozen, distributions

    _, space = distributions({"lr": {"log": [1e-4, 1e-2]}, "variant": ["autograd"]})
    told = _frozen(optuna, TrialRow(0, 0, "j", {"lr": 1e-3}, {}, "pruned", 0.5, 125), space)
    assert told.state == optuna.trial.TrialState.PRUNED
    assert told.intermediate_values == {125: 0.5}


def test_halving_refuses_a_variant_that_cannot_continue(monkeypatch):
    """A plugin's variant trains to the end unless it declares ``resumable``: its rungs could
    not stop and continue, so halving it is refused up front (exit 2)."""
    import dataclasses

    from polyfit_models import VARIANTS
    from scheduler import halving

    plugin = dataclasses.replace(VARIANTS["autograd"], name="mine", resumable=False)
    monkeypatch.setattr(halving, "VARIANTS", {**VARIANTS, "mine": plugin})
    with pytest.raises(SweepSpecError, match="variant mine cannot stop its training"):
        halving.halving_setting({"eta": 4, "min_epochs": 100},
                                None, [{"variant": ["autograd", "mine"], "epochs": [800]}],
                                ["autograd"], SweepSpecError)
    assert halving.halving_setting({"eta": 4, "min_epochs": 100}, None,
                                   [{"variant": ["autograd"], "epochs": [800]}], ["autograd"],
                                   SweepSpecError) == {"eta": 4, "min_epochs": 100}
