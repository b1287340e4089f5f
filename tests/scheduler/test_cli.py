"""The CLI through Click's CliRunner: each command, and the bad-input paths (exit 2, one line on
stderr, no traceback, nothing written)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from polyfit_models import VARIANTS
from scheduler.cli import cli


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("POLYFIT_DB_URL", "POLYFIT_BROKER_URL", "POLYFIT_MAX_JOBS"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def _run(*args, **kw):
        return runner.invoke(cli, list(args), catch_exceptions=False, **kw)

    return _run


def _one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output


def test_variants_lists_every_variant_with_its_axes(run):
    r = run("variants")
    assert r.exit_code == 0
    lines = [line for line in r.stdout.strip().splitlines() if not line.startswith(" ")]
    assert [line.split()[0] for line in lines] == list(VARIANTS)
    assert all("axes:" in line for line in lines)
    # The lesson's lr for dynamic barely moves it under the mean loss: the listing says so,
    # under its line, with an lr that learns.
    notes = [line.strip() for line in r.stdout.splitlines() if line.startswith(" ")]
    assert notes == [f"note: {VARIANTS['dynamic'].note}"]
    assert "lr 1e-5 to 2e-5 learns" in notes[0]


def test_the_dynamic_notes_lr_is_what_makes_it_learn():
    # The note's figures, checked at a tenth of the epochs (the note's 30,000 take a minute):
    # the lesson's lr barely moves it, 2e-5 learns, 5e-5 diverges.
    from polyfit_models import JobSpec, fit_many

    lesson, learns, blows = fit_many([JobSpec.create("dynamic", lr=lr, epochs=3000)
                                      for lr in (1e-8, 2e-5, 5e-5)])
    assert lesson.mse > 4.0 and learns.mse < 0.5 and learns.status == "succeeded"  # 11, 0.15
    assert blows.status == "diverged"


def test_submit_records_the_sweep_and_prints_its_id_last(run, tmp_path):
    r = run("sweep", "submit", "--variant", "numpy,autograd", "--seed", "0-2", "--epochs", "5")
    assert r.exit_code == 0, r.output
    sweep_id = r.stdout.strip().splitlines()[-1]
    assert (tmp_path / "polyfit.sqlite").exists()
    assert (tmp_path / "polyfit-broker.sqlite").exists()  # the embedded broker, no server
    s = run("status", sweep_id, "--json")
    data = json.loads(s.stdout)
    assert data["total"] == 6 and data["counts"] == {"queued": 6} and data["done"] is False
    # Submitting again does not duplicate work.
    r2 = run("sweep", "submit", "--variant", "numpy,autograd", "--seed", "0-2", "--epochs", "5")
    assert r2.stdout.strip().splitlines()[-1] == sweep_id
    assert json.loads(run("status", "--json").stdout)["total"] == 6


def test_results_formats_parse(run):
    sweep_id = run("sweep", "submit", "--variant", "numpy", "--seed", "0-3", "--epochs",
                   "3").stdout.split()[-1]
    out = run("results", sweep_id, "--format", "json").stdout
    rows = json.loads(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"queued"}
    assert {"id", "sweep_id", "variant", "lr", "mse", "optimum_mse", "coefficients",
            "attempts"} <= set(rows[0])
    rows = list(csv.DictReader(io.StringIO(run("results", "--format", "csv").stdout)))
    assert len(rows) == 4 and rows[0]["variant"] == "numpy"
    title, *table = run("results", "--limit", "2").stdout.strip().splitlines()
    assert title.startswith("jobs of sweep ")
    assert table[0].split()[:3] == ["id", "variant", "lr"] and len(table) == 4


def test_sql_reads_and_refuses_writes(run, tmp_path):
    run("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "3")
    r = run("sql", "SELECT variant, count(*) AS n FROM jobs GROUP BY variant", "--format",
            "json")
    assert json.loads(r.stdout) == [{"variant": "numpy", "n": 2}]
    before = (tmp_path / "polyfit.sqlite").read_bytes()
    for stmt in ("DELETE FROM jobs", "UPDATE jobs SET lr = 1", "DROP TABLE jobs",
                 f"ATTACH DATABASE '{tmp_path / 'x.sqlite'}' AS x",
                 "PRAGMA journal_mode=DELETE", "CREATE TABLE t (a)",
                 "SELECT 1; DELETE FROM jobs"):
        _one_line_error(run("sql", stmt))
    assert not (tmp_path / "x.sqlite").exists()
    assert json.loads(run("sql", "SELECT count(*) AS n FROM jobs", "--format",
                          "json").stdout) == [{"n": 2}]
    assert (tmp_path / "polyfit.sqlite").read_bytes() == before


def test_cancel_then_resume(run):
    sweep_id = run("sweep", "submit", "--variant", "numpy", "--seed", "0-2", "--epochs",
                   "3").stdout.split()[-1]
    assert "3 jobs cancelled" in run("cancel", sweep_id).stdout
    assert json.loads(run("status", sweep_id, "--json").stdout)["counts"] == {"cancelled": 3}
    r = run("sweep", "resume", sweep_id)
    assert r.exit_code == 0 and "3 jobs re-enqueued" in r.stdout
    assert r.stdout.split()[-1] == sweep_id


def test_a_cancelled_job_stays_cancelled_when_its_sweep_is_submitted_again(run):
    args = ["sweep", "submit", "--variant", "numpy", "--seed", "0-2", "--epochs", "3"]
    sweep_id = run(*args).stdout.split()[-1]
    assert "3 jobs cancelled" in run("cancel", sweep_id).stdout
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "3 jobs (0 new), 0 enqueued" in again.stdout
    assert json.loads(run("status", sweep_id, "--json").stdout)["counts"] == {"cancelled": 3}
    # Un-cancelling is explicit: resume.
    assert "3 jobs re-enqueued" in run("sweep", "resume", sweep_id).stdout
    assert json.loads(run("status", sweep_id, "--json").stdout)["counts"] == {"queued": 3}


@pytest.mark.parametrize("args", [
    ["sweep", "submit", "--variant", "nope"],
    ["sweep", "submit", "--variant", "numpy", "--lr", "-1"],
    ["sweep", "submit", "--variant", "numpy", "--lr", "abc"],
    ["sweep", "submit", "--variant", "numpy", "--epochs", "1e12"],
    ["sweep", "submit", "--variant", "numpy", "--seed", "0-999999999"],
    ["sweep", "submit", "--variant", "dynamic", "--degree", "3"],
    ["sweep", "submit", "missing.yaml"],
    ["sweep", "submit"],
    ["sweep", "run", "--variant", "numpy", "--workers", "0"],
    ["sweep", "submit", "--variant", "numpy", "--bogus-flag"],
    ["results", "--format", "xml"],
    ["nosuchcommand"],
    ["worker", "--device", "tpu"],
    ["worker", "--device", "cuda"],
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run, tmp_path, args):
    _one_line_error(run(*args))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_spec_file_is_one_line_and_writes_nothing(run, tmp_path):
    spec = tmp_path / "s.yaml"
    for text in ("grid: [\n", "grid: {variant: [numpy], lr: [0]}\n", "42\n",
                 "grid: {variant: [numpy]}\nextra: 1\n"):
        spec.write_text(text)
        _one_line_error(run("sweep", "submit", str(spec)))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_unknown_sweep_is_an_input_error(run):
    run("sweep", "submit", "--variant", "numpy", "--epochs", "2")
    _one_line_error(run("results", "nope"))
    _one_line_error(run("cancel", "nope"))


def test_queries_without_a_database_do_not_create_one(run, tmp_path):
    for args in (["results"], ["status"], ["sql", "SELECT 1"]):
        _one_line_error(run(*args))
    assert list(tmp_path.iterdir()) == []


def test_unreachable_broker_on_submit_exits_1_and_resume_completes(run, tmp_path):
    r = run("sweep", "submit", "--variant", "numpy", "--seed", "0-1", "--epochs", "2",
            "--broker", "redis://127.0.0.1:1/0")
    assert r.exit_code == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot reach the broker" in r.stderr
    assert "Traceback" not in r.output
    # The sweep is recorded whole, every job queued, so resume can finish it.
    data = json.loads(run("status", "--json").stdout)
    assert data["counts"] == {"queued": 2}


def test_credentials_are_never_printed(run):
    r = run("sweep", "submit", "--variant", "numpy", "--epochs", "2",
            "--broker", "redis://:hunter2@127.0.0.1:1/0")
    assert r.exit_code == 1 and "hunter2" not in r.output
    r = run("results", "--db", "postgresql+psycopg://u:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in r.output and r.exit_code != 0


@pytest.mark.parametrize("how", ["flag", "spec"])
@pytest.mark.parametrize("bad", ["", "   "])
def test_an_empty_sweep_name_is_refused_not_replaced_by_the_default(run, tmp_path, how, bad):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: {bad!r}\ngrid: {{variant: [numpy]}}\n" if how == "spec"
                    else "grid: {variant: [numpy]}\n")
    args = ["--name", bad] if how == "flag" else []
    r = run("sweep", "submit", str(spec), *args)
    _one_line_error(r)
    assert "name" in r.stderr
    assert not (tmp_path / "polyfit.sqlite").exists()  # nothing written


def test_a_null_name_in_the_spec_means_the_default(run, tmp_path):
    spec = tmp_path / "nameless.yaml"
    spec.write_text("name:\ngrid: {variant: [numpy]}\n")
    r = run("sweep", "submit", str(spec))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("sweep nameless:")


def test_a_job_too_big_for_its_devices_memory_budget_is_refused_at_submit(run, tmp_path,
                                                                        monkeypatch):
    (tmp_path / "big.yaml").write_text(
        "x: {start: -1, stop: 1, points: 10000000}\n"
        "grid: {variant: [numpy], degree: [14], epochs: [1]}\n")
    r = run("sweep", "submit", "big.yaml")
    _one_line_error(r)
    assert "POLYFIT_CPU_MEMORY_MB" in r.stderr and "degree 14" in r.stderr
    assert not (tmp_path / "polyfit.sqlite").exists()
    # A bigger budget takes it (recorded; the broker is down so nothing runs).
    monkeypatch.setenv("POLYFIT_CPU_MEMORY_MB", "8192")
    monkeypatch.setenv("POLYFIT_BROKER_URL", "redis://127.0.0.1:1/0")
    assert run("sweep", "submit", "big.yaml").exit_code == 1


def test_the_examples_point_nowhere_outside_the_project():
    from tests.support import ROOT

    for path in (ROOT / "examples").rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        text = path.read_text()
        assert "../" not in text and "shared/" not in text, path


def test_debug_shows_the_traceback_of_an_unexpected_error(run, monkeypatch):
    import scheduler.cli.sweeps as sweeps

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in polyfit")

    monkeypatch.setattr(sweeps, "make_plan", broken)
    plain = run("sweep", "submit", "--variant", "numpy")
    assert plain.exit_code == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [
        "Error: internal error: RuntimeError: a bug in polyfit (run with --debug, or "
        "POLYFIT_DEBUG=1, to see where)"]
    for debug in (run("--debug", "sweep", "submit", "--variant", "numpy"),
                  run("sweep", "submit", "--variant", "numpy", env={"POLYFIT_DEBUG": "1"})):
        assert debug.exit_code == 1
        assert "Traceback (most recent call last)" in debug.stderr
        assert "in broken" in debug.stderr
        assert debug.stderr.strip().splitlines()[-1] == (
            "Error: internal error: RuntimeError: a bug in polyfit")


# -- a new user's slips (issue 23.7) --------------------------------------------------------------

def test_sweep_run_of_a_misspelt_spec_or_sweep_says_what_was_meant(run, tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "tutorial.yaml").write_text("grid: {variant: [numpy], epochs: [5]}\n")
    r = run("sweep", "run", "tutorail")
    _one_line_error(r)
    assert "did you mean 'examples/tutorial.yaml'?" in r.stderr
    assert run("sweep", "submit", "--variant", "numpy", "--epochs", "5", "--name",
               "all-diverged").exit_code == 0
    r = run("sweep", "run", "all-divergd")
    _one_line_error(r)
    assert "did you mean 'all-diverged'?" in r.stderr
    r = run("sweep", "run", "zzzzzz")
    _one_line_error(r)
    assert "no spec file or sweep 'zzzzzz'" in r.stderr and "polyfit sweeps" in r.stderr


def test_status_takes_format_as_every_read_command_does(run):
    sweep_id = run("sweep", "submit", "--variant", "numpy", "--epochs", "5").stdout.split()[-1]
    assert json.loads(run("status", "--format", "json").stdout)["sweep_id"] == sweep_id
    assert run("status", "--format", "text").stdout.startswith(f"sweep sweep ({sweep_id}): ")
    _one_line_error(run("status", "--json", "--format", "text"))


def test_a_server_database_whose_driver_is_missing_says_how_to_install_it(tmp_path):
    # The driver made unimportable in a real `polyfit` process, as on a machine without the
    # postgres extra: a read and a write command both say what to install, exit 2.
    import subprocess
    import sys

    from tests.support.processes import polyfit_env

    code = ("import sys; sys.modules['psycopg'] = None; sys.argv[0] = 'polyfit'; "
            "from scheduler.cli import main; main()")
    for args in (["results"], ["sweep", "submit", "--variant", "numpy"]):
        r = subprocess.run([sys.executable, "-c", code, *args, "--db",
                            "postgresql://me:hunter2@127.0.0.1:1/nowhere"], cwd=tmp_path,
                           env=polyfit_env(), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "pip install 'polyfit[postgres]'" in r.stderr
        assert "hunter2" not in r.stderr


def test_sweep_run_of_gpu_jobs_on_a_machine_without_one_is_refused_up_front(run, tmp_path,
                                                                            monkeypatch):
    # It waited forever ("no worker for 56s" and counting) on jobs nothing could take.
    monkeypatch.delenv("POLYFIT_EMULATE_CUDA", raising=False)
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = run("sweep", "run", "--variant", "autograd", "--device", "cpu,cuda", "--seed", "0-1",
            "--epochs", "5")
    _one_line_error(r)
    assert "2 jobs of sweep sweep need a GPU, this machine has none" in r.stderr
    assert "polyfit worker --device cuda --gpus all" in r.stderr
    assert not (tmp_path / "polyfit.sqlite").exists()  # nothing recorded
    # A search too: its jobs are asked round by round, its device axis says where they run.
    pytest.importorskip("optuna")
    for devices, said in (("cuda", "4 jobs of sweep"), ("cpu,cuda", "the jobs on a GPU")):
        r = run("sweep", "run", "--variant", "autograd", "--device", devices, "--lr",
                "log:1e-7:1e-5", "--sampler", "tpe", "--trials", "4", "--epochs", "5")
        _one_line_error(r)
        assert said in r.stderr and "this machine has none" in r.stderr, r.stderr
        assert not (tmp_path / "polyfit.sqlite").exists()


def test_a_401_digit_number_in_a_spec_is_one_line_exit_2_and_writes_nothing(run, tmp_path):
    spec = tmp_path / "s.yaml"
    for text in (f"grid: {{variant: [numpy], seed: [{'9' * 401}]}}\n",
                 f"x: {{start: -{'9' * 401}}}\ngrid: {{variant: [numpy]}}\n",
                 f"stop_at_gap: {'9' * 401}\ngrid: {{variant: [numpy]}}\n"):
        spec.write_text(text)
        r = run("sweep", "submit", str(spec))
        _one_line_error(r)
        assert "internal error" not in r.stderr and len(r.stderr) < 250
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_minus_zero_and_zero_are_one_job_not_two(run, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("x: {start: 0.0, stop: 2}\ngrid: {variant: [numpy], epochs: [2]}\n")
    assert run("sweep", "submit", str(spec)).exit_code == 0
    spec.write_text("x: {start: -0.0, stop: 2}\ngrid: {variant: [numpy], epochs: [2]}\n")
    r = run("sweep", "submit", str(spec))
    assert r.exit_code == 0, r.output
    assert "1 job (0 new)" in r.stdout
    assert json.loads(run("status", "--json").stdout)["total"] == 1


@pytest.mark.parametrize("password", ["pa ss word", "pa\tss\tword", "a b", "p@ss w/rd"])
def test_a_password_with_spaces_or_tabs_is_never_printed(tmp_path, password):
    """A real process (the passwords a process was told of are kept for its lifetime)."""
    from tests.support.processes import polyfit, polyfit_env

    env = polyfit_env(POLYFIT_DB_URL=f"sqlite:///{tmp_path / 'r.sqlite'}")
    shown = (password, " ".join(password.split()), password.replace(" ", "%20"))
    runs = [
        polyfit("sweep", "submit", "--variant", "numpy", "--epochs", "2",
                "--broker", f"redis://:{password}@127.0.0.1:1/0", env=env),
        polyfit("sweep", "submit", "--variant", "numpy", "--epochs", "2",
                "--broker", f"redis://user:{password}@127.0.0.1:1/0", env=env),
        polyfit("results", "--db", f"postgresql+psycopg://u:{password}@127.0.0.1:1/x", env=env),
    ]
    for r in runs:
        assert r.returncode != 0 and r.stderr.startswith("Error: "), r.stderr
        assert not any(s in r.stdout + r.stderr for s in shown), r.stderr
        assert "***" in r.stderr


@pytest.mark.parametrize("broker", [
    "redis://host:notaport/0", "redis://[::1", "redis://h]:1/0", "redis://host/notanumber",
    "redis://h:99999/0", "redis://h:6379/0/extra", "redis://127.0.0.1:1/0;redis://h:x/0",
    "sqla+", "sqla+nonsense://x", "sqla+postgresql://u:pw@h:bad/x", "sqla+sqlite://",
    "memory://", "http://x", "foo", "   ", "redis+socket://",
])
def test_a_malformed_broker_url_is_one_line_exit_2_before_anything_is_recorded(
        run, tmp_path, broker):
    r = run("sweep", "submit", "--variant", "numpy", "--epochs", "2", "--broker", broker)
    _one_line_error(r)
    assert "internal error" not in r.stderr and "broker" in r.stderr
    assert list(tmp_path.iterdir()) == []  # no sweep recorded, no database made


@pytest.mark.parametrize("db", [
    "postgresql://u:pw@h:notaport/db", "postgresql://u:pw@[::1/db", "nonsense://x",
    "postgresql+nodriver://x/y", " ", "sqlite://", "sqlite:///:memory:",
])
@pytest.mark.parametrize("command", [["sweeps"], ["sweep", "submit", "--variant", "numpy"]])
def test_a_malformed_database_url_is_one_line_exit_2(run, tmp_path, db, command):
    r = run(*command, "--db", db)
    _one_line_error(r)
    assert "internal error" not in r.stderr and "pw" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_filter_that_is_not_a_finite_number_is_refused_not_matched_silently(run):
    run("sweep", "submit", "--variant", "numpy", "--epochs", "2")
    for value in ("nan", "inf", "-inf", "1e400"):
        for flag in ("--lr-min", "--lr-max"):
            r = run("results", flag, value)
            _one_line_error(r)
            assert "finite" in r.stderr
    # status --wait sleeps --interval between looks: nan reached time.sleep (internal error).
    r = run("status", "--wait", "--interval", "nan")
    _one_line_error(r)
    assert "finite" in r.stderr


@pytest.mark.parametrize("other", [
    "target: cos\n", "x: {points: 100}\n", "x: {start: -3, stop: 3}\n", "stop_at_gap: 0.01\n"])
def test_growing_a_sweep_with_another_target_or_x_grid_is_refused(run, tmp_path, other):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: demo\ngrid: {variant: [numpy], epochs: [2], seed: [0, 1]}\n")
    first = run("sweep", "submit", str(spec))
    assert first.exit_code == 0, first.output
    before = run("sweeps", "--format", "json").stdout
    spec.write_text(f"name: demo\n{other}grid: {{variant: [numpy], epochs: [2], seed: [2]}}\n")
    r = run("sweep", "submit", str(spec))
    _one_line_error(r)
    assert "sweep 'demo' is recorded with" in r.stderr and "--name" in r.stderr
    assert run("sweeps", "--format", "json").stdout == before  # nothing added, spec as it was
    # Under another name it is a sweep of its own.
    r = run("sweep", "submit", str(spec), "--name", "demo-2")
    assert r.exit_code == 0, r.output
    # The same target and x grid (x as given or as the defaults) grows the sweep.
    spec.write_text("name: demo\ntarget: sin\nx: {points: 2000}\n"
                    "grid: {variant: [numpy], epochs: [2], seed: [2]}\n")
    r = run("sweep", "submit", str(spec))
    assert r.exit_code == 0 and "1 job (1 new)" in r.stdout, r.output
    assert json.loads(run("status", "demo", "--json").stdout)["total"] == 3


@pytest.mark.parametrize("args", [["sql", "SELECT 1", "--timeout", "nan"],
                                  ["sql", "SELECT 1", "--timeout", "inf"],
                                  ["dashboard", "--refresh", "nan"]])
def test_a_time_option_that_is_no_finite_number_is_refused(run, args):
    # nan passed click's FloatRange: `sql --timeout nan` had no time limit at all.
    r = run(*args)
    _one_line_error(r)
    assert "finite" in r.stderr or "not a number" in r.stderr


def test_every_axis_has_a_flag_and_the_integer_ranges_say_so():
    """The axis flags come from the job's declaration: one per axis, and each integer axis that
    takes ranges says so (epochs took ``100-200`` without saying it)."""
    from polyfit_models import fields

    text = " ".join(CliRunner().invoke(cli, ["sweep", "run", "--help"],
                                       terminal_width=200).output.split())
    for axis in fields.AXES:
        assert f"--{axis.replace('_', '-')} LIST" in text
    for axis in ("degree", "seed", "epochs"):
        start = text.index(f"--{axis} LIST")
        assert "Ranges like 0-9 allowed." in text[start:text.index("--", start + 3)]
