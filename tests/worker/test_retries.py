"""Worker policy with a real store: a deterministic failure ends ``failed`` with its error while
its batch-mates are stored; retries, heartbeat and reaper periods follow the settings; messages
over the work cap are refused."""

from __future__ import annotations

import pytest

from polyfit_models import JobSpec, fit_many
from polyfit_models.errors import SettingError
from store import create_schema, make_engine
from store.reads import list_jobs
from store.recording import save_sweep
from worker.execute import run_batch
from worker.payload import Batch
from worker.runtime import Runtime
from worker.settings import Settings
from worker.tasks import run_batch as task


def test_a_failing_job_is_stored_failed_and_its_batch_mates_succeed(tmp_path):
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'r.sqlite'}")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    specs = [JobSpec.create("numpy", seed=s, epochs=20) for s in range(4)]
    save_sweep(engine, "s1", "demo", {}, [
        {"id": f"j{s.seed}", "variant": s.variant, "lr": s.lr, "degree": s.degree,
         "seed": s.seed, "epochs": s.epochs, "optimizer": s.optimizer, "device": "cpu",
         "target": s.target, "dtype": s.dtype, "x_start": s.x_start, "x_stop": s.x_stop,
         "x_points": s.x_points} for s in specs])

    def trainer(batch, device):
        if any(s.seed == 2 for s in batch):
            raise ValueError("seed 2 cannot be fitted")
        return fit_many(batch, device)

    batch = Batch("s1", "cpu", tuple(f"j{s.seed}" for s in specs))
    summary = run_batch(batch, Runtime(settings), "w/1", trainer)
    assert summary["ran"] == 4 and summary["stored"] == 4 and summary["failed"] == 1
    jobs = {j.id: j for j in list_jobs(engine, "s1")}
    assert jobs["j2"].status == "failed" and jobs["j2"].error == (
        "ValueError: seed 2 cannot be fitted")
    for k in ("j0", "j1", "j3"):
        assert jobs[k].status == "succeeded" and jobs[k].mse is not None and not jobs[k].error
    # A redelivery of the same message changes nothing.
    assert run_batch(batch, Runtime(settings), "w/2", trainer) == {
        "sweep_id": "s1", "ran": 0, "skipped": 4}
    engine.dispose()


def test_retry_count_heartbeat_and_visibility_are_settings():
    s = Settings.from_env({"POLYFIT_MAX_RETRIES": "0", "POLYFIT_STALE_AFTER_S": "4",
                           "POLYFIT_VISIBILITY_TIMEOUT_S": "30"})
    assert (s.max_retries, s.stale_after_s, s.visibility_timeout_s) == (0, 4.0, 30.0)
    assert s.heartbeat_s * 3 < s.stale_after_s and s.reap_every_s < s.stale_after_s
    assert Settings.from_env(s.to_env()) == s
    d = Settings()
    assert (d.max_retries, d.stale_after_s, d.heartbeat_s, d.reap_every_s) == (5, 60, 10, 15)
    for bad in ({"POLYFIT_MAX_RETRIES": "-1"}, {"POLYFIT_MAX_RETRIES": "many"},
                {"POLYFIT_MAX_RETRIES": "1000"}, {"POLYFIT_STALE_AFTER_S": "0"},
                {"POLYFIT_VISIBILITY_TIMEOUT_S": "1.5"}):
        with pytest.raises(SettingError):
            Settings.from_env(bad)


def test_the_task_retries_store_errors_with_backoff():
    from store import StoreUnavailable

    assert StoreUnavailable in task.autoretry_for
    assert task.retry_backoff and task.retry_backoff_max == 60 and task.retry_jitter
    assert task.acks_late and task.reject_on_worker_lost


def test_transport_options_follow_the_settings_the_worker_starts_with():
    from celery import signals

    from worker import runtime
    from worker.app import app, transport_options

    before = (runtime.current(), app.conf.broker_url, app.conf.broker_transport_options)
    try:
        # As `polyfit worker --broker redis://...` does: settings from a flag, after import.
        runtime.install(Runtime(Settings(broker="redis://127.0.0.1:1/0",
                                         visibility_timeout_s=30)))
        signals.celeryd_init.send(sender="test", instance=None, conf=app.conf, options={})
        opts = app.conf.broker_transport_options
        assert opts["visibility_timeout"] == 30 and opts["unacked_restore_interval"] == 10
        assert opts["unacked_restore_throttle"] == 1
        assert opts["socket_keepalive"] and opts["socket_timeout"] == 30
        assert app.conf.broker_url == "redis://127.0.0.1:1/0"
    finally:
        runtime.install(before[0])
        app.conf.broker_url, app.conf.broker_transport_options = before[1:]
    assert transport_options(Settings(db_url="sqlite:///x.sqlite")) == {
        "connect_args": {"timeout": 60}}
