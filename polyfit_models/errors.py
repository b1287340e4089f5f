"""The one exception tree of polyfit, rooted here because every package may import this one.

Every error polyfit raises on purpose derives from :class:`PolyfitError`; those that mean "your
input is unusable" (a spec, a flag, a name, a file) also from :class:`BadInput`. The command line
catches these two: one line on stderr, exit 2 for ``BadInput``, exit 1 for the rest (a server
unreachable, work that ran and failed). Errors about bad input also derive from
:class:`ValueError` where they are one, so code that only knows the standard library still reads
them as what they are. Divergence of a fit is a result (``status == "diverged"``), never an
exception.

Every error the numerics raise derives from :class:`PolyfitModelError`, which is bad input.
"""

from __future__ import annotations


class PolyfitError(Exception):
    """The root of every error polyfit raises on purpose: one line for the user."""


class BadInput(PolyfitError):
    """The marker of an error in the user's input (a spec, a flag, a name, a file): exit 2."""


class PolyfitModelError(BadInput):
    """Raised when the numerics package cannot do what it was asked (base of all its errors)."""


class SpecError(PolyfitModelError, ValueError):
    """Raised when a job spec (or a value passed with it, like the device) is invalid."""


class DeviceError(PolyfitModelError, RuntimeError):
    """Raised when a valid device is asked for but this machine cannot provide it."""


class SettingError(PolyfitModelError, ValueError):
    """Raised when a setting handed in at a process edge (a ``POLYFIT_*`` variable, a worker's
    flag, a broker or database URL) is invalid."""


class StateError(PolyfitModelError, ValueError):
    """Raised when a stored training state is malformed or does not belong to its job."""
