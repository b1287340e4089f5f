"""polyfit's numerics: the programs of the "learn PyTorch by examples" lesson (fit y = sin(x)
with a polynomial) as fit variants behind one interface.

Describe a fit with a :class:`JobSpec` (``JobSpec.create("autograd", lr=1e-6, seed=3)``), run it
with :func:`fit` or many at once, vectorized, with :func:`fit_many`, and read the
:class:`FitResult`. ``VARIANTS`` is the registry of the variants: the six built-ins and those
of installed plugins (``registry.py``; docs/plugins.md). This package imports only
NumPy, torch and the standard library; it never reads the environment or sets torch's threads:
the caller decides the device and the threads. torch itself is imported only when a fit runs
(``fit``, ``fit_many``): specs, the registry and batching load without it, so a scheduler that
only plans and enqueues jobs starts in a fraction of a second.

``fit_many(..., fuse=...)`` trains with each variant's epoch compiled into a few fused passes
(see ``fusion.py``); ``fuse_settings`` parses the edge's ``POLYFIT_FUSE`` and
``POLYFIT_COMPILE_CACHE`` from an environment mapping the caller hands in.
"""

# First: the registry imports installed plugins, whose modules may `from polyfit_models import
# Variant` while this package is still being initialised.
from .variant import Variant, make_defaults  # isort: skip

from .batching import batch_bytes, batch_key, bytes_per_job, jobs_within, shared_bytes
from .errors import (
    BadInput,
    DeviceError,
    PolyfitError,
    PolyfitModelError,
    SettingError,
    SpecError,
    StateError,
)
from .fuse_settings import FuseSettings, fuse_settings
from .problem import DTYPES, OPTIMIZERS, TARGETS
from .registry import VARIANTS
from .result import FitResult
from .spec import JobSpec
from .state import JobState

__all__ = [
    "BadInput",
    "DTYPES",
    "OPTIMIZERS",
    "TARGETS",
    "VARIANTS",
    "DeviceError",
    "FitResult",
    "FuseSettings",
    "JobSpec",
    "JobState",
    "PolyfitError",
    "PolyfitModelError",
    "SettingError",
    "SpecError",
    "StateError",
    "Variant",
    "batch_bytes",
    "batch_key",
    "bytes_per_job",
    "fit",
    "fit_many",
    "remember_compiles",
    "fuse_settings",
    "jobs_within",
    "make_defaults",
    "shared_bytes",
]


def __getattr__(name: str):
    # PEP 562: ``fit`` and ``fit_many`` live in the torch-importing runner, loaded on first use.
    if name in ("fit", "fit_many", "remember_compiles"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
