"""The commands that change what is recorded or set the database up: ``cancel`` and ``db
create-reader``."""

from __future__ import annotations

import shlex

import click

from polyfit_results.report import plural
from scheduler.cli.group import InputError, cli
from scheduler.cli.helpers import changing, find_sweep, pass_settings
from store.reader import READER_ROLE, create_reader_role, shareable_url
from store.requeue import cancel_sweep
from worker.settings import Settings


@cli.command()
@click.argument("sweep_ref", metavar="SWEEP")
@pass_settings()
def cancel(settings: Settings, sweep_ref) -> None:
    """Cancel what has not run yet; running jobs finish."""
    engine = changing(settings)
    target = find_sweep(engine, sweep_ref)
    n = cancel_sweep(engine, target.id)
    click.echo(f"sweep {target.name}: {plural(n, 'job')} cancelled")


@cli.group()
def db() -> None:
    """Set up the results database."""


@db.command("create-reader")
@click.option("--role", default=READER_ROLE, show_default=True,
              help="Name of the read-only login role.")
@click.option("--password", default=None, metavar="TEXT",
              help="Give the role this password (the POLYFIT_SQL_URL line it prints holds it). "
                   "[default: none: the server must trust the host, or the password is set "
                   "by hand]")
@pass_settings()
def create_reader(settings: Settings, role, password) -> None:
    """Create the read-only PostgreSQL role that `polyfit sql` logs in as (once, as an account
    that may create roles; running it again repairs the role)."""
    if not settings.db_url.startswith(("postgresql", "postgres")):
        raise InputError("polyfit db create-reader is for PostgreSQL; on SQLite `polyfit sql` "
                         "opens the file read-only and needs no role")
    url = create_reader_role(settings.db_url, role, password)
    click.echo(f"role {role}: can read polyfit's tables and views, and nothing else")
    if role != READER_ROLE or password is not None:
        if password is not None:  # the one the user typed: the line must work as printed
            url = shareable_url(url, password)
        click.echo("polyfit sql finds it with: export POLYFIT_SQL_URL=" + shlex.quote(url))
    else:
        click.echo(f"polyfit sql logs in as it by itself ({url})")
