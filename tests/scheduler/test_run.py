"""``run_sweep`` from Python: its summary goes where ``sys.stdout`` points when it runs (not
where it pointed when the module was imported)."""

from __future__ import annotations

import pytest

from scheduler.plan import build_plan
from scheduler.run import run_sweep
from worker.settings import Settings

pytestmark = pytest.mark.slow


def test_the_best_results_go_to_the_current_stdout(tmp_path, capsys):
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'r.sqlite'}")
    plan = build_plan(None, {"variant": ["numpy"], "seed": ["0-1"], "epochs": ["20"]})
    assert run_sweep(settings, plan, workers=1, batch_size=None) == 0
    out = capsys.readouterr().out
    assert f"best results of sweep sweep ({plan.sweep_id})" in out
    assert "numpy" in out


def test_a_run_opens_one_engine_for_all_its_steps(tmp_path, monkeypatch):
    """Record, enqueue, wait, release and the closing summary share the command's one engine
    (``sweep run`` opened four); the command's end closes it."""
    import store.db

    made = []
    make = store.db.make_engine
    monkeypatch.setattr(store.db, "make_engine", lambda url: made.append(url) or make(url))
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'r.sqlite'}")
    plan = build_plan(None, {"variant": ["numpy"], "seed": ["0-1"], "epochs": ["20"]})
    assert run_sweep(settings, plan, workers=1, batch_size=None) == 0
    assert made == [settings.db_url]
    assert store.db._shared  # held until the command ends
    store.db.dispose_shared()
    assert not store.db._shared


def test_a_run_leaves_no_worker_log_behind(tmp_path):
    # One /tmp/polyfit-worker-*.log was left per run (29 after an hour of work).
    from tests.support.processes import polyfit, polyfit_env

    logs = tmp_path / "tmp"
    logs.mkdir()
    env = polyfit_env(TMPDIR=str(logs))
    for _ in range(2):
        r = polyfit("sweep", "run", "--variant", "numpy", "--seed", "0-1", "--epochs", "20",
                    "--workers", "1", env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert not list(logs.glob("polyfit-worker-*.log"))
