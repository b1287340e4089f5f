"""Where a plugin variant's jobs go and who takes them (issue 27): a queue of the variant's own
beside its device's, read only by workers that have the plugin; a worker that lacks it leaves
its jobs queued (never fails them); the row names the plugin that trained it; ``status`` says
when no worker serves them."""

from __future__ import annotations

import json
from dataclasses import replace

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from polyfit_models import JobSpec
from polyfit_results import queries
from scheduler.cli import cli
from store import create_schema, make_engine
from store.recording import save_sweep
from store.sweeps import find_sweep
from tests.support.database import job_row
from tests.support.sweeps import train
from worker.batches import plan_batches
from worker.execute import with_plugin
from worker.queues import CPU, CUDA, queue_for, queues_served, route
from worker.settings import Settings


def test_a_plugins_jobs_go_to_its_own_queue_and_the_builtins_stay_on_the_device_queue():
    assert queue_for("cpu", "chebyshev") == f"{CPU}.v.chebyshev"
    assert queue_for("cuda:1", "chebyshev") == f"{CUDA}.1.v.chebyshev"
    assert queue_for("cpu", "autograd") == CPU and queue_for("cpu") == CPU
    assert queues_served("cpu", plugins=["chebyshev"]) == [
        CPU, "polyfit.any", f"{CPU}.v.chebyshev", "polyfit.any.v.chebyshev"]
    # A `sweep run`'s local workers run where it does, with its plugins: its private queue.
    assert route("cpu", "s1", ("s1", "polyfit.run.s1.t"), "chebyshev") == "polyfit.run.s1.t"


def test_rows_a_host_cannot_read_as_jobs_are_still_routed_by_their_variant():
    # The reaper of a host without the plugin re-enqueues its jobs: their rows are no valid
    # job there (unknown variant), and they must still go to the plugin's queue, not to a
    # worker that would fail them.
    ok = JobSpec.create("numpy")
    batches = plan_batches("s1", [("a", None, "cpu", "ghost"), ("b", None, "cpu", "numpy"),
                                  ("c", ok, "cpu")], Settings())
    queues = {b.job_ids: route(b.device, b.sweep_id, None, b.variant) for b in batches}
    assert queues == {("a",): f"{CPU}.v.ghost", ("b",): CPU, ("c",): CPU}


def _sweep_with(db_url: str, rows: list[dict], spec: dict | None = None) -> str:
    engine = make_engine(db_url)
    create_schema(engine)
    save_sweep(engine, "s1", "mixed", spec or {}, rows)
    engine.dispose()
    return "s1"


def test_a_worker_without_the_plugin_leaves_its_jobs_queued(db_url):
    sweep = _sweep_with(db_url, [job_row(0), job_row(1, variant="ghost")])
    train(db_url, sweep, ["job0000", "job0001"])  # a message naming both, as a forged one would
    eng = create_engine(db_url)
    with eng.connect() as c:
        got = dict(c.execute(text("SELECT variant, status FROM jobs")).all())
    eng.dispose()
    assert got == {"numpy": "succeeded", "ghost": "queued"}


def test_the_row_names_the_plugin_that_trained_it(monkeypatch):
    import worker.execute as E
    from polyfit_models.variants.builtin import AUTOGRAD

    base = json.dumps({"polyfit": "0.1.0", "torch": "2"})
    assert with_plugin(base, "autograd") == base
    plugin = replace(AUTOGRAD, name="ghost", package="pf-ghost", version="3.1")
    monkeypatch.setattr(E, "VARIANTS", {**E.VARIANTS, "ghost": plugin})
    assert json.loads(with_plugin(base, "ghost")) == {
        "polyfit": "0.1.0", "torch": "2", "plugin": "pf-ghost", "plugin_version": "3.1"}


def test_status_says_when_no_worker_serves_a_plugins_jobs(db_url):
    spec = {"grid": [{"variant": ["numpy", "ghost"]}]}
    sweep = _sweep_with(db_url, [job_row(0), job_row(1, variant="ghost")], spec)
    train(db_url, sweep, ["job0000"])
    engine = make_engine(db_url)
    row = find_sweep(engine, sweep)
    assert queries.progress(engine, row).unserved == {}  # just submitted: not yet
    with engine.begin() as c:
        c.execute(text("UPDATE sweeps SET created_at = '2000-01-01 00:00:00', "
                       "used_at = '2000-01-01 00:00:00'"))
        c.execute(text("UPDATE jobs SET finished_at = '2000-01-01 00:00:00'"))
    p = queries.progress(engine, find_sweep(engine, sweep))
    engine.dispose()
    assert list(p.unserved) == ["ghost"] and p.unserved["ghost"] > 60
    shown = CliRunner().invoke(cli, ["status", "mixed"], env={"POLYFIT_DB_URL": db_url})
    assert "no worker for ghost" in shown.stdout
    assert "variant ghost" in shown.stderr and "plugin installed" in shown.stderr


def test_a_grid_that_names_no_variant_sweeps_the_builtins_only(monkeypatch):
    # The same spec gives the same jobs on every host, whatever plugins it has installed.
    import scheduler.plan as S
    from polyfit_models.variants.builtin import AUTOGRAD

    ghost = replace(AUTOGRAD, name="ghost", package="pf-ghost", version="1")
    monkeypatch.setattr(S, "VARIANTS", {**S.VARIANTS, "ghost": ghost})
    plan = S.build_plan({"grid": {"seed": [0], "epochs": [10], "degree": [4]}})
    assert {job.spec.variant for job in plan.jobs} == {
        "numpy", "tensor", "autograd", "legendre", "module", "dynamic"}
