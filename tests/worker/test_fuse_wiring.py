"""POLYFIT_FUSE and POLYFIT_COMPILE_CACHE reach the training: parsed once with the other
settings (a bad value is a clear error before anything starts), handed to child workers, and
used by ``run_batch`` (fused or not) and by the worker process (inductor's cache folder)."""

from __future__ import annotations

import pytest

from polyfit_models import fusion, runner
from polyfit_models.errors import SettingError
from tests.support.database import rows
from tests.support.processes import polyfit, polyfit_env
from tests.support.sweeps import record_sweep
from worker.execute import run_batch
from worker.payload import Batch
from worker.runtime import Runtime
from worker.settings import Settings


@pytest.mark.parametrize("raw,fuse", [("auto", None), ("", None), ("1", True), ("on", True),
                                      ("0", False), ("off", False)])
def test_the_setting_is_parsed_and_handed_to_children(raw, fuse, tmp_path):
    settings = Settings.from_env({"POLYFIT_FUSE": raw, "POLYFIT_COMPILE_CACHE": str(tmp_path)})
    assert (settings.fuse, settings.compile_cache) == (fuse, str(tmp_path))
    child = Settings.from_env(settings.to_env())
    assert (child.fuse, child.compile_cache) == (fuse, str(tmp_path))


def test_a_bad_value_is_a_settings_error():
    with pytest.raises(SettingError, match="POLYFIT_FUSE"):
        Settings.from_env({"POLYFIT_FUSE": "sometimes"})


def test_a_bad_value_stops_the_cli_with_exit_2(tmp_path):
    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{tmp_path / 'r.db'}", POLYFIT_FUSE="maybe")
    r = polyfit("sweep", "run", "examples/tutorial.yaml", env=env)
    assert r.returncode == 2, r.stderr
    assert "POLYFIT_FUSE" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.db").exists()


def _train(db_url: str, fuse: bool | None, seed: int, monkeypatch) -> int:
    """How many times ``run_batch`` took the fused path (asked ``fusion.compiled`` for the
    compiled epoch) while it trained a 3-job sweep with this setting (seeds from ``seed``: jobs
    of their own, not results reused from an earlier sweep). The process starts as one that
    has fused nothing yet, whatever earlier tests compiled."""
    calls = []
    real = fusion.compiled

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(fusion, "compiled", counting)
    monkeypatch.setattr(runner, "_fused_ready", set())
    monkeypatch.setattr(runner, "_fuse_failed", set())
    grid = [{"variant": ["autograd"], "lr": [1e-6], "seed": [seed, seed + 1, seed + 2],
             "epochs": [50]}]
    sweep_id, jobs = record_sweep(db_url, grid, name=f"fuse-{fuse}")
    summary = run_batch(Batch(sweep_id, "cpu", tuple(j.id for j in jobs)),
                        Runtime(settings=Settings(db_url=db_url, fuse=fuse)), "w@h/1")
    assert summary["ran"] == 3
    assert {r["status"] for r in rows(db_url, sweep_id)} == {"succeeded"}
    return len(calls)


def test_run_batch_fuses_as_the_settings_say(tmp_path, monkeypatch):
    db_url = f"sqlite:///{tmp_path / 'r.db'}"
    assert _train(db_url, False, 0, monkeypatch) == 0
    # A 3-job group is far under the default's threshold: left to the default it is unfused.
    assert _train(db_url, None, 10, monkeypatch) == 0
    assert _train(db_url, True, 20, monkeypatch) > 0


@pytest.mark.slow  # a worker process compiles
def test_the_worker_process_compiles_into_the_cache_folder(tmp_path):
    cache = tmp_path / "kernels"
    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{tmp_path / 'r.db'}", POLYFIT_FUSE="1",
                      POLYFIT_COMPILE_CACHE=str(cache))
    # Inductor sets this variable in the process that compiled (this one, in an earlier test).
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    spec = tmp_path / "s.yaml"
    spec.write_text("grid: {variant: [autograd], lr: [1e-6], seed: [0, 1], epochs: [30]}\n")
    r = polyfit("sweep", "run", str(spec), "--workers", "1", env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert any(p.is_file() for p in cache.rglob("*")), "nothing was compiled into the cache"


def test_a_batch_trained_in_slices_is_fused_for_its_whole_work(tmp_path, monkeypatch):
    # A memory budget of 1 MiB cuts a 12-job batch into slices of 8 and 4. Each slice alone is
    # under the threshold (8 x 50 epochs x 2000 points = 8e5), the batch is over it (1.2e6):
    # one compile serves the whole batch, so the batch is fused (it was trained unfused, slice
    # by slice, an 8,192-fit sweep included).
    db_url = f"sqlite:///{tmp_path / 'r.db'}"
    calls = []
    real = fusion.compiled
    monkeypatch.setattr(fusion, "compiled", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    monkeypatch.setattr(runner, "_fused_ready", set())
    monkeypatch.setattr(runner, "_fuse_failed", set())
    monkeypatch.setattr(runner, "AUTO_FUSE_MIN_JOBS", 2)
    monkeypatch.setattr(runner, "AUTO_FUSE_WORK", 1_000_000)
    monkeypatch.setattr(runner, "AUTO_FUSE_WORK_COLD", 1_000_000)
    grid = [{"variant": ["autograd"], "lr": [1e-6], "seed": list(range(12)), "epochs": [50]}]
    sweep_id, jobs = record_sweep(db_url, grid, name="sliced")
    settings = Settings(db_url=db_url, fuse=None, cpu_memory_mb=1)
    summary = run_batch(Batch(sweep_id, "cpu", tuple(j.id for j in jobs)),
                        Runtime(settings=settings), "w@h/1")
    assert summary["ran"] == 12
    assert {r["status"] for r in rows(db_url, sweep_id)} == {"succeeded"}
    assert calls  # the fused path was taken
