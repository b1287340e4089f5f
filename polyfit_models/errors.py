"""The one exception tree of ``polyfit_models``.

Every error the numerics raise on purpose derives from :class:`PolyfitModelError`, so a caller
(the worker, the CLI) can catch the package's own failures with one ``except`` and turn them into
one line for the user. Errors about bad input also derive from :class:`ValueError`, so code that
only knows the standard library still reads them as what they are. Divergence of a fit is a
result (``status == "diverged"``), never an exception.
"""

from __future__ import annotations


class PolyfitModelError(Exception):
    """Raised when the numerics package cannot do what it was asked (base of all its errors)."""


class SpecError(PolyfitModelError, ValueError):
    """Raised when a job spec (or a value passed with it, like the device) is invalid."""


class ResultError(PolyfitModelError, ValueError):
    """Raised when a dict handed to ``FitResult.from_dict`` is not a valid fit result."""


class DeviceError(PolyfitModelError, RuntimeError):
    """Raised when a valid device is asked for but this machine cannot provide it."""


class SettingError(PolyfitModelError, ValueError):
    """Raised when a setting handed in by a process edge (such as ``POLYFIT_FUSE``) is invalid."""


class StateError(PolyfitModelError, ValueError):
    """Raised when a stored training state is malformed or does not belong to its job."""
