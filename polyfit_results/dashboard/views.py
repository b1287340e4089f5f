"""The dashboard's pages and the JSON its pages fetch: the sweep list (``/``), a sweep
(``/sweeps/SWEEP``: progress, best jobs, charts, the job table), a job
(``/sweeps/SWEEP/jobs/JOB``) and two sweeps side by side (``/compare?a=SWEEP&b=SWEEP``).
Pages are rendered on the server from a few SQL aggregates and one page of rows; charts and
live progress come from ``/api/...`` as JSON, which the page's script draws and polls. SWEEP is
a sweep's id or its name, as on the command line."""

from __future__ import annotations

import difflib
import json
import math
import re
from datetime import datetime

from flask import Blueprint, abort, current_app, jsonify, render_template, request, url_for
from sqlalchemy import Engine

from polyfit_models import VARIANTS
from polyfit_models.describe import formula
from polyfit_models.fields import names
from polyfit_results import queries, report
from polyfit_results.dashboard import charts, data, params, search_charts
from store.clock import db_now
from store.manage import labels_of
from store.reads import (
    SORT_COLUMNS,
    JobQuery,
    find_job,
    jobs_page,
    loss_curves,
    map_cells,
    rows_of,
)
from store.records import STATUSES
from store.rows import JobRow, SweepRow, as_utc
from store.sweeps import (
    SweepSummary,
    find_sweep,
    sweep_names,
    sweep_summaries,
    sweep_summary,
)

bp = Blueprint("dashboard", __name__)

#: Sweeps per page of the sweep list.
SWEEPS_PER_PAGE = 50
#: The job table's columns (those of ``polyfit results``, with the gap to the optimum).
TABLE_COLUMNS = names(shown="page")
#: A job's settings, outcome and bookkeeping, as the job page lists them.
JOB_SETTINGS, JOB_OUTCOME, JOB_RUN = (names(role=role, shown="job")
                                      for role in ("setting", "outcome", "run"))


class EngineHolder:
    """The app's one read-only engine (``app.extensions["polyfit"]``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine


def _engine() -> Engine:
    return current_app.extensions["polyfit"].engine


@bp.app_template_filter("num")
def _num(value: object) -> str:
    return report.cell(value)


@bp.app_template_filter("age")
def age(when: datetime | None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago', by the database's clock (which wrote ``when``),
    not this host's."""
    if when is None:
        return "-"
    s = max(0.0, (db_now(_engine()) - as_utc(when)).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


@bp.app_template_filter("utc")
def _utc(when: datetime | None) -> str:
    return "-" if when is None else as_utc(when).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_context_processor
def _globals() -> dict:
    return {"db_shown": current_app.config["POLYFIT_DB_SHOWN"],
            "refresh_ms": current_app.config["POLYFIT_REFRESH_MS"],
            "variant_color": charts.color}


def _sweep(ref: str) -> SweepRow:
    """The sweep ``ref`` names (id or name), or 404 with the names that come close."""
    found = find_sweep(_engine(), params.ref(ref))
    if found is not None:
        return found
    close = difflib.get_close_matches(ref, sweep_names(_engine()), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    abort(404, f"no sweep {params.shown(ref)}{hint}")


# -- the sweep list ------------------------------------------------------------------------------

def _line(s: SweepSummary) -> dict:
    """A sweep list row, its values as the page shows them (the script sets them as text)."""
    return {"id": s.id, "name": s.name, "jobs": s.jobs, "ended": s.ended, "failed": s.failed,
            "diverged": s.diverged, "running": s.running, "done": s.done,
            "progress": f"{s.ended:,}/{s.jobs:,}",
            "percent": round(100 * s.ended / s.jobs, 1) if s.jobs else 0.0,
            "best_mse": report.cell(s.best_mse), "age": age(s.created_at),
            "created_at": _utc(s.created_at), "href": url_for(".sweep", ref=s.id),
            "tags": list(s.tags), "tag_text": " ".join(s.tags), "note": s.note}


@bp.get("/")
def sweeps():
    page, tag = params.page(), params.tag()
    lines, total = sweep_summaries(_engine(), limit=SWEEPS_PER_PAGE,
                                    offset=(page - 1) * SWEEPS_PER_PAGE, tag=tag)
    pages = max(1, math.ceil(total / SWEEPS_PER_PAGE))
    return render_template("sweeps.html", lines=[_line(s) for s in lines], total=total,
                           page=page, pages=pages, tag=tag)


@bp.get("/api/sweeps")
def api_sweeps():
    page, tag = params.page(), params.tag()
    lines, total = sweep_summaries(_engine(), limit=SWEEPS_PER_PAGE,
                                    offset=(page - 1) * SWEEPS_PER_PAGE, tag=tag)
    return jsonify({"total": total, "sweeps": [_line(s) for s in lines]})


# -- a sweep -------------------------------------------------------------------------------------

def _state(p: queries.Progress) -> str:
    """The sweep's state for its badge: ended, running (a job in a worker's hands) or waiting."""
    if p.done:
        return "ended"
    return "running" if p.counts.get("running") else "waiting"


def _progress(sweep: SweepRow) -> dict:
    p = queries.progress(_engine(), sweep)
    shown = p.to_dict()
    search = shown["search"]
    rounds = report.phase_detail(shown)
    return {"total": p.total, "ended": p.ended, "done": p.done, "counts": p.counts,
            "percent": round(100 * p.ended / p.total, 1) if p.total else 0.0,
            "progress": f"{p.ended:,}/{p.total:,}", "state": _state(p),
            "detail": report.progress_detail(p.counts, p.total, p.fits_per_s, p.eta_s,
                                             p.idle_s, p.running_done) + rounds,
            "search": search}


def _job_filter() -> JobQuery:
    return JobQuery(variants=params.choices("variant", tuple(VARIANTS)),
                    statuses=params.choices("status", STATUSES),
                    degrees=params.degrees(), lr_min=params.number("lr_min"),
                    lr_max=params.number("lr_max"),
                    sort=params.one_of("sort", SORT_COLUMNS, "mse"),
                    descending=params.flag("desc"))


def _link(**changes) -> str:
    """This page's URL with some query arguments changed (None drops one)."""
    args = request.args.to_dict(flat=False)
    for key, value in changes.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = value
    return url_for(request.endpoint, **request.view_args, **args) + "#jobs"


@bp.get("/sweeps/<path:ref>")
def sweep(ref: str):
    wanted = _job_filter()
    per_page = params.one_of("per_page", data.PER_PAGE, 50)
    page = params.page()
    engine = _engine()
    target = _sweep(ref)
    rows, total = jobs_page(engine, target.id, wanted, page=page, per_page=per_page)
    pages = max(1, math.ceil(total / per_page))
    if page > pages:
        page = pages
        rows, total = jobs_page(engine, target.id, wanted, page=page, per_page=per_page)
    best = data.best_of_sweep(engine, target.id)
    tags, note = labels_of(engine, [target.id]).get(target.id, ([], ""))
    return render_template(
        "sweep.html", sweep=target, progress=_progress(target), tags=tags, note=note,
        best=[queries.described(j) for j in best.by_variant],
        best_ids=",".join(j.id for j in best.by_variant),
        by_degree=[queries.described(j) for j in best.by_degree], axes=best, wanted=wanted,
        statuses=STATUSES,
        rows=[r.to_dict(gap=True) for r in rows], total=total, page=page, pages=pages,
        per_page=per_page, per_page_choices=data.PER_PAGE, columns=TABLE_COLUMNS,
        sort_columns=SORT_COLUMNS, link=_link,
        searched="search" in (target.spec or {}),
        spec_text=json.dumps(target.spec, indent=1, sort_keys=True))


@bp.get("/api/sweeps/<path:ref>/progress")
def api_progress(ref: str):
    return jsonify(_progress(_sweep(ref)))


#: The page asks the fits chart for the best jobs it has just found (``?jobs=ID,ID``), which
#: spares the chart two scans of a big sweep; redrawn later, the chart finds them itself.
_JOB_IDS = re.compile(r"[0-9a-f]{1,32}(,[0-9a-f]{1,32}){0,63}")


def _best_by_variant(engine: Engine, target: SweepRow) -> list[JobRow]:
    given = params.text("jobs", "") or None
    if given is None:
        return data.best_by_variant(engine, target.id)
    if not _JOB_IDS.fullmatch(given):
        abort(400, "jobs must be job ids, comma-separated")
    return sorted(rows_of(engine, target.id, given.split(",")),
                  key=lambda j: data.variant_order(j.variant))


@bp.get("/api/sweeps/<path:ref>/charts/<name>")
def api_chart(ref: str, name: str):
    engine = _engine()
    target = _sweep(ref)
    if name == "fits":
        return jsonify(charts.fits_figure(_best_by_variant(engine, target)))
    if name == "losses":
        jobs, bold = data.curve_jobs(engine, target.id)
        curves = loss_curves(engine, target.id, [j.id for j in jobs])
        return jsonify(charts.losses_figure(jobs, bold, curves))
    if name == "maps":
        return jsonify(charts.maps_figure(map_cells(engine, target.id)))
    if name in search_charts.FIGURES:
        return jsonify(search_charts.FIGURES[name](engine, target))
    abort(404, f"no chart {params.shown(name)}")


# -- a job ---------------------------------------------------------------------------------------

def _job(ref: str, job_id: str) -> tuple[SweepRow, JobRow]:
    target = _sweep(ref)
    found = find_job(_engine(), target.id, params.ref(job_id, "job"))
    if found is None:
        abort(404, f"no job {params.shown(job_id)} in sweep {target.name}")
    return target, found


@bp.get("/sweeps/<path:ref>/jobs/<job_id>")
def job(ref: str, job_id: str):
    target, found = _job(ref, job_id)
    values = found.to_dict(gap=True)
    curve = loss_curves(_engine(), target.id, [found.id])[found.id]
    return render_template(
        "job.html", sweep=target, job=found, values=values, formula=formula(found.monomial),
        settings=JOB_SETTINGS, outcome=JOB_OUTCOME, run=JOB_RUN, points=len(curve),
        loss_kind=VARIANTS[found.variant].loss if found.variant in VARIANTS else "")


@bp.get("/api/sweeps/<path:ref>/jobs/<job_id>/charts/<name>")
def api_job_chart(ref: str, job_id: str, name: str):
    target, found = _job(ref, job_id)
    if name == "curve":
        curve = loss_curves(_engine(), target.id, [found.id])[found.id]
        return jsonify(charts.curve_figure(found, curve))
    if name == "fit":
        return jsonify(charts.fits_figure([found]))
    abort(404, f"no chart {params.shown(name)}")


# -- two sweeps ----------------------------------------------------------------------------------

@bp.get("/compare")
def compare():
    engine = _engine()
    choices, _ = sweep_summaries(engine, limit=500)
    refs = [params.text("a").strip(), params.text("b").strip()]
    if not all(refs):
        return render_template("compare.html", choices=choices, refs=refs, sides=None)
    sides = []
    for ref in refs:
        target = _sweep(ref)
        best = data.best_by_variant(engine, target.id)
        sides.append({"sweep": target, "line": sweep_summary(engine, target.id),
                      "best": {j.variant: queries.described(j) for j in best}})
    variants = sorted({v for side in sides for v in side["best"]}, key=data.variant_order)
    return render_template("compare.html", choices=choices, refs=refs, sides=sides,
                           variants=variants)


@bp.get("/api/compare")
def api_compare():
    engine = _engine()
    targets = [_sweep(params.text(k)) for k in ("a", "b")]
    bests = [data.best_by_variant(engine, t.id) for t in targets]
    names = [t.name if targets[0].name != targets[1].name else f"{t.name} ({t.id})"
             for t in targets]
    return jsonify(charts.compare_figure(names, bests))
