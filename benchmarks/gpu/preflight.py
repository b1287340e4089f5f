"""The kit's first two steps: ``setup`` (what machine this is, which packages it runs, whether
the carried wheels' needs are met by the device's own packages, repairing them from the
fallback wheels if not) and ``gpu-tests`` (the suite's ``@pytest.mark.gpu`` tests)."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks.gpu import wheels
from benchmarks.gpu.kit import ROOT, Step

#: What polyfit imports at run time, and the test runner.
PACKAGES = ("celery", "kombu", "redis", "sqlalchemy", "click", "numpy", "torch", "pyyaml",
            "matplotlib", "threadpoolctl", "billiard", "vine", "amqp", "pytest")
MODULES = ("celery", "kombu", "redis", "sqlalchemy", "click", "numpy", "torch", "yaml",
           "matplotlib", "threadpoolctl", "polyfit_models", "scheduler.cli", "worker.execute",
           "store")


def _nvidia_smi() -> list[dict] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    cards = []
    for line in out.stdout.strip().splitlines():
        index, name, driver, memory = [part.strip() for part in line.split(",")]
        cards.append({"index": index, "name": name, "driver": driver, "memory": memory})
    return cards


def _package_versions() -> dict:
    from importlib import metadata

    found = {}
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found[name] = None
            continue
        found[name] = {"version": dist.version, "from": str(dist.locate_file(""))}
    return found


def _repair(step: Step, site: Path, fallback_dir: Path, unmet: list[dict]) -> None:
    """Install the fallback wheel of each unmet need into ``site`` where it satisfies it."""
    offered = {wheels.wheel_name_version(p): p for p in fallback_dir.glob("*.whl")}
    chosen = []
    for need in unmet:
        req = wheels.Requirement(need["needs"])
        for (name, version), path in offered.items():
            if name == need["package"] and req.specifier.contains(version, prereleases=True):
                chosen.append(path)
                break
    for path in dict.fromkeys(chosen):
        step.note(f"installing fallback {path.name}: the device's own version falls short")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site),
                        str(path)], check=True)
    importlib.invalidate_caches()


def setup(step: Step, site: Path | None, wheel_dir: Path | None) -> None:
    fig = step.figures
    fig["python"] = sys.version.split()[0]
    fig["executable"] = sys.executable
    fig["platform"] = platform.platform()
    fig["glibc"] = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    fig["cpus"] = len(os.sched_getaffinity(0))

    if wheel_dir is not None and site is not None:
        manifest = wheel_dir / "gpu-kit-wheels.txt"
        paths = [wheel_dir / line.strip() for line in manifest.read_text().splitlines()
                 if line.strip()]
        unmet = wheels.unmet_on_device(paths)
        fig["unmet_before_fallbacks"] = unmet
        if unmet:
            _repair(step, site, wheel_dir / "fallback", unmet)
            unmet = wheels.unmet_on_device(paths)
        fig["unmet"] = unmet
        step.check("carried_needs_met", not unmet,
                   "; ".join(f"{u['wanted_by']} needs {u['needs']}, found {u['installed']}"
                             for u in unmet) or f"{len(paths)} carried wheels, needs met")
    else:
        step.check("carried_needs_met", None, "no carried wheels: the environment's own "
                                              "packages (packages_importable says if enough)")

    failed = []
    for module in MODULES:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - each missing module is reported, not raised
            failed.append(f"{module}: {e.__class__.__name__}: {e}")
    step.check("packages_importable", not failed, "; ".join(failed) or "all import")
    try:  # celery's workers look the UTC zone up at start (see wheels.UNDECLARED)
        import zoneinfo

        zoneinfo.ZoneInfo("UTC")
        step.check("timezone_database", True, "zoneinfo finds UTC")
    except Exception as e:  # noqa: BLE001
        step.check("timezone_database", False, f"zoneinfo cannot find UTC: {e}")
    fig["packages"] = _package_versions()

    import torch

    fig["torch"] = torch.__version__
    fig["torch_cuda"] = torch.version.cuda
    fig["cuda_available"] = torch.cuda.is_available()
    fig["cards"] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            fig["cards"].append({"index": i, "name": p.name,
                                 "memory_gib": round(p.total_memory / 2**30, 2),
                                 "capability": f"{p.major}.{p.minor}",
                                 "multiprocessors": p.multi_processor_count})
    fig["nvidia_smi"] = _nvidia_smi()
    fig["driver"] = fig["nvidia_smi"][0]["driver"] if fig["nvidia_smi"] else None
    if step.mode == "cuda":
        step.check("cuda_available", bool(fig["cards"]),
                   ", ".join(c["name"] for c in fig["cards"]) or "torch sees no CUDA device")
    else:
        step.check("cuda_available", None, "dry run: GPUs are emulated on the CPU")


def gpu_test_files() -> list[Path]:
    """The test modules that hold GPU-marked tests."""
    return sorted(p for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text(errors="replace"))


def gpu_tests(step: Step) -> None:
    files = gpu_test_files()
    step.figures["files"] = [str(p.relative_to(ROOT)) for p in files]
    if not files:
        step.check("tests_found", False, "no test module under tests/ uses pytest.mark.gpu")
        return
    logs = step.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    junit = step.work / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}", *[str(p) for p in files]]
    with open(logs / "gpu-tests.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              timeout=max(10.0, step.left_s() - 5))
    step.figures["exit_code"] = proc.returncode
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.exists():
        for suite in ET.parse(junit).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    step.figures.update(counts)
    tail = (logs / "gpu-tests.log").read_text(errors="replace").strip().splitlines()[-3:]
    step.figures["summary"] = tail[-1] if tail else ""
    step.check("no_failures", proc.returncode in (0,) and not counts["failures"]
               and not counts["errors"],
               f"exit {proc.returncode}: {step.figures['summary']}")
    if step.mode == "cuda":
        step.check("ran_on_cuda", counts["passed"] > 0 and counts["skipped"] == 0,
                   f"{counts['passed']} passed, {counts['skipped']} skipped")
    else:
        step.check("ran_on_cuda", None,
                   f"dry run: {counts['skipped']} of {counts['tests']} skipped without CUDA")
