"""The fused path (``fit_many(fuse=True)``, see ``polyfit_models/fusion.py``): the same results as
the unfused path within the batch-invariance bounds, batch invariance of its own, one compile per
configuration whatever the batch size, and a fallback to the unfused path where compiling fails.

These tests run the very code a GPU runs fused (the device is an argument); only the kernels
differ (C++ here, Triton there). The first run on a machine compiles each configuration (a few
seconds each); inductor's disk cache makes later runs trace only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import polyfit_models
import polyfit_models.runner as runner
from polyfit_models import (
    VARIANTS,
    FuseSettings,
    SettingError,
    fit,
    fit_many,
    fuse_settings,
    fusion,
)
from tests.polyfit_models.test_models_batching import EPOCHS, MIXES, close, mixed_batch
from tests.support.numerics import TORCH_VARIANTS, cuda_or_skip, spec

FUSED_MIXES = [(name, optimizer) for name, optimizer in MIXES if name in TORCH_VARIANTS]
#: Settings whose result is not determined by the problem to any tolerance: the Legendre model
#: with RMSprop at lr 1e-2 and 1e-1 amplifies any difference in rounding (RMSprop's steps have
#: the size of the lr whatever the gradient, and near the optimum the gradient of ``a`` keeps
#: changing sign, so a difference of one ulp decides the direction of a whole step). The fused
#: and unfused paths sum in different orders, and so does one CPU against another (the vector
#: width decides the order of a reduction): in float64, two orders 1e-16 apart end 0.8 apart in
#: the coefficients after 300 epochs on an Intel Xeon, 0.1 apart in the loss on an AMD EPYC. A
#: tolerance there would be a bet on the machine. So on these settings the two paths are
#: compared on what the problem determines (status, divergence, the epochs of the curve) and
#: each path's batch invariance (which holds exactly: a job's arithmetic does not depend on its
#: mates), and the numbers are compared on calm settings of the same configuration instead.
CHAOTIC = {("legendre", "rmsprop")}
#: Tests that compile (seconds per configuration, tens on a cold cache): the slow tier.
COMPILES = pytest.mark.slow
#: Learning rates of the chaotic configurations at which, in 300 epochs, the parameters stay
#: far from the optimum, every gradient keeps its sign, and the two paths agree to 1e-16 in
#: float64 and 1e-7 in float32: the numeric comparison runs here, with the usual tolerances.
CALM_LRS = {("legendre", "rmsprop"): (1e-5, 3e-5, 1e-4)}


def calm_batch(name, optimizer, dtype):
    """``mixed_batch``, at the calm learning rates of a chaotic configuration."""
    specs = mixed_batch(name, optimizer, dtype)
    lrs = CALM_LRS.get((name, optimizer))
    if lrs is None:
        return specs
    by_lr = dict(zip(MIXES[name, optimizer], lrs))
    return [s.with_lr_and_seed(by_lr[s.lr], s.seed) for s in specs]


def compiled_frames() -> int:
    """How many times dynamo has compiled a frame in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@COMPILES
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-4), ("float64", 1e-6)])
@pytest.mark.parametrize("name,optimizer", FUSED_MIXES)
def test_fused_equals_unfused(name, optimizer, dtype, rtol):
    specs = calm_batch(name, optimizer, dtype)
    for fused, unfused in zip(fit_many(specs, fuse=True), fit_many(specs, fuse=False)):
        assert fused.status == unfused.status
        assert fused.diverged_at_epoch == unfused.diverged_at_epoch
        assert close(fused.coefficients, unfused.coefficients, rtol), (fused, unfused)
        assert fused.final_loss == pytest.approx(unfused.final_loss, rel=rtol * 10)
        assert [e for e, _ in fused.loss_curve] == [e for e, _ in unfused.loss_curve]
        assert np.allclose([v for _, v in fused.loss_curve], [v for _, v in unfused.loss_curve],
                           rtol=rtol * 10)


@COMPILES
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,optimizer", sorted(CHAOTIC))
def test_chaotic_settings_agree_on_what_the_problem_determines(name, optimizer, dtype):
    specs = mixed_batch(name, optimizer, dtype)
    fused, unfused = fit_many(specs, fuse=True), fit_many(specs, fuse=False)
    for s, f, u in zip(specs, fused, unfused):
        assert f.status == u.status == "succeeded", s  # RMSprop's bounded steps: no divergence
        assert f.diverged_at_epoch is None and u.diverged_at_epoch is None
        assert [e for e, _ in f.loss_curve] == [e for e, _ in u.loss_curve]
        assert np.isfinite(f.final_loss) and np.isfinite(u.final_loss)
    # Each path on its own is batch invariant, to the last bit (the unfused path's twin is in
    # test_models_batching): a job trains the same next to any mates, chaotic or not.
    for s, together in zip(specs, fused):
        alone = fit(s, fuse=True)
        assert together.coefficients == alone.coefficients, s
        assert together.loss_curve == alone.loss_curve, s


@COMPILES
@pytest.mark.parametrize("name", TORCH_VARIANTS)
def test_a_fused_job_in_a_mixed_batch_equals_the_fused_job_alone(name):
    optimizer = VARIANTS[name].defaults["optimizer"]
    specs = mixed_batch(name, optimizer, "float32")
    for s, together in zip(specs, fit_many(specs, fuse=True)):
        alone = fit(s, fuse=True)  # a batch of one: trained next to a copy of itself
        assert together.status == alone.status
        assert together.diverged_at_epoch == alone.diverged_at_epoch
        assert close(together.coefficients, alone.coefficients, 1e-4)


@COMPILES
@pytest.mark.parametrize("name", TORCH_VARIANTS)
def test_fused_results_are_deterministic_per_seed(name):
    specs = [spec(name, seed=s, epochs=150) for s in (3, 4, 5)]
    first = fit_many(specs, fuse=True)
    fit_many([spec(name, seed=9, epochs=20)], fuse=True)
    again = fit_many(specs, fuse=True)
    assert [r.coefficients for r in first] == [r.coefficients for r in again]
    assert [r.loss_curve for r in first] == [r.loss_curve for r in again]
    assert first[0].coefficients != first[1].coefficients  # the seed drives the start


@COMPILES
@pytest.mark.parametrize("name", TORCH_VARIANTS)
def test_one_compile_serves_every_batch_size_and_the_final_pass(name):
    fit_many([spec(name, seed=s, epochs=3) for s in range(5)], fuse=True)
    before = compiled_frames()
    for jobs in (2, 1, 9, 4, 33):  # 4: a batch as big as the degree + 1 (duck sizing)
        lrs = (VARIANTS[name].defaults["lr"], 2 * VARIANTS[name].defaults["lr"])
        fit_many([spec(name, seed=s, lr=lrs[s % 2], epochs=3) for s in range(jobs)], fuse=True)
    assert compiled_frames() == before


@COMPILES
def test_diverged_fused_job_does_not_stop_its_batch():
    ok = spec("autograd", lr=1e-6, seed=1, epochs=EPOCHS)
    bad = spec("autograd", lr=1e-2, seed=2, epochs=EPOCHS)
    together = fit_many([bad, ok], fuse=True)
    assert [r.status for r in together] == ["diverged", "succeeded"]
    assert together[0].diverged_at_epoch == fit(bad, fuse=False).diverged_at_epoch
    assert together[1].loss_curve[-1][0] == EPOCHS - 1


def test_default_fuses_only_where_it_pays(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "_fused_ready", set())
    monkeypatch.setattr(runner, "_compile_marks", None)
    small = spec("autograd", epochs=100)
    assert not runner._fuses(None, small, 1000, torch.device("cpu"))
    # 1,000 lesson fits: fused where this machine has the compile on disk, not where it would
    # be compiled cold (18 to 23 s, more than fusing saves)
    big = spec("autograd", epochs=2000, x_points=2000)
    assert not runner._fuses(None, big, 1000, torch.device("cpu"))
    runner.remember_compiles(tmp_path)
    assert not runner._fuses(None, big, 1000, torch.device("cpu"))
    runner._note_compiled(runner._fuse_config(big, torch.device("cpu")))
    assert runner._fuses(None, big, 1000, torch.device("cpu"))
    assert not runner._fuses(None, spec("autograd", epochs=2000, x_points=2000, degree=4), 1000,
                             torch.device("cpu"))  # another configuration: still cold
    huge = spec("autograd", epochs=8000, x_points=2000, degree=4)  # 4x the work: pays cold
    assert runner._fuses(None, huge, 1000, torch.device("cpu"))
    assert not runner._fuses(None, big, runner.AUTO_FUSE_MIN_JOBS - 1, torch.device("cpu"))
    assert not runner._fuses(False, big, 1000, torch.device("cpu"))
    assert runner._fuses(True, small, 1, torch.device("cpu"))
    assert not runner._fuses(True, spec("numpy"), 1000, torch.device("cpu"))  # no fused path
    # a configuration compiled in this process already is fused from the smallest batch on
    runner._fused_ready.add(runner._fuse_config(small, "cpu"))
    assert runner._fuses(None, small, runner.AUTO_FUSE_MIN_JOBS, torch.device("cpu"))


@COMPILES
def test_a_fused_training_notes_its_compile_for_the_next_process(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "_fused_ready", set())
    monkeypatch.setattr(runner, "_compile_marks", None)
    runner.remember_compiles(tmp_path / "cache")
    jobs = [spec("autograd", lr=1e-6, seed=s, epochs=EPOCHS) for s in range(2)]
    config = runner._fuse_config(jobs[0], torch.device("cpu"))
    assert not runner._compiled_here(config)
    fit_many(jobs, fuse=False)
    assert not runner._compiled_here(config)  # unfused: nothing compiled
    fit_many(jobs, fuse=True)
    assert runner._compiled_here(config)
    assert [p.name for p in (tmp_path / "cache" / "polyfit-fused").iterdir()] == [
        f"autograd-3-float32-cpu-torch-{torch.__version__}"]


def same_fit(a, b) -> bool:
    return {**a.to_dict(), "duration_s": 0} == {**b.to_dict(), "duration_s": 0}


def test_a_compile_failure_falls_back_to_the_unfused_path(monkeypatch, caplog):
    from torch._dynamo.exc import TorchDynamoException

    def failing(fn, key, batched=(0,)):
        def call(*args):
            raise TorchDynamoException("no C++ compiler here")
        return call

    monkeypatch.setattr(fusion, "compiled", failing)
    monkeypatch.setattr(runner, "_fuse_failed", set())
    s = spec("autograd", degree=2, epochs=300, seed=7)
    with caplog.at_level(logging.WARNING, logger="polyfit_models.runner"):
        fused = fit(s, fuse=True)
    assert "training it unfused" in caplog.text and "no C++ compiler" in caplog.text
    assert same_fit(fused, fit(s, fuse=False))
    assert not runner._fuses(True, s, 10, torch.device("cpu"))  # not tried again


def test_errors_of_the_fit_itself_are_not_taken_for_compile_failures(monkeypatch):
    def broken(fn, key, batched=(0,)):
        def call(*args):
            raise RuntimeError("a bug in a variant")
        return call

    monkeypatch.setattr(fusion, "compiled", broken)
    with pytest.raises(RuntimeError, match="a bug in a variant"):
        fit(spec("autograd", epochs=10), fuse=True)


def test_running_out_of_memory_while_compiling_is_not_a_compile_failure():
    from torch._dynamo.exc import TorchDynamoException

    wrapped = TorchDynamoException("autotuning failed")
    wrapped.__cause__ = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    assert not fusion.is_compile_error(wrapped)  # the worker's halving must see it
    assert fusion.is_compile_error(TorchDynamoException("g++: not found"))
    assert not fusion.is_compile_error(RuntimeError("a bug"))


@pytest.mark.slow
def test_without_a_cxx_compiler_fused_fits_run_unfused(tmp_path):
    # A fresh process, an empty compile cache and a C++ compiler that does not exist: the
    # fused path fails to compile for real, and the fit is the unfused one.
    code = ("import torch; torch.set_num_threads(1)\n"
            "from polyfit_models import JobSpec, fit\n"
            "s = JobSpec.create('tensor', epochs=50, seed=3)\n"
            "print(fit(s, fuse=True).coefficients == fit(s, fuse=False).coefficients)\n")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=str(Path(polyfit_models.__file__).parents[1]),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
    assert "training it unfused" in out.stderr


def test_fitting_without_fusing_does_not_load_the_compiler():
    # dynamo and inductor take seconds to import: a process that never fuses never pays that
    code = ("import sys; from polyfit_models import JobSpec, fit; "
            "fit(JobSpec.create('autograd', epochs=20)); "
            "print('torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(Path(polyfit_models.__file__).parents[1]))
    assert out.stdout.split() == ["False", "False"]


def test_fuse_settings_come_from_the_mapping_the_edge_hands_in(tmp_path):
    assert fuse_settings({}, tmp_path) == FuseSettings(None, tmp_path / ".cache/polyfit/compile")
    assert fuse_settings({"POLYFIT_FUSE": "0"}, tmp_path).fuse is False
    assert fuse_settings({"POLYFIT_FUSE": " On "}, tmp_path).fuse is True
    assert fuse_settings({"POLYFIT_FUSE": "auto"}, tmp_path).fuse is None
    assert fuse_settings({"XDG_CACHE_HOME": "/c"}, tmp_path).cache_dir == Path("/c/polyfit/compile")
    assert fuse_settings({"POLYFIT_COMPILE_CACHE": "/k", "XDG_CACHE_HOME": "/c"},
                         tmp_path).cache_dir == Path("/k")
    with pytest.raises(SettingError, match="POLYFIT_FUSE must be auto, 1 or 0"):
        fuse_settings({"POLYFIT_FUSE": "maybe"}, tmp_path)
    env: dict[str, str] = {}
    fuse_settings({}, tmp_path).apply(env)
    assert env == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / ".cache/polyfit/compile")}
    env = {"TORCHINDUCTOR_CACHE_DIR": "/mine"}
    fuse_settings({}, tmp_path).apply(env)
    assert env == {"TORCHINDUCTOR_CACHE_DIR": "/mine"}  # torch's own setting wins


@pytest.mark.gpu
@pytest.mark.parametrize("name", TORCH_VARIANTS)
def test_fused_cuda_matches_cpu(name):
    device = cuda_or_skip()
    specs = [spec(name, seed=s, epochs=300, dtype="float64") for s in range(3)]
    for a, b in zip(fit_many(specs, device=device, fuse=True), fit_many(specs, fuse=False)):
        assert a.status == b.status
        assert a.coefficients == pytest.approx(b.coefficients, rel=1e-6, abs=1e-9)
