"""The live-progress benchmark runs end to end (tiny sizes: its figures are not checked)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.processes import polyfit_env


@pytest.mark.slow  # runs sweeps through real workers
def test_the_benchmark_runs_and_prints_the_ratio():
    r = subprocess.run([sys.executable, "benchmarks/bench_progress.py", "--seeds", "2",
                        "--epochs", "300", "--repeats", "1", "--every", "1", "--workers", "1"],
                       cwd=ROOT, env=polyfit_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "POLYFIT_PROGRESS_S=1:" in r.stdout and "x" in r.stdout.splitlines()[-1]
