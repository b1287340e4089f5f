"""The commands that read a sweep's results: status, results, sql, cancel. Registered on the
``polyfit`` group defined in ``scheduler.cli``."""

from __future__ import annotations

import json
import time

import click

from polyfit_models import VARIANTS
from scheduler import queries, report
from scheduler.cli import (
    EXIT_FAILED,
    TABLE_COLUMNS,
    InputError,
    _engine,
    _settings,
    _sweep,
    cli,
    db_option,
)
from store import StoreError
from store import jobs as store_jobs
from store.records import STATUSES


@cli.command()
@click.argument("sweep_ref", metavar="SWEEP")
@db_option
def cancel(sweep_ref, db_url) -> None:
    """Cancel what has not run yet; running jobs finish."""
    settings = _settings(db_url)
    engine = _engine(settings)
    target = _sweep(engine, sweep_ref)
    n = store_jobs.cancel_sweep(engine, target.id)
    click.echo(f"sweep {target.name}: {n} jobs cancelled")


# -- queries -----------------------------------------------------------------------------------

@cli.command()
@click.argument("sweep_ref", metavar="[SWEEP]", required=False)
@click.option("--wait", is_flag=True, help="Block until the sweep has ended.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Seconds between polls with --wait.")
@db_option
def status(sweep_ref, wait, as_json, interval, db_url) -> None:
    """Counts per status, throughput and ETA of a sweep (the latest when omitted)."""
    settings = _settings(db_url)
    engine = _engine(settings)
    target = _sweep(engine, sweep_ref)
    while True:
        p = queries.progress(engine, target)
        if p.done or not wait:
            break
        if not as_json:
            click.echo(report.progress_line(p.counts, p.total, p.fits_per_s, p.eta_s), err=True)
        time.sleep(interval)
    if as_json:
        click.echo(json.dumps(p.to_dict()))
    else:
        click.echo(f"sweep {p.name} ({p.sweep_id}): "
                   + report.progress_line(p.counts, p.total, p.fits_per_s, p.eta_s))
    if wait and p.counts.get("failed"):
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@click.argument("sweep_ref", metavar="[SWEEP]", required=False)
@click.option("--variant", "variants_", multiple=True, type=click.Choice(list(VARIANTS)),
              help="Only these variants (repeatable).")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
              help="Only jobs in these states (repeatable).")
@click.option("--degree", "degrees", multiple=True, type=int, help="Only these degrees.")
@click.option("--lr-min", type=float, default=None, help="Only jobs with lr >= this.")
@click.option("--lr-max", type=float, default=None, help="Only jobs with lr <= this.")
@click.option("--sort", default="mse", show_default=True,
              type=click.Choice(store_jobs.JOB_COLUMNS), help="Column to sort by.")
@click.option("--desc", is_flag=True, help="Sort descending.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many rows.")
@click.option("--format", "fmt", type=click.Choice(report.FORMATS), default="table",
              show_default=True)
@db_option
def results(sweep_ref, variants_, statuses, degrees, lr_min, lr_max, sort, desc, limit, fmt,
            db_url) -> None:
    """The jobs of a sweep (the latest when omitted)."""
    settings = _settings(db_url)
    engine = _engine(settings)
    target = _sweep(engine, sweep_ref)
    rows = store_jobs.list_jobs(engine, target.id, variants=variants_, statuses=statuses,
                                degrees=degrees, lr_min=lr_min, lr_max=lr_max, sort=sort,
                                descending=desc, limit=limit)
    columns = TABLE_COLUMNS if fmt == "table" else store_jobs.JOB_COLUMNS
    click.echo(report.render([r.to_dict() for r in rows], columns, fmt))


@cli.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(report.FORMATS), default="table",
              show_default=True)
@db_option
def sql(query, fmt, db_url) -> None:
    """A read-only SQL query on the results database."""
    settings = _settings(db_url)
    try:
        columns, rows = queries.run_sql(settings.db_url, query)
    except queries.QueryError as e:
        raise InputError(str(e)) from e
    except StoreError as e:
        raise InputError(str(e)) from e
    click.echo(report.render(rows, columns, fmt))
