"""The warm-fleet benchmark runs end to end (a tiny round: its figures are not checked)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.processes import polyfit_env


@pytest.mark.slow  # starts Redis, a worker and four submits
def test_the_benchmark_runs_and_prints_each_side_against_the_loop():
    r = subprocess.run([sys.executable, "benchmarks/bench_warm.py", "--fits", "8",
                        "--repeats", "1", "--sample", "1"],
                       cwd=ROOT, env=polyfit_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line.strip() for line in r.stdout.splitlines()]
    for label in ("lesson loop", "cut into 8 batches", "cut for the fleet that is up"):
        assert any(line.startswith(label) and line.endswith(("1.0x", "x the loop"))
                   for line in lines), r.stdout
