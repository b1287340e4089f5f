"""Stopping at the optimum (``JobSpec.stop_gap``): a job whose training loss says its model is
within ``stop_gap`` of the least-squares optimum stops there, keeps that epoch's model, records
the epoch and counts as succeeded; its batch-mates go on as if it were not there."""

from __future__ import annotations

import pytest

from polyfit_models import SpecError, fit, fit_many
from tests.polyfit_models.test_models_batching import close
from tests.support.numerics import spec

#: A gap each variant reaches mid-training with the lesson's settings (float64) and a seed.
GAPS = {"numpy": 0.05, "tensor": 0.05, "autograd": 0.05, "legendre": 0.05, "module": 5.0}
SEEDS = {"module": 1}
FUSED = [(name, False) for name in GAPS] + [(name, True) for name in GAPS if name != "numpy"]


@pytest.mark.parametrize("name,fuse", FUSED)
def test_a_job_stops_within_its_gap_and_its_batch_mates_go_on(name, fuse):
    gap = GAPS[name]
    plain = spec(name, seed=3, dtype="float64")
    stopping = spec(name, seed=SEEDS.get(name, 2), dtype="float64", stop_gap=gap)
    stopped, went_on = fit_many([stopping, plain], fuse=fuse)
    alone = fit(plain, fuse=fuse)

    at = stopped.stopped_at_epoch
    assert stopped.status == "succeeded" and at is not None and 0 < at < stopping.epochs
    assert stopped.mse - stopped.optimum_mse <= gap * (1 + 1e-9)
    assert stopped.diverged_at_epoch is None
    assert all(epoch <= at for epoch, _ in stopped.loss_curve)
    # The batch-mate trained every epoch, as it does alone.
    assert went_on.stopped_at_epoch is None
    assert len(went_on.loss_curve) == plain.epochs // 100
    assert close(went_on.coefficients, alone.coefficients, 1e-6)
    assert went_on.final_loss == pytest.approx(alone.final_loss, rel=1e-6)


@pytest.mark.parametrize("name", list(GAPS))
def test_the_stopped_model_is_the_model_after_that_many_epochs(name):
    seed = SEEDS.get(name, 2)
    stopped = fit(spec(name, seed=seed, dtype="float64", stop_gap=GAPS[name]))
    at = stopped.stopped_at_epoch
    trained_to = fit(spec(name, seed=seed, dtype="float64", epochs=at))
    assert close(stopped.coefficients, trained_to.coefficients, 1e-6)
    assert stopped.final_loss == pytest.approx(trained_to.final_loss, rel=1e-6)
    assert stopped.mse == pytest.approx(trained_to.mse, rel=1e-6)


def test_the_first_epoch_before_the_gap_is_where_it_stops():
    """Not later: the model one epoch earlier was still outside the gap."""
    gap = GAPS["autograd"]
    at = fit(spec("autograd", seed=2, dtype="float64", stop_gap=gap)).stopped_at_epoch
    before = fit(spec("autograd", seed=2, dtype="float64", epochs=at - 1))
    assert before.mse - before.optimum_mse > gap * (1 - 1e-6)


def test_a_gap_never_reached_trains_every_epoch_unchanged():
    plain = fit(spec("tensor", seed=3, dtype="float64"))
    never = fit(spec("tensor", seed=3, dtype="float64", stop_gap=0.0))
    assert never.stopped_at_epoch is None
    assert never.coefficients == plain.coefficients and never.loss_curve == plain.loss_curve


def test_a_batch_whose_jobs_all_stop_ends_early():
    jobs = [spec("numpy", seed=s, dtype="float64", epochs=100_000, stop_gap=0.05)
            for s in range(4)]
    results = fit_many(jobs)
    assert all(r.stopped_at_epoch is not None and r.stopped_at_epoch < 5_000 for r in results)
    # 100,000 epochs of 4 jobs would take tens of seconds: the batch stopped with its last job.
    assert sum(r.duration_s for r in results) < 10


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_a_bad_gap_is_a_spec_error(bad):
    with pytest.raises(SpecError, match="stop_gap"):
        spec("autograd", stop_gap=bad)


def test_dynamic_cannot_stop_at_the_optimum():
    with pytest.raises(SpecError, match="dynamic cannot stop at the optimum"):
        spec("dynamic", stop_gap=0.1)
