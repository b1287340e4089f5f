"""The bottom of ``polyfit plot``'s figure: one learning-rate x degree map per variant of the
final mse (the best of each cell's jobs, the dashboard's one statistic: ``store.reads.map_cells``;
diverged cells marked), with the colour of each variant and the lr labels that every panel of
the figure shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from polyfit_results.fits import variant_rank
from store.reads import MapCell

DIVERGED_COLOR = "#d9d9d9"
DIVERGED_MARK = "#8c2d04"


def variant_color(variant: str) -> tuple:
    """The variant's colour in every panel: fixed by the registry's order, so a variant has
    the same colour in every plot."""
    return colormaps["tab10"](variant_rank(variant) % 10)


def label_lr(lr: float) -> str:
    """A learning rate as a tick or a legend shows it."""
    return f"{lr:g}"


def _cells(cells: Sequence[MapCell]) -> tuple[list, list, dict]:
    lrs = sorted({c.lr for c in cells})
    degrees = sorted({c.degree for c in cells})
    return lrs, degrees, {(c.lr, c.degree): c for c in cells}


@dataclass(frozen=True)
class Maps:
    """The maps' cells per variant, and how large a cell is drawn (inches)."""

    per_variant: dict[str, tuple[list, list, dict]]
    cell_in: float

    @property
    def height_in(self) -> float:
        rows = max(len(lrs) for lrs, _, _ in self.per_variant.values())
        return self.cell_in * rows + 1.1  # + title, tick labels, axis label


def plan_maps(cells: Sequence[MapCell], width_in: float) -> Maps:
    variants = sorted({c.variant for c in cells}, key=lambda v: (variant_rank(v), v))
    per_variant = {v: _cells([c for c in cells if c.variant == v]) for v in variants}
    columns = sum(len(degrees) for _, degrees, _ in per_variant.values())
    rows = max(len(lrs) for lrs, _, _ in per_variant.values())
    # Room left once each panel's lr tick labels and the colorbar have theirs.
    room = width_in - 0.75 * len(variants) - 1.2
    cell = min(0.65, room / columns, 4.5 / rows)
    return Maps(per_variant, max(cell, 0.05))


def draw_maps(fig: Figure, spec, maps: Maps) -> None:
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
        ax.set_yticks(range(len(lrs)), [label_lr(lr) for lr in lrs])
        ax.set_xlim(-0.5, len(degrees) - 0.5)
        ax.set_ylim(-0.5, len(lrs) - 0.5)
        ax.set_title(variant, fontsize=9.5, color=variant_color(variant), fontweight="bold")
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

