"""The ``polyfit`` command line (Click). Settings come from flags and environment variables,
read once here and passed down. Every error ends as one line on stderr: exit 2 for bad usage or
input, exit 1 when the work ran but something failed or a server was unreachable."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from polyfit_models import VARIANTS, PolyfitModelError
from scheduler.sweep import AXES, SweepSpecError, build_plan, load_spec_file, parse_flag
from store import StoreError, make_engine
from store import jobs as store_jobs
from store.db import redact_url
from store.reader import NotResultsDatabase, open_results
from worker.settings import ENV_BROKER, ENV_DB, Settings, SettingsError

EXIT_FAILED = 1
EXIT_USAGE = 2

TABLE_COLUMNS = ("id", "variant", "lr", "degree", "seed", "epochs", "optimizer", "device",
                 "status", "final_loss", "mse", "optimum_mse", "diverged_at_epoch", "duration_s")


class InputError(click.ClickException):
    """Raised when the user's input (a spec, a flag value, a name) is unusable: exit 2."""

    exit_code = EXIT_USAGE


class WorkFailed(click.ClickException):
    """Raised when the work ran but failed, or a server was unreachable: exit 1."""

    exit_code = EXIT_FAILED


def _one_line(text: str) -> str:
    """One line, with every password hidden: errors may quote URLs (malformed ones too)."""
    return redact_url(" ".join(str(text).split())) or "error"


class PolyfitGroup(click.Group):
    """A group whose errors are one line on stderr, never a usage dump or a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            click.echo(f"Error: {_one_line(e.format_message())}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as e:
            click.echo(f"Error: {_one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except (SweepSpecError, SettingsError, PolyfitModelError) as e:
            click.echo(f"Error: {_one_line(str(e))}", err=True)
            sys.exit(EXIT_USAGE)
        except StoreError as e:
            click.echo(f"Error: {_one_line(str(e))}", err=True)
            sys.exit(EXIT_FAILED)
        except Exception as e:  # noqa: BLE001 - the promise is: no traceback, ever
            click.echo(f"Error: internal error: {e.__class__.__name__}: {_one_line(str(e))}",
                       err=True)
            sys.exit(EXIT_FAILED)
        sys.exit(rv if isinstance(rv, int) else 0)


def db_option(f):
    return click.option("--db", "db_url", envvar=ENV_DB, default=None, metavar="URL",
                        help="Results database (any SQLAlchemy URL). "
                             "[default: sqlite:///polyfit.sqlite]")(f)


def broker_option(f):
    return click.option("--broker", "broker", envvar=ENV_BROKER, default=None, metavar="URL",
                        help="Broker URL, e.g. redis://HOST:6379/0. "
                             "[default: embedded, next to the database, no server]")(f)


def _settings(db_url: str | None, broker: str | None = None) -> Settings:
    try:
        return Settings.from_env(db_url=db_url, broker=broker)
    except SettingsError as e:
        raise InputError(str(e)) from e


def _engine(settings: Settings):
    """The results database of a command that only reads it: opened read-only, never created
    or changed (a foreign or missing file is bad input, exit 2, and is left as it was)."""
    try:
        return open_results(settings.db_url)
    except NotResultsDatabase as e:
        raise InputError(str(e)) from e


def _write_engine(settings: Settings):
    """The results database of a command that changes existing sweeps (cancel, resume): it
    must already be a polyfit database; nothing is created in a foreign file."""
    _engine(settings).dispose()
    return make_engine(settings.db_url)


def _sweep(engine, ref: str | None) -> store_jobs.SweepView:
    sweep = store_jobs.find_sweep(engine, ref)
    if sweep is None:
        raise InputError(f"no sweep {ref!r}" if ref else "no sweep recorded yet")
    return sweep


@click.group(cls=PolyfitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="polyfit")
def cli() -> None:
    """polyfit: sweep many small polynomial fits across CPU and GPU workers; results in SQL."""


@cli.command()
def variants() -> None:
    """List the model variants, one line each, with the axes each one uses."""
    width = max(len(n) for n in VARIANTS)
    for name, v in VARIANTS.items():
        d = v.defaults
        # The sweep axes it uses (the registry may know more, such as dtype, that no flag sets).
        axes = [a for a in AXES if a in v.axes or a in ("lr", "seed", "epochs")]
        click.echo(f"{name.ljust(width)}  {v.summary}  axes: {', '.join(axes)}  "
                   f"defaults: lr={d['lr']:g} degree={d['degree']} epochs={d['epochs']} "
                   f"optimizer={d['optimizer']}")


# -- sweeps ------------------------------------------------------------------------------------

def axis_options(f):
    for axis in reversed(AXES):
        f = click.option(f"--{axis}", f"axis_{axis}", multiple=True, metavar="LIST",
                         help=f"Comma-separated {axis} values (repeatable); overrides the file."
                         + (" Ranges like 0-9 allowed." if axis in ("seed", "degree") else ""))(f)
    return f


def _plan(spec_path: str | None, axes: dict, name: str | None, settings: Settings):
    raw = load_spec_file(spec_path) if spec_path else None
    overrides = {}
    for axis in AXES:
        values = axes.get(f"axis_{axis}") or ()
        if values:
            overrides[axis] = [item for v in values for item in parse_flag(axis, v)]
    default_name = Path(spec_path).stem if spec_path else "sweep"
    plan = build_plan(raw, overrides, name=name, default_name=default_name,
                      max_jobs=settings.max_jobs, max_job_work=settings.max_job_work,
                      memory_budget=settings.budget_bytes)
    for reason in plan.skipped:
        click.echo(f"left out: {reason}", err=True)
    return plan


def sweep_inputs(f):
    """What defines a sweep, for ``sweep submit`` and ``sweep run``: SPEC.yaml, the axis flags
    and --name."""
    f = click.option("--name", default=None,
                     help="Sweep name (default: the spec's name or file name).")(f)
    f = axis_options(f)
    return click.argument("spec_path", metavar="[SPEC.yaml]", required=False,
                          type=click.Path(dir_okay=False))(f)


def batch_size_option(f):
    return click.option("--batch-size", type=click.IntRange(1, 65536), default=None,
                        help="Jobs per task. [default: from a memory budget per device]")(f)


@cli.group()
def sweep() -> None:
    """Submit, run and resume sweeps."""


@sweep.command("submit")
@sweep_inputs
@batch_size_option
@db_option
@broker_option
def sweep_submit(spec_path, name, batch_size, db_url, broker, **axes) -> None:
    """Only enqueue the sweep; print its id as the last line of stdout."""
    from scheduler.submit import BrokerError, submit

    settings = _settings(db_url, broker)
    plan = _plan(spec_path, axes, name, settings)
    try:
        done = submit(settings, plan, batch_size=batch_size)
    except BrokerError as e:
        raise WorkFailed(f"{e} (the sweep is recorded; `polyfit sweep resume "
                         f"{plan.sweep_id}` enqueues it)") from e
    click.echo(f"sweep {plan.name}: {len(plan.jobs)} jobs ({done.new_jobs} new), "
               f"{done.enqueued_jobs} enqueued in {done.batches} batches")
    click.echo(plan.sweep_id)


@sweep.command("run")
@sweep_inputs
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Local worker processes. [default: one per core]")
@batch_size_option
@click.option("--top", type=click.IntRange(0, 1000), default=1, show_default=True,
              help="Best jobs to print per variant at the end.")
@db_option
@broker_option
def sweep_run(spec_path, name, workers, batch_size, top, db_url, broker, **axes) -> None:
    """Submit the sweep and run it to the end here with local workers."""
    from scheduler.run import run_sweep

    settings = _settings(db_url, broker)
    plan = _plan(spec_path, axes, name, settings)
    code = run_sweep(settings, plan, workers=workers, batch_size=batch_size, top=top)
    if code:
        raise click.exceptions.Exit(code)


@sweep.command("resume")
@click.argument("sweep_ref", metavar="SWEEP")
@click.option("--batch-size", type=click.IntRange(1, 65536), default=None,
              help="Jobs per task. [default: from a memory budget per device]")
@db_option
@broker_option
def sweep_resume(sweep_ref, batch_size, db_url, broker) -> None:
    """Re-enqueue only what is missing or failed."""
    from scheduler.submit import BrokerError, resume

    settings = _settings(db_url, broker)
    engine = _engine(settings)
    target = _sweep(engine, sweep_ref)
    engine.dispose()
    try:
        done = resume(settings, target.id, batch_size=batch_size)
    except BrokerError as e:
        raise WorkFailed(str(e)) from e
    click.echo(f"sweep {target.name}: {done.enqueued_jobs} jobs re-enqueued "
               f"in {done.batches} batches")
    click.echo(target.id)


# -- workers -----------------------------------------------------------------------------------

def _token(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-f]{8,32}", value):
        raise click.BadParameter("must be 8 to 32 lowercase hex digits")
    return value


@cli.command()
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda|cuda:N",
              help="The device this worker trains on.")
@click.option("--gpus", default=None, metavar="all|0,1,..",
              help="With --device cuda: one worker process per listed GPU.")
@click.option("--concurrency", type=click.IntRange(1, 512), default=None,
              help="CPU pool processes. [default: one per core]")
@click.option("--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--token", default=None, hidden=True,
              type=click.STRING, callback=lambda _c, _p, v: _token(v),
              help="The random part of the worker's identity (set by `sweep run` for its "
                   "local workers). [default: a new one]")
@db_option
@broker_option
def worker(device, gpus, concurrency, loglevel, token, db_url, broker) -> None:
    """A Celery worker pinned to its device(s); consumes the queues its device serves."""
    from worker import launch

    settings = _settings(db_url, broker)
    try:
        if device == "cpu":
            if gpus:
                raise InputError("--gpus needs --device cuda")
            launch.run_cpu_worker(settings, concurrency, loglevel.upper(), token)
            return
        if device == "cuda":
            chosen = launch.parse_gpus(gpus or "all", launch.cuda_device_count())
            if len(chosen) == 1:
                launch.run_gpu_worker(settings, chosen[0], loglevel.upper(), token)
                return
            raise click.exceptions.Exit(launch.run_gpu_fleet(settings, chosen, loglevel.upper()))
        if device.startswith("cuda:") and device[5:].isdigit():
            if gpus:
                raise InputError("--gpus and --device cuda:N exclude each other")
            launch.run_gpu_worker(settings, int(device[5:]), loglevel.upper(), token)
            return
    except launch.LaunchError as e:
        raise InputError(str(e)) from e
    raise InputError(f"--device must be cpu, cuda or cuda:N, got {device!r}")


# The query commands (status, results, sql, cancel, ...) live in their own module.
from scheduler import cli_query  # noqa: E402,F401


def main() -> None:
    cli(prog_name="polyfit")


if __name__ == "__main__":  # pragma: no cover
    main()
