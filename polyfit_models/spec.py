"""The job spec: one fit, as a frozen record of JSON primitives.

A :class:`JobSpec` is what a job's stored row describes (a queue message names job ids only; the
worker reads each spec back from its row) and what a job's id is derived from. It cannot
exist in an invalid state: ``__post_init__`` checks every field against the variant's entry in
the registry and raises :class:`SpecError` with one line naming the field. ``from_dict`` adds the
checks a plain dict needs (unknown and missing keys, wrong types), so it raises nothing but
``SpecError`` on any input. The device is not part of a spec: the same job may run anywhere.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import fields
from .errors import SpecError
from .problem import DTYPES, TARGETS, power_sum_is_safe
from .registry import BROKEN, VARIANTS

MAX_LR = 10.0
SEED_LIMIT = 2 ** 32
MAX_EPOCHS = 10_000_000
MAX_POINTS = 10_000_000

# The spec's required settings by type (the job's declaration less the device, which is not
# part of a spec, and the later, optional ones, checked one by one below).
_REQUIRED_SETTINGS = [f for f in fields.FIELDS
                      if f.role == "setting" and f.name != "device" and not f.later]
_FLOAT_FIELDS, _INT_FIELDS, _STR_FIELDS = (tuple(f.name for f in _REQUIRED_SETTINGS
                                                 if f.type is kind) for kind in (float, int, str))


def _show(value: Any) -> str:
    """A short, single-line rendering of a bad value for an error message."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _as_float(name: str, value: Any) -> float:
    # ``+ 0.0`` makes -0.0 the 0.0 it equals: one setting, one serialised form, one job id.
    if type(value) is float and math.isfinite(value):  # the common case, without ABC checks
        return value + 0.0
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpecError(f"{name} must be a number, got {_show(value)}")
    try:
        result = float(value)
    except (OverflowError, ValueError, TypeError):
        raise SpecError(f"{name} must be a finite number, got {_show(value)}") from None
    if not math.isfinite(result):
        raise SpecError(f"{name} must be finite, got {_show(value)}")
    return result + 0.0


def _as_int(name: str, value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpecError(f"{name} must be an integer, got {_show(value)}")
    return int(value)


def check_lr(value: Any, name: str = "lr") -> float:
    """A learning rate: a finite number > 0 and <= ``MAX_LR`` (the spec's rule, which a sweep's
    axes apply too, naming the value ``name``); raises ``SpecError`` otherwise."""
    lr = _as_float(name, value)
    if not 0.0 < lr <= MAX_LR:
        raise SpecError(f"{name} must be > 0 and <= {MAX_LR:g}, got {lr!r}")
    return lr


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer >= 0 and < 2**32; raises ``SpecError`` otherwise."""
    seed = _as_int(name, value)
    if not 0 <= seed < SEED_LIMIT:
        raise SpecError(f"{name} must be >= 0 and < 2**32, got {_show(seed)}")
    return seed


def check_int(value: Any, name: str, low: int, high: int) -> int:
    """An integer from ``low`` to ``high`` (both included); raises ``SpecError`` otherwise."""
    number = _as_int(name, value)
    if not low <= number <= high:
        raise SpecError(f"{name} must be between {low} and {high}, got {_show(number)}")
    return number


def check_epochs(value: Any, name: str = "epochs") -> int:
    """A number of epochs: an integer from 1 to ``MAX_EPOCHS``."""
    return check_int(value, name, 1, MAX_EPOCHS)


def check_points(value: Any, name: str = "x_points") -> int:
    """A number of points on the x grid: an integer from 2 to ``MAX_POINTS``."""
    return check_int(value, name, 2, MAX_POINTS)


def _unknown_variant(name: Any) -> SpecError:
    """The error for a variant that is not in the registry: the reason where an installed
    plugin declares it but could not be loaded here."""
    if isinstance(name, str) and name in BROKEN:
        return SpecError(f"the plugin {BROKEN[name].describe()}")
    return SpecError(f"variant must be one of {', '.join(VARIANTS)}, got {_show(name)}")


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One polynomial fit: the variant and every setting that determines its result."""

    variant: str
    lr: float
    degree: int
    seed: int
    epochs: int
    optimizer: str
    target: str = "sin"
    x_start: float = -math.pi
    x_stop: float = math.pi
    x_points: int = 2000
    dtype: str
    #: Stop early once the training loss says the model's mse is within this of the
    #: least-squares optimum (``mse - optimum_mse <= stop_gap``); None trains every epoch.
    stop_gap: float | None = None

    def __post_init__(self) -> None:
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise SpecError(f"{name} must be a string, got {_show(value)}")
        if self.variant not in VARIANTS:
            raise _unknown_variant(self.variant)
        variant = VARIANTS[self.variant]
        # Normalise numbers (an integral 3.0 for an int field, an int for a float field), so
        # that equal specs compare, hash and serialise equal.
        for name in _FLOAT_FIELDS:
            object.__setattr__(self, name, _as_float(name, getattr(self, name)))
        for name in _INT_FIELDS:
            object.__setattr__(self, name, _as_int(name, getattr(self, name)))

        check_lr(self.lr)
        if not variant.min_degree <= self.degree <= variant.max_degree:
            raise SpecError(f"degree must be between {variant.min_degree} and "
                            f"{variant.max_degree} for variant {self.variant}, "
                            f"got {_show(self.degree)}")
        check_seed(self.seed)
        check_epochs(self.epochs)
        if self.optimizer not in variant.optimizers:
            raise SpecError(f"optimizer must be one of {', '.join(variant.optimizers)} for "
                            f"variant {self.variant}, got {_show(self.optimizer)}")
        if self.target not in TARGETS:
            raise SpecError(f"target must be one of {', '.join(TARGETS)}, "
                            f"got {_show(self.target)}")
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype must be one of {', '.join(DTYPES)}, got {_show(self.dtype)}")
        check_points(self.x_points)
        if not self.x_start < self.x_stop:
            raise SpecError(f"x_start must be < x_stop, got x_start={self.x_start!r} "
                            f"and x_stop={self.x_stop!r}")
        if self.stop_gap is not None:
            object.__setattr__(self, "stop_gap", _as_float("stop_gap", self.stop_gap))
            if self.stop_gap < 0:
                raise SpecError(f"stop_gap must be >= 0, got {self.stop_gap!r}")
            if not variant.can_stop_at_optimum:
                raise SpecError(f"variant {self.variant} cannot stop at the optimum: its "
                                "training loss is not its final model's")
        if not power_sum_is_safe(self.degree, self.x_start, self.x_stop, self.x_points,
                                 self.dtype):
            raise SpecError(
                f"degree {self.degree} is too high for x in [{self.x_start:g}, {self.x_stop:g}] "
                f"with {self.x_points} points in {self.dtype}: the sum of x^(2*degree) would "
                f"overflow; lower the degree, narrow the x range or use float64")

    @classmethod
    def create(cls, variant: str, **overrides: Any) -> JobSpec:
        """A spec for ``variant`` with the variant's defaults (seed 0) for every field not
        given in ``overrides``."""
        if not isinstance(variant, str) or variant not in VARIANTS:
            raise _unknown_variant(variant)
        fields: dict[str, Any] = {"seed": 0, **VARIANTS[variant].defaults, **overrides}
        return cls.from_dict({"variant": variant, **fields})

    def with_lr_and_seed(self, lr: float, seed: int) -> JobSpec:
        """This spec with another learning rate and seed, checked for those two only (the rest
        is this spec's, valid already): how a sweep makes a million jobs in seconds."""
        lr, seed = check_lr(lr), check_seed(seed)
        out = object.__new__(JobSpec)  # no __init__: the fields are this spec's, checked
        fields = out.__dict__
        fields.update(self.__dict__)
        fields["lr"], fields["seed"] = lr, seed
        return out

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain dict of JSON primitives (every field is one already)."""
        return {name: getattr(self, name) for name in _FIELD_ORDER}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Validate ``data`` and build the spec; raises ``SpecError`` (one line) on bad input."""
        if not isinstance(data, Mapping):
            raise SpecError(f"a job spec must be a mapping, got {type(data).__name__}")
        unknown = [k for k in data if k not in _FIELD_NAMES]
        if unknown:
            raise SpecError("unknown job spec key(s): " + ", ".join(_show(k) for k in unknown))
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise SpecError("job spec is missing key(s): " + ", ".join(missing))
        return cls(**data)


_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(JobSpec))
_FIELD_NAMES = frozenset(_FIELD_ORDER)
_REQUIRED = tuple(f.name for f in dataclasses.fields(JobSpec)
                  if f.default is dataclasses.MISSING)
