"""polyfit's numerics: the programs of the "learn PyTorch by examples" lesson (fit y = sin(x)
with a polynomial) as fit variants behind one interface.

Describe a fit with a :class:`JobSpec` (``JobSpec.create("autograd", lr=1e-6, seed=3)``), run it
with :func:`fit` or many at once, vectorized, with :func:`fit_many`, and read the
:class:`FitResult`. ``VARIANTS`` is the registry of the six variants. This package imports only
NumPy, torch and the standard library; it never reads the environment or sets torch's threads:
the caller decides the device and the threads.
"""

from .errors import DeviceError, PolyfitModelError, ResultError, SpecError
from .problem import DTYPES, OPTIMIZERS, TARGETS
from .registry import VARIANTS, Variant
from .result import FitResult
from .runner import batch_key, bytes_per_job, fit, fit_many
from .spec import JobSpec

__all__ = [
    "PolyfitModelError", "SpecError", "ResultError", "DeviceError",
    "JobSpec", "FitResult", "Variant", "VARIANTS", "OPTIMIZERS", "TARGETS", "DTYPES",
    "fit", "fit_many", "batch_key", "bytes_per_job",
]
