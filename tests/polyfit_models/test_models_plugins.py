"""The registry's one way in (issue 27): the built-ins and the variants of installed packages
(entry points of the group ``polyfit.variants``) through one loader; a plugin that cannot be
loaded is kept out with its reason, and none can take a built-in's name."""

from __future__ import annotations

from importlib import metadata

import pytest

from polyfit_models import JobSpec, SpecError
from polyfit_models import registry as R
from polyfit_models.variants import builtin
from tests.support.plugins import RAISING, WORKING, fake_plugin

BUILTINS = ["numpy", "tensor", "autograd", "legendre", "module", "dynamic"]


def entry_points_in(folder):
    return [ep for dist in metadata.distributions(path=[str(folder)])
            for ep in dist.entry_points if ep.group == R.GROUP]


def load_from(folder, monkeypatch):
    monkeypatch.syspath_prepend(str(folder))
    return R.load(R.declared(entry_points_in(folder)))


def test_the_builtins_load_without_any_package_metadata():
    # A fresh checkout on PYTHONPATH has no metadata at all: the six are still there, in order,
    # loaded by module:object as a plugin is.
    variants, broken, refused = R.load(R.declared(entry_points=[]))
    assert list(variants) == BUILTINS and not broken and not refused
    assert list(R.VARIANTS)[:6] == BUILTINS
    assert variants["autograd"].package == "polyfit"
    assert variants["legendre"].train is builtin.LEGENDRE.train


def test_an_installed_plugin_adds_a_variant_with_its_package_and_version(tmp_path,
                                                                          monkeypatch):
    folder = fake_plugin(tmp_path, "pf-extra", {"extra": "pf_extra_mod:VARIANT"},
                         {"pf_extra_mod": WORKING.format(name="extra")}, version="2.5")
    variants, broken, refused = load_from(folder, monkeypatch)
    assert list(variants) == [*BUILTINS, "extra"] and not broken and not refused
    assert (variants["extra"].package, variants["extra"].version) == ("pf-extra", "2.5")
    assert R.is_plugin("extra") and not R.is_plugin("autograd")


def test_a_plugin_cannot_shadow_a_builtin(tmp_path, monkeypatch):
    folder = fake_plugin(tmp_path, "pf-evil", {"autograd": "pf_evil_mod:VARIANT"},
                         {"pf_evil_mod": RAISING.format(name="autograd")})
    variants, broken, refused = load_from(folder, monkeypatch)
    assert variants["autograd"].package == "polyfit"
    assert variants["autograd"].train is builtin.AUTOGRAD.train
    assert [(p.name, p.package) for p in refused] == [("autograd", "pf-evil")]
    assert "built-in" in refused[0].reason


@pytest.mark.parametrize("entry, source, reason", [
    ("pf_gone_mod:VARIANT", None, "ModuleNotFoundError"),
    ("pf_bad_mod:VARIANT", "raise ImportError('needs libfoo')", "needs libfoo"),
    ("pf_bad_mod:VARIANT", "VARIANT = 3", "not a polyfit_models.Variant"),
    ("pf_bad_mod:VARIANT", WORKING.format(name="other"), "its Variant is 'other'"),
    ("pf_bad_mod:VARIANT",
     WORKING.format(name="flaky") + "VARIANT = replace(VARIANT, loss='l1')", "loss must be"),
    ("pf_bad_mod:VARIANT",
     WORKING.format(name="flaky") + "VARIANT = replace(VARIANT, defaults=None)", "TypeError"),
    ("pf_bad_mod:VARIANT", "import sys; sys.exit(3)", "SystemExit"),
])
def test_a_plugin_that_cannot_be_loaded_is_kept_out_with_its_reason(tmp_path, monkeypatch,
                                                                    entry, source, reason):
    folder = fake_plugin(tmp_path, "pf-flaky", {"flaky": entry},
                         {"pf_bad_mod": source} if source else {})
    monkeypatch.delitem(__import__("sys").modules, "pf_bad_mod", raising=False)
    variants, broken, refused = load_from(folder, monkeypatch)
    assert "flaky" not in variants and list(variants) == BUILTINS
    assert broken["flaky"].package == "pf-flaky" and reason in broken["flaky"].reason


def test_a_name_two_packages_declare_is_used_by_neither(tmp_path, monkeypatch):
    one = fake_plugin(tmp_path / "a", "pf-one", {"twin": "pf_twin_a:VARIANT"},
                      {"pf_twin_a": WORKING.format(name="twin")})
    two = fake_plugin(tmp_path / "b", "pf-two", {"twin": "pf_twin_b:VARIANT"},
                      {"pf_twin_b": WORKING.format(name="twin")})
    monkeypatch.syspath_prepend(str(one))
    monkeypatch.syspath_prepend(str(two))
    variants, broken, _ = R.load(R.declared(entry_points_in(one) + entry_points_in(two)))
    assert "twin" not in variants and "pf-one and pf-two" in broken["twin"].reason


def test_a_job_of_a_broken_plugin_fails_validation_with_the_plugins_reason(monkeypatch):
    problem = R.Problem("flaky", "pf-flaky", "1.0", "cannot load pf_bad_mod:VARIANT: boom")
    monkeypatch.setattr(R, "BROKEN", {"flaky": problem})
    import polyfit_models.spec as spec_module

    monkeypatch.setattr(spec_module, "BROKEN", {"flaky": problem})
    with pytest.raises(SpecError, match="plugin variant flaky of pf-flaky 1.0: cannot load"):
        JobSpec.from_dict({**JobSpec.create("autograd").to_dict(), "variant": "flaky"})
