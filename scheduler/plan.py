"""A sweep spec (YAML file and axis flags) expanded into jobs.

Each grid mapping is the product of its axes (``scheduler.axes``); a list of mappings is the
union of their products. Axes a variant does not use are ignored for it (duplicates then
collapse, as job ids are derived from the job's settings); combinations a variant cannot take
are left out and reported; a value out of range, an unknown key or variant, or a grid left with
no job is a ``SweepSpecError``."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from polyfit_models import TARGETS, VARIANTS, JobSpec, SpecError, batch_bytes
from polyfit_models.fields import LATER
from polyfit_models.registry import is_plugin
from polyfit_models.spec import check_points, check_seed
from scheduler.axes import (
    AXES,
    axes_used,
    parse_axis,
    parse_choice,
    parse_ints,
    parse_number,
    show_value,
    within,
)
from scheduler.specfile import SweepSpecError, check_name

TOP_KEYS = ("name", "target", "x", "grid", "sample", "stop_at_gap", "search", "halving")
X_KEYS = ("start", "stop", "points")
#: What a grid that names no variant sweeps: polyfit's own six, never the plugins installed
#: where it is submitted (the same spec gives the same jobs on every host).
BUILTIN_VARIANTS = [name for name in VARIANTS if not is_plugin(name)]


@dataclass(frozen=True)
class Job:
    """One job of a sweep: its id (from its settings and device), its spec and its device."""

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
        # A job's id is the digest of its settings and device (``_canonical``: the same job,
        # the same id, in every sweep and database). The canonical JSON of this template, cut
        # where lr and seed go: each job's id is then one string join and one hash (a
        # million-job sweep spends its time here).
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


def _canonical(settings: dict, device: str) -> str:
    # A setting added after ids were first made (``fields.LATER``) is left out while it is
    # None, so that every job that was already recorded keeps its id.
    kept = {k: v for k, v in settings.items() if not (k in LATER and v is None)}
    return json.dumps({**kept, "device": device}, sort_keys=True)


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
        out["x_start"] = parse_number("x.start", x["start"])
    if "stop" in x:
        out["x_stop"] = parse_number("x.stop", x["stop"])
    if "points" in x:
        out["x_points"] = parse_ints("x.points", x["points"], check_points)[0]
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
    parse_choice("target", target, list(TARGETS))
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
    value = parse_number("stop_at_gap", raw)
    if not value >= 0:
        raise SweepSpecError(f"stop_at_gap must be a number >= 0, got {show_value(raw)}")
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
                             f"got {show_value(raw)}")
    n = parse_ints("sample.n", raw["n"], within(1, 10**9))[0]
    seed = parse_ints("sample.seed", raw.get("seed", 0), check_seed)[0]
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
