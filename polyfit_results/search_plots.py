"""The figures of a search (and of any sweep whose axes vary): each axis's importance for mse
(Optuna's evaluator), the best mse against the number of trials, and parallel coordinates of
the jobs' settings coloured by their mse (``polyfit plot SWEEP --kind importance|history|
parallel``, and the dashboard's sweep page)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from sqlalchemy import Engine

from polyfit_results.studies import AXES, StudyError, importances
from store import search as store_search
from store.reads import list_jobs
from store.rows import JobRow, SweepRow

KINDS = ("fits", "importance", "history", "parallel")


def _ended(engine: Engine, sweep_id: str) -> list[JobRow]:
    jobs = [j for j in list_jobs(engine, sweep_id)
            if j.mse is not None and math.isfinite(j.mse)]
    if len(jobs) < 2:
        raise StudyError("this figure needs two or more jobs with an mse")
    return jobs


def draw_importance(engine: Engine, sweep: SweepRow) -> Figure:
    """Bars: each varying axis's importance for mse."""
    found = sorted(importances(engine, sweep).items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(6.5, 0.6 * len(found) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([k for k, _ in found], [v for _, v in found], color="#4c72b0")
    ax.set_xlabel("importance for mse (PED-ANOVA)")
    ax.set_title(f"sweep {sweep.name}: what mse depends on")
    return fig


def best_history(engine: Engine, sweep: SweepRow) -> list[float]:
    """The lowest mse after each trial: in the order asked for a search, else in the order the
    jobs finished."""
    trials = store_search.history(engine, sweep.id)
    if trials:
        values = [t.mse for t in trials if t.status in ("succeeded", "diverged")]
    else:
        jobs = sorted(_ended(engine, sweep.id),
                      key=lambda j: (j.finished_at is None, j.finished_at or 0, j.id))
        values = [j.mse for j in jobs]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return list(np.minimum.accumulate(values)) if values else []


def draw_history(engine: Engine, sweep: SweepRow) -> Figure:
    """The best mse so far against the number of trials (log scale)."""
    best = best_history(engine, sweep)
    if len(best) < 2:
        raise StudyError("this figure needs two or more jobs with an mse")
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(1, len(best) + 1), best, drawstyle="steps-post")
    ax.set_yscale("log")
    ax.set_xlabel("trials")
    ax.set_ylabel("best mse so far")
    ax.set_title(f"sweep {sweep.name}: best mse over trials")
    return fig


def draw_parallel(engine: Engine, sweep: SweepRow) -> Figure:
    """Parallel coordinates: one line per job across the axes that vary (log scale for lr),
    coloured by its mse."""
    jobs = _ended(engine, sweep.id)
    axes = [a for a in AXES if len({getattr(j, a) for j in jobs}) > 1]
    if not axes:
        raise StudyError("parallel coordinates need an axis whose values vary across the jobs")
    columns = []
    labels = []
    for a in axes:
        raw = [getattr(j, a) for j in jobs]
        if isinstance(raw[0], str):
            order = sorted(set(raw))
            values = np.array([order.index(v) for v in raw], dtype=float)
            ticks = order
        else:
            values = np.log10(raw) if a == "lr" else np.array(raw, dtype=float)
            ticks = None
        low, high = values.min(), values.max()
        columns.append((values - low) / (high - low) if high > low else values * 0 + 0.5)
        labels.append((a, ticks, low, high))
    mse = np.array([j.mse for j in jobs])
    norm = LogNorm(max(mse.min(), 1e-12), max(mse.max(), mse.min() * 1.0001, 1e-12))
    cmap = colormaps["viridis_r"]
    fig = Figure(figsize=(1.6 * len(axes) + 3, 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = np.arange(len(axes))
    for k in np.argsort(-mse):  # the best drawn last, on top
        ax.plot(xs, [c[k] for c in columns], color=cmap(norm(max(mse[k], 1e-12))),
                alpha=0.7, lw=1)
    ax.set_xticks(xs, [f"log10 {a}" if a == "lr" else a for a, *_ in labels])
    for x, (a, ticks, low, high) in zip(xs, labels):
        ax.axvline(x, color="#999", lw=0.8)
        lo, hi = (ticks[0], ticks[-1]) if ticks else (f"{low:.3g}", f"{high:.3g}")
        ax.annotate(str(lo), (x, 0), xytext=(3, -12), textcoords="offset points", fontsize=7)
        ax.annotate(str(hi), (x, 1), xytext=(3, 4), textcoords="offset points", fontsize=7)
    ax.set_yticks([])
    ax.set_title(f"sweep {sweep.name}: {len(jobs)} jobs, coloured by mse")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="mse")
    return fig


DRAW = {"importance": draw_importance, "history": draw_history, "parallel": draw_parallel}
