"""Installed plugins for tests, without touching the shared environment: the example package
installed into a folder of its own (``pip install --target``), and hand-made distributions (a
``*.dist-info`` with an ``entry_points.txt`` beside a module) for the plugins that misbehave.
Entry points are found from the dist-infos on ``sys.path``, so a process gets a plugin by having
its folder on ``PYTHONPATH``, and a process without that folder lacks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

EXAMPLE = ROOT / "examples" / "plugin"


def install_example(target: Path) -> Path:
    """``pip install ./examples/plugin`` into ``target`` (a copy is built, so that the
    checkout gets no build folders); returns ``target``."""
    source = target.parent / "plugin-source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                     "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True)
    return target


def fake_plugin(folder: Path, package: str, entries: dict[str, str],
                modules: dict[str, str] | None = None, version: str = "1.0") -> Path:
    """A distribution ``package`` installed in ``folder``: its entry points in the group
    ``polyfit.variants`` (name -> ``module:object``) and its modules (name -> source)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / f"{package.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\n"
                                   f"Version: {version}\n")
    (info / "entry_points.txt").write_text(
        "[polyfit.variants]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    for name, source in (modules or {}).items():
        (folder / f"{name}.py").write_text(source)
    return folder


def with_path(env: dict, *folders: Path) -> dict:
    """``env`` with ``folders`` first on its PYTHONPATH (the checkout stays on it)."""
    return {**env, "PYTHONPATH": os.pathsep.join([*map(str, folders), str(ROOT)])}


#: A plugin variant module (NumPy only where it is declared, as the protocol asks) whose
#: training raises: the autograd program's declaration with another name and a failing train.
RAISING = '''
from dataclasses import replace
from polyfit_models.variants.builtin import AUTOGRAD

def train(specs, device, **options):
    raise RuntimeError("the plugin's own bug")

VARIANT = replace(AUTOGRAD, name="{name}", train=train, package="", version="")
'''

#: A working plugin variant: the autograd program under another name.
WORKING = '''
from dataclasses import replace
from polyfit_models.variants.builtin import AUTOGRAD

VARIANT = replace(AUTOGRAD, name="{name}", package="", version="")
'''
