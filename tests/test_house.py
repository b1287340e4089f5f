"""The house rules a reader relies on, checked rather than hoped for: no module of the product
over 400 lines (a module a newcomer can read at one sitting, named by what it keeps), and a
docstring on every public class (what it is, in a line)."""

from __future__ import annotations

import ast

import pytest

from tests.support import ROOT

PACKAGES = ("polyfit", "polyfit_models", "polyfit_results", "scheduler", "store", "worker")
MAX_LINES = 400
MODULES = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_is_at_most_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def undocumented_classes(source: str) -> list[str]:
    return [node.name for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_")
            and not ast.get_docstring(node)]


def test_every_public_class_says_what_it_is():
    missing = {str(path.relative_to(ROOT)): undocumented_classes(path.read_text())
               for path in MODULES}
    assert {k: v for k, v in missing.items() if v} == {}


def test_the_check_sees_a_class_without_a_docstring():
    assert undocumented_classes("class A:\n    x = 1\nclass _B:\n    pass\n") == ["A"]
