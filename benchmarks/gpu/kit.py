"""The GPU proof kit's steps, one subcommand each, driven by ``benchmarks/gpu/run.sh``.

Each step runs in its own process (a CUDA error or a memory fraction in one cannot leak into the
next), times itself, and writes ``WORK/steps/STEP.json``: its figures, its checks (passed, failed
or not applicable), its notes and any error. A step that raises or is stopped by run.sh's
``timeout`` still writes its file; ``report`` turns the files into ``gpu-report.json`` and
``gpu-report.md`` and exits 1 if any step failed or is missing.

    python -m benchmarks.gpu.kit STEP --work DIR --mode cuda|cpu [--budget S] [--redis URL]

Sizes come from ``SIZES`` (a default for the GPU run, one for the CPU dry run); each can be
overridden by the environment variable ``KIT_<NAME>``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The steps in the order run.sh runs them, with what each one proves.
STEPS = {
    "setup": "the machine, the packages, the carried wheels' needs",
    "gpu-tests": "the test suite's GPU-marked tests (pytest -m gpu)",
    "throughput": "fit_many fits per minute on the device at growing batch sizes, against the "
                  "CPUs",
    "agreement": "the same jobs on the CPU and on the device agree (float64 1e-6, float32 1e-4)",
    "fusion": "fit_many's fused path on the device: compile time, speed against the unfused "
              "path on the same jobs, and agreement with it (float32 1e-4)",
    "fleet": "polyfit worker processes on Redis: a 100,000-job sweep and a mixed cpu/cuda sweep",
    "memory": "a CUDA out-of-memory halves the batch and loses no job; memory returns to its "
              "baseline after each batch",
}

#: name: (GPU run default, CPU dry-run default, what it sizes). Override with KIT_<NAME>.
SIZES: dict[str, tuple[object, object, str]] = {
    "TP_START": (1024, 8, "throughput: first batch size on the device"),
    "TP_FACTOR": (4, 4, "throughput: each batch size is this many times the last"),
    "TP_MAX_JOBS": (1048576, 32, "throughput: largest batch size tried"),
    "TP_MEM_SHARE": (0.4, 0.4, "throughput: a batch may need at most this share of the free "
                               "device memory (by bytes_per_job)"),
    "TP_CPU_JOBS": (128, 8, "throughput: jobs per variant on the CPUs (extrapolated per fit)"),
    "TP_EPOCHS": (2000, 20, "throughput: epochs (the lesson's 2000)"),
    "TP_DYNAMIC_EPOCHS": (2000, 20, "throughput: epochs of the dynamic variant (its own default "
                                    "is 30000)"),
    "AG_JOBS": (8, 2, "agreement: jobs (seeds) per variant and dtype"),
    "AG_EPOCHS": (2000, 20, "agreement: epochs"),
    "AG_DYNAMIC_EPOCHS": (2000, 20, "agreement: epochs of the dynamic variant"),
    "FU_VARIANTS": ("tensor,autograd,legendre,module,dynamic", "autograd",
                    "fusion: variants whose fused path is measured"),
    "FU_JOBS": (16384, 8, "fusion: jobs per variant (its default lr, seeds counting up)"),
    "FU_EPOCHS": (2000, 20, "fusion: epochs"),
    "FLEET_JOBS": (100000, 200, "fleet: jobs of the autograd sweep on cuda"),
    "FLEET_LRS": ("5e-7,1e-6,1.5e-6,2e-6", "1e-6,2e-6", "fleet: learning rates of that sweep "
                                                         "(seeds fill up the jobs)"),
    "FLEET_EPOCHS": (2000, 20, "fleet: epochs of that sweep"),
    "MIXED_SEEDS": (8, 2, "fleet: seeds of the mixed sweep (every variant x cpu,cuda)"),
    "MIXED_EPOCHS": (2000, 20, "fleet: epochs of the mixed sweep"),
    "MIXED_RESERVE_S": (45, 25, "fleet: seconds kept for the mixed sweep"),
    "CPU_CONCURRENCY": ("", "1", "fleet: --concurrency of the CPU worker (empty: one per core)"),
    "MEM_VARIANT": ("autograd", "autograd", "memory: variant of the out-of-memory batch"),
    "MEM_JOBS": (32768, 48, "memory: jobs in the out-of-memory batch"),
    "MEM_BATCH": (4096, 16, "memory: jobs per variant in the baseline batches"),
    "MEM_EPOCHS": (200, 10, "memory: epochs"),
    "MEM_LIMIT_SHARE": (0.4, 0.4, "memory: the memory limit, as a share of the batch's peak "
                                  "(two halvings to fit)"),
    "MEM_TOLERANCE_MIB": (1, 1, "memory: allowed growth of allocated memory after a batch"),
}


def size(name: str, mode: str):
    """The size ``name`` for ``mode`` ("cuda" or "cpu"), from KIT_<NAME> if set."""
    gpu, cpu, _ = SIZES[name]
    default = gpu if mode == "cuda" else cpu
    raw = os.environ.get(f"KIT_{name}")
    if raw is None or raw == "":
        return default
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return raw
    return int(float(raw)) if isinstance(default, int) else float(raw)


class StepTimeout(BaseException):
    """Raised in a step when run.sh's ``timeout`` sends SIGTERM: the step writes what it has."""


@dataclass
class Step:
    """What one step found; written to WORK/steps/NAME.json."""

    name: str
    mode: str
    work: Path
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    figures: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    error: str | None = None

    def check(self, name: str, ok: bool | None, detail: str = "") -> bool | None:
        """Record a check: True passed, False failed, None not applicable in this mode."""
        self.checks[name] = {"passed": ok, "detail": detail}
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"[{self.name}] {text}", flush=True)

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    @property
    def passed(self) -> bool:
        return self.error is None and all(c["passed"] is not False for c in self.checks.values())

    def to_dict(self) -> dict:
        return {"step": self.name, "what": STEPS.get(self.name, ""), "mode": self.mode,
                "passed": self.passed, "seconds": round(time.monotonic() - self.started, 2),
                "budget_s": self.budget_s, "error": self.error, "checks": self.checks,
                "figures": self.figures, "notes": self.notes}


def run_step(step: Step, body) -> int:
    def _stop(signum, _frame):
        raise StepTimeout(f"stopped by signal {signum} (run.sh's time limit for this step)")

    signal.signal(signal.SIGTERM, _stop)
    try:
        body(step)
    except StepTimeout as e:
        step.error = str(e)
    except Exception as e:  # noqa: BLE001 - a step's failure is a finding, not a crash
        step.error = f"{e.__class__.__name__}: {e}"
        traceback.print_exc()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        out = step.work / "steps"
        out.mkdir(parents=True, exist_ok=True)
        result = step.to_dict()
        (out / f"{step.name}.json").write_text(json.dumps(result, indent=1, default=str))
        verdict = "passed" if step.passed else "FAILED"
        print(f"[{step.name}] {verdict} in {result['seconds']} s"
              + (f": {step.error}" if step.error else ""), flush=True)
        for name, c in step.checks.items():
            if c["passed"] is False:
                print(f"[{step.name}]   check {name} failed: {c['detail']}", flush=True)
    return 0 if step.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=[*STEPS, "report", "free-port", "sizes"])
    parser.add_argument("--work", type=Path, help="the run's working folder")
    parser.add_argument("--mode", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: the real run; cpu: the dry run with emulated devices")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds this step may take (run.sh's limit, less a margin)")
    parser.add_argument("--redis", default=None, help="fleet: the broker URL")
    parser.add_argument("--site", type=Path, default=None, help="setup: the carried wheels' "
                        "install folder (absent in the dry run)")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="setup: the folder of carried wheels (its gpu-kit-wheels.txt)")
    parser.add_argument("--out", type=Path, default=None, help="report: where the report goes")
    args = parser.parse_args(argv)

    if args.step == "free-port":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            print(s.getsockname()[1])
        return 0
    if args.step == "sizes":
        for name, (gpu, cpu, what) in SIZES.items():
            print(f"KIT_{name:<18} {size(name, args.mode)!s:<24} {what}")
        return 0
    if args.step == "report":
        from benchmarks.gpu.report import write_report

        return write_report(args.work, args.out, args.mode)

    step = Step(args.step, args.mode, args.work, args.budget)
    if args.step == "setup":
        from benchmarks.gpu.preflight import setup

        return run_step(step, lambda s: setup(s, args.site, args.wheels))
    if args.step == "gpu-tests":
        from benchmarks.gpu.preflight import gpu_tests

        return run_step(step, gpu_tests)
    if args.step == "fleet":
        from benchmarks.gpu.fleet import fleet

        return run_step(step, lambda s: fleet(s, args.redis))
    from benchmarks.gpu import numerics

    return run_step(step, getattr(numerics, args.step))


if __name__ == "__main__":
    sys.exit(main())
