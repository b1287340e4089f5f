"""The sweep page's search figures as plotly figures (JSON): each axis's importance for mse,
the best mse over trials, and parallel coordinates of the jobs coloured by mse; the same data
as ``polyfit plot --kind importance|history|parallel`` (``polyfit_results.search_plots``)."""

from __future__ import annotations

import math

from sqlalchemy import Engine

from polyfit_results.dashboard.charts import _axis, _layout, empty_figure, text
from polyfit_results.search_plots import best_history
from polyfit_results.studies import AXES, StudyError, importances
from store.reads import list_jobs
from store.rows import SweepRow

#: Jobs a parallel-coordinates figure draws at most (the lowest mse first).
PARALLEL_MAX = 2000


def importance_figure(engine: Engine, sweep: SweepRow) -> dict:
    try:
        found = sorted(importances(engine, sweep).items(), key=lambda kv: kv[1])
    except StudyError as e:
        return empty_figure(str(e))
    return {"data": [{"type": "bar", "orientation": "h", "x": [v for _, v in found],
                      "y": [k for k, _ in found], "marker": {"color": "#4c72b0"}}],
            "layout": _layout(height=120 + 40 * len(found),
                              xaxis=_axis("importance for mse (PED-ANOVA)"),
                              yaxis=_axis(""))}


def history_figure(engine: Engine, sweep: SweepRow) -> dict:
    best = best_history(engine, sweep)
    if len(best) < 2:
        return empty_figure("the history needs two or more jobs with an mse")
    return {"data": [{"type": "scatter", "mode": "lines", "line": {"shape": "hv"},
                      "x": list(range(1, len(best) + 1)), "y": [float(v) for v in best],
                      "name": "best mse"}],
            "layout": _layout(height=320, xaxis=_axis("trials"),
                              yaxis=_axis("best mse so far", type="log"))}


def parallel_figure(engine: Engine, sweep: SweepRow) -> dict:
    jobs = sorted((j for j in list_jobs(engine, sweep.id)
                   if j.mse is not None and math.isfinite(j.mse) and j.mse > 0),
                  key=lambda j: j.mse)[:PARALLEL_MAX]
    axes = [a for a in AXES if len({getattr(j, a) for j in jobs}) > 1]
    if len(jobs) < 2 or not axes:
        return empty_figure("parallel coordinates need jobs whose settings vary")
    dims = []
    for a in axes:
        raw = [getattr(j, a) for j in jobs]
        if isinstance(raw[0], str):
            order = sorted(set(raw))
            dims.append({"label": a, "values": [order.index(v) for v in raw],
                         "tickvals": list(range(len(order))), "ticktext": order})
        else:
            dims.append({"label": f"log10 {a}" if a == "lr" else a,
                         "values": [math.log10(v) if a == "lr" else v for v in raw]})
    colour = [math.log10(j.mse) for j in jobs]
    dims.append({"label": "log10 mse", "values": colour})
    return {"data": [{"type": "parcoords", "dimensions": dims,
                      "line": {"color": colour, "colorscale": "Viridis", "reversescale": True,
                               "showscale": True, "colorbar": {"title": {"text": "log10 mse"}}}}],
            "layout": _layout(height=420, title={"text": text(
                f"{len(jobs):,} jobs, coloured by mse")})}


FIGURES = {"importance": importance_figure, "history": history_figure,
           "parallel": parallel_figure}
