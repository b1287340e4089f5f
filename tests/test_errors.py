"""One exception root: every error the product raises on purpose derives from
``polyfit_models.errors.PolyfitError``, and those that mean "your input is unusable" from
``BadInput`` too, so that the command line catches two classes (exit 2 and exit 1) and no list of
classes from a dozen modules has to be kept in step."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import click
import pytest

from polyfit_models.errors import BadInput, PolyfitError
from tests.support import ROOT

PACKAGES = ("polyfit", "polyfit_models", "polyfit_results", "scheduler", "store", "worker")
#: Errors that belong to another library's tree on purpose: the CLI's own (click's, which
#: click prints), and kombu's (a broker that refused our credentials, raised inside kombu).
FOREIGN = {"scheduler.cli.group.InputError", "scheduler.cli.group.WorkFailed",
           "worker.transport.BrokerAuthError"}


def _modules():
    for package in PACKAGES:
        yield package
        for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            if not info.name.endswith(".__main__"):  # runs the command line
                yield info.name


def product_errors() -> dict[str, type]:
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, Exception):
                found[f"{name}.{cls.__qualname__}"] = cls
    return found


def test_every_error_of_the_product_derives_from_the_root():
    errors = product_errors()
    assert len(errors) >= 20  # the walk found the product's errors
    strays = sorted(name for name, cls in errors.items()
                    if name not in FOREIGN and not issubclass(cls, PolyfitError))
    assert strays == []


@pytest.mark.parametrize("name, bad_input", [
    ("polyfit_models.errors.SpecError", True),
    ("polyfit_models.errors.SettingError", True),
    ("scheduler.cli.group.InputError", False),
    ("store.db.StoreError", False),
    ("store.db.StoreUnavailable", False),
    ("store.db.MissingDriver", True),
    ("store.reader.QueryError", True),
    ("store.manage.SweepChangeRefused", True),
    ("polyfit_results.export.ExportError", True),
    ("polyfit_results.plot.PlotError", True),
    ("polyfit_results.studies.StudyError", True),
    ("worker.batches.BrokerError", False),
    ("worker.launch.LaunchError", True),
    ("polyfit.SweepError", True),
    ("polyfit.SweepFailed", False),
])
def test_bad_input_is_marked_and_a_failure_is_not(name, bad_input):
    module, _, cls_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    assert issubclass(cls, BadInput) is bad_input
    if name not in FOREIGN:
        assert issubclass(cls, PolyfitError)
    else:
        assert issubclass(cls, click.ClickException)


def test_one_setting_error():
    """``SettingsError`` (the worker's) and ``SettingError`` (the numerics') were two classes
    for one thing."""
    import worker.settings

    assert not hasattr(worker.settings, "SettingsError")
