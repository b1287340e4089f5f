"""Searching: Optuna's samplers asked for a round of jobs at a time.

A search's space comes from its sweep's normalized spec: a range without ``num``
(``{log: [a, b]}`` or ``{linear: [a, b]}``) is continuous (integers for integer axes), a list
of several values a categorical choice, one value a fixed setting. Each round the sampler is
rebuilt, never persisted: an in-memory study gets every earlier trial (``create_trial``, in
the order asked, with the sampler's own notes on it such as CMA-ES's state), and the sampler
its seed, derived from the spec's seed and the round's number; then ``round`` trials are
asked at once, each later one seeing the earlier ones as pending (TPE's constant liar). The
same spec and seed thus ask for the same jobs, whichever process asks.

A trial's job id is the digest of its settings and its trial number: every trial is a job of
its own, also when a sampler asks for a point it asked before (it trains again, with the
same result, rather than share a row whose status belongs to another round).

Used by the scheduler (the first round, at submit) and by the worker (the next rounds, once a
round's last result is stored: ``worker.rounds``). Optuna is imported only here, on use."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from polyfit_models import VARIANTS, BadInput, JobSpec, PolyfitError, SpecError, optional
from store.search import TrialRow

#: Axes whose values are whole numbers (a continuous range over them asks integers).
INT_AXES = ("degree", "seed", "epochs")
#: The most trials a search may ask, and the most per round.
MAX_TRIALS = 100_000
#: Optuna's sampler names polyfit takes (``search.sampler``).
SAMPLERS = ("random", "tpe", "cmaes", "gp", "qmc")
INSTALL_HINT = "searching needs Optuna: pip install 'polyfit[search]'"


class SearchError(BadInput, ValueError):
    """Raised when a search's settings or space are not valid (one line)."""


class SamplerFailed(PolyfitError, RuntimeError):
    """Raised when the sampler raised while asked for a round (the search ends ``failed``)."""


@dataclass(frozen=True)
class Asked:
    """One trial a round asked for: its number, the job's id and row, and what to record."""

    number: int
    job_id: str
    row: dict
    params: dict
    system_attrs: dict
    spec: JobSpec
    device: str

    def trial(self) -> dict:
        return {"number": self.number, "job_id": self.job_id, "params": self.params,
                "system_attrs": self.system_attrs}


def optuna():
    """Optuna, or a ``SearchError`` with the install hint."""
    return optional.optuna(SearchError, INSTALL_HINT)


def _sampler(name: str, seed: int):
    mod = optuna()
    samplers = mod.samplers
    # QMC and GP are marked experimental: the note would go to every worker's log each round.
    warnings.simplefilter("ignore", mod.exceptions.ExperimentalWarning)
    factories: dict[str, Callable] = {
        "random": lambda s: samplers.RandomSampler(seed=s),
        "tpe": lambda s: samplers.TPESampler(seed=s, constant_liar=True, multivariate=True),
        "cmaes": lambda s: samplers.CmaEsSampler(seed=s, warn_independent_sampling=False),
        "gp": lambda s: samplers.GPSampler(seed=s),
        "qmc": lambda s: samplers.QMCSampler(seed=s, scramble=True,
                                                  warn_independent_sampling=False),
    }
    return factories[name](seed)


def round_seed(seed: int, round_no: int, sampler: str) -> int:
    """The sampler's seed for a round: each round draws afresh (a random sampler rebuilt with
    the same seed would ask the first round's points again). QMC keeps its seed: its place in
    the sequence is carried over in the study's attributes instead."""
    if sampler == "qmc":
        return seed
    digest = hashlib.sha256(json.dumps(["round", seed, round_no]).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def distributions(grid: Mapping) -> tuple[dict, dict]:
    """(fixed settings, Optuna distributions) of a search's grid (one normalized mapping)."""
    dist = optuna().distributions
    fixed, space = {}, {}
    for axis, values in grid.items():
        if isinstance(values, Mapping):
            kind = "log" if "log" in values else "linear"
            low, high = values[kind]
            if axis in INT_AXES:
                space[axis] = dist.IntDistribution(int(low), int(high), log=kind == "log")
            else:
                space[axis] = dist.FloatDistribution(float(low), float(high), log=kind == "log")
        elif len(values) > 1:
            space[axis] = dist.CategoricalDistribution(list(values))
        else:
            fixed[axis] = values[0]
    return fixed, space


def job_of(spec: Mapping, settings: Mapping) -> tuple[JobSpec, str]:
    """The job (spec, device) of one point of a search's space (axes its variant does not use
    are left out, as in a grid)."""
    settings = dict(settings)
    variant = VARIANTS[settings.pop("variant", "autograd")]
    device = settings.pop("device", "cpu")
    if device == "any" and "cuda" not in variant.devices:
        device = "cpu"
    x = spec.get("x") or {}
    fields = {k: v for k, v in settings.items() if k in variant.axes}
    fields.update({f"x_{k}": v for k, v in x.items()})
    if spec.get("stop_at_gap") is not None and variant.can_stop_at_optimum:
        fields["stop_gap"] = spec["stop_at_gap"]
    if "lr" in fields:
        fields["lr"] = float(fields["lr"])
    job = JobSpec.create(variant.name, target=spec.get("target", "sin"), **fields)
    return job, device


def trial_job_id(job: JobSpec, device: str, number: int) -> str:
    """A trial's job id: its settings, device and trial number (see the module's docstring)."""
    text = json.dumps({**job.to_dict(), "device": device, "trial": number}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_space(spec: Mapping) -> None:
    """Refuse (``SearchError``) a space with a point that is not a valid job: every
    combination of the categorical values with every corner of the continuous ranges."""
    fixed, space = distributions(spec["grid"][0])
    dist = optuna().distributions
    axes = list(space)
    options = []
    for axis in axes:
        d = space[axis]
        options.append(list(d.choices) if isinstance(d, dist.CategoricalDistribution)
                       else [d.low, d.high])
    for n, combo in enumerate(itertools.product(*options)):
        if n >= 10_000:
            break
        try:
            job_of(spec, {**fixed, **dict(zip(axes, combo))})
        except SpecError as e:
            shown = ", ".join(f"{a}={v}" for a, v in zip(axes, combo))
            raise SearchError(f"search: the point {shown} is not a valid job: {e}") from None


def ask_round(spec: Mapping, past: Sequence[TrialRow], round_no: int,
              study_attrs: Mapping) -> tuple[list[Asked], dict]:
    """The trials of round ``round_no`` and the study's attributes after asking them. Raises
    ``SamplerFailed`` with the sampler's reason if it raises."""
    search = spec["search"]
    fixed, space = distributions(spec["grid"][0])
    mod = optuna()
    n = min(search["round"], search["trials"] - len(past))
    try:
        study = mod.create_study(direction="minimize", sampler=_sampler(
            search["sampler"], round_seed(search["seed"], round_no, search["sampler"])))
        for key, value in study_attrs.items():
            study._storage.set_study_system_attr(study._study_id, key, value)
        for t in past:
            study.add_trial(_frozen(mod, t, space))
        asked = [study.ask(space) for _ in range(n)]
        attrs = dict(study._storage.get_study_system_attrs(study._study_id))
        notes = {t.number: t.system_attrs for t in study.get_trials(deepcopy=False)}
    except Exception as e:  # any error of the sampler ends the search, told why
        raise SamplerFailed(f"{search['sampler']} sampler: {e.__class__.__name__}: {e}") from e
    out = []
    for trial in asked:
        params = {k: _plain(v) for k, v in trial.params.items()}
        try:
            job, device = job_of(spec, {**fixed, **params})
        except SpecError as e:
            raise SamplerFailed(f"{search['sampler']} sampler asked {params}: {e}") from e
        job_id = trial_job_id(job, device, trial.number)
        out.append(Asked(trial.number, job_id, {"id": job_id, "device": device,
                                                **job.to_dict()},
                         params, _jsonable(notes[trial.number]), job, device))
    return out, _jsonable(attrs)


def _frozen(mod, t: TrialRow, space: dict):
    """An earlier trial as Optuna's: complete with its mse, pruned (successive halving) with
    its mse at the epoch it reached, or failed (a failed job, or a diverged one with no
    finite mse)."""
    states = mod.trial.TrialState
    finite = t.mse is not None and math.isfinite(t.mse)
    ok = finite and t.status in ("succeeded", "diverged")
    pruned = finite and t.status == "pruned"
    params = {k: v for k, v in t.params.items() if k in space}
    return mod.trial.create_trial(
        state=states.COMPLETE if ok else states.PRUNED if pruned else states.FAIL,
        value=t.mse if ok else None, params=params,
        distributions={k: space[k] for k in params}, system_attrs=t.system_attrs,
        intermediate_values={int(t.epochs_done or 0): t.mse} if pruned else None)


def _plain(value):
    """A parameter as a JSON primitive (NumPy's scalars are not)."""
    return value.item() if hasattr(value, "item") else value


def _jsonable(attrs: Mapping) -> dict:
    return json.loads(json.dumps(dict(attrs), default=_plain))
