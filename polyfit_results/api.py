"""A small Python API for notebooks: a sweep's jobs, its best jobs and its loss curves as pandas
DataFrames. pandas is an optional extra (``pip install 'polyfit[pandas]'``), imported only when
a function is called. Each function takes a sweep (its id or name; the latest sweep when None)
and ``db_url`` (``POLYFIT_DB_URL`` or ``sqlite:///polyfit.sqlite`` in the current folder when
None), reads through the same store functions as the CLI, and never creates a database::

    from polyfit_results.api import jobs_frame, loss_curve_frame
    jobs = jobs_frame("tutorial")
    jobs.groupby("variant")["mse"].min()
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from polyfit_models.errors import BadInput
from polyfit_models.fields import names
from polyfit_results import queries
from store.db import db_url_from
from store.reader import open_results
from store.reads import list_jobs, loss_curves, stream_jobs
from store.redact import remember_secrets
from store.rows import JOB_COLUMNS, SweepRow
from store.sweeps import find_sweep

if TYPE_CHECKING:  # pragma: no cover
    import pandas

__all__ = ["SweepNotFound", "best_frame", "jobs_frame", "loss_curve_frame"]

_TIMES = ("started_at", "heartbeat_at", "finished_at")


class SweepNotFound(BadInput, LookupError):
    """Raised when no sweep in the database has the given id or name."""


def _pandas():
    try:
        import pandas
    except ImportError as e:
        raise ImportError("polyfit_results.api needs pandas: pip install 'polyfit[pandas]'") from e
    return pandas


def _open(db_url: str | None) -> Engine:
    url = db_url or db_url_from(os.environ)
    remember_secrets(url)
    return open_results(url)


def _sweep(engine: Engine, sweep: str | None) -> SweepRow:
    found = find_sweep(engine, sweep)
    if found is None:
        raise SweepNotFound(f"no sweep {sweep!r}" if sweep else "no sweep recorded yet")
    return found


def _frame(rows, columns: Sequence[str]) -> pandas.DataFrame:
    pd = _pandas()
    frame = pd.DataFrame(rows, columns=list(columns))
    for name in _TIMES:
        if name in frame:
            frame[name] = pd.to_datetime(frame[name], utc=True)
    for name in ("diverged_at_epoch", "stopped_at_epoch"):
        if name in frame:
            frame[name] = frame[name].astype("Int64")
    return frame


def jobs_frame(sweep: str | None = None, *, db_url: str | None = None) -> pandas.DataFrame:
    """One row per job of the sweep, every column of the ``jobs`` table plus ``gap`` (mse minus
    the least-squares optimum), sorted by mse (missing last). Times are UTC timestamps;
    ``coefficients`` and ``monomial`` hold lists."""
    pd = _pandas()
    engine = _open(db_url)
    columns = list(JOB_COLUMNS)
    try:
        # Read a chunk of plain tuples at a time from the database's cursor (no object per
        # row): a frame of a million jobs costs the frame, not ten times it.
        target = _sweep(engine, sweep).id
        chunks = [pd.DataFrame.from_records(chunk, columns=columns) for chunk in
                  _chunked(stream_jobs(engine, target), 100_000)]
    finally:
        engine.dispose()
    frame = (pd.concat(chunks, ignore_index=True) if chunks
             else pd.DataFrame(columns=columns))
    for name in ("coefficients", "monomial"):
        frame[name] = [None if v is None else json.loads(v) for v in frame[name]]
    frame["gap"] = frame["mse"] - frame["optimum_mse"]
    return _frame(frame, [*columns, "gap"])


def _chunked(rows, size: int):
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def best_frame(sweep: str | None = None, by: Sequence[str] = ("variant",), *,
               db_url: str | None = None) -> pandas.DataFrame:
    """The best job (lowest mse) per group of ``by`` (as ``polyfit best --by``)."""
    _pandas()
    engine = _open(db_url)
    try:
        rows = queries.best_per_group(engine, _sweep(engine, sweep).id, list(by))
    finally:
        engine.dispose()
    return _frame(rows, [*JOB_COLUMNS, "gap"])


#: The settings shown beside each point of a loss curve (those of the best-job tables).
_CURVE_SETTINGS = names(shown="best", role="setting")
LOSS_COLUMNS = ("job_id", *_CURVE_SETTINGS, "status", "epoch", "loss")


def loss_curve_frame(sweep: str | None = None, *,
                     db_url: str | None = None) -> pandas.DataFrame:
    """The ``loss_curve`` table of the sweep (the training loss every 100 epochs, each job's own
    loss: sum of squared errors or mean squared error, see ``polyfit variants``), one row per
    (job, epoch), with the job's settings alongside for grouping and plotting. ``epoch`` counts
    from 0 as in the lesson's ``if t % 100 == 99`` (99 is the 100th epoch)."""
    _pandas()
    engine = _open(db_url)
    try:
        target = _sweep(engine, sweep)
        jobs = list_jobs(engine, target.id, sort="id")
        curves = loss_curves(engine, target.id, [j.id for j in jobs])
    finally:
        engine.dispose()
    rows = [
        {"job_id": job.id, **{c: getattr(job, c) for c in _CURVE_SETTINGS},
         "status": job.status, "epoch": epoch, "loss": loss}
        for job in jobs
        for epoch, loss in curves[job.id]
    ]
    return _frame(rows, LOSS_COLUMNS)
