"""A sweep as Optuna sees a study: the axes that vary as distributions, each ended job as a
trial (its settings as params, its mse as value, its loss curve as intermediate values), for
``polyfit export-optuna`` (optuna-dashboard, ``optuna.load_study``) and for the importance
figure (Optuna's importance evaluators).

A search's continuous ranges become Float/Int distributions; every other axis that varies,
a categorical one over the values its jobs took. Optuna is imported on use."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import Engine

from polyfit_models import optional
from polyfit_models.errors import BadInput
from polyfit_models.fields import AXES, names
from store.reads import list_jobs, loss_curves
from store.rows import JobRow, SweepRow

INT_AXES = names(ranged=True, type=int)
INSTALL_HINT = "needs Optuna: pip install 'polyfit[search]'"


class StudyError(BadInput, ValueError):
    """Raised when a sweep cannot be written as a study (no Optuna, a study of that name)."""


def optuna():
    """Optuna, or a ``StudyError`` with the install hint."""
    return optional.optuna(StudyError, INSTALL_HINT)


def distributions(spec: dict, jobs: Sequence[JobRow]) -> dict:
    """The study's distributions: the axes whose values vary across ``jobs``."""
    dist = optuna().distributions
    grids = spec.get("grid") or [{}]
    ranges = {a: v for g in grids for a, v in g.items() if isinstance(v, dict)}
    out = {}
    for axis in AXES:
        values = sorted({getattr(j, axis) for j in jobs}, key=str)
        if axis in ranges:
            kind = "log" if "log" in ranges[axis] else "linear"
            low, high = ranges[axis][kind]
            cls = dist.IntDistribution if axis in INT_AXES else dist.FloatDistribution
            out[axis] = cls(low, high, log=kind == "log")
        elif len(values) > 1:
            if axis in INT_AXES or axis == "lr":
                values.sort()
            out[axis] = dist.CategoricalDistribution(values)
    return out


def frozen_trials(engine: Engine, sweep_id: str, spec: dict) -> list:
    """The sweep's ended jobs as Optuna's FrozenTrials, in the order they finished."""
    mod = optuna()
    jobs = [j for j in list_jobs(engine, sweep_id)
            if j.status in ("succeeded", "diverged", "failed")]
    jobs.sort(key=lambda j: (j.finished_at is None, j.finished_at or 0, j.id))
    space = distributions(spec, jobs)
    curves = loss_curves(engine, sweep_id, [j.id for j in jobs])
    out = []
    for job in jobs:
        ok = job.mse is not None and math.isfinite(job.mse) and job.status != "failed"
        out.append(mod.trial.create_trial(
            state=mod.trial.TrialState.COMPLETE if ok else mod.trial.TrialState.FAIL,
            value=job.mse if ok else None,
            params={a: getattr(job, a) for a in space}, distributions=space,
            intermediate_values={int(e): float(v) for e, v in curves.get(job.id, [])
                                 if v is not None and math.isfinite(v)},
            user_attrs={"job_id": job.id, "status": job.status}))
    return out


def export_study(engine: Engine, sweep: SweepRow, storage: str,
                 study_name: str | None = None) -> int:
    """Write the sweep as a new study ``study_name`` (the sweep's name) in the Optuna
    ``storage`` (an RDB URL such as sqlite:///optuna.db); returns how many trials."""
    mod = optuna()
    trials = frozen_trials(engine, sweep.id, sweep.spec or {})
    name = study_name or sweep.name
    try:
        study = mod.create_study(storage=storage, study_name=name, direction="minimize")
    except mod.exceptions.DuplicatedStudyError:
        raise StudyError(f"the storage has a study named {name!r} already (give another "
                         "--study-name)") from None
    except Exception as e:  # noqa: BLE001 - a bad URL or driver: one line
        raise StudyError(f"cannot open the Optuna storage: {e.__class__.__name__}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    study.set_user_attr("polyfit_sweep", sweep.id)
    study.add_trials(trials)
    return len(trials)


def importances(engine: Engine, sweep: SweepRow) -> dict[str, float]:
    """Each varying axis's importance for mse over the sweep's completed jobs (Optuna's
    PED-ANOVA evaluator: it needs no scikit-learn)."""
    mod = optuna()
    trials = frozen_trials(engine, sweep.id, sweep.spec or {})
    study = mod.create_study(direction="minimize")
    study.add_trials(trials)
    if sum(t.state == mod.trial.TrialState.COMPLETE for t in trials) < 2:
        raise StudyError("importance needs two or more jobs with an mse")
    if not study.best_trial.distributions:
        raise StudyError("importance needs an axis whose values vary across the jobs")
    evaluator = mod.importance.PedAnovaImportanceEvaluator()
    return dict(mod.importance.get_param_importances(study, evaluator=evaluator))
