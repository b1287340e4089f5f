"""Exports that stream: ``polyfit results --format csv|json|parquet`` hold the same rows as the
store, and a process exporting ten times more rows does not take ten times the memory."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import datetime

import pytest
from click.testing import CliRunner

from scheduler.cli import cli
from store import create_schema, make_engine
from store.reads import list_jobs
from store.recording import save_sweep
from tests.support import ROOT
from tests.support.database import job_row
from tests.support.processes import polyfit_env
from tests.support.sweeps import finished_sweep


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('export') / 'r.sqlite'}"
    return url, finished_sweep(url)


def run(*args):
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def test_csv_and_json_hold_what_the_store_holds(trained):
    url, sweep_id = trained
    engine = make_engine(url)
    expected = [j.to_dict() for j in list_jobs(engine, sweep_id)]
    engine.dispose()
    as_json = json.loads(run("results", sweep_id, "--db", url, "--format", "json"))
    assert as_json == expected  # the same rows, the same order (by mse), the same values
    rows = list(csv.DictReader(io.StringIO(run("results", sweep_id, "--db", url, "--format",
                                               "csv"))))
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    for got, want in zip(rows, expected):
        assert got["mse"] == ("" if want["mse"] is None else repr(want["mse"]))
        assert json.loads(got["coefficients"]) == want["coefficients"]
        assert got["finished_at"] == want["finished_at"]
    filtered = json.loads(run("results", sweep_id, "--db", url, "--format", "json",
                              "--variant", "legendre", "--limit", "1"))
    assert [r["variant"] for r in filtered] == ["legendre"]


def test_parquet_has_typed_columns(trained, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    url, sweep_id = trained
    path = tmp_path / "jobs.parquet"
    run("results", sweep_id, "--db", url, "--format", "parquet", "-o", str(path))
    frame = pd.read_parquet(path)
    as_json = json.loads(run("results", sweep_id, "--db", url, "--format", "json"))
    assert list(frame["id"]) == [r["id"] for r in as_json]
    assert str(frame["finished_at"].dt.tz) == "UTC"
    assert list(frame["coefficients"].iloc[0]) == as_json[0]["coefficients"]
    # Every column, read back as Python values, is the JSON export's value (a column the
    # Parquet writer types wrongly fails the write or differs here).
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.column_names == list(as_json[0])
    for got, want in zip(table.to_pylist(), as_json):
        for key, value in got.items():
            if isinstance(value, datetime):
                value = value.isoformat()
            assert value == want[key], key
    r = CliRunner().invoke(cli, ["results", sweep_id, "--db", url, "--format", "parquet"])
    assert r.exit_code == 2 and "-o FILE" in r.stderr


def _database(path, jobs: int) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    create_schema(engine)
    save_sweep(engine, "big", "big", {}, (job_row(i, id=f"j{i:09d}") for i in range(jobs)))
    engine.dispose()
    return url


def _peak_mb(url: str, fmt: str, out) -> float:
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "scheduler",
                           "results", "big", "--db", url, "--format", fmt, "-o", str(out)],
                          cwd=ROOT, env=polyfit_env(), capture_output=True, text=True,
                          check=True)
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_memory_stays_flat_in_the_number_of_rows(tmp_path, fmt):
    small = _database(tmp_path / "small.sqlite", 10_000)
    large = _database(tmp_path / "large.sqlite", 100_000)
    a = _peak_mb(small, fmt, tmp_path / f"small.{fmt}")
    b = _peak_mb(large, fmt, tmp_path / f"large.{fmt}")
    # Ten times the rows: the same memory but for a few MB of cursor and buffers (the rows
    # themselves, a list of every one, would take over 100 MB more).
    assert b - a < 25, (a, b)
    assert sum(1 for _ in open(tmp_path / f"large.{fmt}")) >= 100_000


def _fails_on_write(tmp_path, name: str):
    """A path whose writes fail with ENOSPC: a link to /dev/full."""
    import os

    link = tmp_path / name
    os.symlink("/dev/full", link)
    return link


@pytest.mark.parametrize("fmt", ["csv", "json", "table", "parquet"])
def test_an_export_that_cannot_be_written_is_one_line_exit_2(trained, tmp_path, fmt):
    """/dev/full, a link to it, a missing folder: one line naming the file, not an internal
    error; and a file that existed is left as it was, not half-written."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    url, sweep_id = trained
    old = tmp_path / f"old.{fmt}"
    old.write_text("the export of yesterday\n")
    for target in ("/dev/full", str(_fails_on_write(tmp_path, f"full.{fmt}")),
                   str(tmp_path / "missing" / f"x.{fmt}")):
        r = CliRunner().invoke(cli, ["results", sweep_id, "--db", url, "--format", fmt,
                                     "-o", target], catch_exceptions=False)
        assert r.exit_code == 2, r.output
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"Error: cannot write {target}")
        assert "internal error" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([old.name, f"full.{fmt}"])
    # A good export replaces the old file whole.
    r = CliRunner().invoke(cli, ["results", sweep_id, "--db", url, "--format", fmt, "-o",
                                 str(old)], catch_exceptions=False)
    assert r.exit_code == 0 and old.read_bytes() != b"the export of yesterday\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([old.name, f"full.{fmt}"])


def test_an_export_that_fails_half_way_leaves_the_old_file(trained, tmp_path, monkeypatch):
    from polyfit_results import export

    url, sweep_id = trained
    old = tmp_path / "jobs.csv"
    old.write_text("the export of yesterday\n")

    def fail_after_the_header(rows, out, *a):
        out.write("id,mse\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "write_csv", fail_after_the_header)
    r = CliRunner().invoke(cli, ["results", sweep_id, "--db", url, "--format", "csv", "-o",
                                 str(old)], catch_exceptions=False)
    assert r.exit_code == 2 and "No space left on device" in r.stderr
    assert old.read_text() == "the export of yesterday\n"
    assert [p.name for p in tmp_path.iterdir()] == ["jobs.csv"]  # no part file left


def test_a_plot_that_cannot_be_written_is_one_line_exit_2(trained, tmp_path):
    url, sweep_id = trained
    for target in (str(_fails_on_write(tmp_path, "full.png")), str(tmp_path / "no" / "x.png")):
        r = CliRunner().invoke(cli, ["plot", sweep_id, "--db", url, "-o", target],
                               catch_exceptions=False)
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
        assert "internal error" not in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["full.png"]


@pytest.mark.parametrize("args", [["results", "--format", "csv"], ["results"], ["sweeps"]],
                         ids=" ".join)
def test_stdout_on_a_full_disk_is_one_line_exit_2(trained, args):
    url, _ = trained
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "scheduler", *args, "--db", url],
                              stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=polyfit_env(), timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "Error: cannot write the output: No space left on device\n"
