"""What the commands share: the setting options (``--db``, ``--broker``) with the decorators that
turn them into one ``Settings`` object, the doors into the results database (read-only for the
commands that read), the sweep lookup, the table layout and ``--by`` of the read commands, and
the options that define a sweep (SPEC.yaml, the axis flags, ``--name``, ``--batch-size``).
Nothing here imports the command modules."""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from sqlalchemy import Engine

from polyfit_models.fields import names
from polyfit_results import queries, report
from scheduler.axes import AXES, RANGE_AXES, parse_flag
from scheduler.cli.group import InputError
from scheduler.plan import Plan, build_plan
from scheduler.specfile import load_spec_file
from store import make_engine
from store import sweeps as store_sweeps
from store.db import ENV_DB, StoreError, shared_engine, sqlite_path
from store.reader import open_results
from store.rows import SweepRow
from store.sweeps import sweep_names
from worker.search import SAMPLERS
from worker.settings import ENV_BROKER, Settings

#: The axes whose flags take integer ranges (``0-9``).
INT_RANGES = names(ranged=True, type=int)
#: The columns of ``polyfit results`` as a table (the other formats carry every column).
TABLE_COLUMNS = names(shown="results")


class FiniteFloat(click.ParamType):
    """A number option that must be finite (and within ``low``..``high`` if given): ``nan``,
    which no comparison matches, passes click's FloatRange and would filter nothing silently
    or reach ``time.sleep``."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.low is not None and number < self.low) or (
                self.high is not None and number > self.high):
            self.fail(f"{value!r} is not in {self.low:g}..{self.high:g}", param, ctx)
        return number + 0.0


def db_option(f):
    return click.option("--db", "db_url", envvar=ENV_DB, default=None, metavar="URL",
                        help="Results database (any SQLAlchemy URL). "
                             "[default: sqlite:///polyfit.sqlite]")(f)


def broker_option(f):
    return click.option("--broker", "broker", envvar=ENV_BROKER, default=None, metavar="URL",
                        help="Broker URL, e.g. redis://HOST:6379/0. "
                             "[default: embedded, next to the database, no server]")(f)


def pass_settings(broker: bool = False):
    """Give the command ``--db`` (and ``--broker``) and pass it the one ``Settings`` object
    built from them and the environment, as its first argument."""

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, db_url=None, broker=None, **kwargs):
            return f(Settings.from_env(db_url=db_url, broker=broker), *args, **kwargs)

        wrapper = db_option(wrapper)
        return broker_option(wrapper) if broker else wrapper

    return decorate


def reading(settings: Settings) -> Engine:
    """The results database of a command that only reads it: opened read-only, never created
    or changed (a foreign or missing file is bad input, exit 2, and is left as it was)."""
    return open_results(settings.db_url)


def changing(settings: Settings) -> Engine:
    """The results database of a command that changes existing sweeps (cancel, resume): it
    must already be a polyfit database; nothing is created in a foreign file."""
    reading(settings).dispose()
    return make_engine(settings.db_url)


def not_over_the_database(output: str | None, settings: Settings) -> None:
    """Refuse (exit 2) an output file that is the results database, one of its side files
    (-wal, -shm, -journal) or the embedded broker's file: the output is written whole and then
    renamed over the target, which would replace every result (``results -o polyfit.sqlite``).
    Compared by name and, for a file that exists, by identity (a link, another path to it);
    the files are never opened here (see ``store.reader._tidy_uri`` for why)."""
    if output is None:
        return
    kept = []
    for url in (settings.db_url, settings.broker_url):
        try:
            path = sqlite_path(url.replace("sqla+sqlite", "sqlite", 1))
        except StoreError:  # not a database URL (a broker's): nothing to keep
            continue
        if path is not None:
            kept += [path, *(path.with_name(path.name + side)
                             for side in ("-wal", "-shm", "-journal"))]
    target = Path(output).expanduser()
    for path in kept:
        same = Path(os.path.realpath(target)) == Path(os.path.realpath(path))
        try:
            same = same or os.path.samefile(target, path)
        except OSError:  # one of them does not exist
            pass
        if same:
            raise InputError(f"{output} is the results database's own file ({path}): writing "
                             "it would replace every result; give another file")


def not_the_database(url: str, settings: Settings, what: str) -> None:
    """Refuse (exit 2) a database URL that another program writes its own tables into (an
    Optuna storage) when it is the results database or the embedded broker's: a SQLite file
    compared as ``not_over_the_database`` does, a server by host, port, database and options.
    Optuna's tables there mixed with polyfit's (both have a ``trials`` table)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        given = make_url(url)
    except (ArgumentError, ValueError):  # not a URL: the one who opens it says so
        return
    if given.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            try:
                not_over_the_database(str(path), settings)
            except InputError:
                raise InputError(f"{what}: {url} is the results database (or its broker's): "
                                 "its tables would mix with polyfit's; give another "
                                 "database") from None
        return
    try:
        ours = make_url(settings.db_url)
    except (ArgumentError, ValueError):
        return

    def where(u) -> tuple:
        return u.get_backend_name(), u.host, u.port or 5432, u.database, dict(u.query)

    if where(given) == where(ours):
        raise InputError(f"{what}: it is the results database: its tables would mix with "
                         "polyfit's; give another database (or another schema in options)")


def find_sweep(engine: Engine, ref: str | None) -> SweepRow:
    """The sweep SWEEP names (an id or a name; the latest when None), or exit 2 with the
    names that come close ("did you mean")."""
    sweep = store_sweeps.find_sweep(engine, ref)
    if sweep is not None:
        return sweep
    if not ref:
        raise InputError("no sweep recorded yet")
    close = difflib.get_close_matches(ref, sweep_names(engine), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else (
        " (`polyfit sweeps` lists them)")
    raise InputError(f"no sweep {ref!r}{hint}")


@contextlib.contextmanager
def reading_sweep(settings: Settings, ref: str | None) -> Iterator[tuple[Engine, SweepRow]]:
    """The results database opened read-only and the sweep SWEEP names, for a command that
    hands both to the read side; the database is closed at the end."""
    engine = reading(settings)
    try:
        yield engine, find_sweep(engine, ref)
    finally:
        engine.dispose()


def styled() -> bool:
    """Tables with a bold header and a rule on a terminal; plain text for pipes and files."""
    return sys.stdout.isatty()


def table_width() -> int | None:
    """A table on a terminal fits its width; piped or written to a file, it keeps every
    column."""
    return report.terminal_width(sys.stdout)


def group_columns(text: str) -> list[str]:
    """The job settings ``--by`` names (of ``best`` and ``compare``), checked."""
    by = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in by if c not in queries.GROUP_COLUMNS]
    if not by or unknown:
        raise InputError(f"--by takes a comma-separated list of "
                         f"{', '.join(queries.GROUP_COLUMNS)}; got {text!r}")
    return list(dict.fromkeys(by))


def grouped_table_options(f):
    """--by (the groups of the best jobs) and --format, of ``best`` and ``compare``."""
    f = click.option("--format", "fmt", type=click.Choice(report.FORMATS), default="table",
                     show_default=True)(f)
    return click.option("--by", "by_text", default="variant", show_default=True,
                        metavar="COLS", help="Group by these job settings, comma-separated "
                        f"({', '.join(queries.GROUP_COLUMNS)}).")(f)


# -- what defines a sweep -----------------------------------------------------------------------

def axis_options(f):
    for axis in reversed(AXES):  # from the job's declaration
        # A two-word setting's flag is spelled with a dash, as every other flag.
        f = click.option(f"--{axis.replace('_', '-')}", f"axis_{axis}", multiple=True,
                         metavar="LIST",
                         help=f"Comma-separated {axis} values (repeatable); overrides the file."
                         + (" Ranges like 0-9 allowed." if axis in INT_RANGES else "")
                         + (" Spaced values: log:START:STOP:NUM or linear:START:STOP:NUM."
                            if axis in RANGE_AXES else ""))(f)
    return f


def sweep_inputs(f):
    """What defines a sweep, for ``sweep submit`` and ``sweep run``: SPEC.yaml, the axis flags
    and --name."""
    f = click.option("--stop-at-gap", default=None, metavar="GAP",
                     help="Stop a job early once its mse is within GAP of the least-squares "
                          "optimum (mse - optimum_mse <= GAP); it records the epoch and counts "
                          "as succeeded.")(f)
    f = click.option("--halving", "halving", default=None, metavar="ETA:MIN_EPOCHS",
                     help="Successive halving over epochs: every job trains MIN_EPOCHS, the "
                          "best 1/ETA of each rung continue to ETA times as many epochs (up "
                          "to their own), the others end pruned.")(f)
    f = click.option("--round", "search_round", type=click.IntRange(1, 100_000), default=None,
                     help="A search asks its sampler for this many jobs at once.")(f)
    f = click.option("--trials", "search_trials", type=click.IntRange(1, 100_000),
                     default=None, help="A search asks for this many jobs in all.")(f)
    f = click.option("--sampler", "search_sampler",
                     type=click.Choice(SAMPLERS), default=None,
                     help="Search instead of enumerating: Optuna's sampler asks for the jobs, "
                          "round by round (a range without num is continuous).")(f)
    f = click.option("--sample", default=None, metavar="N[:SEED]",
                     help="Train N jobs drawn at random (without repeats; seed 0 unless "
                          "given) from the grid instead of all of it.")(f)
    f = click.option("--fresh", is_flag=True,
                     help="Train every job again, even where this database has a result for "
                          "the same settings.")(f)
    f = click.option("--name", default=None,
                     help="Sweep name (default: the spec's name or file name). Running a "
                          "spec again under the same name grows that sweep.")(f)
    f = axis_options(f)
    return click.argument("spec_path", metavar="[SPEC.yaml]", required=False,
                          type=click.Path(dir_okay=False))(f)


def label_options(f):
    """--tag and --note of ``sweep submit`` and ``sweep run`` (checked before anything is
    recorded)."""
    from store.manage import SweepChangeRefused, checked_tags

    def _tags(_ctx, _param, value):
        try:
            return checked_tags(value)
        except SweepChangeRefused as e:
            raise InputError(f"--tag: {e}") from None

    f = click.option("--note", default=None, metavar="TEXT",
                     help="A free-text note on the sweep (shown by `polyfit sweeps`).")(f)
    return click.option("--tag", "tags", multiple=True, metavar="LIST", callback=_tags,
                        help="Tag the sweep (comma-separated, repeatable); `polyfit sweeps "
                             "--tag T` lists the sweeps tagged T.")(f)


def apply_labels(settings: Settings, sweep_id: str, tags: list[str], note: str | None) -> None:
    """Give a sweep just recorded the --tag and --note it was submitted with."""
    if not tags and note is None:
        return
    from store.manage import label_sweep

    engine = shared_engine(settings.db_url)
    label_sweep(engine, sweep_id, add=tags, note=note)


def batch_size_option(f):
    return click.option("--batch-size", type=click.IntRange(1, 65536), default=None,
                        help="Jobs per task. [default: from a memory budget per device]")(f)


def make_plan(spec_path: str | None, axes: dict, name: str | None, settings: Settings,
              sample: str | None = None, stop_at_gap: str | None = None) -> Plan:
    """The sweep a spec file and axis flags define, within the settings' limits."""
    raw = load_spec_file(spec_path) if spec_path else None
    overrides = {}
    for axis in AXES:
        values = axes.get(f"axis_{axis}") or ()
        if values:
            overrides[axis] = [item for v in values for item in parse_flag(axis, v)]
    default_name = Path(spec_path).stem if spec_path else "sweep"
    plan = build_plan(raw, overrides, name=name, default_name=default_name,
                      max_jobs=settings.max_jobs, max_job_work=settings.max_job_work,
                      memory_budget=settings.budget_bytes, sample=sample,
                      stop_at_gap=stop_at_gap,
                      search={"sampler": axes.get("search_sampler"),
                              "trials": axes.get("search_trials"),
                              "round": axes.get("search_round")},
                      halving=axes.get("halving"))
    for reason in plan.skipped:
        click.echo(f"left out: {reason}", err=True)
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    return plan
