"""The direction of the imports the README states: data and imports flow one way. ``store``
imports none of the other packages; ``worker`` imports ``store`` and ``polyfit_models`` but never
the scheduler or the read side; the read side (``polyfit_results``) never a worker or the
scheduler; ``polyfit_models`` (the numerics) nothing of the project. Every import counts, also
one inside a function (a deferred import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("polyfit", "polyfit_models", "polyfit_results", "scheduler", "store", "worker")
MAY_NOT = {
    "store": {"polyfit", "polyfit_results", "scheduler", "worker"},
    "worker": {"polyfit", "polyfit_results", "scheduler"},
    "polyfit_results": {"polyfit", "scheduler", "worker"},
    "polyfit_models": {"polyfit", "polyfit_results", "scheduler", "store", "worker"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", sorted(MAY_NOT))
def test_a_package_imports_only_what_lies_below_it(package):
    wrong = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & MAY_NOT[package])
             for path in sorted((ROOT / package).rglob("*.py"))}
    assert not {k: v for k, v in wrong.items() if v}


def test_the_check_sees_a_deferred_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from scheduler.cli import cli\n    import worker.app\n")
    assert imported_packages(module) == {"scheduler", "worker"}
