"""A search sweep as Optuna sees it: ``export-optuna`` writes a study that ``optuna.load_study``
opens with the sweep's distributions, params, values and loss curves; ``plot --kind``
draws the importance, history and parallel-coordinates figures. A real SQLite file, real
Optuna, the CLI through CliRunner."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from scheduler.cli import cli
from store import create_schema, make_engine
from store.claims import claim_jobs, save_results
from tests.scheduler.test_search import _mse, started_search

optuna = pytest.importorskip("optuna")


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A search of two rounds (8 jobs) with results and loss curves stored."""
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    monkeypatch.setenv("POLYFIT_DB_URL", url)
    engine = make_engine(url)
    create_schema(engine)
    plan, asked = started_search(engine)
    claim_jobs(engine, plan.sweep_id, [a.job_id for a in asked], "w", 60)
    save_results(engine, plan.sweep_id, [
        (a.job_id, {"status": "succeeded", "mse": _mse(a.params), "final_loss": 1.0,
                    "loss_curve": [[99, 3.0], [199, 2.0]]}) for a in asked], "w", "cpu")
    engine.dispose()
    return url, plan


def test_export_optuna_writes_a_study_that_load_study_opens(db, tmp_path):
    url, plan = db
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    r = CliRunner().invoke(cli, ["export-optuna", plan.name, "--storage", storage])
    assert r.exit_code == 0, r.output
    study = optuna.load_study(study_name=plan.name, storage=storage)
    assert len(study.trials) == 4
    t = study.best_trial
    assert set(t.distributions) == {"lr", "degree"}
    assert t.distributions["lr"].log and t.distributions["lr"].low == 1e-7
    assert t.value == min(_mse(x.params) for x in study.trials)
    assert t.intermediate_values == {99: 3.0, 199: 2.0}
    again = CliRunner().invoke(cli, ["export-optuna", plan.name, "--storage", storage])
    assert again.exit_code == 2 and "already" in again.stderr


def test_export_optuna_never_writes_into_the_results_database(db, tmp_path):
    """Optuna's tables in the results database mixed with polyfit's (both have ``trials``):
    the export failed half-way with an internal error and left them there."""
    url, plan = db
    before = sorted(p.name for p in tmp_path.iterdir())
    import sqlite3

    def names() -> list[str]:
        c = sqlite3.connect(tmp_path / "r.sqlite")
        try:
            return sorted(r[0] for r in c.execute("SELECT name FROM sqlite_master"))
        finally:
            c.close()

    kept = names()
    for storage in (url, f"sqlite:///{tmp_path / 'r-broker.sqlite'}",
                    f"sqlite:///{tmp_path}/../{tmp_path.name}/r.sqlite"):
        r = CliRunner().invoke(cli, ["export-optuna", plan.name, "--storage", storage])
        assert r.exit_code == 2 and "is the results database" in r.stderr, r.output
    assert names() == kept and sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("kind", ["importance", "history", "parallel"])
def test_plot_kinds_of_a_search(db, tmp_path, kind):
    _, plan = db
    out = tmp_path / f"{kind}.png"
    r = CliRunner().invoke(cli, ["plot", plan.name, "--kind", kind, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_the_dashboard_shows_a_search_its_round_and_figures(db):
    pytest.importorskip("flask")
    from polyfit_results.dashboard import create_app

    url, plan = db
    client = create_app(url).test_client()
    page = client.get(f"/sweeps/{plan.sweep_id}")
    assert page.status_code == 200
    for chart in ("importance", "history", "parallel"):
        assert f'id="chart-{chart}"' in page.text
    progress = client.get(f"/api/sweeps/{plan.sweep_id}/progress").json
    assert progress["search"]["round"] == 1 and "tpe round 1/3" in progress["detail"]
    bars = client.get(f"/api/sweeps/{plan.sweep_id}/charts/importance").json
    assert bars["data"][0]["type"] == "bar" and set(bars["data"][0]["y"]) == {"lr", "degree"}
    lines = client.get(f"/api/sweeps/{plan.sweep_id}/charts/parallel").json
    assert [d["label"] for d in lines["data"][0]["dimensions"]] == [
        "log10 lr", "degree", "log10 mse"]
    history = client.get(f"/api/sweeps/{plan.sweep_id}/charts/history").json
    assert history["data"][0]["y"] == sorted(history["data"][0]["y"], reverse=True)
