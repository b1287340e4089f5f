"""Searches without workers: the spec's bad input, the sampler asked reproducibly round after
round, the store's guarded round step under a race, a failing sampler, and a search's progress
(not done between rounds). Real SQLite files and PostgreSQL schemas; real Optuna."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from polyfit_results import queries
from scheduler.cli import cli
from scheduler.plan import build_plan
from scheduler.specfile import SweepSpecError
from store import create_schema, make_engine
from store import search as store_search
from store.claims import claim_jobs, save_results
from store.reads import list_jobs
from store.requeue import cancel_sweep
from store.sweeps import find_sweep
from tests.support.database import race
from worker import rounds
from worker import search as worker_search
from worker.search import ask_round
from worker.settings import Settings

pytest.importorskip("optuna")

SPEC = {"name": "s", "x": {"points": 50},
        "grid": {"variant": ["autograd"], "lr": {"log": [1e-7, 1e-5]}, "degree": [3, 4, 5],
                 "epochs": [20]},
        "search": {"sampler": "tpe", "trials": 12, "round": 4, "seed": 0}}


def _plan(**search):
    return build_plan({**SPEC, "search": {**SPEC["search"], **search}})


def _mse(params: dict) -> float:
    """A made-up, deterministic result for a point (best at lr 1e-6, degree 5)."""
    import math

    return abs(math.log10(params["lr"]) + 6) + 0.1 * (5 - params["degree"])


def _history(spec, rounds_: int):
    past, attrs = [], {}
    for r in range(rounds_):
        asked, attrs = ask_round(spec, past, r, attrs)
        past += [store_search.TrialRow(a.number, r, a.job_id, a.params, a.system_attrs,
                                       "succeeded", _mse(a.params)) for a in asked]
    return past


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_the_same_spec_and_seed_ask_the_same_jobs_round_after_round(sampler):
    spec = _plan(sampler=sampler).spec
    first, second = _history(spec, 3), _history(spec, 3)
    assert [t.job_id for t in first] == [t.job_id for t in second]
    assert len({t.job_id for t in first}) == 12
    # Continuous lr within its range, off any grid; degree from its list.
    assert all(1e-7 <= t.params["lr"] <= 1e-5 for t in first)
    assert {t.params["degree"] for t in first} <= {3, 4, 5}
    # Each round draws afresh: a sampler rebuilt with one seed would ask round 0's points.
    assert {t.params["lr"] for t in first if t.round == 0}.isdisjoint(
        {t.params["lr"] for t in first if t.round == 1})
    other = _history(_plan(sampler=sampler, seed=1).spec, 1)
    assert [t.job_id for t in other] != [t.job_id for t in first[:4]]


@pytest.mark.parametrize("args, says", [
    (["--sampler", "nope"], "nope"),
    (["--trials", "0"], "trials"),
    (["--round", "20"], "round"),
    (["--variant", "log:1:2"], "variant"),
    (["--lr", "log:0:1e-5"], "lr"),
])
def test_bad_search_input_is_one_line_and_exit_2_with_nothing_recorded(
        tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    for var in ("POLYFIT_DB_URL", "POLYFIT_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    spec = tmp_path / "s.yaml"
    spec.write_text("grid: {variant: [autograd], lr: {log: [1.0e-7, 1.0e-5]}, degree: [3, 4]}\n"
                    "search: {sampler: tpe, trials: 8, round: 4}\n")
    r = CliRunner().invoke(cli, ["sweep", "submit", str(spec), *args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.output
    assert not (tmp_path / "polyfit.sqlite").exists()


def test_without_optuna_a_search_is_refused_with_the_install_hint(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POLYFIT_DB_URL", raising=False)
    r = CliRunner().invoke(cli, ["sweep", "submit", "--variant", "autograd", "--lr",
                                 "log:1e-7:1e-5", "--sampler", "tpe", "--trials", "8"])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "Error: searching needs Optuna: pip install 'polyfit[search]'"]


def test_a_spec_names_an_unknown_sampler_or_a_sample_in_one_line():
    with pytest.raises(SweepSpecError, match="unknown sampler 'nope'"):
        _plan(sampler="nope")
    with pytest.raises(SweepSpecError, match="sample"):
        build_plan({**SPEC, "sample": {"n": 3}})
    with pytest.raises(SweepSpecError, match="not a valid job"):  # dynamic takes degree >= 4
        build_plan({**SPEC, "grid": {**SPEC["grid"], "variant": ["dynamic"]}})


def started_search(engine):
    """A search (``SPEC``) recorded with its first round asked, untrained: (plan, asked)."""
    plan = _plan()
    asked, attrs = ask_round(plan.spec, [], 0, {})
    store_search.start_search(engine, plan.sweep_id, plan.name, plan.spec, sampler="tpe",
                              trials=12, round_size=4, first=[a.row for a in asked],
                              first_trials=[a.trial() for a in asked], study_attrs=attrs)
    return plan, asked


def _started(engine):
    """A recorded search whose first round has ended (results stored)."""
    plan, asked = started_search(engine)
    ids = [a.job_id for a in asked]
    claim_jobs(engine, plan.sweep_id, ids, "w", 60)
    save_results(engine, plan.sweep_id, [
        (a.job_id, {"status": "succeeded", "mse": _mse(a.params), "final_loss": 1.0})
        for a in asked], "w", "cpu")
    return plan


def test_two_processes_racing_on_a_round_record_it_once(engine):
    plan = _started(engine)
    state = store_search.round_ready(engine, plan.sweep_id)
    assert state is not None and state.round == 1
    asked, attrs = ask_round(plan.spec, store_search.history(engine, plan.sweep_id), 1, {})
    won = race(lambda: store_search.advance_round(
        engine, plan.sweep_id, state.round, [a.row for a in asked], [a.trial() for a in asked],
        attrs))
    assert sorted(won) == [False, False, False, True]
    assert len(store_search.history(engine, plan.sweep_id)) == 8
    assert store_search.search_state(engine, plan.sweep_id).round == 2


def test_a_search_is_not_done_between_rounds(engine):
    plan = _started(engine)
    sweep = find_sweep(engine, plan.sweep_id)
    p = queries.progress(engine, sweep)
    assert p.ended == p.total == 4 and not p.done
    assert p.to_dict()["search"]["round"] == 1


def test_a_renamed_search_keeps_its_round_and_trials(engine):
    from store.manage import rename_sweep

    plan = _started(engine)
    rename_sweep(engine, plan.sweep_id, "new-id", "renamed")
    state = store_search.round_ready(engine, "new-id")
    assert state is not None and state.round == 1 and state.asked == 4
    assert len(store_search.history(engine, "new-id")) == 4


def test_a_cancelled_search_is_done_until_resumed(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    create_schema(engine)
    plan, _ = started_search(engine)
    sweep = find_sweep(engine, plan.sweep_id)
    assert not queries.progress(engine, sweep).done
    cancel_sweep(engine, plan.sweep_id)
    assert queries.progress(engine, sweep).done  # `status --wait` returns
    assert store_search.round_ready(engine, plan.sweep_id) is None  # and no round follows
    engine.dispose()


def test_a_sampler_that_fails_mid_search_ends_it_failed_keeping_every_result(
        engine, monkeypatch):
    plan = _started(engine)

    def broken(name, seed):
        raise RuntimeError("the sampler broke")

    monkeypatch.setattr(worker_search, "_sampler", broken)
    assert rounds.advance(engine, Settings(), None, plan.sweep_id) == 0
    state = store_search.search_state(engine, plan.sweep_id)
    assert state.state == "failed" and "the sampler broke" in state.error
    jobs = list_jobs(engine, plan.sweep_id)
    assert len(jobs) == 4 and {j.status for j in jobs} == {"succeeded"}
    assert queries.progress(engine, find_sweep(engine, plan.sweep_id)).done
    # `sweep resume` lets it ask again, once the sampler works.
    monkeypatch.undo()
    if engine.dialect.name == "sqlite":
        from scheduler.submit import resume

        assert resume(Settings(db_url=str(engine.url)), plan.sweep_id).enqueued_jobs == 4
        assert store_search.search_state(engine, plan.sweep_id).state == "running"


def test_resume_asks_the_round_nobody_asked(tmp_path):
    """A worker stopped between storing a round's last result and asking the next: `sweep
    resume` asks and enqueues it (on the embedded broker; no worker needed to see it)."""
    from scheduler.submit import resume

    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    engine = make_engine(url)
    create_schema(engine)
    plan = _started(engine)
    done = resume(Settings(db_url=url), plan.sweep_id)
    assert done.enqueued_jobs == 4
    assert store_search.search_state(engine, plan.sweep_id).round == 2
    assert [j.status for j in list_jobs(engine, plan.sweep_id)].count("queued") == 4
    engine.dispose()


@pytest.mark.parametrize("sampler, needs", [("cmaes", "cmaes"), ("gp", "scipy"),
                                            ("qmc", "scipy")])
def test_every_sampler_asks_rounds_reproducibly(sampler, needs):
    pytest.importorskip(needs)
    spec = _plan(sampler=sampler).spec
    first = _history(spec, 3)
    assert [t.job_id for t in first] == [t.job_id for t in _history(spec, 3)]
    assert len({t.params["lr"] for t in first}) == 12  # no point asked twice


def test_a_search_grows_only_by_its_trials(tmp_path):
    """The same name with another sampler, seed or space is another search: refused (exit 2)
    with nothing changed, instead of showing the first search's results as the second's; more
    trials continue it; a grid never turns into a search, nor a search into a grid."""
    import json

    import yaml

    db = f"sqlite:///{tmp_path / 'r.sqlite'}"

    def submit(spec: dict, name: str = "s"):
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({**spec, "name": name}))
        return CliRunner().invoke(cli, ["sweep", "submit", str(path), "--db", db])

    assert submit(SPEC).exit_code == 0
    recorded = find_sweep(make_engine(db), "s")
    for change in ({"search": {**SPEC["search"], "sampler": "random"}},
                   {"search": {**SPEC["search"], "seed": 1}},
                   {"grid": {**SPEC["grid"], "epochs": [40]}},
                   {"grid": {**SPEC["grid"], "lr": {"log": [1e-8, 1e-5]}}}):
        r = submit({**SPEC, **change})
        assert r.exit_code == 2 and "a search grows only by its trials" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    after = find_sweep(make_engine(db), "s")
    assert json.dumps(after.spec, sort_keys=True) == json.dumps(recorded.spec, sort_keys=True)
    assert submit({**SPEC, "search": {**SPEC["search"], "trials": 16}}).exit_code == 0
    assert store_search.search_state(make_engine(db), recorded.id).trials == 16
    grid = {"x": SPEC["x"], "grid": {"variant": ["autograd"], "lr": [1e-6], "epochs": [20]}}
    assert submit(grid, name="g").exit_code == 0
    r = submit(SPEC, name="g")
    assert r.exit_code == 2 and "recorded as a grid" in r.output, r.output
    r = submit(grid, name="s")
    assert r.exit_code == 2 and "recorded as a search" in r.output, r.output
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**SPEC, "name": "s"}))
    r = CliRunner().invoke(cli, ["sweep", "submit", str(tmp_path / "spec.yaml"), "--fresh",
                                 "--db", db])
    assert r.exit_code == 2 and "--fresh: a search trains every job" in r.output, r.output
