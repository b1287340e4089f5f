"""A worker trains what the store says, with a real SQLite store: a message only names job ids,
so it cannot make a row hold a fit of other settings; a worker claims only jobs of the devices
it serves; a row over the worker's limits ends ``failed`` with the reason; a database outage
while a batch trains costs no training (the results wait and are stored once it is back); a job
whose worker is lost ``POLYFIT_MAX_ATTEMPTS`` times ends ``failed`` naming where."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from polyfit_models import JobSpec, fit_many
from scheduler.plan import Job
from store import create_schema, make_engine
from store.claims import claim_jobs, save_results
from store.reads import list_jobs
from store.recording import save_sweep
from store.records import JobRecord
from store.requeue import reap_stale
from store.rows import now
from worker.execute import run_batch
from worker.payload import Batch
from worker.runtime import Runtime, engine_for
from worker.settings import Settings


def _store(tmp_path: Path, specs: dict[str, tuple[JobSpec, str]], **settings):
    s = Settings(db_url=f"sqlite:///{tmp_path / 'r.sqlite'}", **settings)
    engine = make_engine(s.db_url)
    create_schema(engine)
    save_sweep(engine, "s1", "demo", {}, [Job(job_id, spec, device).row()
                                            for job_id, (spec, device) in specs.items()])
    return s, engine


def _recording_trainer(seen: list):
    def trainer(batch, device):
        seen.append(list(batch))
        return fit_many(batch, device)

    return trainer


def test_the_worker_trains_the_stored_settings_whatever_the_message(tmp_path):
    stored = JobSpec.create("numpy", degree=3, seed=7, epochs=30)
    settings, engine = _store(tmp_path, {"a1": (stored, "cpu")})
    seen: list = []
    # The message names the job; it has no way to say "train degree 9 instead".
    summary = run_batch(Batch("s1", "cpu", ("a1",)), Runtime(settings), "w/1",
                        _recording_trainer(seen))
    assert summary["stored"] == 1 and seen == [[stored]]
    [job] = list_jobs(engine, "s1")
    assert (job.degree, job.seed, job.epochs, job.status) == (3, 7, 30, "succeeded")
    assert job.coefficients == fit_many([stored], "cpu")[0].coefficients


def test_a_worker_claims_only_jobs_of_the_devices_it_serves(tmp_path):
    spec = JobSpec.create("autograd", epochs=5)
    settings, engine = _store(tmp_path, {"gpu": (spec, "cuda"), "gpu1": (spec, "cuda:1"),
                                         "any": (spec.__class__.create("autograd", seed=1,
                                                                       epochs=5), "any")})
    seen: list = []
    # A message for GPU jobs that reached a CPU worker (a forged or misrouted one).
    summary = run_batch(Batch("s1", "cpu", ("gpu", "gpu1", "any")), Runtime(settings), "w/1",
                        _recording_trainer(seen))
    assert summary["ran"] == 1
    status = {j.id: (j.status, j.ran_on) for j in list_jobs(engine, "s1")}
    assert status == {"gpu": ("queued", None), "gpu1": ("queued", None),
                      "any": ("succeeded", "cpu")}
    # A worker pinned to GPU 0 (emulated) takes `cuda` but not `cuda:1`.
    gpu0 = Runtime(settings, "cuda", "0", emulated=True)
    run_batch(Batch("s1", "cuda", ("gpu", "gpu1")), gpu0, "g/1")
    status = {j.id: (j.status, j.ran_on) for j in list_jobs(engine, "s1")}
    assert status["gpu"] == ("succeeded", "cuda:0 (emulated on cpu)")
    assert status["gpu1"] == ("queued", None)


def test_stored_rows_over_the_workers_limits_end_failed_with_the_reason(tmp_path):
    small = JobSpec.create("numpy", epochs=10)
    long = JobSpec.create("numpy", epochs=3000, seed=1)
    wide = JobSpec.create("numpy", epochs=1, seed=2, x_points=2_000_000, degree=8)
    settings, engine = _store(tmp_path, {"ok": (small, "cpu"), "long": (long, "cpu"),
                                         "wide": (wide, "cpu")},
                              max_job_work=3_000_000, cpu_memory_mb=64)
    seen: list = []
    run_batch(Batch("s1", "cpu", ("ok", "long", "wide")), Runtime(settings), "w/1",
              _recording_trainer(seen))
    jobs = {j.id: j for j in list_jobs(engine, "s1")}
    assert seen == [[small]]
    assert jobs["ok"].status == "succeeded"
    assert jobs["long"].status == "failed" and "POLYFIT_MAX_JOB_WORK" in jobs["long"].error
    assert jobs["wide"].status == "failed" and "budget" in jobs["wide"].error


def test_a_database_outage_during_training_costs_no_training(tmp_path, caplog):
    specs = {f"j{i}": (JobSpec.create("numpy", seed=i, epochs=50), "cpu") for i in range(3)}
    settings, engine = _store(tmp_path, specs, store_patience_s=60)
    path = Path(settings.db_url.removeprefix("sqlite:///"))
    aside = path.with_name("aside.sqlite")
    calls: list = []

    def trainer(batch, device):
        calls.append(len(batch))
        # The database goes away while the batch trains, and comes back 2 s later.
        engine.dispose()
        engine_for(settings).dispose()  # the worker's own connections, too
        path.rename(aside)
        path.mkdir()

        def back():
            time.sleep(2)
            path.rmdir()
            aside.rename(path)

        threading.Thread(target=back, daemon=True).start()
        return fit_many(batch, device)

    summary = run_batch(Batch("s1", "cpu", tuple(specs)), Runtime(settings), "w/1", trainer)
    assert "save results failed" in caplog.text  # it waited for the database...
    assert calls == [3]  # ...and trained once
    assert summary["stored"] == 3
    assert [(j.status, j.attempts) for j in list_jobs(engine, "s1")] == [("succeeded", 1)] * 3


def test_late_results_are_stored_when_nobody_took_the_jobs_since(tmp_path):
    spec = JobSpec.create("numpy", epochs=20)
    settings, engine = _store(tmp_path, {"a": (spec, "cpu"), "b": (spec.__class__.create(
        "numpy", seed=1, epochs=20), "cpu")})
    result = fit_many([spec], "cpu")[0].to_dict()
    assert [j.id for j in claim_jobs(engine, "s1", ["a", "b"], "cut-off/1", 60)] == ["a", "b"]
    # Its heartbeat went stale (a partition); a reaper put both back in the queue, and another
    # worker has claimed one of them since.
    with engine.begin() as c:
        c.execute(update(JobRecord).values(heartbeat_at=now() - timedelta(seconds=120)))
    assert len(reap_stale(engine, 60)) == 2
    claim_jobs(engine, "s1", ["b"], "other/1", 60)
    # Back from the partition: "a" (queued, unclaimed) is stored, "b" (held by another) is not.
    assert save_results(engine, "s1", [("a", result), ("b", result)], "cut-off/1", "cpu") == 1
    jobs = {j.id: j for j in list_jobs(engine, "s1")}
    assert (jobs["a"].status, jobs["a"].worker, jobs["a"].attempts) == (
        "succeeded", "cut-off/1", 1)
    assert (jobs["b"].status, jobs["b"].worker) == ("running", "other/1")
    # The queued work for "a" is now a no-op: an ended job is never claimed.
    assert claim_jobs(engine, "s1", ["a"], "other/1", 60) == []


def test_a_job_whose_worker_is_lost_max_attempts_times_ends_failed_naming_the_hosts(tmp_path):
    spec = JobSpec.create("numpy", epochs=20)
    settings, engine = _store(tmp_path, {"oom": (spec, "cpu")}, max_attempts=3)
    for host in ("hostA", "hostB", "hostC"):
        worker = f"polyfit-cpu-4-0123abcd@{host}/9"
        assert [j.id for j in claim_jobs(engine, "s1", ["oom"], worker, 60,
                                           max_attempts=3)] == ["oom"]
        with engine.begin() as c:  # killed: its heartbeat stops
            c.execute(update(JobRecord).values(heartbeat_at=now() - timedelta(seconds=120)))
        requeued = reap_stale(engine, 60, max_attempts=3)
        assert [j.id for j in requeued] == ([] if host == "hostC" else ["oom"])
    [job] = list_jobs(engine, "s1")
    assert job.status == "failed" and job.attempts == 3 and job.finished_at is not None
    assert job.error.startswith("worker lost 3 times (POLYFIT_MAX_ATTEMPTS=3)")
    for host in ("hostA", "hostB", "hostC"):
        assert f"@{host}/9" in job.error
    # A stale job at its limit is not claimed by a redelivered message either.
    assert claim_jobs(engine, "s1", ["oom"], "w", 60, max_attempts=3) == []
