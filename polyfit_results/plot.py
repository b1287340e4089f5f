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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from sqlalchemy import Engine

from polyfit_models import TARGETS, VARIANTS
from polyfit_models.errors import BadInput
from polyfit_results import queries
from polyfit_results.export import ExportError, output_path
from polyfit_results.fits import fitted_values, per_point, variant_rank
from store.reads import MapCell, list_jobs, loss_curves, map_cells
from store.records import DIVERGED, OK, RUNNING
from store.rows import JobRow, SweepRow

# Faint loss curves drawn per variant besides its best (the lowest-mse ones): enough to show the
# spread over seeds and learning rates, few enough to keep the file small and the panel legible.
MAX_FAINT_CURVES = 30
DIVERGED_COLOR = "#d9d9d9"
DIVERGED_MARK = "#8c2d04"


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


def _color(variant: str) -> tuple:
    # Fixed by the registry's order, so a variant has the same color in every plot.
    return colormaps["tab10"](variant_rank(variant) % 10)


# Variants that train the same model the same way (numpy, tensor, autograd) draw the very same
# curve: a dash pattern each lets every one of them show through the others.
_DASHES = ["solid", (0, (6, 3)), (0, (2, 2)), (0, (8, 2, 2, 2)), (0, (4, 1.5)), (0, (1, 1))]


def _dash(variant: str):
    return _DASHES[variant_rank(variant) % len(_DASHES)]


def _label_lr(lr: float) -> str:
    return f"{lr:g}"


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
        label = f"{job.variant}  lr {_label_lr(job.lr)}, deg {job.degree}: mse {job.mse:.3g}"
        if job.status == DIVERGED:
            label += f" (diverged at epoch {job.diverged_at_epoch})"
        ax.plot(x, values, color=_color(job.variant), ls=_dash(job.variant), lw=1.5,
                label=label)
        res.plot(x, values - y, color=_color(job.variant), ls=_dash(job.variant), lw=1.3)
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
        ax.plot(epochs, [np.nan if v is None else v for v in losses], color=_color(job.variant),
                ls=_dash(job.variant) if bold else "solid", lw=1.8 if bold else 0.7,
                alpha=1.0 if bold else 0.25, zorder=3 if bold else 2,
                label=job.variant if bold else None)
        if job.status == DIVERGED:
            ax.plot(epochs[-1:], losses[-1:], marker="x", color=_color(job.variant), ms=6)
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
                    color=_color(job.variant),
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


def _cells(cells: Sequence[MapCell]) -> tuple[list, list, dict]:
    lrs = sorted({c.lr for c in cells})
    degrees = sorted({c.degree for c in cells})
    return lrs, degrees, {(c.lr, c.degree): c for c in cells}


@dataclass(frozen=True)
class _Maps:
    """The maps' cells per variant, and how large a cell is drawn (inches)."""

    per_variant: dict[str, tuple[list, list, dict]]
    cell_in: float

    @property
    def height_in(self) -> float:
        rows = max(len(lrs) for lrs, _, _ in self.per_variant.values())
        return self.cell_in * rows + 1.1  # + title, tick labels, axis label


def _plan_maps(cells: Sequence[MapCell], width_in: float) -> _Maps:
    variants = sorted({c.variant for c in cells}, key=lambda v: (variant_rank(v), v))
    per_variant = {v: _cells([c for c in cells if c.variant == v]) for v in variants}
    columns = sum(len(degrees) for _, degrees, _ in per_variant.values())
    rows = max(len(lrs) for lrs, _, _ in per_variant.values())
    # Room left once each panel's lr tick labels and the colorbar have theirs.
    room = width_in - 0.75 * len(variants) - 1.2
    cell = min(0.65, room / columns, 4.5 / rows)
    return _Maps(per_variant, max(cell, 0.05))


def _draw_maps(fig: Figure, spec, maps: _Maps) -> None:
    variants = list(maps.per_variant)
    values = [c.best_mse for _, _, cells in maps.per_variant.values() for c in cells.values()
              if c.best_mse is not None and c.best_mse > 0]
    lo, hi = (min(values), max(values)) if values else (1e-3, 1.0)
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    norm = LogNorm(vmin=lo, vmax=hi)
    cmap = colormaps["viridis_r"]
    # Panel widths follow their number of columns, so that every cell is the same size.
    widths = [max(len(degrees), 1) for _, degrees, _ in maps.per_variant.values()]
    grid = spec.subgridspec(1, len(variants) + 1, wspace=0.08,
                            width_ratios=widths + [max(0.25, 0.2 * sum(widths) / 8)])
    annotate = maps.cell_in >= 0.42
    detailed = maps.cell_in >= 0.6
    any_diverged = False
    for i, variant in enumerate(variants):
        lrs, degrees, cells = maps.per_variant[variant]
        ax = fig.add_subplot(grid[i])
        table = np.full((len(lrs), len(degrees)), np.nan)
        for (lr, degree), cell in cells.items():
            if cell.best_mse is not None and cell.best_mse > 0:
                table[lrs.index(lr), degrees.index(degree)] = cell.best_mse
        ax.imshow(table, cmap=cmap, norm=norm, aspect="equal", origin="lower",
                  interpolation="nearest")
        ax.set_anchor("S")
        for (lr, degree), cell in cells.items():
            r, c = lrs.index(lr), degrees.index(degree)
            any_diverged = any_diverged or bool(cell.diverged)
            if cell.best_mse is None:
                # No job of the cell succeeded: grey, and crossed out if they diverged.
                ax.add_patch(_rect(c, r, DIVERGED_COLOR))
                if cell.diverged:
                    ax.plot([c - 0.5, c + 0.5], [r - 0.5, r + 0.5], color=DIVERGED_MARK, lw=0.9)
                    ax.plot([c - 0.5, c + 0.5], [r + 0.5, r - 0.5], color=DIVERGED_MARK, lw=0.9)
                elif annotate:
                    ax.text(c, r, "-", ha="center", va="center", fontsize=8)
                continue
            if cell.diverged:
                # Some of the cell's jobs diverged: a small cross in its corner.
                ax.plot(c + 0.33, r + 0.33, marker="x", color=DIVERGED_MARK,
                        ms=max(3.0, 7 * min(maps.cell_in, 0.8)), mew=1.3)
            if annotate:
                rgba = cmap(norm(cell.best_mse))
                dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                text = f"{cell.best_mse:.2g}"
                if detailed and cell.succeeded > 1:
                    text += f"\nmean {cell.mean_mse:.2g}"
                ax.text(c, r, text, ha="center", va="center",
                        fontsize=7.5 if detailed else 6.5, color="white" if dark else "black")
        ax.set_xticks(range(len(degrees)), [str(d) for d in degrees])
        ax.set_yticks(range(len(lrs)), [_label_lr(lr) for lr in lrs])
        ax.set_xlim(-0.5, len(degrees) - 0.5)
        ax.set_ylim(-0.5, len(lrs) - 0.5)
        ax.set_title(variant, fontsize=9.5, color=_color(variant), fontweight="bold")
        ax.set_xlabel("degree", fontsize=8)
        if i == 0:
            ax.set_ylabel("learning rate", fontsize=8)
        ax.tick_params(labelsize=7, length=2)
    cax = fig.add_subplot(grid[-1])
    cax.set_anchor("SW")
    note = ("maps: final mse by learning rate x degree, the best of each cell's jobs"
            + (" (and their mean)" if detailed else ""))
    if values:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
        bar.set_label("final mse", fontsize=7.5)
        bar.ax.tick_params(labelsize=7)
    else:
        # A colour scale that contains no value would be a scale of nothing.
        cax.set_axis_off()
        note += ";  no cell has an mse to colour: no job has succeeded yet"
    if any_diverged:
        note += ";  grey, crossed: every job of the cell diverged;  x in a corner: some did"
    fig.supxlabel(note, fontsize=7.5, color="#444444")


def _rect(col: int, row: int, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, color=color, zorder=0.5)


def draw(data: PlotData) -> Figure:
    """The whole figure (not yet saved)."""
    counts: dict[str, int] = {}
    for j in data.jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    first = data.best[0] if data.best else data.jobs[0]
    width = 13.0
    maps = _plan_maps(data.cells, width)
    top = 6.6
    fig = Figure(figsize=(width, top + maps.height_in + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(2, 2, height_ratios=(top, maps.height_in), width_ratios=(1.15, 1))
    _draw_fits(fig, outer[0, 0], data)
    _draw_losses(fig, outer[0, 1], data)
    _draw_maps(fig, outer[1, :], maps)
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
