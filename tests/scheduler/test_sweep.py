"""Spec -> jobs expansion."""

from __future__ import annotations

import pytest

from polyfit_models import VARIANTS
from scheduler.axes import parse_flag
from scheduler.plan import build_plan
from scheduler.specfile import SweepSpecError, load_spec_file


def plan(grid, **kw):
    return build_plan({"grid": grid}, **kw)


def test_a_grid_is_the_product_of_its_axes():
    p = plan({"variant": ["numpy", "autograd"], "lr": [1e-6, 3e-6], "seed": [0, 1, 2]})
    assert len(p.jobs) == 12
    assert {(j.spec.variant, j.spec.lr, j.spec.seed) for j in p.jobs} == {
        (v, lr, s) for v in ("numpy", "autograd") for lr in (1e-6, 3e-6) for s in (0, 1, 2)}


def test_a_list_of_grids_is_the_union_of_their_products_without_duplicates():
    p = plan([{"variant": ["numpy"], "seed": [0, 1]}, {"variant": ["numpy"], "seed": [1, 2]},
              {"variant": ["module"]}])
    assert sorted((j.spec.variant, j.spec.seed) for j in p.jobs) == [
        ("module", VARIANTS["module"].defaults.get("seed", 0)), ("numpy", 0), ("numpy", 1),
        ("numpy", 2)]


def test_axes_a_variant_does_not_use_are_ignored_for_it():
    p = plan({"variant": ["numpy"], "optimizer": ["sgd", "adam", "rmsprop"]})
    assert len(p.jobs) == 1 and p.jobs[0].spec.optimizer == "sgd"


def test_each_variant_gets_its_own_defaults_for_axes_not_given():
    p = plan({"variant": list(VARIANTS)})
    for job in p.jobs:
        d = VARIANTS[job.spec.variant].defaults
        assert (job.spec.lr, job.spec.degree, job.spec.epochs, job.spec.optimizer) == (
            d["lr"], d["degree"], d["epochs"], d["optimizer"])


def test_combinations_a_variant_cannot_take_are_left_out_and_reported():
    p = plan({"variant": ["numpy", "dynamic", "module"], "degree": [3, 5],
              "device": ["cpu", "cuda"]})
    kinds = {(j.spec.variant, j.spec.degree, j.device) for j in p.jobs}
    assert ("numpy", 3, "cuda") not in kinds and ("numpy", 3, "cpu") in kinds
    assert ("dynamic", 3, "cpu") not in kinds and ("dynamic", 5, "cuda") in kinds
    assert any("numpy cannot run on cuda" in s for s in p.skipped)
    assert any(s.startswith("dynamic takes degree") for s in p.skipped)


def test_device_any_sends_numpy_to_the_cpu():
    p = plan({"variant": ["numpy", "autograd"], "device": ["any"]})
    assert {(j.spec.variant, j.device) for j in p.jobs} == {("numpy", "cpu"),
                                                            ("autograd", "any")}


def test_a_grid_left_with_no_job_is_an_error():
    with pytest.raises(SweepSpecError, match="no job"):
        plan({"variant": ["dynamic"], "degree": [2, 3]})


@pytest.mark.parametrize("grid, message", [
    ({"variant": ["nope"]}, "variant: unknown value 'nope'"),
    ({"variant": ["numpy"], "colour": [1]}, "unknown axis 'colour'"),
    ({"variant": ["numpy"], "lr": [-1]}, "lr"),
    ({"variant": ["numpy"], "lr": ["fast"]}, "lr: expected a number"),
    ({"variant": ["numpy"], "lr": [float("nan")]}, "lr: must be finite"),
    ({"variant": ["numpy"], "seed": [-1]}, "seed"),
    ({"variant": ["numpy"], "seed": ["9-3"]}, "empty range"),
    ({"variant": ["numpy"], "epochs": [0]}, "epochs"),
    ({"variant": ["numpy"], "epochs": [1.5]}, "whole number"),
    ({"variant": ["numpy"], "degree": [10_000]}, "degree"),
    ({"variant": ["numpy"], "device": ["tpu"]}, "device"),
    ({"variant": []}, "empty list"),
    ({"variant": ["numpy"], "lr": True}, "lr: expected a number"),
])
def test_bad_values_are_one_line_errors(grid, message):
    with pytest.raises(SweepSpecError, match=message) as e:
        plan(grid)
    assert "\n" not in str(e.value)


def test_unknown_top_level_key_and_bad_x_are_errors():
    with pytest.raises(SweepSpecError, match="unknown key 'grids'"):
        build_plan({"grids": {}})
    with pytest.raises(SweepSpecError, match="x: unknown key"):
        build_plan({"grid": {"variant": ["numpy"]}, "x": {"begin": 0}})
    with pytest.raises(SweepSpecError, match="target"):
        build_plan({"grid": {"variant": ["numpy"]}, "target": "square"})
    with pytest.raises(SweepSpecError, match="nothing to sweep"):
        build_plan({})


def test_seed_ranges_expand_inclusively():
    p = plan({"variant": ["numpy"], "seed": ["0-9", 20]})
    assert sorted(j.spec.seed for j in p.jobs) == list(range(10)) + [20]


def test_a_billion_job_grid_is_refused_without_expanding_it(monkeypatch):
    # Refused from the grid's size, before a single job is made (not timed: a time bound
    # would judge the machine's load, not the code).
    import scheduler.plan as sweep_module

    def no_job_may_be_made(self):
        raise AssertionError("a job was made before the size was checked")

    monkeypatch.setattr(sweep_module.Template, "jobs", no_job_may_be_made)
    with pytest.raises(SweepSpecError, match="over the limit"):
        plan({"variant": ["numpy"], "seed": ["0-999999999"]}, max_jobs=1000)
    with pytest.raises(SweepSpecError, match="over the limit"):
        plan({"variant": list(VARIANTS), "seed": ["0-99"], "lr": [1e-6, 2e-6]}, max_jobs=1000)


def test_a_job_too_big_is_refused():
    with pytest.raises(SweepSpecError, match="epochs x points"):
        plan({"variant": ["numpy"], "epochs": [1_000_000]}, max_job_work=10**8)


def test_flags_override_the_file():
    spec = {"grid": [{"variant": ["numpy"], "seed": [0, 1]}, {"variant": ["module"]}]}
    p = build_plan(spec, {"seed": ["7"]})
    assert {j.spec.seed for j in p.jobs} == {7}


def test_job_and_sweep_ids_are_derived_from_settings():
    a = plan({"variant": ["numpy", "autograd"], "seed": [0, 1]})
    b = plan({"variant": ["autograd", "numpy"], "seed": [1, 0]})
    assert {j.id for j in a.jobs} == {j.id for j in b.jobs}
    assert a.sweep_id == b.sweep_id
    assert len({j.id for j in a.jobs}) == 4
    c = plan({"variant": ["numpy", "autograd"], "seed": [0, 1]}, name="other")
    assert c.sweep_id != a.sweep_id and {j.id for j in c.jobs} == {j.id for j in a.jobs}


def test_parse_flag_rejects_empty_items():
    assert parse_flag("lr", "1e-6, 3e-6") == ["1e-6", "3e-6"]
    with pytest.raises(SweepSpecError):
        parse_flag("lr", "1e-6,,3e-6")


def test_load_spec_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [\n")
    with pytest.raises(SweepSpecError, match="not valid YAML"):
        load_spec_file(bad)
    with pytest.raises(SweepSpecError, match="cannot read"):
        load_spec_file(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(SweepSpecError, match="must be a mapping"):
        load_spec_file(scalar)


def test_the_tutorial_example_expands_to_the_lessons_programs():
    from tests.support import ROOT

    p = build_plan(load_spec_file(ROOT / "examples" / "tutorial.yaml"))
    by_variant = {}
    for j in p.jobs:
        by_variant.setdefault(j.spec.variant, set()).add(
            (j.spec.lr, j.spec.epochs, j.spec.optimizer))
    assert by_variant["numpy"] == {(1e-6, 2000, "sgd")}
    assert by_variant["autograd"] == {(1e-6, 2000, "sgd")}
    assert by_variant["module"] == {(1e-3, 2000, "adam")}
    assert by_variant["dynamic"] == {(1e-8, 30000, "momentum")}
    assert "legendre" in by_variant and p.name == "tutorial"


def test_planning_and_batching_a_sweep_does_not_import_torch():
    # `polyfit sweep submit` plans, records and enqueues: seconds of torch import would be the
    # largest part of its run time for nothing.
    import subprocess
    import sys

    code = ("import sys, scheduler.cli, scheduler.submit\n"
            "from scheduler.plan import build_plan\n"
            "from worker.batches import plan_batches\n"
            "p = build_plan({'grid': {'variant': ['legendre', 'dynamic'], 'seed': [0, 1]}})\n"
            "from worker.settings import Settings\n"
            "plan_batches(p.sweep_id, [(j.id, j.spec, j.device) for j in p.jobs], Settings())\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- ranges and sampling -----------------------------------------------------------------------

def test_log_and_linear_ranges_space_values_with_both_ends_included():
    from scheduler.plan import build_plan

    plan = build_plan({"grid": {"variant": ["numpy"], "lr": {"log": [1e-7, 1e-5], "num": 9},
                                "seed": {"linear": [0, 10], "num": 4}}})
    lrs = sorted({j.spec.lr for j in plan.jobs})
    assert len(lrs) == 9 and lrs[0] == 1e-7 and lrs[-1] == 1e-5 and lrs[4] == pytest.approx(1e-6)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # evenly spaced in log space
    assert sorted({j.spec.seed for j in plan.jobs}) == [0, 3, 7, 10]  # rounded
    # An integer axis drops the repeats that rounding makes.
    dense = build_plan({"grid": {"variant": ["numpy"], "epochs": {"linear": [10, 12], "num": 7}}})
    assert sorted({j.spec.epochs for j in dense.jobs}) == [10, 11, 12]
    # The flag form, mixed with plain values.
    flags = build_plan(None, {"variant": ["numpy"], "lr": ["log:1e-6:1e-4:3", "5e-3"]})
    assert sorted({j.spec.lr for j in flags.jobs}) == pytest.approx([1e-6, 1e-5, 1e-4, 5e-3])


@pytest.mark.parametrize("bad", [
    {"log": [0, 1e-5], "num": 3}, {"log": [-1e-7, 1e-5], "num": 3},
    {"log": [1e-7, 1e-5]}, {"log": [1e-7], "num": 3}, {"log": [1e-7, 1e-5], "num": 0},
    {"log": [1e-7, 1e-5], "num": 2.5}, {"log": [1e-7, 1e-5], "linear": [1, 2], "num": 2},
    {"geom": [1, 2], "num": 2}, {"log": ["a", "b"], "num": 2}, {"log": [1e-7, 1e-5], "num": 10**9},
    {"linear": [1e-7, 20], "num": 3},  # lr over its limit
    "log:1e-7:1e-5", "linear:1:2:x",
])
def test_a_bad_range_is_one_line_exit_2(bad):
    from scheduler.plan import build_plan
    from scheduler.specfile import SweepSpecError

    with pytest.raises(SweepSpecError) as e:
        build_plan({"grid": {"variant": ["numpy"], "lr": bad}})
    assert "\n" not in str(e.value)


def test_sampling_draws_the_same_jobs_for_the_same_spec_and_seed():
    from scheduler.plan import build_plan

    spec = {"grid": {"variant": ["numpy", "autograd"], "seed": "0-99",
                     "lr": {"log": [1e-7, 1e-5], "num": 5}}, "sample": {"n": 50, "seed": 7}}
    full = build_plan({k: v for k, v in spec.items() if k != "sample"})
    a, b = build_plan(spec), build_plan(spec)
    assert len(a.jobs) == 50 and [j.id for j in a.jobs] == [j.id for j in b.jobs]
    assert {j.id for j in a.jobs} <= {j.id for j in full.jobs}
    other = build_plan({**spec, "sample": {"n": 50, "seed": 8}})
    assert {j.id for j in other.jobs} != {j.id for j in a.jobs}
    # The written order of the grid does not change the draw.
    reordered = build_plan({**spec, "grid": {**spec["grid"], "variant": ["autograd", "numpy"]}})
    assert {j.id for j in reordered.jobs} == {j.id for j in a.jobs}
    # The flag wins over the file; a sample larger than the grid takes all of it.
    assert len(build_plan(spec, sample="10:1").jobs) == 10
    assert len(build_plan(spec, sample="5000").jobs) == len(full.jobs)
    assert a.spec["sample"] == {"n": 50, "seed": 7}


# -- numbers of every size and sign ------------------------------------------------------------

_HUGE = 10**400  # YAML reads a 401-digit number as an int too big for a float


@pytest.mark.parametrize("spec", [
    {"grid": {"variant": ["numpy"], "seed": [_HUGE]}},
    {"grid": {"variant": ["numpy"], "lr": [_HUGE]}},
    {"grid": {"variant": ["numpy"], "epochs": [_HUGE]}},
    {"grid": {"variant": ["numpy"], "degree": [-_HUGE]}},
    {"grid": {"variant": ["numpy"], "lr": {"log": [1e-6, _HUGE], "num": 3}}},
    {"grid": {"variant": ["numpy"], "lr": {"log": [1e-6, 1e-5], "num": _HUGE}}},
    {"grid": {"variant": ["numpy"], "seed": f"0-{_HUGE}"}},
    {"grid": {"variant": ["numpy"]}, "x": {"start": -_HUGE}},
    {"grid": {"variant": ["numpy"]}, "x": {"stop": _HUGE}},
    {"grid": {"variant": ["numpy"]}, "x": {"points": _HUGE}},
    {"grid": {"variant": ["numpy"]}, "sample": _HUGE},
    {"grid": {"variant": ["numpy"]}, "sample": {"n": 3, "seed": _HUGE}},
    {"grid": {"variant": ["numpy"]}, "stop_at_gap": _HUGE},
    {"grid": {"variant": ["numpy"]}, "x": {"start": float("-inf")}},
    {"grid": {"variant": ["numpy"]}, "x": {"stop": "1e400"}},
    {"grid": {"variant": ["numpy"]}, "stop_at_gap": float("nan")},
])
def test_a_huge_or_infinite_number_anywhere_in_a_spec_is_a_short_one_line_error(spec):
    with pytest.raises(SweepSpecError) as e:
        build_plan(spec)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_a_huge_number_in_a_flag_is_a_one_line_error():
    for axis in ("seed", "lr", "epochs", "degree"):
        with pytest.raises(SweepSpecError):
            build_plan(None, {"variant": ["numpy"], axis: ["9" * 401]})
    with pytest.raises(SweepSpecError):
        build_plan({"grid": {"variant": ["numpy"]}}, sample="9" * 401)
    with pytest.raises(SweepSpecError):
        build_plan({"grid": {"variant": ["numpy"]}}, stop_at_gap="9" * 401)


def test_minus_zero_is_zero_one_job_one_id():
    """-0.0 == 0.0: the same settings make the same job (it is not trained twice)."""
    def ids(**top):
        return {j.id for j in build_plan({"grid": {"variant": ["numpy", "module"]}, **top}).jobs}

    assert ids(x={"start": -0.0, "stop": 2}) == ids(x={"start": 0.0, "stop": 2}) == ids(
        x={"start": 0, "stop": 2})
    assert ids(x={"start": -2, "stop": -0.0}) == ids(x={"start": -2, "stop": 0.0})
    assert ids(stop_at_gap=-0.0) == ids(stop_at_gap=0.0) == ids(stop_at_gap=0)
    flags = build_plan(None, {"variant": ["numpy"]}, stop_at_gap="-0")
    assert flags.spec["stop_at_gap"] == 0.0 and str(flags.spec["stop_at_gap"]) == "0.0"
    spec = build_plan({"grid": {"variant": ["numpy"]}, "x": {"start": -0.0, "stop": 1}}).spec
    assert str(spec["x"]["start"]) == "0.0"


def test_job_ids_are_those_recorded_before():
    """Ids are kept in databases: the same settings must keep the id they were given (these
    are the ids polyfit gave before -0.0 was made 0.0)."""
    assert [j.id for j in plan({"variant": ["numpy"]}).jobs] == ["4b5f172f0bef43da"]
    assert [j.id for j in build_plan({"grid": {"variant": ["numpy"]},
                                      "x": {"start": 0.0, "stop": 1}}).jobs] == [
        "cef2da40439c088c"]
    p = build_plan({"grid": {"variant": ["module"], "lr": [1e-3, 2e-3], "seed": [0, 5]},
                    "x": {"start": -2, "stop": 2.5, "points": 100}, "stop_at_gap": 1e-4,
                    "target": "cos"})
    assert [j.id for j in p.jobs] == ["2501316ae2ab95c0", "3a578a5a81207fdd",
                                      "6e6b24f3e12b2efe", "5cd7526ea63b0c2c"]
