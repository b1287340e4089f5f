"""docker compose cannot run here (no engine): check what can be checked of the file."""

from __future__ import annotations

import shlex

import yaml
from click.testing import CliRunner

from scheduler.cli import cli
from tests.support import ROOT


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_persistence():
    c = _compose()
    assert {"redis", "worker-cpu", "worker-gpu", "scheduler", "postgres"} <= set(c["services"])
    redis_cmd = c["services"]["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    # As the Guarantees table says and the tests run it: every write on disk before the ack.
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "always"
    gpu = c["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert c["services"]["postgres"]["profiles"] == ["postgres"]
    for name in ("worker-cpu", "worker-gpu", "scheduler"):
        env = c["services"][name]["environment"]
        assert "redis://redis:6379" in env["POLYFIT_BROKER_URL"]


def test_every_polyfit_command_in_it_exists_and_parses():
    runner = CliRunner()
    for name, svc in _compose()["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "polyfit":
            continue
        args = cmd[1:] if isinstance(cmd, list) else shlex.split(cmd)[1:]
        # --help after the real arguments: Click parses them, then prints help and exits 0.
        r = runner.invoke(cli, [*args, "--help"])
        assert r.exit_code == 0, (name, r.output)
        spec_args = [a for a in args if a.endswith(".yaml")]
        for path in spec_args:
            assert (ROOT / path).is_file(), path


def test_dockerfile_copies_every_package():
    text = (ROOT / "Dockerfile").read_text()
    for pkg in ("polyfit_models", "polyfit_results", "scheduler", "worker", "store", "examples"):
        assert f"COPY {pkg} {pkg}" in text
