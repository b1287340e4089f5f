"""JobSpec: defaults from the registry, validation with one-line SpecErrors, JSON round trip."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyfit_models import VARIANTS, JobSpec, PolyfitModelError, SpecError, fields

LESSON_DEFAULTS = {
    "numpy": (1e-6, 3, 2000, "sgd", "float64"),
    "tensor": (1e-6, 3, 2000, "sgd", "float32"),
    "autograd": (1e-6, 3, 2000, "sgd", "float32"),
    "legendre": (5e-6, 3, 2000, "sgd", "float32"),
    "module": (1e-3, 3, 2000, "adam", "float32"),
    "dynamic": (1e-8, 5, 30000, "momentum", "float32"),
}


def valid(**changes):
    base = JobSpec.create("autograd").to_dict()
    base.update(changes)
    return base


@pytest.mark.parametrize("name", list(VARIANTS))
def test_create_fills_the_lessons_defaults(name):
    s = JobSpec.create(name)
    assert (s.lr, s.degree, s.epochs, s.optimizer, s.dtype) == LESSON_DEFAULTS[name]
    assert (s.target, s.x_start, s.x_stop, s.x_points, s.seed) == ("sin", -math.pi, math.pi,
                                                                     2000, 0)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_round_trip_through_json(name):
    s = JobSpec.create(name, seed=7, lr=2e-6)
    d = json.loads(json.dumps(s.to_dict()))
    assert JobSpec.from_dict(d) == s
    # Every setting of the job's declaration but the device (tests/polyfit_models/
    # test_fields.py holds the declaration's own lists).
    assert type(d) is dict and set(d) == set(fields.SETTINGS) - {"device"}


def test_spec_is_frozen_and_hashable():
    s = JobSpec.create("numpy")
    with pytest.raises(AttributeError):
        s.lr = 1.0  # type: ignore[misc]
    assert hash(s) == hash(JobSpec.create("numpy"))


def test_integral_floats_and_ints_are_normalised():
    s = JobSpec.from_dict(valid(degree=3.0, epochs=10.0, lr=1))
    assert (s.degree, s.epochs, s.lr) == (3, 10, 1.0)
    assert type(s.degree) is int and type(s.lr) is float
    assert s == JobSpec.from_dict(valid(degree=3, epochs=10, lr=1.0))


BAD = [
    (dict(lr=-1.0), "lr"), (dict(lr=0.0), "lr"), (dict(lr=10.5), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(lr=float("inf")), "lr"), (dict(lr="1e-3"), "lr"),
    (dict(lr=True), "lr"), (dict(lr=10 ** 400), "lr"),
    (dict(degree=0), "degree"), (dict(degree=15), "degree"), (dict(degree=3.5), "degree"),
    (dict(degree=True), "degree"), (dict(degree="3"), "degree"),
    (dict(seed=-1), "seed"), (dict(seed=2 ** 32), "seed"), (dict(seed=None), "seed"),
    (dict(epochs=0), "epochs"), (dict(epochs=10_000_001), "epochs"),
    (dict(x_points=1), "x_points"), (dict(x_points=10_000_001), "x_points"),
    (dict(x_start=1.0, x_stop=1.0), "x_start"), (dict(x_start=2.0, x_stop=1.0), "x_start"),
    (dict(x_stop=float("inf")), "x_stop"), (dict(x_start=float("nan")), "x_start"),
    (dict(optimizer="lbfgs"), "optimizer"), (dict(optimizer=3), "optimizer"),
    (dict(dtype="float16"), "dtype"), (dict(target="sinc"), "target"),
    (dict(variant="keras"), "variant"), (dict(variant=None), "variant"),
    (dict(x_start=-100.0, x_stop=100.0, degree=10), "degree"),  # x^20 * points overflows f32
]


@pytest.mark.parametrize("changes,field", BAD, ids=[str(c) for c, _ in BAD])
def test_bad_values_raise_one_line_naming_the_field(changes, field):
    with pytest.raises(SpecError) as info:
        JobSpec.from_dict(valid(**changes))
    message = str(info.value)
    assert "\n" not in message and field in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, PolyfitModelError)


def test_constructor_validates_too():
    with pytest.raises(SpecError, match="lr"):
        JobSpec(**valid(lr=-1.0))


def test_degree_range_follows_the_variant():
    with pytest.raises(SpecError, match="degree must be between 4"):
        JobSpec.create("dynamic", degree=3)
    assert JobSpec.create("legendre", degree=1).degree == 1


def test_numpy_takes_only_sgd():
    with pytest.raises(SpecError, match="optimizer"):
        JobSpec.create("numpy", optimizer="adam")


def test_wide_range_is_fine_in_float64_not_float32():
    assert JobSpec.create("tensor", x_start=-100.0, x_stop=100.0, degree=10, dtype="float64")
    with pytest.raises(SpecError, match="float64"):
        JobSpec.create("tensor", x_start=-100.0, x_stop=100.0, degree=10, dtype="float32")


def test_unknown_and_missing_keys():
    with pytest.raises(SpecError, match="unknown job spec key.*'device'"):
        JobSpec.from_dict(valid(device="cpu"))
    d = valid()
    del d["lr"], d["seed"]
    with pytest.raises(SpecError, match="missing key.*lr, seed"):
        JobSpec.from_dict(d)
    d = valid()
    del d["target"], d["x_points"]  # optional: the defaults fill them
    assert JobSpec.from_dict(d) == JobSpec.from_dict(valid())
    with pytest.raises(SpecError, match="mapping"):
        JobSpec.from_dict([("lr", 1.0)])
    with pytest.raises(SpecError, match="unknown"):
        JobSpec.create("numpy", momentum=0.9)


junk_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
    st.sampled_from(list(VARIANTS) + ["sgd", "adam", "float32", "float64", "sin", "exp"]))
field_names = st.sampled_from(list(valid()))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(field_names, st.text(max_size=8), st.integers()), junk_values,
                       max_size=12))
def test_from_dict_raises_only_spec_error_on_junk(data):
    try:
        JobSpec.from_dict(data)
    except SpecError as e:
        assert "\n" not in str(e)


@settings(max_examples=300, deadline=None)
@given(field_names, junk_values)
def test_one_junk_field_in_a_valid_spec_raises_only_spec_error(name, value):
    try:
        s = JobSpec.from_dict(valid(**{name: value}))
    except SpecError as e:
        assert "\n" not in str(e) and len(str(e)) < 300
    else:
        assert JobSpec.from_dict(s.to_dict()) == s


def test_minus_zero_is_normalised_to_zero():
    # -0.0 == 0.0 but serialises as "-0.0": two ids (and two trainings) for one setting.
    spec = JobSpec.create("numpy", x_start=-0.0, x_stop=1.0)
    assert str(spec.x_start) == "0.0" and spec == JobSpec.create("numpy", x_start=0.0, x_stop=1.0)
    assert str(JobSpec.create("module", stop_gap=-0.0).stop_gap) == "0.0"
    assert str(JobSpec.create("numpy", x_start=-1, x_stop=-0.0).to_dict()["x_stop"]) == "0.0"
