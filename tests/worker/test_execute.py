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
