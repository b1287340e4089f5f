"""Your own model (issue 27), end to end with real processes: ``pip install ./examples/plugin``
(into a folder of its own, on the PYTHONPATH of the processes that have it), then the variant is
listed, swept and stored through the embedded broker and through Redis workers; a worker
without the package leaves its jobs to one that has it; a plugin that fails to import or raises
in training fails its own jobs with the reason, never a worker."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.database import query
from tests.support.plugins import EXAMPLE, RAISING, WORKING, fake_plugin, install_example, with_path
from tests.support.processes import polyfit, polyfit_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chebyshev(tmp_path_factory):
    """The example plugin, installed into a folder of its own."""
    return install_example(tmp_path_factory.mktemp("example") / "site")


def _rows(db_url: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in query(db_url, "SELECT variant, status, error, worker, versions, mse FROM jobs"):
        out.setdefault(r["variant"], []).append(r)
    return out


def test_the_example_plugins_own_tests_pass_installed(chebyshev):
    env = with_path(polyfit_env(), chebyshev)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLE / "tests")], env=env, cwd=EXAMPLE, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_installed_plugin_is_listed_swept_and_stored_and_its_bug_fails_only_its_jobs(
        chebyshev, tmp_path):
    raiser = fake_plugin(tmp_path / "raiser", "pf-raiser",
                         {"raiser": "pf_raiser_mod:VARIANT"},
                         {"pf_raiser_mod": RAISING.format(name="raiser")})
    # Beside them, a package that tries to take a built-in's name, and one that cannot load.
    misfits = fake_plugin(tmp_path / "misfits", "pf-misfits",
                          {"autograd": "pf_misfits_mod:VARIANT", "flaky": "pf_gone:VARIANT"},
                          {"pf_misfits_mod": RAISING.format(name="autograd")})
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    env = with_path(polyfit_env(POLYFIT_DB_URL=db), chebyshev, raiser, misfits)
    listed = polyfit("variants", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = {x.split()[0]: x for x in listed.stdout.splitlines() if not x.startswith(" ")}
    assert "package: polyfit-chebyshev 0.1.0" in lines["chebyshev"]
    assert "axes: lr, degree" in lines["chebyshev"]
    assert "package: polyfit " in lines["autograd"]
    assert "variant autograd of pf-misfits 1.0: refused" in listed.stderr
    assert "not loaded: cannot load pf_gone:VARIANT" in lines["flaky"]
    refused = polyfit("sweep", "submit", "--variant", "flaky", env=env, cwd=tmp_path)
    assert refused.returncode == 2 and "pf_gone" in refused.stderr, refused.stderr

    run = polyfit("sweep", "run", "--variant", "chebyshev,raiser,numpy", "--seed", "0-1",
                  "--epochs", "300", "--workers", "1", env=env, cwd=tmp_path)
    assert run.returncode == 1, run.stderr  # the raiser's jobs failed
    got = _rows(db)
    assert [r["status"] for r in got["chebyshev"]] == ["succeeded"] * 2
    assert all(r["mse"] < 0.1 for r in got["chebyshev"])
    versions = json.loads(got["chebyshev"][0]["versions"])
    assert (versions["plugin"], versions["plugin_version"]) == ("polyfit-chebyshev", "0.1.0")
    assert "plugin" not in json.loads(got["numpy"][0]["versions"])
    assert [r["status"] for r in got["raiser"]] == ["failed"] * 2
    assert all("the plugin's own bug" in r["error"] for r in got["raiser"])
    assert [r["status"] for r in got["numpy"]] == ["succeeded"] * 2  # the worker lived on


def test_a_worker_without_the_plugin_leaves_its_jobs_to_one_that_has_it(
        chebyshev, tmp_path, redis_url, db_url, start_worker):
    # ``flaky`` is installed on the submitting host; the first worker has a broken install of
    # it (its module is missing there) and no chebyshev at all.
    flaky_ok = fake_plugin(tmp_path / "ok", "pf-flaky", {"flaky": "pf_flaky_mod:VARIANT"},
                           {"pf_flaky_mod": WORKING.format(name="flaky")})
    flaky_broken = fake_plugin(tmp_path / "broken", "pf-flaky",
                               {"flaky": "pf_flaky_gone:VARIANT"})
    settings = {"POLYFIT_BROKER_URL": redis_url, "POLYFIT_DB_URL": db_url}
    client = with_path(polyfit_env(**settings), chebyshev, flaky_ok)
    without = start_worker("--concurrency", "1", **settings,
                           PYTHONPATH=f"{flaky_broken}:{ROOT}")
    sub = polyfit("sweep", "submit", "--variant", "numpy,chebyshev,flaky", "--seed", "0-1",
                  "--epochs", "200", env=client)
    assert sub.returncode == 0, sub.stderr

    def settled() -> dict | None:
        got = _rows(db_url)
        ended = all(r["status"] in ("succeeded", "failed")
                    for v in ("numpy", "flaky") for r in got.get(v, [{"status": None}]))
        return got if ended else None

    got = wait_for(settled, 120, "the first worker to train numpy and fail flaky")
    assert [r["status"] for r in got["numpy"]] == ["succeeded"] * 2
    assert all("failed to load" not in (r["error"] or "") for r in got["numpy"])
    assert all(r["status"] == "failed" and "pf_flaky_gone" in r["error"]
               and "pf-flaky" in r["error"] for r in got["flaky"])
    # The first worker is serving, and the chebyshev jobs are still waiting, untouched.
    assert [(r["status"], r["worker"]) for r in got["chebyshev"]] == [("queued", None)] * 2
    assert without.proc.poll() is None

    start_worker("--concurrency", "1", **settings, PYTHONPATH=f"{chebyshev}:{ROOT}")
    got = wait_for(lambda: (g := _rows(db_url)) and all(
        r["status"] == "succeeded" for r in g["chebyshev"]) and g, 120,
        "a worker with the plugin to train chebyshev")
    first = {r["worker"] for r in got["numpy"]}
    assert not first & {r["worker"] for r in got["chebyshev"]}
