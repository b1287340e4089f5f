"""A sweep spec (YAML file and axis flags) expanded into jobs.

Each grid mapping is the product of its axes; a list of mappings is the union of their products.
Axes a variant does not use are ignored for it (duplicates then collapse, as job ids are derived
from the job's settings); combinations a variant cannot take are left out and reported; a value
out of range, an unknown key or variant, or a grid left with no job is a ``SweepSpecError``."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from polyfit_models import OPTIMIZERS, TARGETS, VARIANTS, JobSpec, SpecError
from worker.queues import is_device

AXES = ("variant", "lr", "degree", "seed", "epochs", "optimizer", "device")
TOP_KEYS = ("name", "target", "x", "grid")
X_KEYS = ("start", "stop", "points")
MAX_DEGREE = max(v.max_degree for v in VARIANTS.values())
_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


class SweepSpecError(ValueError):
    """Raised when a sweep spec or an axis flag is malformed or out of range (one line)."""


@dataclass(frozen=True)
class Job:
    id: str
    spec: JobSpec
    device: str

    def row(self) -> dict:
        """The job's columns in the ``jobs`` table."""
        s = self.spec
        return {"id": self.id, "variant": s.variant, "lr": s.lr, "degree": s.degree,
                "seed": s.seed, "epochs": s.epochs, "optimizer": s.optimizer,
                "device": self.device, "target": s.target, "dtype": s.dtype,
                "x_start": s.x_start, "x_stop": s.x_stop, "x_points": s.x_points}


@dataclass(frozen=True)
class Plan:
    sweep_id: str
    name: str
    spec: dict
    jobs: tuple[Job, ...]
    skipped: tuple[str, ...]


def job_id(spec: JobSpec, device: str) -> str:
    canonical = json.dumps({**spec.to_dict(), "device": device}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_spec_file(path: str | Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SweepSpecError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SweepSpecError(f"{path}: not valid YAML{at}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SweepSpecError(f"{path}: a sweep spec must be a mapping, got {type(data).__name__}")
    return data


# -- axis values ------------------------------------------------------------------------------

def _as_list(axis: str, value: object) -> list:
    if isinstance(value, (list, tuple)):
        if not value:
            raise SweepSpecError(f"{axis}: empty list")
        return list(value)
    if isinstance(value, dict) or value is None:
        raise SweepSpecError(f"{axis}: expected a value or a list, got {value!r}")
    return [value]


def _number(axis: str, raw: object) -> float:
    if isinstance(raw, bool):
        raise SweepSpecError(f"{axis}: expected a number, got {raw!r}")
    try:
        value = float(raw)  # YAML reads "1e-6" as a string
    except (TypeError, ValueError):
        raise SweepSpecError(f"{axis}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise SweepSpecError(f"{axis}: must be finite, got {raw!r}")
    return value


def _ints(axis: str, raw: object, low: int, high: int) -> Sequence[int]:
    """An int, or a range 'a-b' (inclusive), within [low, high]."""
    if isinstance(raw, str) and _RANGE.match(raw):
        a, b = (int(v) for v in _RANGE.match(raw).groups())
        if a > b:
            raise SweepSpecError(f"{axis}: empty range {raw!r}")
        if a < low or b > high:
            raise SweepSpecError(f"{axis}: range {raw!r} outside {low}..{high}")
        return range(a, b + 1)
    value = _number(axis, raw)
    if value != int(value):
        raise SweepSpecError(f"{axis}: expected a whole number, got {raw!r}")
    if not low <= value <= high:
        raise SweepSpecError(f"{axis}: {raw!r} is outside {low}..{high}")
    return [int(value)]


def _lr(raw: object) -> float:
    value = _number("lr", raw)
    if not 0 < value <= 10:
        raise SweepSpecError(f"lr: {raw!r} is outside (0, 10]")
    return value


def _choice(axis: str, raw: object, choices: Sequence[str]) -> str:
    if not isinstance(raw, str) or raw not in choices:
        raise SweepSpecError(f"{axis}: unknown value {raw!r} (choose from {', '.join(choices)})")
    return raw


def parse_axis(axis: str, values: object, max_values: int = 200_000) -> list:
    """The validated values of one axis; refuses more than ``max_values`` of them before any
    range is expanded (a typo like seed 0-999999999 must not allocate a billion ints)."""
    items = _as_list(axis, values)
    out: list = []
    pieces = [_ints(axis, raw, *_INT_AXES[axis]) if axis in _INT_AXES else None for raw in items]
    count = sum(len(p) if p is not None else 1 for p in pieces)
    if count > max_values:
        raise SweepSpecError(f"{axis}: {count:,} values, over the limit of {max_values:,} jobs "
                             "(POLYFIT_MAX_JOBS)")
    for raw, piece in zip(items, pieces):
        if axis == "variant":
            out.append(_choice(axis, raw, list(VARIANTS)))
        elif axis == "lr":
            out.append(_lr(raw))
        elif piece is not None:
            out.extend(piece)
        elif axis == "optimizer":
            out.append(_choice(axis, raw, list(OPTIMIZERS)))
        elif axis == "device":
            if not isinstance(raw, str) or not is_device(raw):
                raise SweepSpecError(f"device: unknown value {raw!r} (cpu, cuda, cuda:N or any)")
            out.append(raw)
    # Keep order, drop repeats.
    seen: dict = {}
    for v in out:
        seen.setdefault(v, None)
    return list(seen)


_INT_AXES = {"degree": (0, MAX_DEGREE), "seed": (0, 2**32 - 1), "epochs": (1, 10_000_000)}


def parse_flag(axis: str, text: str) -> list[str]:
    """A comma-separated flag value as raw items (validated later with the file's values)."""
    items = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in items):
        raise SweepSpecError(f"--{axis}: empty value in {text!r}")
    return items


# -- expansion --------------------------------------------------------------------------------

def _grids(spec: Mapping, overrides: Mapping[str, list]) -> list[dict]:
    grid = spec.get("grid", {})
    grids = grid if isinstance(grid, list) else [grid]
    if not grids:
        raise SweepSpecError("grid: empty list")
    out = []
    for g in grids:
        if not isinstance(g, dict):
            raise SweepSpecError(f"grid: each entry must be a mapping, got {g!r}")
        unknown = set(g) - set(AXES)
        if unknown:
            raise SweepSpecError(f"grid: unknown axis {sorted(unknown)[0]!r} "
                                 f"(axes: {', '.join(AXES)})")
        out.append({**g, **overrides})
    return out


def _x_grid(spec: Mapping) -> dict:
    x = spec.get("x", {}) or {}
    if not isinstance(x, dict):
        raise SweepSpecError(f"x: expected a mapping with {', '.join(X_KEYS)}")
    unknown = set(x) - set(X_KEYS)
    if unknown:
        raise SweepSpecError(f"x: unknown key {sorted(unknown)[0]!r} (keys: {', '.join(X_KEYS)})")
    out = {}
    if "start" in x:
        out["x_start"] = _number("x.start", x["start"])
    if "stop" in x:
        out["x_stop"] = _number("x.stop", x["stop"])
    if "points" in x:
        out["x_points"] = _ints("x.points", x["points"], 2, 10_000_000)[0]
    return out


def build_plan(
    spec: Mapping | None,
    overrides: Mapping[str, list] | None = None,
    *,
    name: str | None = None,
    default_name: str = "sweep",
    max_jobs: int = 200_000,
    max_job_work: int = 2_000_000_000,
) -> Plan:
    """Validate a spec (from YAML) plus axis overrides (from flags) and expand it into jobs."""
    spec = dict(spec or {})
    overrides = dict(overrides or {})
    unknown = set(spec) - set(TOP_KEYS)
    if unknown:
        raise SweepSpecError(f"unknown key {sorted(unknown)[0]!r} (keys: {', '.join(TOP_KEYS)})")
    if "grid" not in spec and not overrides:
        raise SweepSpecError("nothing to sweep: give a SPEC.yaml with a grid, or axis flags "
                             "such as --variant")
    target = spec.get("target", "sin")
    _choice("target", target, list(TARGETS))
    x = _x_grid(spec)
    # An explicit empty name is an error, not a request for the default (``name:`` with no
    # value in YAML is null and means "not given").
    sweep_name = name if name is not None else spec.get("name")
    if sweep_name is None:
        sweep_name = default_name
    if (not isinstance(sweep_name, str) or not sweep_name.strip()
            or len(sweep_name) > 200):
        raise SweepSpecError("name: must be a non-empty string of at most 200 characters")

    grids = [{axis: parse_axis(axis, values, max_jobs) for axis, values in g.items()}
             for g in _grids(spec, overrides)]
    # Refuse a huge grid before expanding it.
    upper = sum(
        math.prod(len(g.get(a, [None])) for a in AXES if a != "variant")
        * len(g.get("variant", list(VARIANTS)))
        for g in grids
    )
    if upper > max_jobs:
        raise SweepSpecError(f"the grid has up to {upper:,} jobs, over the limit of {max_jobs:,} "
                             "(POLYFIT_MAX_JOBS)")

    jobs: dict[str, Job] = {}
    skipped: dict[str, None] = {}
    for g in grids:
        for variant_name in g.get("variant", list(VARIANTS)):
            _expand(VARIANTS[variant_name], g, target, x, jobs, skipped, max_job_work)
    if not jobs:
        why = f" ({next(iter(skipped))})" if skipped else ""
        raise SweepSpecError(f"the grid leaves no job to run{why}")

    normalized = {
        "name": sweep_name,
        "target": target,
        "x": {k.removeprefix("x_"): v for k, v in x.items()},
        "grid": [{a: list(v) for a, v in g.items()} for g in grids],
    }
    ids = sorted(jobs)
    sweep_id = hashlib.sha256(
        json.dumps([sweep_name, ids]).encode()
    ).hexdigest()[:12]
    return Plan(sweep_id=sweep_id, name=sweep_name, spec=normalized, jobs=tuple(jobs.values()),
                skipped=tuple(skipped))


def _expand(variant, grid: Mapping, target: str, x: Mapping, jobs: dict, skipped: dict,
            max_job_work: int) -> None:
    used = [a for a in AXES if a != "variant" and a in grid and
            (a in variant.axes or a in ("lr", "seed", "epochs", "device"))]
    for combo in itertools.product(*(grid[a] for a in used)):
        values = dict(zip(used, combo))
        device = values.pop("device", "cpu")
        if device != "any" and device.split(":")[0] not in variant.devices:
            skipped[f"{variant.name} cannot run on {device}"] = None
            continue
        if device == "any" and "cuda" not in variant.devices:
            device = "cpu"
        degree = values.get("degree")
        if degree is not None and not variant.min_degree <= degree <= variant.max_degree:
            skipped[f"{variant.name} takes degree {variant.min_degree}..{variant.max_degree}, "
                    f"not {degree}"] = None
            continue
        optimizer = values.get("optimizer")
        if optimizer is not None and optimizer not in variant.optimizers:
            skipped[f"{variant.name} cannot use optimizer {optimizer}"] = None
            continue
        try:
            spec = JobSpec.create(variant.name, target=target, **x, **values)
        except SpecError as e:
            raise SweepSpecError(f"{variant.name}: {e}") from e
        if spec.epochs * spec.x_points > max_job_work:
            raise SweepSpecError(
                f"{variant.name}: epochs x points = {spec.epochs * spec.x_points:,} per job is "
                f"over the limit of {max_job_work:,} (POLYFIT_MAX_JOB_WORK)")
        jid = job_id(spec, device)
        jobs.setdefault(jid, Job(jid, spec, device))
