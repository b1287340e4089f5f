"""Golden ids: a job's id is the digest of its settings and device, a sweep's the digest of its
name, and a result is reused across runs, databases and polyfit versions by that id.

These values were computed by the code that made every id stored so far. A change that moves
any of them (a new field in the spec that is not left out while it has its default, a renamed
field, another JSON spelling, another digest) gives every stored job a new id: no result of an
earlier version is reused, and a sweep run again trains everything anew. That must be a
deliberate decision, said in the change and in docs/, never a side effect of the change."""

from __future__ import annotations

import pytest

from polyfit_models import JobSpec
from scheduler.plan import Template, build_plan, sweep_id_of

PI = 3.141592653589793
# Every field written out (a variant's defaults may change; these ids must not follow them).
BASE = {"variant": "numpy", "lr": 1e-6, "degree": 3, "seed": 0, "epochs": 2000,
        "optimizer": "sgd", "target": "sin", "x_start": -PI, "x_stop": PI, "x_points": 2000,
        "dtype": "float64"}

GOLDEN_JOBS = [
    # (what differs from BASE, device, id)
    ({}, "cpu", "4b5f172f0bef43da"),
    ({"variant": "autograd", "lr": 1e-3, "degree": 5, "seed": 7, "epochs": 500,
      "dtype": "float32"}, "cpu", "c90752b552cdee7b"),
    ({"variant": "module", "optimizer": "adam", "lr": 1e-2, "dtype": "float32"}, "cpu",
     "9c02e72cf0745960"),
    # stop_gap came after the first ids: left out while None, in the id once set.
    ({"variant": "legendre", "lr": 5e-6, "dtype": "float32", "stop_gap": 1e-4}, "cpu",
     "56d3b07ba84b7c94"),
    ({"variant": "tensor", "dtype": "float32", "x_start": -1.0, "x_stop": 2.0,
      "x_points": 500}, "cpu", "001996e2cda46275"),
    ({"variant": "dynamic", "lr": 1e-8, "degree": 5, "epochs": 30000, "optimizer": "momentum",
      "dtype": "float32"}, "cuda", "889271e96916f77d"),
]


def job_id(spec: JobSpec, device: str) -> str:
    """The id the plan gives the one job of a template of this spec."""
    (job,) = Template(device, spec, (spec.lr,), (spec.seed,)).jobs()
    return job.id


@pytest.mark.parametrize(("changed", "device", "golden"), GOLDEN_JOBS)
def test_a_jobs_id_is_the_one_every_earlier_version_gave_it(changed, device, golden):
    spec = JobSpec.from_dict({**BASE, **changed})
    assert job_id(spec, device) == golden


def test_the_same_settings_on_another_device_are_another_job():
    spec = JobSpec.from_dict(BASE)
    assert job_id(spec, "cuda") != job_id(spec, "cpu")


def test_an_unset_stop_gap_leaves_the_id_as_it_was_before_stop_gap_existed():
    assert job_id(JobSpec.from_dict({**BASE, "stop_gap": None}), "cpu") == \
        "4b5f172f0bef43da"


def test_a_plans_jobs_have_the_golden_ids_and_its_sweep_the_id_of_its_name():
    # The plan makes ids its own faster way (one template per cell): the same ids.
    plan = build_plan({"name": "golden", "grid": [
        {"variant": ["numpy"], "lr": [1e-6, 1e-5], "seed": [0, 1], "epochs": [100]}]})
    assert plan.sweep_id == "5c71d48d494e" == sweep_id_of("golden")
    assert {(j.spec.lr, j.spec.seed): j.id for j in plan.jobs} == {
        (1e-6, 0): "7ca05edb62133e11", (1e-6, 1): "2a8997d76d4d8a2b",
        (1e-5, 0): "accea147cb347a32", (1e-5, 1): "71f0cc6634c64f8c"}
    assert all(j.id == job_id(j.spec, j.device) for j in plan.jobs)  # template by template


@pytest.mark.parametrize(("name", "golden"), [("demo", "15db83584a00"),
                                              ("ümlaut sweep", "177e7914cf8c")])
def test_a_sweeps_id_is_the_one_every_earlier_version_gave_its_name(name, golden):
    assert sweep_id_of(name) == golden
