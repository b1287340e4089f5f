"""The axes of a sweep (``variant``, ``lr``, ``degree``, ``seed``, ``epochs``, ``optimizer``,
``device``): one axis's values from YAML or a flag, checked and expanded.

An axis is a value, a list, an integer range ``a-b``, or a spaced range (``{log: [a, b], num:
n}``, ``{linear: ...}``, the flag's ``log:A:B:N``). A number's range is the job spec's own rule
(``polyfit_models.spec``: ``check_lr``, ``check_seed``, ...), applied here to every value once
and reported as a ``SweepSpecError`` naming the axis."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from polyfit_models import OPTIMIZERS, VARIANTS, SpecError, fields
from polyfit_models.registry import BROKEN
from polyfit_models.spec import check_epochs, check_int, check_lr, check_seed
from scheduler.specfile import SweepSpecError, printable
from worker.queues import is_device

# The sweep axes, and those a range (``{log: [a, b], num: n}``, ``{linear: [a, b], num: n}``,
# ``"1-5"``) may define: from the job's declaration (``polyfit_models.fields``).
AXES, RANGE_AXES = fields.AXES, fields.RANGE_AXES
MAX_DEGREE = max(v.max_degree for v in VARIANTS.values())
_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


def axes_used(variant) -> list[str]:
    """The sweep axes (besides ``variant``) a variant takes; a grid's other axes are ignored
    for it. The one rule: its registry entry lists them."""
    return [a for a in AXES if a != "variant" and a in variant.axes]


def _as_list(axis: str, value: object) -> list:
    if isinstance(value, (list, tuple)):
        if not value:
            raise SweepSpecError(f"{axis}: empty list")
        return list(value)
    if isinstance(value, dict) or value is None:
        raise SweepSpecError(f"{axis}: expected a value or a list, got {value!r}")
    return [value]


def show_value(raw: object) -> str:
    """A value for a one-line message, cut short (an int of 400 digits is one)."""
    text = printable(repr(raw))
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"


def parse_number(axis: str, raw: object) -> float:
    """A finite number from YAML or a flag (YAML reads ``1e-6`` as text); -0.0 is 0.0."""
    if isinstance(raw, bool):
        raise SweepSpecError(f"{axis}: expected a number, got {show_value(raw)}")
    try:
        value = float(raw)  # YAML reads "1e-6" as a string
    except (TypeError, ValueError):
        raise SweepSpecError(f"{axis}: expected a number, got {show_value(raw)}") from None
    except OverflowError:  # an int too big for a float
        value = math.inf
    if not math.isfinite(value):
        raise SweepSpecError(f"{axis}: must be finite, got {show_value(raw)}")
    return value + 0.0  # -0.0 is 0.0: the same setting, the same job id


#: A check of one integer ``(value, name) -> value`` that raises ``SpecError``.
IntCheck = Callable[[int, str], int]


def within(low: int, high: int) -> IntCheck:
    """The check of an integer from ``low`` to ``high`` (a bound of the sweep's, not a spec's)."""
    return lambda value, name: check_int(value, name, low, high)


def parse_ints(axis: str, raw: object, check: IntCheck) -> Sequence[int]:
    """An int, or a range 'a-b' (inclusive, its ends checked before it is expanded), each
    passing ``check``."""
    try:
        if isinstance(raw, str) and _RANGE.match(raw):
            a, b = (int(v) for v in _RANGE.match(raw).groups())
            if a > b:
                raise SweepSpecError(f"{axis}: empty range {show_value(raw)}")
            return range(check(a, axis), check(b, axis) + 1)
        value = parse_number(axis, raw)
        if value != int(value):
            raise SweepSpecError(f"{axis}: expected a whole number, got {show_value(raw)}")
        return [check(int(value), axis)]
    except SpecError as e:
        raise SweepSpecError(str(e)) from None


def parse_lr(raw: object) -> float:
    """A learning rate from YAML or a flag, within the spec's bounds."""
    try:
        return check_lr(parse_number("lr", raw))
    except SpecError as e:
        raise SweepSpecError(str(e)) from None


def parse_choice(axis: str, raw: object, choices: Sequence[str]) -> str:
    """``raw`` if it is one of ``choices``."""
    if not isinstance(raw, str) or raw not in choices:
        raise SweepSpecError(f"{axis}: unknown value {show_value(raw)} "
                             f"(choose from {', '.join(choices)})")
    return raw


#: The integer axes and the check of each value. The degree's bounds here are every
#: variant's together (a degree one variant cannot take leaves that variant out of the grid).
INT_AXES: dict[str, IntCheck] = {"degree": within(0, MAX_DEGREE), "seed": check_seed,
                                 "epochs": check_epochs}


def _spaced(axis: str, raw: object, max_values: int) -> list | None:
    """The values of a range of a numeric axis, or None if ``raw`` is not one: a mapping
    ``{log: [a, b], num: n}`` or ``{linear: [a, b], num: n}`` (YAML), or the flag form
    ``log:a:b:n`` / ``linear:a:b:n``. n values spaced evenly (in log space for ``log``), both
    ends included; an integer axis rounds them and drops repeats."""
    if isinstance(raw, str) and raw.split(":", 1)[0] in ("log", "linear"):
        parts = raw.split(":")
        if len(parts) != 4:
            raise SweepSpecError(f"--{axis}: a range is {parts[0]}:START:STOP:NUM, "
                                 f"got {show_value(raw)}")
        raw = {parts[0]: parts[1:3], "num": parts[3]}
    if not isinstance(raw, dict):
        return None
    kinds = [k for k in ("log", "linear") if k in raw]
    if axis not in RANGE_AXES:
        raise SweepSpecError(f"{axis}: ranges are for {', '.join(RANGE_AXES)}, not {axis}")
    if len(kinds) != 1 or set(raw) != {kinds[0], "num"}:
        raise SweepSpecError(f"{axis}: a range is {{log: [start, stop], num: n}} or "
                             f"{{linear: [start, stop], num: n}}, got {show_value(raw)}")
    kind, ends = kinds[0], raw[kinds[0]]
    if not isinstance(ends, (list, tuple)) or len(ends) != 2:
        raise SweepSpecError(f"{axis}: {kind} takes [start, stop], got {show_value(ends)}")
    start, stop = (parse_number(axis, v) for v in ends)
    num = parse_number(f"{axis} num", raw["num"])
    if num != int(num) or not 1 <= num <= max_values:
        raise SweepSpecError(f"{axis}: num must be a whole number in 1..{max_values:,}, "
                             f"got {show_value(raw['num'])}")
    num = int(num)
    if kind == "log":
        if start <= 0 or stop <= 0:
            raise SweepSpecError(f"{axis}: a log range needs positive ends, "
                                 f"got {show_value(ends)}")
        values = [float(v) for v in np.geomspace(start, stop, num)]
    else:
        values = [float(v) for v in np.linspace(start, stop, num)]
    if num > 1:  # exactly the ends given, not their round trip through logs
        values[0], values[-1] = start, stop
    if axis in INT_AXES:
        values = [int(round(v)) for v in values]
    return values


def parse_axis(axis: str, values: object, max_values: int = 1_000_000) -> list:
    """The validated values of one axis; refuses more than ``max_values`` of them before any
    range is expanded (a typo like seed 0-999999999 must not allocate a billion ints)."""
    spaced = _spaced(axis, values, max_values)
    if spaced is not None:
        values = spaced
    items = _as_list(axis, values)
    if any(isinstance(i, str) and i.split(":", 1)[0] in ("log", "linear") for i in items):
        items = [v for i in items for v in (_spaced(axis, i, max_values) or [i])]
    out: list = []
    pieces = [parse_ints(axis, raw, INT_AXES[axis]) if axis in INT_AXES else None
              for raw in items]
    count = sum(len(p) if p is not None else 1 for p in pieces)
    if count > max_values:
        raise SweepSpecError(f"{axis}: {count:,} values, over the limit of {max_values:,} jobs "
                             "(POLYFIT_MAX_JOBS)")
    for raw, piece in zip(items, pieces):
        if axis == "variant":
            if isinstance(raw, str) and raw in BROKEN:
                raise SweepSpecError(f"variant: the plugin {BROKEN[raw].describe()}")
            out.append(parse_choice(axis, raw, list(VARIANTS)))
        elif axis == "lr":
            out.append(parse_lr(raw))
        elif piece is not None:
            out.extend(piece)
        elif axis == "optimizer":
            out.append(parse_choice(axis, raw, list(OPTIMIZERS)))
        elif axis == "device":
            if not isinstance(raw, str) or not is_device(raw):
                raise SweepSpecError(f"device: unknown value {show_value(raw)} "
                                     "(cpu, cuda, cuda:N or any)")
            out.append(raw)
    # Keep order, drop repeats.
    seen: dict = {}
    for v in out:
        seen.setdefault(v, None)
    return list(seen)


def parse_flag(axis: str, text: str) -> list[str]:
    """A comma-separated flag value as raw items (validated later with the file's values)."""
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in items):
        raise SweepSpecError(f"--{axis}: empty value in {text!r}")
    return items

