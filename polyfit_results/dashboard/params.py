"""Every query argument and path part the dashboard takes, parsed here and bounded: each one is
small text (``MAX_TEXT`` characters), a number is ASCII digits within a range (no ``²``, no
23-digit page), a range of degrees spans at most ``MAX_DEGREE + 1`` values, a list of
choices names known values. A bad one is a 400 with one line that says what is allowed
(never a traceback, never work in proportion to what the request asks for), and whatever of
a bad value is echoed is cut to a few dozen characters."""

from __future__ import annotations

import math
import re

from flask import abort, request

#: The longest value of any query argument (a float, a sweep's name or id, a list of choices).
#: Sweep names have at most 200 characters (``scheduler.specfile.check_name``).
MAX_TEXT = 256
#: The highest page of any table, and the highest degree a filter may name: pages past what
#: the tables can hold (a million jobs, 25 a page) and degrees far past the model's cap (14).
MAX_PAGE = 1_000_000
MAX_DEGREE = 999
#: How much of a bad value a message repeats.
SHOWN = 40

_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() takes "²", which int() refuses
_DEGREE = re.compile(r"([0-9]{1,3})(?:-([0-9]{1,3}))?")
_FLAGS = {"": False, "0": False, "false": False, "1": True, "true": True, "on": True}


def shown(value: str) -> str:
    """``value`` as a message repeats it: quoted, and cut after ``SHOWN`` characters."""
    return repr(value if len(value) <= SHOWN else value[:SHOWN] + "...")


def text(name: str, default: str = "") -> str:
    """The query argument ``name`` (its first value), at most ``MAX_TEXT`` characters."""
    value = request.args.get(name, default)
    if len(value) > MAX_TEXT:
        abort(400, f"{name} is longer than {MAX_TEXT} characters")
    return value


def whole(name: str, default: int, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` (ASCII digits)."""
    value = text(name, str(default)).strip()
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        abort(400, f"{name} must be a whole number from {low:,} to {high:,}, not {shown(value)}")
    return int(value)


def page(name: str = "page") -> int:
    return whole(name, 1, 1, MAX_PAGE)


def one_of(name: str, allowed, default):
    """A value of ``allowed`` (compared as text), or ``default`` when the argument is absent."""
    value = text(name, str(default)).strip()
    for choice in allowed:
        if value == str(choice):
            return choice
    abort(400, f"{name} {shown(value)} is not one of {', '.join(map(str, allowed))}")


def flag(name: str) -> bool:
    value = text(name).strip().lower()
    if value not in _FLAGS:
        abort(400, f"{name} must be 1 or 0, not {shown(value)}")
    return _FLAGS[value]


def items(name: str) -> list[str]:
    """The comma-separated items of every value of a repeatable argument."""
    values = request.args.getlist(name)
    if sum(len(v) for v in values) > MAX_TEXT * 4:
        abort(400, f"{name} is longer than {MAX_TEXT * 4} characters")
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def choices(name: str, allowed) -> tuple[str, ...]:
    found = items(name)
    for item in found:
        if item not in allowed:
            abort(400, f"{name} {shown(item)} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(found))


def degrees(name: str = "degree") -> tuple[int, ...]:
    """Degrees and ranges like ``3-5``, each from 0 to ``MAX_DEGREE``: at most
    ``MAX_DEGREE + 1`` distinct values, however many ranges name them."""
    out: set[int] = set()
    for item in items(name):
        match = _DEGREE.fullmatch(item)
        if match is None:
            abort(400, f"{name} {shown(item)} is not a degree or a range like 3-5 "
                       f"(degrees from 0 to {MAX_DEGREE})")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            abort(400, f"{name} {shown(item)} is a range that ends before it starts")
        out.update(range(low, high + 1))
    return tuple(sorted(out))


def number(name: str) -> float | None:
    """A finite number, or None when the argument is absent or empty."""
    value = text(name).strip()
    if not value:
        return None
    try:
        parsed = float(value)
    except ValueError:
        parsed = math.nan
    if not math.isfinite(parsed):
        abort(400, f"{name} {shown(value)} is not a number")
    return parsed


def ref(value: str, what: str = "sweep") -> str:
    """A path part that names a sweep or a job: at most ``MAX_TEXT`` characters."""
    if len(value) > MAX_TEXT:
        abort(404, f"no {what} of {len(value):,} characters (names and ids are shorter)")
    return value


def tag(name: str = "tag") -> str | None:
    """A sweep tag to show only the sweeps that carry it (None when absent): a word, as
    ``polyfit sweep tag`` takes it."""
    from store.manage import SweepChangeRefused, checked_tags

    value = text(name).strip()
    if not value:
        return None
    try:
        tags = checked_tags([value])
    except SweepChangeRefused as e:
        abort(400, f"{name} {shown(value)}: {e}")
    if len(tags) != 1:
        abort(400, f"{name} names one tag, not {shown(value)}")
    return tags[0]
