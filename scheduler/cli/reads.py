"""The commands that read a sweep's results: ``status`` (with ``--watch``, a live progress line
for a sweep running anywhere), ``sweeps``, ``results``, ``best``, ``job`` and ``plot`` (``sql``
has its own module). They open the database read-only: none of them creates or changes
anything."""

from __future__ import annotations

import json
import sys
import time

import click

from polyfit_models import VARIANTS
from polyfit_models.fields import names
from polyfit_results import export, queries, report
from polyfit_results.progress import LiveProgress
from scheduler.axes import parse_axis, parse_flag
from scheduler.cli.group import EXIT_FAILED, InputError, cli
from scheduler.cli.helpers import (
    TABLE_COLUMNS,
    FiniteFloat,
    find_sweep,
    group_columns,
    grouped_table_options,
    not_over_the_database,
    pass_settings,
    reading,
    reading_sweep,
    styled,
    table_width,
)
from scheduler.specfile import SweepSpecError
from store.reads import SORT_COLUMNS, JobQuery, list_jobs, loss_curves, stream_jobs
from store.records import CANCELLED, FAILED, STATUSES
from store.rows import JOB_COLUMNS
from store.sweeps import list_sweeps
from worker.settings import Settings

RESULT_FORMATS = (*report.FORMATS, "parquet")
#: ``polyfit best``'s table: the best-job columns, then which job and its fitted formula.
BEST_COLUMNS = (*names(shown="best"), "id", "formula")


def _listed(choices):
    """A callback for a repeatable option whose values are comma-separated lists of choices."""

    def callback(ctx, param, values) -> tuple[str, ...]:
        items = [item.strip() for value in values for item in value.split(",")]
        for item in items:
            if item not in choices:
                raise click.BadParameter(f"{item!r} is not one of {', '.join(choices)}")
        return tuple(dict.fromkeys(items))

    return callback


def _degrees(ctx, param, values) -> tuple[int, ...]:
    if not values:
        return ()
    try:
        return tuple(parse_axis("degree", [i for v in values for i in parse_flag("degree", v)]))
    except SweepSpecError as e:
        raise click.BadParameter(str(e)) from e


# -- queries -----------------------------------------------------------------------------------

# Seconds between progress lines of ``status --watch`` when the output is not a terminal.
LINE_EVERY_S = 5.0


@cli.command()
@click.argument("sweep_ref", metavar="[SWEEP]", required=False)
@click.option("--wait", is_flag=True, help="Block until the sweep has ended.")
@click.option("--watch", is_flag=True,
              help="Show live progress until the sweep has ended: redrawn in place on a "
                   "terminal, a line every few seconds otherwise (one JSON object a line "
                   "with --json).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--format", "fmt", type=click.Choice(("text", "json")), default=None,
              help="text (a line for people) or json (for scripts; as --json). [default: text]")
@click.option("--interval", type=FiniteFloat(0.05, 3600), default=None,
              help="Seconds between polls. [default: 1; with --watch off a terminal, "
                   f"{LINE_EVERY_S:g}]")
@pass_settings()
def status(settings: Settings, sweep_ref, wait, watch, as_json, fmt, interval) -> None:
    """Counts per status, throughput and ETA of a sweep (the latest when omitted)."""
    if as_json and fmt == "text":
        raise InputError("--json and --format text ask for two formats: give one")
    as_json = as_json or fmt == "json"
    engine = reading(settings)
    target = find_sweep(engine, sweep_ref)
    hinted = unserved_hinted = False

    def hint(p: queries.Progress) -> None:
        nonlocal hinted, unserved_hinted
        if p.idle_s is not None and not hinted:
            click.echo("note: " + report.idle_hint(target.name, p.idle_s), err=True)
            hinted = True
        if p.unserved and not unserved_hinted:
            click.echo("note: " + report.unserved_hint(p.unserved), err=True)
            unserved_hinted = True

    if watch:
        p = _watch(engine, target, as_json, interval, hint)
    else:
        interval = interval or 1.0
        while True:  # --wait blocks without drawing anything (but says if nothing serves it)
            p = queries.progress(engine, target)
            hint(p)
            if p.done or not wait:
                break
            time.sleep(interval)
        if as_json:
            click.echo(json.dumps(p.to_dict()))
        else:
            click.echo(_status_line(p))
    if (wait or watch) and (p.counts.get(FAILED) or p.counts.get(CANCELLED)):
        if p.counts.get(CANCELLED):
            click.echo(f"note: {report.plural(p.counts[CANCELLED], 'job')} of the sweep "
                       "cancelled (`polyfit sweep resume` trains them)", err=True)
        raise click.exceptions.Exit(EXIT_FAILED)


def _status_line(p: queries.Progress) -> str:
    line = f"sweep {p.name} ({p.sweep_id}): " + report.progress_line(
        p.counts, p.total, p.fits_per_s, p.eta_s, p.idle_s, p.running_done)
    if p.unserved:
        line += f" | no worker for {', '.join(p.unserved)}"
    return line + report.phase_detail(p.to_dict())


def _watch(engine, target, as_json: bool, interval: float | None, hint) -> queries.Progress:
    """Poll until the sweep has ended. On a terminal a progress bar is redrawn in place;
    otherwise one line a poll (one JSON object a line with --json)."""
    tty = sys.stdout.isatty() and not as_json
    interval = interval or (1.0 if tty else LINE_EVERY_S)
    with LiveProgress(sys.stdout, terminal=tty, every_s=0,
                      label=f"sweep {target.name} ({target.id})") as live:
        while True:
            p = queries.progress(engine, target)
            if as_json:
                click.echo(json.dumps(p.to_dict()))
            else:
                live.show(p, last=p.done)
                if not tty:
                    hint(p)
            if p.done:
                return p
            time.sleep(interval)


@cli.command()
@click.option("--tag", "tags", multiple=True, metavar="LIST",
              help="Only sweeps with every one of these tags (comma-separated, repeatable).")
@click.option("--format", "fmt", type=click.Choice(report.FORMATS), default="table",
              show_default=True)
@pass_settings()
def sweeps(settings: Settings, tags, fmt) -> None:
    """Every sweep in the database: id, name, created_at, jobs, ended, failed, best mse, and
    its tags and note."""
    from store.manage import SweepChangeRefused, checked_tags, labels_of

    try:
        wanted = set(checked_tags(tags))
    except SweepChangeRefused as e:
        raise InputError(f"--tag: {e}") from None
    engine = reading(settings)
    labels = labels_of(engine)
    rows = []
    for summary in list_sweeps(engine):
        tagged, note = labels.get(summary.id, ([], ""))
        if wanted <= set(tagged):
            shown = tagged if fmt == "json" else (",".join(tagged) or None)
            rows.append({**summary.to_dict(), "tags": shown, "note": note or None})
    click.echo(report.render(rows, SWEEP_COLUMNS, fmt, styled(), table_width()))


SWEEP_COLUMNS = ("id", "name", "created_at", "jobs", "ended", "failed", "best_mse", "tags",
                 "note")


@cli.command()
@click.argument("sweep_ref", metavar="[SWEEP]", required=False)
@click.option("--variant", "variants_", multiple=True, metavar="LIST",
              callback=_listed(list(VARIANTS)),
              help=f"Only these variants, comma-separated, repeatable ({', '.join(VARIANTS)}).")
@click.option("--status", "statuses", multiple=True, metavar="LIST", callback=_listed(STATUSES),
              help=f"Only jobs in these states, comma-separated, repeatable "
                   f"({', '.join(STATUSES)}).")
@click.option("--degree", "degrees", multiple=True, metavar="LIST", callback=_degrees,
              help="Only these degrees, comma-separated, repeatable; ranges like 3-5 allowed.")
@click.option("--lr-min", type=FiniteFloat(), default=None, help="Only jobs with lr >= this.")
@click.option("--lr-max", type=FiniteFloat(), default=None, help="Only jobs with lr <= this.")
@click.option("--sort", default="mse", show_default=True,
              type=click.Choice(SORT_COLUMNS), help="Column to sort by.")
@click.option("--desc", is_flag=True, help="Sort descending.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many rows.")
@click.option("--format", "fmt", type=click.Choice(RESULT_FORMATS), default="table",
              show_default=True,
              help="csv, json and parquet stream the rows (memory stays flat on a sweep of "
                   "millions); parquet needs -o FILE and pyarrow (polyfit[arrow]).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write to this file instead of stdout.")
@pass_settings()
def results(settings: Settings, sweep_ref, variants_, statuses, degrees, lr_min, lr_max, sort,
            desc, limit, fmt, output) -> None:
    """The jobs of a sweep (the latest when omitted)."""
    not_over_the_database(output, settings)
    engine = reading(settings)
    target = find_sweep(engine, sweep_ref)
    query = JobQuery(variants=variants_, statuses=statuses, degrees=degrees,
                                lr_min=lr_min, lr_max=lr_max, sort=sort, descending=desc,
                                limit=limit)
    if fmt == "table":
        rows = list_jobs(engine, target.id, **query.__dict__)
        to_screen = output is None
        text = report.render([r.to_dict() for r in rows], TABLE_COLUMNS, fmt,
                             styled() and to_screen, table_width() if to_screen else None)
        # A table for people says whose jobs it shows (the latest sweep is not always the
        # one a user thinks of); csv, json and parquet carry sweep_id in every row.
        title = f"jobs of sweep {target.name} ({target.id}), by {sort}:"
        _write_text(f"{title}\n{text}\n", output)
        return
    rows = stream_jobs(engine, target.id, query)
    if fmt == "parquet":
        if output is None:
            raise InputError("--format parquet writes a file: give -o FILE.parquet")
        with export.output_path(output) as where:  # an ExportError is bad input
            export.write_parquet(rows, where)
        return
    write = export.write_csv if fmt == "csv" else export.write_json
    if output is None:
        write(rows, sys.stdout)
        return
    with export.output_text(output) as out:
        write(rows, out)


def _write_text(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    with export.output_text(output) as out:
        out.write(text)


@cli.command()
@click.argument("sweep_ref", metavar="[SWEEP]", required=False)
@grouped_table_options
@pass_settings()
def best(settings: Settings, sweep_ref, by_text, fmt) -> None:
    """The best job (lowest mse) per group, with its gap to the least-squares optimum."""
    by = group_columns(by_text)
    engine = reading(settings)
    target = find_sweep(engine, sweep_ref)
    rows = queries.best_per_group(engine, target.id, by)
    if fmt == "table":
        columns = list(by) + [c for c in BEST_COLUMNS if c not in by]
        click.echo(f"best results of sweep {target.name} ({target.id}), lowest mse per "
                   f"{', '.join(by)}:")
    else:
        columns = [*JOB_COLUMNS, "gap", "formula"]
    click.echo(report.render(rows, columns, fmt, styled(), table_width()))


@cli.command()
@click.argument("job_ref", metavar="JOB")
@click.argument("sweep_ref", metavar="[SWEEP]", required=False)
@click.option("--format", "fmt", type=click.Choice(("text", "json")), default="text",
              show_default=True)
@pass_settings()
def job(settings: Settings, job_ref, sweep_ref, fmt) -> None:
    """One job in detail: its settings, its outcome, its fitted polynomial and loss curve (JOB
    is its id, or the start of it; SWEEP the latest when omitted)."""
    engine = reading(settings)
    target = find_sweep(engine, sweep_ref)
    found = [j for j in list_jobs(engine, target.id, sort="id")
             if j.id.startswith(job_ref)]
    if len(found) != 1:
        raise InputError(f"no job {job_ref!r} in sweep {target.name}" if not found else
                         f"{job_ref!r} names {len(found)} jobs of sweep {target.name}: give "
                         "more of the id")
    row = queries.described(found[0])
    curve = loss_curves(engine, target.id, [found[0].id])[found[0].id]
    if fmt == "json":
        click.echo(json.dumps({**report.json_ready(row), "loss_curve": curve}, indent=1))
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        click.echo(f"{key.ljust(width)}  {report.cell(value)}")
    if curve:
        shown = curve[:: max(1, len(curve) // 8)]
        points = ", ".join(f"{e}: {report.cell(loss)}" for e, loss in shown)
        click.echo(f"{'loss_curve'.ljust(width)}  {len(curve)} points (epoch: loss) {points}")


@cli.command()
@click.argument("sweep_ref", metavar="[SWEEP]", required=False)
@click.option("-o", "--output", "output", required=True, metavar="FILE.png",
              type=click.Path(dir_okay=False, writable=True),
              help="Where to write the figure (.png, .svg or .pdf).")
@click.option("--kind", type=click.Choice(("fits", "importance", "history", "parallel")),
              default="fits", show_default=True,
              help="fits: curves, losses and a lr x degree map; importance: each axis's "
                   "importance for mse (Optuna); history: best mse over trials; parallel: "
                   "parallel coordinates coloured by mse.")
@pass_settings()
def plot(settings: Settings, sweep_ref, output, kind) -> None:
    """Fitted curves against the target, loss curves, and a lr x degree map of the mse (or,
    with --kind, a search's figures)."""
    from polyfit_results.plot import save_plot

    not_over_the_database(output, settings)
    with reading_sweep(settings, sweep_ref) as (engine, target):
        path = save_plot(engine, target, output, kind)
    click.echo(f"sweep {target.name}: plot written to {path}")
