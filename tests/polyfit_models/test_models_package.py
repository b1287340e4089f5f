"""The package as a whole: a pure core, the registry, devices, results as JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import polyfit_models
from polyfit_models import (
    DTYPES,
    OPTIMIZERS,
    TARGETS,
    VARIANTS,
    DeviceError,
    PolyfitModelError,
    SpecError,
    Variant,
    batch_key,
    bytes_per_job,
    fit,
    fit_many,
)
from polyfit_models.fields import VARIANT_AXES
from tests.support.numerics import cuda_or_skip, spec

PACKAGE = Path(polyfit_models.__file__).parent
INFRA = ["celery", "redis", "sqlalchemy", "click", "kombu", "yaml"]


def test_import_pulls_in_no_infrastructure():
    code = ("import sys, polyfit_models; "
            f"print(sorted(m for m in {INFRA!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(PACKAGE.parent))
    assert out.stdout.strip() == "[]"


def test_specs_registry_and_batching_load_without_torch():
    # torch costs seconds to import; a scheduler that only plans jobs must not pay for it.
    code = ("import sys, polyfit_models as m; "
            "s = m.JobSpec.create('legendre', seed=3); "
            "m.batch_key(s); m.bytes_per_job(s); "
            "m.VARIANTS['dynamic'].monomial([1, 2, 3, 4, 5], 6); "
            "print('torch' in sys.modules); m.fit; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(PACKAGE.parent))
    assert out.stdout.split() == ["False", "True"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'fit_all'"):
        polyfit_models.fit_all


def test_core_reads_no_environment_and_sets_no_threads():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for forbidden in ("os.environ", "getenv", "CUDA_VISIBLE_DEVICES", "set_num_threads",
                          "manual_seed", "np.random.seed"):
            assert forbidden not in text, (path.name, forbidden)


def test_no_string_branches_on_variant_names():
    names = "|".join(VARIANTS)
    pattern = re.compile(rf"""(==|!=)\s*["']({names})["']""")
    for path in PACKAGE.rglob("*.py"):
        assert not pattern.search(path.read_text()), path.name


def test_registry_is_ordered_and_complete():
    assert list(VARIANTS) == ["numpy", "tensor", "autograd", "legendre", "module", "dynamic"]
    assert OPTIMIZERS == ("sgd", "momentum", "adam", "rmsprop")
    assert DTYPES == ("float32", "float64") and set(TARGETS) == {"sin", "cos", "exp", "tanh"}
    for name, v in VARIANTS.items():
        assert isinstance(v, Variant) and v.name == name and "\n" not in v.summary
        assert v.loss in ("sse", "mse")
        assert set(v.defaults) == {"lr", "degree", "epochs", "optimizer", "dtype"}
        assert set(v.axes) <= set(VARIANT_AXES)
        assert v.min_degree <= v.defaults["degree"] <= v.max_degree
        assert v.defaults["optimizer"] in v.optimizers
    assert VARIANTS["numpy"].devices == ("cpu",) and VARIANTS["numpy"].optimizers == ("sgd",)
    assert VARIANTS["dynamic"].min_degree == 4


@pytest.mark.parametrize("name,degree,count", [
    ("numpy", 3, 4), ("tensor", 5, 6), ("autograd", 1, 2), ("legendre", 6, 4), ("module", 3, 4),
    ("dynamic", 7, 5)])
def test_coefficient_counts(name, degree, count):
    assert VARIANTS[name].n_coefficients(degree) == count
    assert len(fit(spec(name, degree=degree, epochs=5)).coefficients) == count


def test_exception_tree():
    for cls in (SpecError, DeviceError):
        assert issubclass(cls, PolyfitModelError) and cls.__doc__.startswith("Raised when")
    assert issubclass(SpecError, ValueError)


def test_numpy_on_cuda_is_a_spec_error_whatever_the_machine():
    with pytest.raises(SpecError, match="numpy runs on cpu only"):
        fit(spec("numpy"), device="cuda")
    with pytest.raises(SpecError, match="numpy"):
        fit_many([spec("tensor"), spec("numpy")], device="cuda:0")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "", 3.5, "mps"])
def test_bad_devices_are_spec_errors(device):
    with pytest.raises(SpecError, match="device"):
        fit(spec("tensor", epochs=1), device=device)


def test_missing_cuda_is_a_device_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="not available"):
        fit(spec("tensor", epochs=1), device="cuda")


def test_accepts_a_torch_device():
    assert fit(spec("tensor", epochs=5), device=torch.device("cpu")).status == "succeeded"


def test_fit_many_rejects_non_specs():
    with pytest.raises(SpecError, match="JobSpec"):
        fit_many([spec("tensor").to_dict()])


def test_batch_key_ignores_exactly_lr_and_seed():
    a = spec("autograd")
    assert batch_key(a) == batch_key(spec("autograd", lr=3e-6, seed=9))
    for change in [dict(degree=2), dict(epochs=10), dict(optimizer="adam"), dict(target="cos"),
                   dict(x_start=-1.0), dict(x_stop=1.0), dict(x_points=100),
                   dict(dtype="float64")]:
        assert batch_key(spec("autograd", **change)) != batch_key(a), change
    assert batch_key(spec("tensor")) != batch_key(spec("autograd"))


def test_bytes_per_job_grows_with_points_and_dtype():
    small = bytes_per_job(spec("module", x_points=1000))
    assert bytes_per_job(spec("module", x_points=2000)) > 1.9 * small - 2048
    assert bytes_per_job(spec("module", dtype="float64")) > bytes_per_job(spec("module"))
    assert 2000 * 4 * 2 < bytes_per_job(spec("tensor")) < 2000 * 8 * 20


def test_a_result_is_json_safe():
    r = fit(spec("legendre", epochs=250))
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d == r.to_dict()
    assert r.loss_curve == [[99, r.loss_curve[0][1]], [199, r.loss_curve[1][1]]]


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "numpy"])
def test_cuda_matches_cpu(name):
    device = cuda_or_skip()
    specs = [spec(name, seed=s, epochs=300, dtype="float64") for s in range(3)]
    for a, b in zip(fit_many(specs, device=device), fit_many(specs)):
        assert a.status == b.status
        assert a.coefficients == pytest.approx(b.coefficients, rel=1e-6, abs=1e-9)


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "numpy"])
def test_bytes_per_job_covers_the_measured_cuda_peak(name):
    device = cuda_or_skip()
    specs = [spec(name, seed=s, epochs=200, x_points=20000) for s in range(64)]
    fit_many(specs[:1], device=device)  # warm up allocator and kernels
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fit_many(specs, device=device)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= 64 * bytes_per_job(specs[0]) * 1.1
