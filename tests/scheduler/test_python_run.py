"""``polyfit.run(spec)``: a sweep launched from Python (a notebook) runs to the end through the
same local workers and embedded broker as ``polyfit sweep run``, and comes back as the jobs
frame; bad input raises with the command line's one line."""

from __future__ import annotations

import pytest

import polyfit


@pytest.mark.slow
def test_run_trains_a_sweep_and_returns_its_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("POLYFIT_DB_URL", "POLYFIT_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    db = f"sqlite:///{tmp_path / 'nb.sqlite'}"
    spec = {"grid": {"variant": ["numpy", "autograd"], "epochs": [200]}}
    jobs = polyfit.run(spec, name="notebook", db=db, seed=[0, 1], lr=1e-6, workers=1)
    assert len(jobs) == 4 and set(jobs["status"]) == {"succeeded"}
    assert set(jobs["variant"]) == {"numpy", "autograd"} and set(jobs["seed"]) == {0, 1}
    assert jobs["mse"].notna().all() and (jobs["sweep_id"].nunique() == 1)
    # The same call again trains nothing: the sweep is there, every result reused.
    again = polyfit.run(spec, name="notebook", db=db, seed=[0, 1], lr=1e-6, workers=1)
    assert list(again["id"]) == list(jobs["id"]) and list(again["mse"]) == list(jobs["mse"])


@pytest.mark.parametrize("spec,axes,message", [
    ({"grid": {"variant": ["nope"]}}, {}, "variant"),
    ({"grid": {"variant": ["numpy"]}}, {"learning_rate": [1e-6]}, "unknown axis"),
    ({"grid": {"variant": ["numpy"]}}, {"lr": ["fast"]}, "lr"),
    ("no-such-spec.yaml", {}, "cannot read"),
])
def test_bad_input_raises_the_one_line_the_command_line_prints(tmp_path, monkeypatch, spec,
                                                               axes, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(polyfit.SweepError, match=message) as e:
        polyfit.run(spec, db=f"sqlite:///{tmp_path / 'x.sqlite'}", **axes)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.sqlite").exists()  # nothing recorded
