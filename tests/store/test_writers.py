"""Eight real writer processes on one SQLite file: 10,000 jobs claimed, beaten and saved through
``store.claims`` while every process races the others for the same rows. Zero "database is
locked", every job stored exactly once (the benchmark prints the same figures at any size)."""

from __future__ import annotations

import pytest

from benchmarks.bench_writers import run


@pytest.mark.slow  # eight processes
def test_eight_processes_store_10000_jobs_without_a_lock_error(tmp_path):
    figures = run(f"sqlite:///{tmp_path / 'writers.sqlite'}", processes=8, jobs=10_000,
                  batch=125)
    assert figures["locked_errors"] == 0
    assert figures["error_count"] == 0, figures["errors"]
    # Each job claimed by exactly one process and saved once, though all eight tried.
    assert figures["saved"] == figures["saved_distinct"] == 10_000
    assert figures["rows"] == {"succeeded x1": 10_000}
    assert figures["transactions"] >= 8 * 10_000 // 125  # they did collide
