"""The commands that define and run sweeps: ``variants``, ``sweep submit``, ``sweep run`` and
``sweep resume``."""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from polyfit_models import VARIANTS
from polyfit_models.registry import BROKEN, REFUSED
from polyfit_results.report import plural
from scheduler.axes import axes_used
from scheduler.cli.group import InputError, WorkFailed, cli
from scheduler.cli.helpers import (
    apply_labels,
    batch_size_option,
    changing,
    find_sweep,
    label_options,
    make_plan,
    pass_settings,
    reading,
    sweep_inputs,
)
from store import StoreError
from store import sweeps as store_sweeps
from store.sweeps import sweep_names
from worker.settings import Settings


@cli.command()
def variants() -> None:
    """List the model variants, one line each, with the axes each one uses and the package
    (and version) that provides it; plugins that could not be loaded here are listed with why."""
    width = max(len(n) for n in [*VARIANTS, *BROKEN])
    for name, v in VARIANTS.items():
        d = v.defaults
        click.echo(f"{name.ljust(width)}  {v.summary}  axes: {', '.join(axes_used(v))}  "
                   f"defaults: lr={d['lr']:g} degree={d['degree']} epochs={d['epochs']} "
                   f"optimizer={d['optimizer']}  package: {v.package} {v.version}")
        if v.note:
            click.echo(f"{' ' * width}  note: {v.note}")
    for name, problem in BROKEN.items():
        click.echo(f"{name.ljust(width)}  (not loaded: {problem.reason})  "
                   f"package: {problem.package} {problem.version}")
    for problem in REFUSED:
        click.echo(f"warning: {problem.describe()}", err=True)


@cli.group()
def sweep() -> None:
    """Submit, run and resume sweeps."""


@sweep.command("submit")
@sweep_inputs
@label_options
@batch_size_option
@pass_settings(broker=True)
def sweep_submit(settings: Settings, spec_path, name, fresh, sample, stop_at_gap, tags, note,
                 batch_size, **axes) -> None:
    """Only enqueue the sweep; print its id as the last line of stdout."""
    from scheduler.submit import BrokerError, submit

    plan = make_plan(spec_path, axes, name, settings, sample, stop_at_gap)
    try:
        done = submit(settings, plan, batch_size=batch_size, fresh=fresh)
    except BrokerError as e:
        apply_labels(settings, plan.sweep_id, tags, note)  # recorded, so labelled too
        raise WorkFailed(f"{e} (the sweep is recorded; `polyfit sweep resume "
                         f"{plan.sweep_id}` enqueues it)") from e
    apply_labels(settings, plan.sweep_id, tags, note)
    click.echo(f"sweep {plan.name}: {summary(done.jobs, done)}")
    click.echo(plan.sweep_id)


def summary(jobs: int, done) -> str:
    """'12 jobs (4 new, 2 with results from other sweeps), 2 enqueued in 1 batch'."""
    reused = f", {done.reused_jobs:,} with results from other sweeps" if done.reused_jobs else ""
    return (f"{plural(jobs, 'job')} ({done.new_jobs:,} new{reused}), {done.enqueued_jobs:,} "
            f"enqueued in {plural(done.batches, 'batch', 'batches')}")



@sweep.command("run")
@sweep_inputs
@label_options
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Local worker processes. [default: one per core]")
@batch_size_option
@click.option("--top", type=click.IntRange(0, 1000), default=1, show_default=True,
              help="Best jobs to print per variant at the end.")
@pass_settings(broker=True)
def sweep_run(settings: Settings, spec_path, name, fresh, sample, stop_at_gap, tags, note,
              workers, batch_size, top, **axes) -> None:
    """Submit the sweep and run it to the end here with local workers.

    SPEC.yaml may also name a sweep of the database (its name or id) that is not a file here:
    what that sweep still needs is trained (an interrupted run is finished this way)."""
    from scheduler.run import continue_sweep, run_sweep

    existing = _existing_sweep(settings, spec_path, name, fresh or stop_at_gap is not None
                               or bool(tags) or note is not None, sample, axes)
    if existing is None and spec_path and not Path(spec_path).exists():
        raise InputError(_nothing_named(settings, spec_path))
    if existing is not None:
        code = continue_sweep(settings, existing, workers=workers, batch_size=batch_size,
                              top=top)
    else:
        plan = make_plan(spec_path, axes, name, settings, sample, stop_at_gap)
        _left_to_gpus(settings, plan)
        code = run_sweep(settings, plan, workers=workers, batch_size=batch_size, top=top,
                         fresh=fresh, labelled=lambda: apply_labels(settings, plan.sweep_id,
                                                                    tags, note))
    if code:
        raise click.exceptions.Exit(code)


def _existing_sweep(settings: Settings, ref, name, fresh, sample, axes):
    """The recorded sweep ``sweep run REF`` means, if REF is no file and names one."""
    if not ref or Path(ref).exists() or name or fresh or sample or any(axes.values()):
        return None
    try:
        engine = reading(settings)
    except StoreError:  # no database yet, or not ours: REF is a missing spec file then
        return None
    try:
        return store_sweeps.find_sweep(engine, ref)
    finally:
        engine.dispose()


def _left_to_gpus(settings: Settings, plan) -> None:
    """``sweep run`` trains on this machine's CPUs. Jobs that need a GPU can only be trained
    by GPU workers of a fleet, on a broker they share: with the embedded broker (this machine
    only) nothing could ever take them, so the run is refused up front instead of waiting
    forever; with a fleet's broker, it says that they are left to the fleet's GPU workers."""
    from worker.queues import LOCAL_DEVICES

    if plan.search is not None:  # its jobs are asked round by round: the device axis says
        devices = plan.spec["grid"][0].get("device", "cpu")
        devices = devices if isinstance(devices, list) else [devices]
        if all(d in LOCAL_DEVICES for d in devices):
            return
        gpu = plan.search["trials"] if all(d not in LOCAL_DEVICES for d in devices) else 0
        jobs = plural(gpu, "job") if gpu else "the jobs on a GPU"
    elif all(t.device in LOCAL_DEVICES for t in plan.templates):
        return
    else:
        gpu = sum(1 for job in plan.iter_jobs() if job.device not in LOCAL_DEVICES)
        if not gpu:
            return
        jobs = plural(gpu, "job")
    from worker.launch import cuda_device_count

    if settings.broker is None and cuda_device_count() == 0:
        raise InputError(
            f"{jobs} of sweep {plan.name} need a GPU, this machine has none, and the embedded "
            "broker serves this machine only: run them on a GPU fleet (`polyfit sweep submit "
            "... --broker redis://HOST:6379/0`, and `polyfit worker --device cuda --gpus all` "
            "on each GPU host), or leave cuda out (--device cpu)")
    where = "on the broker" if settings.broker else "on this machine"
    click.echo(f"note: {jobs} of sweep {plan.name} need a GPU: `sweep run` trains on the "
               f"CPUs, so they wait for `polyfit worker --device cuda --gpus all` {where}; "
               "this run trains the others", err=True)


def _nothing_named(settings: Settings, ref: str) -> str:
    """The one line for ``sweep run REF`` where REF is neither a file nor a recorded sweep,
    with the spec files and sweep names that come close ("did you mean")."""
    names = [str(p) for folder in (Path("."), Path("examples")) if folder.is_dir()
             for p in sorted(folder.glob("*.y*ml"))]
    names += [p.stem for p in map(Path, list(names))]
    try:
        engine = reading(settings)
    except StoreError:
        engine = None
    if engine is not None:
        try:
            names += sweep_names(engine)
        except StoreError:
            pass
        finally:
            engine.dispose()
    close = difflib.get_close_matches(ref, list(dict.fromkeys(names)), n=3, cutoff=0.6)
    shown = " or ".join(repr(_as_given(c)) for c in close)
    hint = f"; did you mean {shown}?" if close else (
        " (give a spec file, or a sweep's name or id: `polyfit sweeps` lists them)")
    return f"no spec file or sweep {ref!r}{hint}"


def _as_given(name: str) -> str:
    """A spec file's stem stands for the file (``tutorial`` -> examples/tutorial.yaml)."""
    for folder in (Path("."), Path("examples")):
        for suffix in (".yaml", ".yml"):
            if (folder / f"{name}{suffix}").is_file():
                return str(folder / f"{name}{suffix}")
    return name


@sweep.command("resume")
@click.argument("sweep_ref", metavar="SWEEP")
@batch_size_option
@pass_settings(broker=True)
def sweep_resume(settings: Settings, sweep_ref, batch_size) -> None:
    """Re-enqueue what has not ended well: queued, lost, failed and cancelled jobs."""
    from scheduler.submit import BrokerError, resume

    engine = changing(settings)
    target = find_sweep(engine, sweep_ref)
    engine.dispose()
    try:
        done = resume(settings, target.id, batch_size=batch_size)
    except BrokerError as e:
        raise WorkFailed(str(e)) from e
    click.echo(f"sweep {target.name}: {plural(done.enqueued_jobs, 'job')} re-enqueued "
               f"in {plural(done.batches, 'batch', 'batches')}")
    click.echo(target.id)
