"""benchmarks/bench_goals.py: the verdict against each target and the table (no run), and a
--quick run of two goals end to end (its figures are not checked: tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.bench_goals import QUICK_NOTE, Row, row_verdict, table, verdict
from tests.support import ROOT
from tests.support.processes import polyfit_env


@pytest.mark.parametrize("value,op,target,expected", [
    (9.9, ">=", 10, "missed"), (10.0, ">=", 10, "met"), (85.0, ">=", 80, "met"),
    (1.29, "<=", 1.3, "met"), (1.31, "<=", 1.3, "missed"), (1.25, "<=", 1.25, "met"),
    (0.59, ">=", 0.6, "missed"), (1.0, "<=", 1.05, "met")])
def test_a_figure_meets_its_target_or_misses_it(value, op, target, expected):
    assert verdict(value, op, target) == expected


def test_the_table_has_a_row_per_check_with_its_figure_target_and_verdict():
    rows = [Row("tiny", "tiny sweep / import torch", "<=", 1.3, value=1.29, note="medians"),
            Row("sweep64", "loop / sweep run", ">=", 10, value=9.9),
            Row("peak8192", "marginal / peak", ">=", 0.6, unit="%", value=0.61),
            Row("sweep1024", "Optuna / sweep run", ">=", 160,
                note="not measured: optuna not installed"),
            Row("host", "-", "", None, note="failed: redis went away")]
    lines = table(rows, quick=False, machine_line="machine: x86_64, 2 cores")
    by_goal = {line.split()[0]: line for line in lines[2:7]}
    assert by_goal["tiny"].split()[-3:] == ["<=", "1.3x", "met"] and "1.29x" in by_goal["tiny"]
    assert by_goal["sweep64"].split()[-3:] == [">=", "10x", "missed"]
    assert "61.0%" in by_goal["peak8192"] and by_goal["peak8192"].endswith(">= 60%  met")
    assert by_goal["sweep1024"].endswith("not measured")
    assert by_goal["host"].endswith("failed")
    assert "  sweep1024: not measured: optuna not installed" in lines
    assert lines[-1] == "machine: x86_64, 2 cores"
    assert not any(QUICK_NOTE in line for line in lines)


def test_a_quick_run_is_not_compared_with_the_targets():
    rows = [Row("tiny", "tiny sweep / import torch", "<=", 1.3, value=1.29)]
    lines = table(rows, quick=True, machine_line="machine")
    assert lines[2].endswith("not comparable")
    assert row_verdict(rows[0], quick=True) == "not comparable"
    # fuse=None that did not fuse ran the baseline's own path: no slower for fusing, whatever
    # the noise between two runs of it.
    unfused = Row("fused", "fuse=None / unfused", "<=", 1.05, value=1.13, same_path=True)
    assert row_verdict(unfused, quick=False) == "met (not fused)"
    assert any(QUICK_NOTE in line for line in lines)


@pytest.mark.slow  # starts polyfit, Redis and a worker
def test_a_quick_run_of_two_goals_prints_a_row_for_each_with_a_figure(tmp_path):
    out = tmp_path / "goals.json"
    r = subprocess.run([sys.executable, "benchmarks/bench_goals.py", "--quick", "--only",
                        "tiny,warm64", "--out", str(out)],
                       cwd=ROOT, env=polyfit_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    table_lines = r.stdout.split("\n\n", 1)[1].splitlines()
    for goal in ("tiny", "warm64"):
        rows = [line for line in table_lines if line.startswith(f"{goal} ")]
        assert len(rows) == 1, r.stdout
        assert rows[0].endswith("not comparable"), r.stdout
        assert rows[0].split()[-5].endswith("x"), r.stdout  # the figure, e.g. 1.63x
    assert QUICK_NOTE in r.stdout
    assert any(line.startswith("machine: ") and " cores (" in line and "torch " in line
               for line in table_lines), r.stdout
    figures = json.loads(out.read_text())
    assert figures["quick"] and [row["goal"] for row in figures["rows"]] == ["tiny", "warm64"]
    assert all(row["value"] > 0 for row in figures["rows"])
