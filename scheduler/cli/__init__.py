"""The ``polyfit`` command line (Click), a package as rq's ``rq/cli/`` is: ``group`` defines the
group and turns every error into one line; ``helpers`` holds the setting options and the
decorator that passes one ``Settings`` object, the doors into the database and the options that
define a sweep; the command modules register themselves on the group: ``sweeps`` (variants,
sweep submit/run/resume), ``workers`` (worker), ``reads`` (status, sweeps, results, best, job,
plot), ``sql``, ``admin`` (cancel, db create-reader), ``studies`` (export-optuna), ``manage``
(sweep rename/delete/tag/note, compare) and ``dashboard``. Nothing imports back up into this
module."""

from scheduler.cli import (  # noqa: F401 - they register
    admin,
    dashboard,
    manage,
    reads,
    sql,
    studies,
    sweeps,
    workers,
)
from scheduler.cli.group import cli, main

__all__ = ["cli", "main"]
