"""``polyfit worker``: a Celery worker pinned to its device(s)."""

from __future__ import annotations

import re

import click

from scheduler.cli.group import InputError, cli
from scheduler.cli.helpers import pass_settings
from worker.settings import Settings


def _token(_ctx, _param, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9a-f]{8,32}", value):
        raise click.BadParameter("must be 8 to 32 lowercase hex digits")
    return value


def _sweep_id(_ctx, _param, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", value):
        raise click.BadParameter("must be a sweep id")
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
@click.option("--token", default=None, hidden=True, callback=_token,
              help="The random part of the worker's identity (set by `sweep run` for its "
                   "local workers). [default: a new one]")
@click.option("--only-sweep", default=None, hidden=True, callback=_sweep_id,
              help="Serve this sweep's jobs only, from the private queue of the `sweep run` "
                   "that started this worker (with --token; set by `sweep run`).")
@pass_settings(broker=True)
def worker(settings: Settings, device, gpus, concurrency, loglevel, token, only_sweep) -> None:
    """A Celery worker pinned to its device(s); consumes the queues its device serves."""
    from worker import launch
    from worker.processes import watch_parent

    # Started by `sweep run` or a --gpus launcher: never outlive it (SIGKILL of it included).
    watch_parent()
    if only_sweep and (device != "cpu" or token is None):
        raise InputError("--only-sweep needs --device cpu and --token")

    level = loglevel.upper()
    # A LaunchError (a bad --gpus, no CUDA) is bad input: exit 2.
    if device == "cpu":
        if gpus:
            raise InputError("--gpus needs --device cuda")
        launch.run_cpu_worker(settings, concurrency, level, token, only_sweep)
        return
    if device == "cuda":
        chosen = launch.parse_gpus(gpus or "all", launch.cuda_device_count())
        if len(chosen) == 1:
            launch.run_gpu_worker(settings, chosen[0], level, token)
            return
        raise click.exceptions.Exit(launch.run_gpu_fleet(settings, chosen, level))
    if device.startswith("cuda:") and device[5:].isdigit():
        if gpus:
            raise InputError("--gpus and --device cuda:N exclude each other")
        launch.run_gpu_worker(settings, int(device[5:]), level, token)
        return
    raise InputError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
