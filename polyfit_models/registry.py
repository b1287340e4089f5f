"""The registry of model variants: the six built-ins and those of installed plugins, loaded
through one function.

``VARIANTS`` is the single place where a variant's name, defaults, limits and implementation
meet; validation, ``fit_many`` and the CLI all read it, so nothing elsewhere branches on a
variant's name. It is filled once, at import, by :func:`load`: first the built-ins
(``variants.builtin.ENTRY_POINTS``), then every entry point of the group ``polyfit.variants``
that an installed distribution declares (name = the variant's name, value = ``module:object``,
the object a :class:`Variant`). Both kinds go through the same loader; the built-ins are named
in code, not in polyfit's own package metadata, so that a checkout run with ``PYTHONPATH`` only
(no install, no metadata) has all six.

A plugin can never take a worker or the registry down: one that fails to import, is not a
``Variant``, names another variant or has a bad field is kept out of ``VARIANTS`` and kept in
``BROKEN`` with the reason (its jobs fail with that reason on a worker that has it installed);
one whose name is a built-in's is refused (``REFUSED``) and never shadows it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from types import MappingProxyType

from .problem import DTYPES, OPTIMIZERS
from .variant import DEFAULT_KEYS, DEVICES, MAX_DEGREE, VARIANT_AXES, Variant
from .variants import builtin

__all__ = ["BROKEN", "BUILTIN_PACKAGE", "GROUP", "MAX_DEGREE", "REFUSED", "VARIANTS",
           "VARIANT_AXES", "Declared", "Problem", "Variant", "declared", "is_plugin", "load",
           "plugin_names"]

GROUP = "polyfit.variants"
BUILTIN_PACKAGE = "polyfit"
#: A variant's name is also part of a queue's name (``polyfit.cpu.v.NAME``): a short word.
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Declared:
    """One variant as a distribution declares it: its name, ``module:object``, and the
    distribution's name and version."""

    name: str
    value: str
    package: str
    version: str


@dataclass(frozen=True)
class Problem:
    """A declared variant that is not in ``VARIANTS``, and why."""

    name: str
    package: str
    version: str
    reason: str

    def describe(self) -> str:
        return f"variant {self.name} of {self.package} {self.version}: {self.reason}"


def _polyfit_version() -> str:
    try:
        return metadata.version(BUILTIN_PACKAGE)
    except metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown"


def declared(entry_points: Iterable | None = None) -> list[Declared]:
    """The built-ins, then what installed distributions declare in the group (``entry_points``:
    ``importlib.metadata`` entry points, by default those of ``sys.path``). polyfit's own
    distribution is skipped: its built-ins are declared here already."""
    version = _polyfit_version()
    out = [Declared(name, value, BUILTIN_PACKAGE, version)
           for name, value in builtin.ENTRY_POINTS.items()]
    if entry_points is None:
        entry_points = metadata.entry_points(group=GROUP)
    for ep in entry_points:
        dist = getattr(ep, "dist", None)
        package = dist.name if dist is not None else "unknown"
        if package == BUILTIN_PACKAGE:
            continue
        out.append(Declared(ep.name, ep.value, package,
                            dist.version if dist is not None else "unknown"))
    return out


def _load_one(d: Declared) -> Variant:
    """Import ``d``'s object and check it; raises ``ValueError`` with the reason."""
    module, _, attr = d.value.partition(":")
    try:
        obj = importlib.import_module(module.strip())
        for part in attr.strip().split(".") if attr.strip() else []:
            obj = getattr(obj, part)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - whatever a plugin raises is its own
        # problem (a sys.exit at import included): it must not stop the process loading it
        raise ValueError(f"cannot load {d.value}: {e.__class__.__name__}: {e}") from None
    if not isinstance(obj, Variant):
        raise ValueError(f"{d.value} is a {type(obj).__name__}, not a polyfit_models.Variant")
    _check(obj, d.name)
    return replace(obj, package=d.package, version=d.version)


def _check(v: Variant, name: str) -> None:
    """The fields the rest of polyfit relies on without looking again."""
    if v.name != name:
        raise ValueError(f"the entry point is named {name} but its Variant is {v.name!r}")
    if v.loss not in ("sse", "mse"):
        raise ValueError(f"loss must be 'sse' or 'mse', got {v.loss!r}")
    if not callable(v.train) or not callable(v.predict) or not callable(v.monomial):
        raise ValueError("train, predict and monomial must be callables")
    for what, values, allowed in (("axes", v.axes, VARIANT_AXES), ("devices", v.devices, DEVICES),
                                  ("optimizers", v.optimizers, OPTIMIZERS)):
        if not isinstance(values, tuple) or not values or not set(values) <= set(allowed):
            raise ValueError(f"{what} must be a non-empty tuple of {', '.join(allowed)}")
    if not (isinstance(v.min_degree, int) and isinstance(v.max_degree, int)
            and 1 <= v.min_degree <= v.max_degree <= MAX_DEGREE):
        raise ValueError(f"degrees must satisfy 1 <= min_degree <= max_degree <= {MAX_DEGREE}")
    missing = [k for k in DEFAULT_KEYS if k not in v.defaults]
    if missing:
        raise ValueError(f"defaults miss {', '.join(missing)}")
    if v.defaults["optimizer"] not in v.optimizers or v.defaults["dtype"] not in DTYPES:
        raise ValueError("the default optimizer and dtype must be among those it takes")


def load(found: Iterable[Declared]) -> tuple[dict[str, Variant], dict[str, Problem],
                                               list[Problem]]:
    """The one way in: ``found`` (built-ins first) -> (variants, broken, refused).

    Built-ins are loaded first, so a plugin can neither replace nor shadow one (``refused``);
    a name two distributions declare is broken (neither is used: which one a worker would
    train would depend on its ``sys.path``)."""
    variants: dict[str, Variant] = {}
    broken: dict[str, Problem] = {}
    refused: list[Problem] = []
    builtins = {d.name for d in found if d.package == BUILTIN_PACKAGE}
    seen: dict[str, Declared] = {}
    for d in found:
        if d.package != BUILTIN_PACKAGE and d.name in builtins:
            refused.append(Problem(d.name, d.package, d.version,
                                   "refused: a built-in variant has that name"))
            continue
        if d.name in seen:
            first = seen[d.name]
            variants.pop(d.name, None)
            broken[d.name] = Problem(d.name, d.package, d.version,
                                     f"declared by both {first.package} and {d.package}")
            continue
        seen[d.name] = d
        if not NAME.match(d.name):
            broken[d.name] = Problem(d.name, d.package, d.version,
                                     "a variant's name must be a lowercase word of at most "
                                     "32 letters, digits or _")
            continue
        try:
            variants[d.name] = _load_one(d)
        except Exception as e:  # a plugin's odd object is only its problem
            if d.package == BUILTIN_PACKAGE:
                raise  # polyfit's own variants are not optional
            reason = str(e) if isinstance(e, ValueError) else f"{e.__class__.__name__}: {e}"
            broken[d.name] = Problem(d.name, d.package, d.version, reason)
    return variants, broken, refused


_variants, _broken, _refused = load(declared())

VARIANTS: Mapping[str, Variant] = MappingProxyType(_variants)
#: Variants an installed plugin declares that could not be loaded here: name -> why.
BROKEN: Mapping[str, Problem] = MappingProxyType(_broken)
#: Entry points refused (a built-in's name).
REFUSED: tuple[Problem, ...] = tuple(_refused)


def is_plugin(name: str) -> bool:
    """Whether ``name`` is not one of polyfit's built-in variants (its jobs go to the queues
    of the workers that have its plugin)."""
    return name not in builtin.ENTRY_POINTS


def plugin_names() -> tuple[str, ...]:
    """The plugin variants installed here, loaded or broken: the ones this process's worker
    serves (a broken one to fail its jobs with the reason)."""
    return tuple(sorted({n for n in VARIANTS if is_plugin(n)} | set(BROKEN)))
