"""polyfit from Python, for notebooks: ``polyfit.run(spec)`` runs a sweep to the end here, as
``polyfit sweep run`` does (local worker processes, the embedded broker unless one is given),
and returns its jobs as a pandas DataFrame (the ``polyfit[pandas]`` extra)::

    import polyfit
    jobs = polyfit.run("examples/tutorial.yaml")
    jobs = polyfit.run({"grid": {"variant": ["autograd"], "lr": [1e-6, 3e-6], "seed": [0, 1]}},
                       name="notebook", db="sqlite:///results.sqlite")
    jobs.groupby("variant")["mse"].min()

Bad input raises ``polyfit.SweepError`` with the one line the command line would print."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polyfit_models.errors import BadInput, PolyfitError

if TYPE_CHECKING:  # pragma: no cover
    import pandas

__all__ = ["BadInput", "PolyfitError", "SweepError", "SweepFailed", "run"]


class SweepError(BadInput, ValueError):
    """Raised when a spec, a setting or an axis value is unusable (the command line's exit 2)."""


class SweepFailed(PolyfitError, RuntimeError):
    """Raised when the sweep ran but could not finish (a server unreachable, the local workers
    gone); ``frame`` holds what was stored (the command line's exit 1)."""

    def __init__(self, message: str, frame=None) -> None:
        super().__init__(message)
        self.frame = frame


def run(spec: Mapping[str, Any] | str | os.PathLike | None = None, *, name: str | None = None,
        db: str | None = None, broker: str | None = None, workers: int | None = None,
        fresh: bool = False, sample: str | None = None, quiet: bool = True,
        **axes: Any) -> pandas.DataFrame:
    """Run the sweep that ``spec`` (a mapping as in a spec file, or a spec file's path) and
    ``axes`` (``lr=[1e-6, 3e-6]``, ``variant="autograd"``: as the command line's axis flags)
    define, to the end, and return its jobs, best first. Failed or diverged jobs are rows like
    any other (``status``). ``quiet=False`` shows the progress on stderr."""
    from polyfit_results.api import jobs_frame
    from scheduler.axes import AXES, parse_flag
    from scheduler.plan import build_plan
    from scheduler.run import run_sweep
    from scheduler.specfile import load_spec_file
    from store import StoreError
    from store.db import dispose_shared
    from worker.settings import Settings

    try:
        settings = Settings.from_env(db_url=db, broker=broker)
        if isinstance(spec, (str, os.PathLike)):
            default_name, raw = Path(spec).stem, load_spec_file(spec)
        else:
            default_name, raw = "sweep", (dict(spec) if spec is not None else None)
        unknown = sorted(set(axes) - set(AXES))
        if unknown:
            raise SweepError(f"unknown axis {', '.join(unknown)}: the axes are "
                             f"{', '.join(AXES)}")
        overrides = {axis: [item for v in _listed(value) for item in parse_flag(axis, str(v))]
                     for axis, value in axes.items()}
        plan = build_plan(raw, overrides, name=name, default_name=default_name,
                          max_jobs=settings.max_jobs, max_job_work=settings.max_job_work,
                          memory_budget=settings.budget_bytes, sample=sample)
    except SweepError:
        raise
    except BadInput as e:
        raise SweepError(str(e)) from None
    out = io.StringIO() if quiet else None
    try:
        code = _quietly(quiet, lambda: run_sweep(settings, plan, workers=workers,
                                                 batch_size=None, out=out, fresh=fresh))
    except StoreError as e:
        raise SweepFailed(str(e)) from None
    finally:
        dispose_shared()  # the run's one connection: a notebook keeps no file open after it
    frame = jobs_frame(plan.sweep_id, db_url=settings.db_url)
    if code not in (0, 1):  # 1: some job failed, which the frame shows
        raise SweepFailed(f"sweep {plan.name} could not finish (exit {code})", frame)
    return frame


def _listed(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, set, range)) else [value]


def _quietly(quiet: bool, call):
    """``call()`` with stderr's progress lines kept out of a notebook when ``quiet``."""
    if not quiet:
        return call()
    import contextlib

    with contextlib.redirect_stderr(io.StringIO()):
        return call()
