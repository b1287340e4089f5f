"""Optional dependencies (Optuna for searches and study exports): imported when first used, and
a missing one named with the extra that installs it, as one line of the caller's error."""

from __future__ import annotations

import importlib
from types import ModuleType


def optuna(error: type[Exception], hint: str) -> ModuleType:
    """Optuna, quiet below warnings, or ``error(hint)`` when it is not installed."""
    try:
        module = importlib.import_module("optuna")
    except ImportError:
        raise error(hint) from None
    module.logging.set_verbosity(module.logging.WARNING)
    return module
