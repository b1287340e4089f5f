"""``polyfit export-optuna``: a sweep written as an Optuna study (``polyfit_results.studies``),
for ``optuna.load_study`` and optuna-dashboard. It reads the results database only."""

from __future__ import annotations

import click

from scheduler.cli.group import cli
from scheduler.cli.helpers import not_the_database, pass_settings, reading_sweep
from worker.settings import Settings


@cli.command("export-optuna")
@click.argument("sweep_ref", metavar="SWEEP")
@click.option("--storage", required=True, metavar="URL",
              help="The Optuna storage to write the study to (e.g. sqlite:///optuna.db).")
@click.option("--study-name", default=None, metavar="NAME",
              help="The study's name. [default: the sweep's name]")
@pass_settings()
def export_optuna(settings: Settings, sweep_ref, storage, study_name) -> None:
    """Write a sweep as an Optuna study: distributions, params, mse values, loss curves as
    intermediate values."""
    from polyfit_results.studies import export_study

    not_the_database(storage, settings, "--storage")
    with reading_sweep(settings, sweep_ref) as (engine, target):
        n = export_study(engine, target, storage, study_name)
    click.echo(f"sweep {target.name}: {n} trials written to the study "
               f"{study_name or target.name!r}")
