"""Batch execution policy: a failing job ends ``failed`` and its batch-mates still finish."""

from __future__ import annotations

from polyfit_models import JobSpec, fit_many
from worker.execute import train_resilient


def test_a_deterministic_failure_fails_only_its_job():
    specs = [JobSpec.create("numpy", seed=s, epochs=3) for s in range(5)]

    def trainer(batch, device):
        if any(s.seed == 3 for s in batch):
            raise RuntimeError("seed 3 is cursed")
        return fit_many(batch, device)

    out = train_resilient(specs, "cpu", trainer)
    assert [o["status"] for o in out] == ["succeeded"] * 3 + ["failed", "succeeded"]
    assert out[3]["error"] == "RuntimeError: seed 3 is cursed"
    assert out[4]["coefficients"] == fit_many([specs[4]], "cpu")[0].coefficients


def test_out_of_memory_halves_the_batch_until_it_fits():
    specs = [JobSpec.create("autograd", seed=s, epochs=2) for s in range(8)]
    sizes = []

    def trainer(batch, device):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return fit_many(batch, device)

    out = train_resilient(specs, "cpu", trainer)
    assert all(o["status"] == "succeeded" for o in out)
    assert sizes[:3] == [8, 4, 2]


def test_the_halves_are_retried_after_the_failed_attempt_is_freed():
    """An out-of-memory attempt's tensors are gone before the halves run (they would hold the
    GPU memory the retry needs, as long as the exception and its traceback live)."""
    import weakref

    class Tensors:
        pass

    attempts: list = []

    def trainer(batch, device):
        if len(batch) > 1:
            held = Tensors()  # a local of this frame: kept by the traceback while it lives
            attempts.append(weakref.ref(held))
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(ref() is not None for ref in attempts):
            raise AssertionError("a failed attempt is still alive")
        return fit_many(batch, device)

    specs = [JobSpec.create("numpy", seed=s, epochs=2) for s in range(4)]
    out = train_resilient(specs, "cpu", trainer)
    assert [o["status"] for o in out] == ["succeeded"] * 4


def test_a_heartbeat_stuck_on_a_dead_connection_does_not_hold_the_worker():
    import threading

    from worker.execute import _Heartbeat

    started, never = threading.Event(), threading.Event()

    def stuck_beat():
        started.set()
        never.wait()  # a database call on a connection whose peer vanished

    done = threading.Event()

    def batch():
        with _Heartbeat(stuck_beat, 0.05):
            started.wait(10)
        done.set()

    t = threading.Thread(target=batch, daemon=True)
    t.start()
    assert done.wait(10), "the batch never finished: the heartbeat thread held it"
    never.set()
