"""The dashboard's charts as Plotly figures (plain ``{"data": [...], "layout": {...}}`` dicts
that plotly.js draws in the browser: hover for values, zoom, a click on a legend entry hides or
shows its series). They show what the static figure of ``polyfit plot`` shows: the best fit of
each variant against the target with the residuals, the loss curves (the best of each variant
bold, others faint, divergence marked with a cross), and lr x degree maps of the final mse;
and, for one job, its curve and its fit; for two sweeps, their best mse per variant side by
side.

Plotly reads a few HTML-like tags in text (``<b>``, ``<a href>``, ``<br>``), so every text that
comes from the database (sweep names) is escaped here before it goes into a figure: it shows as
text, never as markup."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import numpy as np

from polyfit_models import TARGETS
from polyfit_results.dashboard.data import variant_order
from polyfit_results.fits import fitted_values, loss_kind, per_point
from store.reads import MapCell
from store.records import DIVERGED
from store.rows import JobRow

# The colours of matplotlib's tab10 (and plotly's default colorway), one per variant in the
# registry's order, as in ``polyfit plot``: a variant has the same colour everywhere.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
# numpy, tensor and autograd train the same model the same way and draw the very same curve: a
# dash pattern each lets every one of them show through the others.
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
#: Points drawn per fitted curve (the fit is evaluated on the job's interval at this many
#: points; its mse was computed on the job's own grid).
FIT_POINTS = 400
DIVERGED_MARK = "#8c2d04"

_FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12}


def text(value: object) -> str:
    """``value`` as text plotly shows as it is (its markup escaped)."""
    return html.escape(str(value), quote=False)


def color(variant: str) -> str:
    return COLORS[variant_order(variant) % len(COLORS)]


def dash(variant: str) -> str:
    return DASHES[variant_order(variant) % len(DASHES)]


def _layout(**more) -> dict:
    out = {"font": _FONT, "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
           "hovermode": "closest", "paper_bgcolor": "white", "plot_bgcolor": "white",
           "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom",
                      "font": {"size": 11}}}
    out.update(more)
    return out


def _axis(title: str, **more) -> dict:
    return {"title": {"text": title}, "gridcolor": "#e5e5e5", "zerolinecolor": "#bbbbbb",
            **more}


def _finite(values: Iterable[float | None]) -> list[float | None]:
    """JSON holds no NaN or infinity: those become gaps."""
    return [v if v is not None and math.isfinite(v) else None for v in values]


def _curve(values: np.ndarray) -> list[float | None]:
    """A drawn curve's values to 7 significant digits (what a screen can show; half the
    bytes of full floats), gaps where not finite."""
    return [float(f"{v:.7g}") if math.isfinite(v) else None for v in values.tolist()]


def _label(job: JobRow) -> str:
    return f"{job.variant} lr {job.lr:g}, deg {job.degree}, seed {job.seed}"


# -- fits ----------------------------------------------------------------------------------------

def fits_figure(best: Sequence[JobRow], *, residuals: bool = True) -> dict:
    """The fits of ``best`` against the target on the first one's interval, and beneath them
    the residuals (fit - target) next to the least-squares optimum of each degree (dotted)."""
    if not best:
        return empty_figure("no job has ended with a model yet")
    first = best[0]
    x = np.linspace(first.x_start, first.x_stop, min(first.x_points, FIT_POINTS))
    y = TARGETS[first.target](x)
    top = {"xaxis": "x", "yaxis": "y"}
    bottom = {"xaxis": "x", "yaxis": "y2"}
    data = [{"type": "scatter", "mode": "lines", "name": f"target {first.target}(x)",
             "x": _curve(x), "y": _curve(y), "line": {"color": "black", "width": 6},
             "opacity": 0.25, "hovertemplate": "x %{x:.4g}<br>y %{y:.4g}<extra>target</extra>",
             **top}]
    for job in best:
        values = fitted_values(job, x)
        if values is None:
            continue
        style = {"color": color(job.variant), "dash": dash(job.variant), "width": 2}
        data.append({"type": "scatter", "mode": "lines", "x": _curve(x),
                     "y": _curve(values), "line": style, "legendgroup": job.id,
                     "name": f"{job.variant} mse {job.mse:.3g}" if job.mse is not None
                     else job.variant,
                     "hovertemplate": f"{text(_label(job))}<br>x %{{x:.4g}}<br>"
                                      "fit %{y:.4g}<extra></extra>", **top})
        if residuals:
            data.append({"type": "scatter", "mode": "lines", "x": _curve(x),
                         "y": _curve(values - y), "line": {**style, "width": 1.5},
                         "legendgroup": job.id, "showlegend": False, "name": job.variant,
                         "hovertemplate": f"{text(_label(job))}<br>x %{{x:.4g}}<br>"
                                          "fit - target %{y:.3g}<extra></extra>", **bottom})
    if residuals:
        for degree in sorted({j.degree for j in best})[:3]:
            optimum = np.polynomial.Polynomial.fit(x, y, degree)(x)
            data.append({"type": "scatter", "mode": "lines", "x": _curve(x),
                         "y": _curve(optimum - y),
                         "name": f"least-squares optimum, degree {degree}",
                         "line": {"color": "black", "width": 1, "dash": "dot"},
                         "hovertemplate": f"optimum, degree {degree}<br>x %{{x:.4g}}<br>"
                                          "fit - target %{y:.3g}<extra></extra>", **bottom})
    span = float(np.max(y) - np.min(y)) or 1.0
    layout = _layout(
        xaxis=_axis("x", anchor="y2" if residuals else "y"),
        yaxis=_axis("y", domain=[0.36, 1] if residuals else [0, 1],
                    range=[float(np.min(y)) - 0.35 * span, float(np.max(y)) + 0.35 * span]),
        height=520 if residuals else 380)
    if residuals:
        layout["yaxis2"] = _axis("fit - target", domain=[0, 0.3])
    return {"data": data, "layout": layout}


# -- loss curves ---------------------------------------------------------------------------------

def losses_figure(jobs: Sequence[JobRow], best_ids: set[str],
                  curves: dict[str, list]) -> dict:
    """Training loss per point against the epoch, log scale: the best job of each variant
    bold, the others faint (a legend entry per variant shows or hides all of its curves), a
    cross where a job diverged, a dotted line at each degree's least-squares optimum."""
    drawn = sorted((j for j in jobs if curves.get(j.id)),
                   key=lambda j: (j.id in best_ids, variant_order(j.variant), j.mse or 0, j.id))
    if not drawn:
        return empty_figure("no loss curve recorded yet")
    data = []
    last_epochs = []
    for job in drawn:
        curve = curves[job.id]
        epochs = [e for e, _ in curve]
        losses = [per_point(job, v) for _, v in curve]
        bold = job.id in best_ids
        mse = "-" if job.mse is None else f"{job.mse:.4g}"
        hover = (f"{text(_label(job))}<br>{job.status}, mse {mse}<br>epoch %{{x}}<br>"
                 f"loss %{{y:.4g}}<extra>{'best' if bold else ''}</extra>")
        data.append({"type": "scatter", "mode": "lines", "x": epochs, "y": losses,
                     "name": job.variant, "legendgroup": job.variant, "showlegend": bold,
                     "line": {"color": color(job.variant), "width": 3 if bold else 1,
                              "dash": dash(job.variant) if bold else "solid"},
                     "opacity": 1.0 if bold else 0.3, "hovertemplate": hover,
                     "meta": {"job": job.id, "best": bold}})
        if job.status == DIVERGED and epochs:
            data.append({"type": "scatter", "mode": "markers", "x": epochs[-1:],
                         "y": losses[-1:], "legendgroup": job.variant, "showlegend": False,
                         "name": f"{job.variant} diverged",
                         "marker": {"symbol": "x", "size": 10, "color": DIVERGED_MARK},
                         "hovertemplate": f"{text(_label(job))}<br>diverged at epoch "
                                          f"{job.diverged_at_epoch}<extra></extra>",
                         "meta": {"job": job.id, "diverged": True}})
        last_epochs.append(epochs[-1])
    optima: dict[float, list[int]] = {}
    for job in drawn:
        if job.id in best_ids and job.optimum_mse:
            same = next((o for o in optima if math.isclose(o, job.optimum_mse, rel_tol=1e-6)),
                        job.optimum_mse)
            optima.setdefault(same, [])
            if job.degree not in optima[same]:
                optima[same].append(job.degree)
    shapes, notes = [], []
    for optimum, degrees in sorted(optima.items())[:3]:
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y",
                       "y0": optimum, "y1": optimum, "line": {"dash": "dot", "width": 1}})
        notes.append({"xref": "paper", "x": 1, "xanchor": "right", "yref": "y",
                      "y": math.log10(optimum), "yanchor": "bottom", "showarrow": False,
                      "font": {"size": 10},
                      "text": "least-squares optimum, degree "
                              + ", ".join(map(str, sorted(degrees)))})
    log_x = bool(last_epochs) and max(last_epochs) >= 5 * min(last_epochs)
    layout = _layout(height=520,
                     xaxis=_axis("epoch", type="log" if log_x else "linear"),
                     yaxis=_axis("loss per point (sum-of-squares losses / points)",
                                 type="log", exponentformat="power"),
                     shapes=shapes, annotations=notes)
    return {"data": data, "layout": layout}


def curve_figure(job: JobRow, curve: list) -> dict:
    """One job's training loss (its own loss: sum of squares or mean) against the epoch."""
    if not curve:
        return empty_figure("no loss curve recorded for this job")
    epochs = [e for e, _ in curve]
    losses = _finite(v for _, v in curve)
    data = [{"type": "scatter", "mode": "lines+markers", "x": epochs, "y": losses,
             "name": job.variant, "line": {"color": color(job.variant), "width": 2},
             "marker": {"size": 4},
             "hovertemplate": "epoch %{x}<br>loss %{y:.6g}<extra></extra>"}]
    if job.status == DIVERGED:
        data.append({"type": "scatter", "mode": "markers", "x": epochs[-1:], "y": losses[-1:],
                     "name": f"diverged at epoch {job.diverged_at_epoch}",
                     "marker": {"symbol": "x", "size": 12, "color": DIVERGED_MARK}})
    kind = {"sse": "sum of squared errors", "mse": "mean squared error"}.get(
        loss_kind(job.variant), "as its variant trains it")
    return {"data": data, "layout": _layout(
        height=380, showlegend=len(data) > 1,
        xaxis=_axis("epoch"), yaxis=_axis(f"loss ({kind})", type="log",
                                           exponentformat="power"))}


# -- lr x degree maps ----------------------------------------------------------------------------

def maps_figure(cells: Sequence[MapCell]) -> dict:
    """One heatmap per variant of the best final mse (over the seeds that succeeded) by
    learning rate and degree, on one log colour scale; hover gives the cell's counts and mean.
    Cells where every job diverged are empty with a cross; a small cross marks a cell where
    some did."""
    variants = sorted({c.variant for c in cells}, key=variant_order)
    if not variants:
        return empty_figure("no job yet")
    values = [c.best_mse for c in cells if c.best_mse is not None and c.best_mse > 0]
    lo, hi = (math.log10(min(values)), math.log10(max(values))) if values else (-3.0, 0.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    n = len(variants)
    gap = 0.04 if n > 1 else 0.0
    width = (1 - gap * (n - 1)) / n
    data, layout = [], _layout(
        height=420,
        coloraxis={"colorscale": "Viridis", "reversescale": True, "cmin": lo, "cmax": hi,
                   "colorbar": {"title": {"text": "log10 mse"}}},
        margin={"l": 70, "r": 20, "t": 40, "b": 50})
    annotations = []
    for i, variant in enumerate(variants):
        mine = [c for c in cells if c.variant == variant]
        lrs = sorted({c.lr for c in mine})
        degrees = sorted({c.degree for c in mine})
        by_key = {(c.lr, c.degree): c for c in mine}
        z, hover = [], []
        for lr in lrs:
            z.append([])
            hover.append([])
            for d in degrees:
                c = by_key.get((lr, d))
                ok = c is not None and c.best_mse is not None and c.best_mse > 0
                z[-1].append(math.log10(c.best_mse) if ok else None)
                hover[-1].append(_cell_text(c) if c is not None else "no job")
        suffix = "" if i == 0 else str(i + 1)
        x0 = i * (width + gap)
        layout[f"xaxis{suffix}"] = _axis("degree", domain=[x0, x0 + width], type="category",
                                         anchor=f"y{suffix}")
        # automargin: plotly makes room for the longest label (5.62e-06), and the axis title
        # stands beside them instead of over them.
        layout[f"yaxis{suffix}"] = _axis("learning rate" if i == 0 else "", type="category",
                                         anchor=f"x{suffix}", automargin=True,
                                         showticklabels=i == 0 or len(lrs) < 12)
        ref = {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}
        label = lr_labels(lrs)
        xs, ys = [str(d) for d in degrees], [label[lr] for lr in lrs]
        data.append({"type": "heatmap", "x": xs, "y": ys, "z": z, "coloraxis": "coloraxis",
                     "text": hover, "hoverongaps": True, "name": variant,
                     "hovertemplate": f"{variant}<br>lr %{{y}}, degree %{{x}}<br>"
                                      "%{text}<extra></extra>", "xgap": 1, "ygap": 1, **ref})
        crossed = [c for c in mine if c.diverged]
        if crossed:
            data.append({"type": "scatter", "mode": "markers", "showlegend": False,
                         "x": [str(c.degree) for c in crossed],
                         "y": [label[c.lr] for c in crossed],
                         "name": f"{variant}: diverged",
                         "marker": {"symbol": "x", "color": DIVERGED_MARK,
                                    "size": [14 if c.succeeded == 0 else 7 for c in crossed]},
                         "text": [_cell_text(c) for c in crossed],
                         "hovertemplate": f"{variant}<br>lr %{{y}}, degree %{{x}}<br>"
                                          "%{text}<extra></extra>", **ref})
        annotations.append({"text": f"<b>{variant}</b>", "showarrow": False,
                            "xref": "paper", "yref": "paper", "x": x0 + width / 2, "y": 1.0,
                            "yanchor": "bottom", "font": {"color": color(variant)}})
    layout["annotations"] = annotations
    return {"data": data, "layout": layout}


def lr_labels(lrs: Sequence[float]) -> dict[float, str]:
    """Short labels for learning rates that tell every one apart: 3 significant digits
    (``5.62e-06``, not the 12 of a log-spaced value, which plotly cut to ``62341e-06``), more
    only where two would read the same."""
    for digits in range(3, 18):
        labels = {lr: f"{lr:.{digits}g}" for lr in lrs}
        if len(set(labels.values())) == len(labels):
            return labels
    return {lr: repr(lr) for lr in lrs}


def _cell_text(c: MapCell) -> str:
    parts = [f"{c.jobs} job{'s' if c.jobs != 1 else ''}: {c.succeeded} succeeded"]
    if c.diverged:
        parts.append(f"{c.diverged} diverged")
    if c.failed:
        parts.append(f"{c.failed} failed")
    out = ", ".join(parts)
    if c.best_mse is not None:
        out += f"<br>best mse {c.best_mse:.4g}"
        if c.mean_mse is not None and c.succeeded > 1:
            out += f", mean {c.mean_mse:.4g}"
    return out


# -- two sweeps ----------------------------------------------------------------------------------

def compare_figure(names: Sequence[str], bests: Sequence[Sequence[JobRow]]) -> dict:
    """The best mse of each variant in each sweep, as bars side by side (log scale)."""
    variants = sorted({j.variant for best in bests for j in best}, key=variant_order)
    if not variants:
        return empty_figure("neither sweep has a finished job yet")
    data = []
    for k, (name, best) in enumerate(zip(names, bests)):
        by_variant = {j.variant: j for j in best}
        data.append({"type": "bar", "name": text(name), "x": variants,
                     "y": _finite(by_variant[v].mse if v in by_variant else None
                                  for v in variants),
                     "text": [_label(by_variant[v]) if v in by_variant else "no result"
                              for v in variants],
                     "marker": {"color": ("#4c72b0", "#dd8452")[k % 2],
                                "pattern": {"shape": ("", "/")[k % 2]}},
                     "hovertemplate": f"{text(name)}<br>%{{text}}<br>best mse %{{y:.4g}}"
                                      "<extra></extra>", "textposition": "none"})
    return {"data": data, "layout": _layout(
        barmode="group", height=380,
        xaxis=_axis("variant"), yaxis=_axis("best mse", type="log", exponentformat="power"),
        )}


def empty_figure(message: str) -> dict:
    return {"data": [], "layout": _layout(
        height=220, xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": text(message), "showarrow": False, "xref": "paper",
                      "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 14}}])}
