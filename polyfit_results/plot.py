"""``polyfit plot``: one figure that sums a sweep up for a report. Top left, the best fit of each
variant against the target, with the residuals underneath; top right, the training loss curves
on a log scale (the best job of each variant bold, its other jobs faint); bottom, one
learning-rate x degree map per variant of the final mse (the best of the cell's jobs, as the
dashboard's maps; diverged cells marked). Fitted curves come from each job's own stored
coefficients through the variant's ``predict`` in the registry, the very model its ``mse`` was
computed from (the ``monomial`` column when those are missing). Drawn with matplotlib's object
API on the Agg canvas: no pyplot, no display, nothing global changed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy import Engine

from polyfit_models import TARGETS, VARIANTS
from polyfit_models.errors import BadInput
from polyfit_results import queries
from polyfit_results.export import ExportError, output_path
from polyfit_results.fits import fitted_values, per_point, variant_rank
from polyfit_results.plot_maps import draw_maps, label_lr, plan_maps, variant_color
from store.reads import MapCell, list_jobs, loss_curves, map_cells
from store.records import DIVERGED, OK, RUNNING
from store.rows import JobRow, SweepRow

# Faint loss curves drawn per variant besides its best (the lowest-mse ones): enough to show the
# spread over seeds and learning rates, few enough to keep the file small and the panel legible.
MAX_FAINT_CURVES = 30


class PlotError(BadInput, ValueError):
    """Raised when a sweep has nothing to plot yet, or the output file cannot be written."""


@dataclass(frozen=True)
class PlotData:
    """What the figure shows, read from the store once."""

    sweep: SweepRow
    jobs: tuple[JobRow, ...]
    best: tuple[JobRow, ...]  # one per variant, in registry order
    curves: dict[str, list]  # job id -> [(epoch, loss)]
    cells: tuple[MapCell, ...] = ()  # the lr x degree maps' (the dashboard's too)


def load(engine: Engine, sweep: SweepRow) -> PlotData:
    jobs = list_jobs(engine, sweep.id, sort="mse")
    best_rows = queries.best_per_group(engine, sweep.id, ["variant"])
    by_id = {j.id: j for j in jobs}
    best = sorted((by_id[r["id"]] for r in best_rows),
                  key=lambda j: (variant_rank(j.variant), j.variant))
    running = [j.id for j in jobs if j.status == RUNNING]
    if not best and not running:
        raise PlotError(f"sweep {sweep.name} has no finished or running job to plot yet")
    drawn: list[str] = []
    for variant in {j.variant for j in best}:
        ended = [j for j in jobs if j.variant == variant and j.status in OK]
        drawn += [j.id for j in ended[: MAX_FAINT_CURVES + 1]]
    # Running jobs' curves so far (their workers write them every few seconds).
    drawn += running[:MAX_FAINT_CURVES]
    drawn += [j.id for j in best]
    curves = loss_curves(engine, sweep.id, sorted(set(drawn)))
    return PlotData(sweep, tuple(jobs), tuple(best), curves, tuple(map_cells(engine, sweep.id)))


def x_grid(job: JobRow) -> np.ndarray:
    """The job's float64 x grid, as the fit saw it."""
    return np.linspace(job.x_start, job.x_stop, job.x_points)


# Variants that train the same model the same way (numpy, tensor, autograd) draw the very same
# curve: a dash pattern each lets every one of them show through the others.
_DASHES = ["solid", (0, (6, 3)), (0, (2, 2)), (0, (8, 2, 2, 2)), (0, (4, 1.5)), (0, (1, 1))]


def _dash(variant: str):
    return _DASHES[variant_rank(variant) % len(_DASHES)]


def _draw_fits(fig: Figure, spec, data: PlotData) -> None:
    inner = spec.subgridspec(2, 1, height_ratios=(3, 1.3), hspace=0.06)
    ax = fig.add_subplot(inner[0])
    res = fig.add_subplot(inner[1], sharex=ax)
    first = data.best[0] if data.best else data.jobs[0]
    x = x_grid(first)
    y = TARGETS[first.target](x)
    ax.plot(x, y, color="black", lw=4.5, alpha=0.25, label=f"target  {first.target}(x)",
            solid_capstyle="round")
    best_mse = min((j.mse for j in data.best), default=0.0)
    scale = 0.0
    for job in data.best:
        values = fitted_values(job, x)
        if values is None:
            continue
        label = f"{job.variant}  lr {label_lr(job.lr)}, deg {job.degree}: mse {job.mse:.3g}"
        if job.status == DIVERGED:
            label += f" (diverged at epoch {job.diverged_at_epoch})"
        ax.plot(x, values, color=variant_color(job.variant), ls=_dash(job.variant), lw=1.5,
                label=label)
        res.plot(x, values - y, color=variant_color(job.variant), ls=_dash(job.variant),
                 lw=1.3)
        if job.mse <= 100 * best_mse:
            scale = max(scale, float(np.max(np.abs(values - y))))
    degrees = sorted({j.degree for j in data.best})
    if len(degrees) <= 3:
        for i, degree in enumerate(degrees):
            optimum = np.polynomial.Polynomial.fit(x, y, degree)(x)
            res.plot(x, optimum - y, color="black", lw=1.0, ls=(0, (1, i + 1.5)),
                     label=f"least-squares optimum, degree {degree}")
            scale = max(scale, float(np.max(np.abs(optimum - y))))
        if degrees:
            res.legend(loc="best", fontsize=7, frameon=False, ncol=len(degrees))
    span = float(np.max(y) - np.min(y)) or 1.0
    ax.set_ylim(float(np.min(y)) - 0.35 * span, float(np.max(y)) + 0.35 * span)
    if scale > 0:
        res.set_ylim(-1.6 * scale, 1.6 * scale)
    res.axhline(0, color="black", lw=0.6)
    ax.set_title("best fit per variant", loc="left", fontsize=11, fontweight="bold")
    ax.set_ylabel("y")
    ax.legend(loc="upper left", fontsize=7.5, frameon=False)
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.25)
    res.set_ylabel("fit - target")
    res.set_xlabel("x")
    res.grid(alpha=0.25)


def _draw_losses(fig: Figure, spec, data: PlotData) -> None:
    ax = fig.add_subplot(spec)
    by_id = {j.id: j for j in data.jobs}
    best_ids = {j.id for j in data.best}
    last_epochs: list[int] = []
    # Faint curves first, then the bold ones in registry order (that is the legend's order).
    drawn = sorted((by_id[job_id] for job_id, curve in data.curves.items() if curve),
                   key=lambda j: (j.id in best_ids, variant_rank(j.variant), j.variant, j.id))
    for job in drawn:
        curve = data.curves[job.id]
        epochs = [e for e, _ in curve]
        losses = [per_point(job, v) for _, v in curve]
        bold = job.id in best_ids
        ax.plot(epochs, [np.nan if v is None else v for v in losses],
                color=variant_color(job.variant),
                ls=_dash(job.variant) if bold else "solid", lw=1.8 if bold else 0.7,
                alpha=1.0 if bold else 0.25, zorder=3 if bold else 2,
                label=job.variant if bold else None)
        if job.status == DIVERGED:
            ax.plot(epochs[-1:], losses[-1:], marker="x", color=variant_color(job.variant), ms=6)
        last_epochs.append(epochs[-1])
    # A job that diverged before its curve's first point has no curve: its loss where it
    # diverged is drawn as a cross, so that the panel never hides what happened.
    curves_drawn = len(last_epochs)
    for job in data.best:
        if job.status != DIVERGED or data.curves.get(job.id) or job.diverged_at_epoch is None:
            continue
        loss = per_point(job, job.final_loss)
        if loss is not None and math.isfinite(loss) and loss > 0:
            epoch = max(job.diverged_at_epoch, 1)
            ax.plot([epoch], [loss], marker="x", ls="none", ms=8, mew=2,
                    color=variant_color(job.variant),
                    label=f"{job.variant} (diverged at epoch {job.diverged_at_epoch})")
            last_epochs.append(epoch)
    if last_epochs and not curves_drawn:  # crosses only: an axis from epoch 0
        ax.set_xlim(0, 2 * max(last_epochs) + 1)
    if not last_epochs:
        ax.text(0.5, 0.5, _no_curve_note(data), transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="#444444")
    optima: dict[float, list[int]] = {}
    for job in data.best:
        if job.optimum_mse:
            # Degrees whose optimum is the same (sin is odd: degree 4 adds nothing to 3) share
            # one line.
            same = next((o for o in optima if math.isclose(o, job.optimum_mse, rel_tol=1e-6)),
                        job.optimum_mse)
            optima.setdefault(same, [])
            if job.degree not in optima[same]:
                optima[same].append(job.degree)
    for optimum, degrees in sorted(optima.items())[:3]:
        ax.axhline(optimum, color="black", lw=0.8, ls=":")
        ax.annotate(f"least-squares optimum, degree {', '.join(map(str, sorted(degrees)))}",
                    (0.99, optimum), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=7)
    ax.set_yscale("log")
    if curves_drawn and max(last_epochs) >= 5 * min(last_epochs):
        ax.set_xscale("log")  # runs of very different lengths: keep the short ones readable
    ax.set_title("training loss", loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per point (sum-of-squares losses / points)")
    ax.grid(alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7.5, frameon=False, loc="upper right")


def _no_curve_note(data: PlotData) -> str:
    """Why the loss panel is empty."""
    if any(j.status == RUNNING for j in data.jobs):
        return "no loss curve yet: the running jobs have\nnot reported their first points"
    return ("no loss curve to draw: every job drawn ended\nbefore its curve's first point "
            "(the curve keeps\na point every few epochs)")


def draw(data: PlotData) -> Figure:
    """The whole figure (not yet saved)."""
    counts: dict[str, int] = {}
    for j in data.jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    first = data.best[0] if data.best else data.jobs[0]
    width = 13.0
    maps = plan_maps(data.cells, width)
    top = 6.6
    fig = Figure(figsize=(width, top + maps.height_in + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(2, 2, height_ratios=(top, maps.height_in), width_ratios=(1.15, 1))
    _draw_fits(fig, outer[0, 0], data)
    _draw_losses(fig, outer[0, 1], data)
    draw_maps(fig, outer[1, :], maps)
    # A variant whose defaults need a word (the lesson's lr for dynamic barely moves it) gets
    # it under the figure when the sweep ran it at those defaults.
    notes = [f"{name}: {VARIANTS[name].note}" for name in VARIANTS
             if VARIANTS[name].note and any(j.variant == name
                                            and j.lr == VARIANTS[name].defaults["lr"]
                                            for j in data.jobs)]
    if notes:
        fig.supxlabel("\n".join([fig.get_supxlabel(), *notes]), fontsize=7.5, color="#444444")
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    fig.suptitle(f"sweep {data.sweep.name} ({data.sweep.id}): fitting {first.target}(x) on "
                 f"[{first.x_start:.4g}, {first.x_stop:.4g}], {first.x_points} points\n"
                 f"{_plural(len(data.jobs), 'job')}: {summary}", fontsize=12)
    return fig


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def save_plot(engine: Engine, sweep: SweepRow, path: str | Path,
              kind: str = "fits") -> Path:
    """Draw the sweep's figure of ``kind`` (``polyfit_results.search_plots.KINDS``) into
    ``path`` (format from its suffix: png, svg, pdf)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg", "pdf"):
        raise PlotError(f"{path}: the file name must end in .png, .svg or .pdf")
    if not path.parent.is_dir():
        raise PlotError(f"{path}: no folder {path.parent}")
    if kind == "fits":
        fig = draw(load(engine, sweep))
    else:
        from polyfit_results.search_plots import DRAW
        from polyfit_results.studies import StudyError

        try:
            fig = DRAW[kind](engine, sweep)
        except StudyError as e:
            raise PlotError(f"sweep {sweep.name}: {e}") from e
    try:
        with output_path(path) as where:  # written whole, or not at all
            fig.savefig(where, format=fmt, dpi=130)
    except ExportError as e:
        raise PlotError(str(e)) from e
    return path
