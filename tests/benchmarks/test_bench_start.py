"""The fixed-cost benchmark runs end to end (one round: its figures are not checked)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.processes import polyfit_env


@pytest.mark.slow  # starts polyfit and torch many times
def test_the_benchmark_runs_and_prints_each_ratio():
    r = subprocess.run([sys.executable, "benchmarks/bench_start.py", "--repeats", "1"],
                       cwd=ROOT, env=polyfit_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for label in ("import torch", "polyfit --help", "tiny sweep, fresh", "tiny sweep, again",
                  "tiny sweep, fresh, worker started late"):
        assert any(line.startswith(label) and line.endswith("x") for line in lines), r.stdout
