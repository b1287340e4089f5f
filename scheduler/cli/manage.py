"""The commands that manage sweeps as a tuning tool's user expects: ``sweep rename``, ``sweep
delete``, ``sweep tag``, ``sweep note``, and ``compare`` (two sweeps' best results side by side,
as the dashboard's compare page shows them)."""

from __future__ import annotations

import sys

import click

from polyfit_results import queries, report
from scheduler.cli.group import InputError, cli
from scheduler.cli.helpers import (
    changing,
    find_sweep,
    group_columns,
    grouped_table_options,
    pass_settings,
    reading,
    styled,
    table_width,
)
from scheduler.cli.sweeps import sweep
from scheduler.plan import sweep_id_of
from scheduler.specfile import SweepSpecError, check_name
from store.manage import (
    SweepChangeRefused,
    delete_sweep,
    label_sweep,
    rename_sweep,
)
from worker.settings import Settings


def _refused(e: SweepChangeRefused | SweepSpecError, name: str) -> InputError:
    return InputError(f"sweep {name}: {e}")


@sweep.command("rename")
@click.argument("sweep_ref", metavar="SWEEP")
@click.argument("new_name", metavar="NEW_NAME")
@pass_settings()
def sweep_rename(settings: Settings, sweep_ref, new_name) -> None:
    """Give a sweep another name (and the id that name makes: running a spec under the new
    name grows it). Refused while jobs of it are queued or running."""
    engine = changing(settings)
    target = find_sweep(engine, sweep_ref)
    try:
        new_name = check_name(new_name)
        rename_sweep(engine, target.id, sweep_id_of(new_name), new_name)
    except (SweepChangeRefused, SweepSpecError) as e:
        raise _refused(e, target.name) from None
    click.echo(f"sweep {target.name} ({target.id}) is now {new_name} ({sweep_id_of(new_name)})")


@sweep.command("delete")
@click.argument("sweep_ref", metavar="SWEEP")
@click.option("--yes", is_flag=True, help="Do not ask (needed when not on a terminal).")
@pass_settings()
def sweep_delete(settings: Settings, sweep_ref, yes) -> None:
    """Delete a sweep with its jobs and loss curves. Refused while it runs."""
    engine = changing(settings)
    target = find_sweep(engine, sweep_ref)
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(f"deleting sweep {target.name} loses its results: give --yes")
        click.confirm(f"delete sweep {target.name} ({target.id}) and every result of it?",
                      abort=True, err=True)
    try:
        gone = delete_sweep(engine, target.id)
    except SweepChangeRefused as e:
        raise _refused(e, target.name) from None
    click.echo(f"sweep {target.name} ({target.id}) deleted with "
               f"{report.plural(gone, 'job')}")


@sweep.command("tag")
@click.argument("sweep_ref", metavar="SWEEP")
@click.argument("tags", nargs=-1, required=True, metavar="TAG...")
@click.option("--remove", is_flag=True, help="Remove these tags instead of adding them.")
@pass_settings()
def sweep_tag(settings: Settings, sweep_ref, tags, remove) -> None:
    """Add tags to a sweep (or remove them); `polyfit sweeps --tag T` lists the tagged."""
    engine = changing(settings)
    target = find_sweep(engine, sweep_ref)
    try:
        now, _ = (label_sweep(engine, target.id, remove=tags) if remove
                  else label_sweep(engine, target.id, add=tags))
    except SweepChangeRefused as e:
        raise _refused(e, target.name) from None
    click.echo(f"sweep {target.name}: tags {', '.join(now) if now else '(none)'}")


@sweep.command("note")
@click.argument("sweep_ref", metavar="SWEEP")
@click.argument("text", metavar="TEXT")
@pass_settings()
def sweep_note(settings: Settings, sweep_ref, text) -> None:
    """Set the free-text note of a sweep ("" clears it)."""
    engine = changing(settings)
    target = find_sweep(engine, sweep_ref)
    try:
        _, note = label_sweep(engine, target.id, note=text)
    except SweepChangeRefused as e:
        raise _refused(e, target.name) from None
    click.echo(f"sweep {target.name}: note {note!r}" if note else
               f"sweep {target.name}: note cleared")


COMPARED = ("mse", "gap", "lr", "degree", "status")


@cli.command()
@click.argument("first_ref", metavar="SWEEP_A")
@click.argument("second_ref", metavar="SWEEP_B")
@grouped_table_options
@pass_settings()
def compare(settings: Settings, first_ref, second_ref, by_text, fmt) -> None:
    """Two sweeps' best jobs per group side by side, with the ratio of their mse (B / A)."""
    by = group_columns(by_text)
    engine = reading(settings)
    a, b = find_sweep(engine, first_ref), find_sweep(engine, second_ref)
    best = [{tuple(r[c] for c in by): r for r in queries.best_per_group(engine, s.id, by)}
            for s in (a, b)]
    rows = []
    for key in sorted(set(best[0]) | set(best[1]), key=lambda k: tuple(map(str, k))):
        row = dict(zip(by, key))
        for side, found in zip("ab", best):
            got = found.get(key, {})
            row.update({f"{c}_{side}": got.get(c) for c in COMPARED if c not in by})
        ma, mb = row.get("mse_a"), row.get("mse_b")
        row["mse_b/a"] = mb / ma if ma and mb is not None else None
        rows.append(row)
    columns = [*by, *(f"{c}_{side}" for c in COMPARED if c not in by for side in "ab"),
               "mse_b/a"]
    if fmt == "table":
        click.echo(f"best results per {', '.join(by)}: A = sweep {a.name} ({a.id}), "
                   f"B = sweep {b.name} ({b.id})")
    click.echo(report.render(rows, columns, fmt, styled(), table_width()))
