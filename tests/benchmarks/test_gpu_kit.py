"""The GPU proof kit (benchmarks/gpu) between device runs: its scripts parse, the wheels it would
carry cover what the device lacks (worked out from metadata, nothing downloaded), and the dry run
(``run.sh --cpu``: emulated devices, tiny sizes) goes through every step to a passing report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

from benchmarks.gpu import wheels
from benchmarks.gpu.kit import STEPS
from tests.support import ROOT

KIT = ROOT / "benchmarks" / "gpu"


@pytest.mark.parametrize("script", ["prepare.sh", "run.sh"])
def test_kit_scripts_are_valid_bash(script):
    r = subprocess.run(["bash", "-n", str(KIT / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_prepare_fetches_the_pins_that_wheels_py_works_out():
    text = (KIT / "prepare.sh").read_text()
    assert "wheels.py pins" in text and "wheels.py check" in text
    assert "--python-version 3.12" in text and "--only-binary=:all:" in text


def test_carried_wheels_cover_every_runtime_dependency_the_device_lacks():
    on_device = wheels.device_packages()
    closure = wheels.project_closure()
    lacking = {wheels.canonical(Requirement(d).name) for d in wheels.project_dependencies()
               if wheels.canonical(Requirement(d).name) not in on_device}
    assert lacking, "the device lacks nothing?"
    assert lacking <= set(closure.carry), lacking - set(closure.carry)
    assert not set(closure.carry) & on_device  # nothing the device has travels
    # A bare image may have no tz database, and celery's workers need the UTC zone.
    assert "tzdata" in closure.carry


def test_carried_wheels_close_over_their_own_requirements():
    """Every requirement of a carried distribution that applies on the device (Python 3.12,
    Linux x86_64) is carried too or on the device, each pinned to one version."""
    on_device = wheels.device_packages()
    closure = wheels.project_closure()
    from importlib import metadata

    for name, version in closure.carry.items():
        if name in wheels.UNDECLARED:  # needed at run time, declared by nobody: pinned there
            continue
        assert metadata.version(name) == version
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if wheels.applies(req, set()):
                dep = wheels.canonical(req.name)
                assert dep in closure.carry or dep in on_device, f"{name} needs {req}"


def test_device_markers_are_the_devices_not_this_machines():
    needed = Requirement('x; python_version >= "3.12" and sys_platform == "linux"')
    windows = Requirement('y; platform_system == "Windows"')
    assert wheels.applies(needed, set()) and not wheels.applies(windows, set())
    assert wheels.applies(Requirement('z; extra == "redis"'), {"redis"})
    assert not wheels.applies(Requirement('z; extra == "redis"'), set())


def _wheel(tmp_path, name: str, version: str, requires: list[str]):
    path = tmp_path / f"{name}-{version}-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}\n\nbody\n".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_wheel_check_finds_a_missing_need_and_two_versions(tmp_path):
    a = _wheel(tmp_path, "alpha", "1.0", ["beta>=2", "numpy", "gamma; sys_platform == 'win32'"])
    b = _wheel(tmp_path, "beta", "1.5", [])
    problems = wheels.check_wheels([a, b], {"numpy"})
    assert len(problems) == 1 and "beta>=2" in problems[0]
    c = _wheel(tmp_path, "alpha", "2.0", [])
    assert any("two versions of alpha" in p for p in wheels.check_wheels([a, b, c], {"numpy"}))
    assert wheels.check_wheels([_wheel(tmp_path, "beta", "2.0", []), a], {"numpy"}) == []


def test_report_counts_a_missing_or_stopped_step_as_failed(tmp_path):
    from benchmarks.gpu.report import write_report

    work = tmp_path / "work"
    (work / "steps").mkdir(parents=True)
    (work / "rc").mkdir()
    for name in STEPS:
        (work / "steps" / f"{name}.json").write_text(json.dumps(
            {"step": name, "passed": True, "error": None, "checks": {"x": {"passed": True}},
             "figures": {}, "notes": [], "seconds": 1}))
    # A step killed by its time limit wrote nothing; one stopped half-way wrote a partial file.
    (work / "steps" / "throughput.json").unlink()
    (work / "rc" / "throughput").write_text("124\n")
    (work / "steps" / "fleet.json").write_text(json.dumps(
        {"step": "fleet", "passed": False, "error": "stopped by signal 15", "checks": {},
         "notes": [], "seconds": 3, "figures": {"big": {"asked": 10, "epochs": 20,
                                                          "submit_s": 1.0}}}))
    assert write_report(work, tmp_path / "out", "cuda") == 1
    report = json.loads((tmp_path / "out" / "gpu-report.json").read_text())
    assert report["failed_steps"] == ["throughput", "fleet"]
    assert report["steps"]["throughput"]["error"] == "no result: timed out"
    text = (tmp_path / "out" / "gpu-report.md").read_text()
    assert "FAILED" in text and "- throughput: no result: timed out" in text


@pytest.mark.slow
def test_the_dry_run_goes_through_every_step_to_a_passing_report(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POLYFIT_", "KIT_", "PYTEST_"))}
    env.update(OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    # A bound on a hung kit only: the dry run's steps have limits of their own (1,320 s in all,
    # room for a cold compile on a busy machine) and take about a minute here.
    r = subprocess.run(["bash", str(KIT / "run.sh"), "--cpu"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    out = tmp_path / "out"
    assert {"gpu-report.json", "gpu-report.md", "gpu-kit.log"} <= {p.name for p in
                                                                  out.iterdir()}
    report = json.loads((out / "gpu-report.json").read_text())
    assert report["dry_run"] and report["passed"] and report["failed_steps"] == []
    assert list(report["steps"]) == list(STEPS)
    for name, step in report["steps"].items():
        assert step["passed"] and step["error"] is None, (name, step)
        assert step["checks"] and step["seconds"] > 0, name

    fleet = report["steps"]["fleet"]["figures"]
    assert fleet["big"]["ended_ok"] == fleet["big"]["asked"] > 0
    assert fleet["big"]["fits_per_min_stored"] > 0
    placed = fleet["mixed"]["placed"]
    assert {p["ran_on"] for p in placed if p["device"] == "cuda"} == {"cuda:0 (emulated on cpu)"}
    assert {p["ran_on"] for p in placed if p["device"] == "cpu"} == {"cpu"}
    numpy_rows = [p for p in placed if p["variant"] == "numpy"]
    assert numpy_rows and all(p["device"] == "cpu" and p["ran_on"] == "cpu" for p in numpy_rows)

    memory = report["steps"]["memory"]
    assert memory["checks"]["batch_halved"]["passed"] is True
    assert memory["figures"]["returned"] == memory["figures"]["jobs"]
    throughput = report["steps"]["throughput"]["figures"]["variants"]
    assert {v["variant"] for v in throughput} >= {"numpy", "autograd", "dynamic"}
    assert all(v["cpu"]["fits_per_min"] > 0 for v in throughput)
    assert "# polyfit GPU proof kit: PASSED" in (out / "gpu-report.md").read_text()
