"""A sweep spec (YAML file and axis flags) expanded into jobs.

Each grid mapping is the product of its axes; a list of mappings is the union of their products.
Axes a variant does not use are ignored for it (duplicates then collapse, as job ids are derived
from the job's settings); combinations a variant cannot take are left out and reported; a value
out of range, an unknown key or variant, or a grid left with no job is a ``SweepSpecError``."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import random
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from polyfit_models import OPTIMIZERS, TARGETS, VARIANTS, BadInput, JobSpec, SpecError, batch_bytes
from polyfit_models.registry import BROKEN, is_plugin
from polyfit_models.spec import MAX_EPOCHS, MAX_LR, MAX_POINTS, SEED_LIMIT
from worker.queues import is_device

AXES = ("variant", "lr", "degree", "seed", "epochs", "optimizer", "device")
TOP_KEYS = ("name", "target", "x", "grid", "sample", "stop_at_gap", "search", "halving")
#: The axes a range (``{log: [a, b], num: n}``, ``{linear: [a, b], num: n}``) may define.
RANGE_AXES = ("lr", "degree", "seed", "epochs")
X_KEYS = ("start", "stop", "points")
MAX_DEGREE = max(v.max_degree for v in VARIANTS.values())
#: What a grid that names no variant sweeps: polyfit's own six, never the plugins installed
#: where it is submitted (the same spec gives the same jobs on every host).
BUILTIN_VARIANTS = [name for name in VARIANTS if not is_plugin(name)]


def axes_used(variant) -> list[str]:
    """The sweep axes (besides ``variant``) a variant takes; a grid's other axes are ignored
    for it. The one rule: its registry entry lists them."""
    return [a for a in AXES if a != "variant" and a in variant.axes]
_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


class SweepSpecError(BadInput, ValueError):
    """Raised when a sweep spec or an axis flag is malformed or out of range (one line)."""


@dataclass(frozen=True)
class Job:
    id: str
    spec: JobSpec
    device: str

    def row(self) -> dict:
        """The job's columns in the ``jobs`` table: its spec's fields, its id and device (a
        worker reads the spec back with ``JobSpec.from_dict`` of the same fields)."""
        return {"id": self.id, "device": self.device, **self.spec.to_dict()}


@dataclass(frozen=True)
class Template:
    """The jobs of one variant and one combination of the axes other than lr and seed: its
    spec for the first lr and seed (checked whole), and the lrs and seeds to cross it with."""

    device: str
    base: JobSpec
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.lrs) * len(self.seeds)

    def jobs(self) -> Iterator[Job]:
        # job_id's canonical JSON of this template, cut where lr and seed go: each job's id
        # is then one string join and one hash (a million-job sweep spends its time here).
        lr_mark, seed_mark = "\x00lr\x00", "\x00seed\x00"
        text = _canonical({**self.base.to_dict(), "lr": lr_mark, "seed": seed_mark},
                          self.device)
        head, rest = text.split(json.dumps(lr_mark))
        if json.dumps(seed_mark) in head:  # the keys are sorted: "lr" comes before "seed"
            raise AssertionError("unexpected key order")
        middle, tail = rest.split(json.dumps(seed_mark))
        for lr in self.lrs:
            for seed in self.seeds:
                spec = self.base.with_lr_and_seed(lr, seed)
                canonical = f"{head}{json.dumps(spec.lr)}{middle}{spec.seed}{tail}"
                yield Job(hashlib.sha256(canonical.encode()).hexdigest()[:16], spec,
                          self.device)


@dataclass(frozen=True)
class Plan:
    """A sweep to record: its id, name and normalized spec, and its jobs as templates that
    make them one at a time (a million-job sweep is never held in memory whole)."""

    sweep_id: str
    name: str
    spec: dict
    templates: tuple[Template, ...]
    skipped: tuple[str, ...]
    sample: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()
    #: A search's settings ({sampler, trials, round, seed}); its jobs are asked round by
    #: round (``scheduler.search``), not made by ``templates``.
    search: dict | None = None

    def iter_jobs(self) -> Iterator[Job]:
        """Every job once (a job that two grids or an ignored axis make twice, once)."""
        chosen = self.chosen
        seen: set[int] = set()
        for template in self.templates:
            for job in template.jobs():
                key = int(job.id, 16)
                if key in seen or (chosen is not None and key not in chosen):
                    continue
                seen.add(key)
                yield job

    @functools.cached_property
    def size(self) -> int:
        return sum(1 for _ in self.iter_jobs())

    @property
    def jobs(self) -> tuple[Job, ...]:
        """Every job, held in memory (for small plans and tests; submit streams them)."""
        return tuple(self.iter_jobs())

    @functools.cached_property
    def chosen(self) -> frozenset[int] | None:
        """The ids drawn by ``sample`` (from the job ids in order: the same spec and seed give
        the same jobs, whatever order the grid is written in), or None for all."""
        if self.sample is None:
            return None
        n, seed = self.sample
        ids: set[int] = set()
        for template in self.templates:
            ids.update(int(job.id, 16) for job in template.jobs())
        if n >= len(ids):
            return frozenset(ids)
        return frozenset(random.Random(seed).sample(sorted(ids), n))


def job_id(spec: JobSpec, device: str) -> str:
    """A job's id: the digest of its settings and device (the same job, the same id, in every
    sweep and database)."""
    return hashlib.sha256(_canonical(spec.to_dict(), device).encode()).hexdigest()[:16]


def _canonical(fields: dict, device: str) -> str:
    # A setting added after ids were first made is left out while it has its default, so that
    # every job that was already recorded keeps its id.
    if fields.get("stop_gap") is None:
        fields = {k: v for k, v in fields.items() if k != "stop_gap"}
    return json.dumps({**fields, "device": device}, sort_keys=True)


#: A sweep spec is a small text file: anything bigger is refused unread.
MAX_SPEC_BYTES = 256 * 1024
#: Mappings and lists nested deeper than this are refused (a spec needs four levels).
MAX_SPEC_DEPTH = 16
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_spec_file(path: str | Path) -> dict:
    """The spec file at ``path`` as a mapping. Refused with one line (``SweepSpecError``),
    quickly and in little memory, whatever the file: not a regular file (a FIFO, a device such
    as /dev/zero, a folder), over ``MAX_SPEC_BYTES``, not UTF-8, not YAML, YAML aliases (which
    can expand a few hundred bytes into gigabytes), nesting deeper than ``MAX_SPEC_DEPTH``,
    keys that are not text."""
    shown = _printable(str(path))
    raw = _read_small_regular_file(path, shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SweepSpecError(f"{shown}: not UTF-8 text (byte {e.start})") from None
    data = _parse_yaml(text, shown)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SweepSpecError(f"{shown}: a sweep spec must be a mapping, got {type(data).__name__}")
    return data


def _read_small_regular_file(path: str | Path, shown: str) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on the
        # open descriptor, so the file cannot be swapped between the check and the read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise SweepSpecError(f"cannot read {shown}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SweepSpecError(f"{shown}: not a regular file")
        if info.st_size > MAX_SPEC_BYTES:
            raise SweepSpecError(f"{shown}: {info.st_size:,} bytes, over the limit of "
                                 f"{MAX_SPEC_BYTES:,} for a sweep spec")
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES:
            chunk = os.read(fd, MAX_SPEC_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise SweepSpecError(f"cannot read {shown}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if size > MAX_SPEC_BYTES:
        raise SweepSpecError(f"{shown}: over the limit of {MAX_SPEC_BYTES:,} bytes for a spec")
    return b"".join(chunks)


def _parse_yaml(text: str, shown: str) -> object:
    """Parse, then check the node graph before building any Python object from it."""
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, shown)
        return loader.construct_document(node)
    except SweepSpecError:
        raise
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SweepSpecError(f"{shown}: not valid YAML{at}") from None
    except (RecursionError, MemoryError):
        raise SweepSpecError(f"{shown}: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. an int of 10,000 digits
        raise SweepSpecError(f"{shown}: a value YAML cannot read: "
                             f"{_printable(str(e))[:80]}") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, shown: str) -> None:
    """Refuse aliases (a node reached twice), deep nesting and keys that are not text."""
    seen: set[int] = set()
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise SweepSpecError(f"{shown}: YAML aliases (*name) are not allowed in a sweep "
                                 f"spec (line {node.start_mark.line + 1})")
        seen.add(id(node))
        if depth > MAX_SPEC_DEPTH:
            raise SweepSpecError(f"{shown}: nested more than {MAX_SPEC_DEPTH} levels deep "
                                 f"(line {node.start_mark.line + 1})")
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not (isinstance(key, yaml.ScalarNode)
                        and key.tag == "tag:yaml.org,2002:str"):
                    raise SweepSpecError(f"{shown}: keys must be text (line "
                                         f"{key.start_mark.line + 1})")
                stack += [(key, depth + 1), (value, depth + 1)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, depth + 1) for item in node.value]


def _printable(text: str) -> str:
    """``text`` for a one-line message: control and format characters shown escaped."""
    if all(c.isprintable() for c in text):
        return text
    return repr(text)[1:-1]


def check_name(name: object) -> str:
    """A sweep name: non-empty text of at most 200 printable characters (it is printed in
    progress lines and tables, and matched by every command that takes SWEEP)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise SweepSpecError("name: must be a non-empty string of at most 200 characters")
    if not name.isprintable():
        raise SweepSpecError(f"name: control characters are not allowed, got "
                             f"{_printable(name)!r}")
    return name


# -- axis values ------------------------------------------------------------------------------

def _as_list(axis: str, value: object) -> list:
    if isinstance(value, (list, tuple)):
        if not value:
            raise SweepSpecError(f"{axis}: empty list")
        return list(value)
    if isinstance(value, dict) or value is None:
        raise SweepSpecError(f"{axis}: expected a value or a list, got {value!r}")
    return [value]


def _shown(raw: object) -> str:
    """A value for a one-line message, cut short (an int of 400 digits is one)."""
    text = _printable(repr(raw))
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"


def _number(axis: str, raw: object) -> float:
    if isinstance(raw, bool):
        raise SweepSpecError(f"{axis}: expected a number, got {_shown(raw)}")
    try:
        value = float(raw)  # YAML reads "1e-6" as a string
    except (TypeError, ValueError):
        raise SweepSpecError(f"{axis}: expected a number, got {_shown(raw)}") from None
    except OverflowError:  # an int too big for a float
        value = math.inf
    if not math.isfinite(value):
        raise SweepSpecError(f"{axis}: must be finite, got {_shown(raw)}")
    return value + 0.0  # -0.0 is 0.0: the same setting, the same job id


def _ints(axis: str, raw: object, low: int, high: int) -> Sequence[int]:
    """An int, or a range 'a-b' (inclusive), within [low, high]."""
    if isinstance(raw, str) and _RANGE.match(raw):
        a, b = (int(v) for v in _RANGE.match(raw).groups())
        if a > b:
            raise SweepSpecError(f"{axis}: empty range {_shown(raw)}")
        if a < low or b > high:
            raise SweepSpecError(f"{axis}: range {_shown(raw)} outside {low}..{high}")
        return range(a, b + 1)
    value = _number(axis, raw)
    if value != int(value):
        raise SweepSpecError(f"{axis}: expected a whole number, got {_shown(raw)}")
    if not low <= value <= high:
        raise SweepSpecError(f"{axis}: {_shown(raw)} is outside {low}..{high}")
    return [int(value)]


def _lr(raw: object) -> float:
    value = _number("lr", raw)
    if not 0 < value <= MAX_LR:
        raise SweepSpecError(f"lr: {_shown(raw)} is outside (0, {MAX_LR:g}]")
    return value


def _choice(axis: str, raw: object, choices: Sequence[str]) -> str:
    if not isinstance(raw, str) or raw not in choices:
        raise SweepSpecError(f"{axis}: unknown value {_shown(raw)} "
                             f"(choose from {', '.join(choices)})")
    return raw


def _spaced(axis: str, raw: object, max_values: int) -> list | None:
    """The values of a range of a numeric axis, or None if ``raw`` is not one: a mapping
    ``{log: [a, b], num: n}`` or ``{linear: [a, b], num: n}`` (YAML), or the flag form
    ``log:a:b:n`` / ``linear:a:b:n``. n values spaced evenly (in log space for ``log``), both
    ends included; an integer axis rounds them and drops repeats."""
    if isinstance(raw, str) and raw.split(":", 1)[0] in ("log", "linear"):
        parts = raw.split(":")
        if len(parts) != 4:
            raise SweepSpecError(f"--{axis}: a range is {parts[0]}:START:STOP:NUM, "
                                 f"got {_shown(raw)}")
        raw = {parts[0]: parts[1:3], "num": parts[3]}
    if not isinstance(raw, dict):
        return None
    kinds = [k for k in ("log", "linear") if k in raw]
    if axis not in RANGE_AXES:
        raise SweepSpecError(f"{axis}: ranges are for {', '.join(RANGE_AXES)}, not {axis}")
    if len(kinds) != 1 or set(raw) != {kinds[0], "num"}:
        raise SweepSpecError(f"{axis}: a range is {{log: [start, stop], num: n}} or "
                             f"{{linear: [start, stop], num: n}}, got {_shown(raw)}")
    kind, ends = kinds[0], raw[kinds[0]]
    if not isinstance(ends, (list, tuple)) or len(ends) != 2:
        raise SweepSpecError(f"{axis}: {kind} takes [start, stop], got {_shown(ends)}")
    start, stop = (_number(axis, v) for v in ends)
    num = _number(f"{axis} num", raw["num"])
    if num != int(num) or not 1 <= num <= max_values:
        raise SweepSpecError(f"{axis}: num must be a whole number in 1..{max_values:,}, "
                             f"got {_shown(raw['num'])}")
    num = int(num)
    if kind == "log":
        if start <= 0 or stop <= 0:
            raise SweepSpecError(f"{axis}: a log range needs positive ends, got {_shown(ends)}")
        values = [float(v) for v in np.geomspace(start, stop, num)]
    else:
        values = [float(v) for v in np.linspace(start, stop, num)]
    if num > 1:  # exactly the ends given, not their round trip through logs
        values[0], values[-1] = start, stop
    if axis in _INT_AXES:
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
    pieces = [_ints(axis, raw, *_INT_AXES[axis]) if axis in _INT_AXES else None for raw in items]
    count = sum(len(p) if p is not None else 1 for p in pieces)
    if count > max_values:
        raise SweepSpecError(f"{axis}: {count:,} values, over the limit of {max_values:,} jobs "
                             "(POLYFIT_MAX_JOBS)")
    for raw, piece in zip(items, pieces):
        if axis == "variant":
            if isinstance(raw, str) and raw in BROKEN:
                raise SweepSpecError(f"variant: the plugin {BROKEN[raw].describe()}")
            out.append(_choice(axis, raw, list(VARIANTS)))
        elif axis == "lr":
            out.append(_lr(raw))
        elif piece is not None:
            out.extend(piece)
        elif axis == "optimizer":
            out.append(_choice(axis, raw, list(OPTIMIZERS)))
        elif axis == "device":
            if not isinstance(raw, str) or not is_device(raw):
                raise SweepSpecError(f"device: unknown value {_shown(raw)} "
                                     "(cpu, cuda, cuda:N or any)")
            out.append(raw)
    # Keep order, drop repeats.
    seen: dict = {}
    for v in out:
        seen.setdefault(v, None)
    return list(seen)


_INT_AXES = {"degree": (0, MAX_DEGREE), "seed": (0, SEED_LIMIT - 1), "epochs": (1, MAX_EPOCHS)}


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
        out["x_points"] = _ints("x.points", x["points"], 2, MAX_POINTS)[0]
    return out


def build_plan(
    spec: Mapping | None,
    overrides: Mapping[str, list] | None = None,
    *,
    name: str | None = None,
    default_name: str = "sweep",
    max_jobs: int = 1_000_000,
    max_job_work: int = 2_000_000_000,
    memory_budget: Callable[[str], int] | None = None,
    sample: object = None,
    stop_at_gap: object = None,
    search: Mapping | None = None,
    halving: str | None = None,
) -> Plan:
    """Validate a spec (from YAML) plus axis overrides (from flags) and expand it into jobs.

    ``memory_budget(device)``: the bytes one batch may use on a job's device (see
    ``Settings.budget_bytes``); a job that alone needs more is refused. ``sample`` (the flag's
    ``N`` or ``N:SEED``) wins over the spec's ``sample: {n: N, seed: SEED}``, and
    ``stop_at_gap`` (the flag) over the spec's ``stop_at_gap``, and ``halving`` (the flag's
    ``ETA:MIN_EPOCHS``) over the spec's ``halving``."""
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
    check_name(sweep_name)
    stop_gap = _stop_gap(stop_at_gap if stop_at_gap is not None else spec.get("stop_at_gap"))
    flags = {k: v for k, v in (search or {}).items() if v is not None}
    if "search" in spec or flags:
        from scheduler.search import search_plan

        if sample is not None or spec.get("sample") is not None:
            raise SweepSpecError("sample: a search asks for its jobs; leave sample out")
        settings = {"target": target, "x": {k.removeprefix("x_"): v for k, v in x.items()}}
        if stop_gap is not None:
            settings["stop_at_gap"] = stop_gap
        sid = sweep_id_of(sweep_name)
        plan = search_plan(spec.get("search"), flags, _grids(spec, overrides), settings,
                           lambda search, normalized: Plan(
                               sid, sweep_name, {"name": sweep_name, **normalized}, (), (),
                               search=search))
        rungs = _halving(spec, halving, plan.spec["grid"])
        if rungs is not None:
            plan.spec["halving"] = rungs
        return plan

    grids = [{axis: parse_axis(axis, values, max_jobs) for axis, values in g.items()}
             for g in _grids(spec, overrides)]
    # Refuse a huge grid before expanding it.
    upper = sum(
        math.prod(len(g.get(a, [None])) for a in AXES if a != "variant")
        * len(g.get("variant", BUILTIN_VARIANTS))
        for g in grids
    )
    if upper > max_jobs:
        raise SweepSpecError(f"the grid has up to {upper:,} jobs, over the limit of {max_jobs:,} "
                             "(POLYFIT_MAX_JOBS)")

    templates: list[Template] = []
    skipped: dict[str, None] = {}
    notes: dict[str, None] = {}
    for g in grids:
        for variant_name in g.get("variant", BUILTIN_VARIANTS):
            variant = VARIANTS[variant_name]
            settings = dict(x)
            if stop_gap is not None and variant.can_stop_at_optimum:
                settings["stop_gap"] = stop_gap
            elif stop_gap is not None:
                notes[f"{variant_name} trains every epoch: stop_at_gap needs a training loss "
                      "that is the final model's, and each of its passes draws a model"] = None
            templates += _templates(variant, g, target, settings, skipped,
                                    max_job_work, memory_budget)
    if not templates:
        why = f" ({next(iter(skipped))})" if skipped else ""
        raise SweepSpecError(f"the grid leaves no job to run{why}")
    sample = _sample(sample if sample is not None else spec.get("sample"))

    normalized = {
        "name": sweep_name,
        "target": target,
        "x": {k.removeprefix("x_"): v for k, v in x.items()},
        "grid": [{a: list(v) for a, v in g.items()} for g in grids],
    }
    if sample is not None:
        normalized["sample"] = {"n": sample[0], "seed": sample[1]}
    if stop_gap is not None:
        normalized["stop_at_gap"] = stop_gap
    rungs = _halving(spec, halving, grids)
    if rungs is not None:
        normalized["halving"] = rungs
    return Plan(sweep_id=sweep_id_of(sweep_name), name=sweep_name, spec=normalized,
                templates=tuple(templates), skipped=tuple(skipped), sample=sample,
                notes=tuple(notes))


def _halving(spec: Mapping, flag: str | None, grids: Sequence[Mapping]) -> dict | None:
    from scheduler.halving import halving_setting

    return halving_setting(spec.get("halving"), flag, grids, BUILTIN_VARIANTS, SweepSpecError)


def _stop_gap(raw: object) -> float | None:
    """The ``stop_at_gap`` setting (YAML number, or the flag's text): a number >= 0, the gap
    ``mse - optimum_mse`` at which a job stops early; None for none."""
    if raw is None:
        return None
    value = _number("stop_at_gap", raw)
    if not value >= 0:
        raise SweepSpecError(f"stop_at_gap must be a number >= 0, got {_shown(raw)}")
    return value


def _sample(raw: object) -> tuple[int, int] | None:
    """(n, seed) of a ``sample`` setting: ``{n: 200, seed: 0}`` (YAML) or ``200`` / ``200:0``
    (the flag); the seed is 0 when not given."""
    if raw is None:
        return None
    if isinstance(raw, str):
        n, _, seed = raw.partition(":")
        raw = {"n": n.strip(), "seed": seed.strip() or 0}
    elif isinstance(raw, int) and not isinstance(raw, bool):
        raw = {"n": raw}
    if not isinstance(raw, dict) or not set(raw) <= {"n", "seed"} or "n" not in raw:
        raise SweepSpecError(f"sample: expected {{n: N, seed: S}} (or --sample N[:SEED]), "
                             f"got {_shown(raw)}")
    n = _ints("sample.n", raw["n"], 1, 10**9)[0]
    seed = _ints("sample.seed", raw.get("seed", 0), 0, SEED_LIMIT - 1)[0]
    return n, seed


def sweep_id_of(name: str) -> str:
    """A sweep's id: its name's digest. One sweep per name in a database, so running a spec
    again under the same name, its grid grown or not, adds to that sweep (and a sweep is found
    by its name or its id alike)."""
    return hashlib.sha256(json.dumps(["sweep", name]).encode()).hexdigest()[:12]


def _templates(variant, grid: Mapping, target: str, x: Mapping, skipped: dict,
               max_job_work: int, memory_budget: Callable[[str], int] | None
               ) -> list[Template]:
    """The variant's templates in this grid: one per combination of the axes other than lr
    and seed, each checked whole (limits, memory, the spec's own rules) once."""
    # The device is every variant's: a job for a device the variant cannot use is left out.
    used = [a for a in AXES if a in grid and (a == "device" or a in axes_used(variant))]
    keyed = [a for a in used if a not in ("lr", "seed")]
    defaults = variant.defaults
    lrs = tuple(grid["lr"]) if "lr" in used else (defaults["lr"],)
    seeds = tuple(grid["seed"]) if "seed" in used else (0,)
    out = []
    for combo in itertools.product(*(grid[a] for a in keyed)):
        values = dict(zip(keyed, combo))
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
            spec = JobSpec.create(variant.name, target=target, lr=lrs[0], seed=seeds[0], **x,
                                  **values)
        except SpecError as e:
            raise SweepSpecError(f"{variant.name}: {e}") from e
        if spec.epochs * spec.x_points > max_job_work:
            raise SweepSpecError(
                f"{variant.name}: epochs x points = {spec.epochs * spec.x_points:,} per job is "
                f"over the limit of {max_job_work:,} (POLYFIT_MAX_JOB_WORK)")
        if memory_budget is not None:
            _check_memory(spec, device, memory_budget(device))
        out.append(Template(device, spec, lrs, seeds))
    return out


def _check_memory(spec: JobSpec, device: str, budget: int) -> None:
    need = batch_bytes(spec, 1)
    if need > budget:
        setting = "POLYFIT_CPU_MEMORY_MB" if device == "cpu" else "POLYFIT_GPU_MEMORY_MB"
        raise SweepSpecError(
            f"{spec.variant}: one job of {spec.x_points:,} points at degree {spec.degree} "
            f"needs about {need / 2**20:,.0f} MiB, over the {device} budget of "
            f"{budget / 2**20:,.0f} MiB per batch ({setting})")
