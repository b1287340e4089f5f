"""A job, declared once: every column of a job's row, with what it is and where it shows.

A job is its **settings** (what determines its result; the spec it trains, its id), its
**outcome** (what training it gave) and the record of its **run** (who trained it, when, how
often). Every list of a job's columns elsewhere is derived from :data:`FIELDS`: the store's row
type and the columns it reads, what a reused row copies and what a worker's result writes, the
sweep axes and which of them take ranges, what ``polyfit results``, ``best``, the dashboard and
the Python API show, and which settings a job's id leaves out while at their default. The table's
column itself is declared in ``store.records.JobRecord`` (its SQL type and index), and the
setting's check in ``polyfit_models.spec.JobSpec``; a test holds the three in step.

Adding a setting: one :class:`Field` here, one attribute of ``JobSpec`` (with its check), one
column of ``JobRecord``, and its tests; a sweep axis of a new kind of value also needs its
parser in ``scheduler.axes.parse_axis``. What the setting does is the numerics' own change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

#: Where a column shows (``Field.shown``): ``polyfit results``'s table, the dashboard's job
#: table, the best-job tables (``polyfit best``, ``sweep run``'s summary, the Python API's
#: loss curves), the dashboard's job page, ``polyfit best --by`` groups.
VIEWS = ("results", "page", "best", "job", "group")


@dataclass(frozen=True)
class Field:
    """One column of a job: its name (the YAML name of a setting, where it has one), its Python
    type, its role and the places that derive their columns from it."""

    name: str
    type: type
    #: "key" (the row's identity), "setting", "outcome" or "run".
    role: str
    #: A sweep axis: a key of a grid (and of ``polyfit_results``' search figures).
    axis: bool = False
    #: An axis that takes ranges ("1-5", ``{low, high}``) and continuous search dimensions.
    ranged: bool = False
    #: A setting a variant declares whether it uses (``Variant.axes``).
    per_variant: bool = False
    #: The views (:data:`VIEWS`) that show it.
    shown: frozenset[str] = frozenset()
    #: Copied from an equal job's row in an earlier sweep when a submit reuses its result.
    reused: bool = False
    #: Written by the worker with a job's result (``store`` saves exactly these).
    result: bool = False
    #: A setting added after job ids were first made: left out of the id while it is None, so
    #: that every job recorded before it keeps its id.
    later: bool = False
    #: A setting that may differ between the jobs of one batch (one vectorized program); the
    #: other settings make the batch's key.
    per_job: bool = False
    #: A value the store's row type carries (False: a column for SQL only).
    row: bool = True
    #: Computed from other columns, not stored (the gap to the optimum).
    computed: bool = False


def _f(name: str, kind: type, role: str, shown: str = "", **flags) -> Field:
    return Field(name, kind, role, shown=frozenset(shown.split()), **flags)


_AXIS = {"axis": True, "per_variant": True}
_RANGED = {**_AXIS, "ranged": True}
_KEPT = {"reused": True, "result": True}

#: Every column of a job, in the order rows, exports and tables list them.
FIELDS: tuple[Field, ...] = (
    _f("id", str, "key", "results page"),
    _f("sweep_id", str, "key"),
    _f("variant", str, "setting", "results page best job group", axis=True),
    _f("lr", float, "setting", "results page best job group", **_RANGED, per_job=True),
    _f("degree", int, "setting", "results page best job group", **_RANGED),
    _f("seed", int, "setting", "results page best job group", **_RANGED, per_job=True),
    _f("epochs", int, "setting", "results page best job group", **_RANGED),
    _f("optimizer", str, "setting", "results page best job group", **_AXIS),
    _f("device", str, "setting", "results page job group", **_AXIS),
    _f("target", str, "setting", "job group"),
    _f("dtype", str, "setting", "job group", per_variant=True),
    _f("x_start", float, "setting", "job"),
    _f("x_stop", float, "setting", "job"),
    _f("x_points", int, "setting", "job"),
    _f("status", str, "outcome", "results page best job", **_KEPT),
    _f("final_loss", float, "outcome", "results page best job", **_KEPT),
    _f("mse", float, "outcome", "results page best job", **_KEPT),
    _f("optimum_mse", float, "outcome", "results page best job", **_KEPT),
    _f("gap", float, "outcome", "page best job", row=False, computed=True),
    _f("coefficients", list, "outcome", **_KEPT),
    _f("monomial", list, "outcome", **_KEPT),
    _f("diverged_at_epoch", int, "outcome", "results page job", **_KEPT),
    _f("worker", str, "run", "job", reused=True),
    _f("ran_on", str, "run", "job", reused=True),
    _f("started_at", datetime, "run", "job", reused=True),
    _f("heartbeat_at", datetime, "run"),
    _f("finished_at", datetime, "run", "job", reused=True),
    _f("duration_s", float, "run", "results page job", **_KEPT),
    _f("attempts", int, "run", "job"),
    _f("error", str, "outcome", "job", result=True),
    _f("reused_from", str, "run", "job"),
    _f("stop_gap", float, "setting", "job", later=True, per_job=True),
    _f("stopped_at_epoch", int, "outcome", "job", **_KEPT),
    _f("epochs_done", int, "outcome", "results", reused=True),
    _f("versions", str, "run", reused=True),
    _f("rung", int, "run", row=False),
)

BY_NAME = {f.name: f for f in FIELDS}


def names(fields: Iterable[Field] = FIELDS, *, role: str | None = None,
          shown: str | None = None, **flags: bool) -> tuple[str, ...]:
    """The names of the fields (in declaration order) with the role, the view and the flags
    asked, e.g. ``names(shown="best")`` or ``names(role="setting", axis=True)``."""
    if shown is not None and shown not in VIEWS:
        raise ValueError(f"no view {shown!r}")
    return tuple(f.name for f in fields
                 if (role is None or f.role == role) and (shown is None or shown in f.shown)
                 and all(getattr(f, flag) == wanted for flag, wanted in flags.items()))


#: The columns of a job's row as the store hands it over (``store``'s ``JobRow``).
ROW = names(row=True)
#: The settings: what a job's spec holds, with the device it runs on.
SETTINGS = names(role="setting")
#: The sweep axes, in the order a grid is expanded and shown.
AXES = names(axis=True)
#: The axes that take ranges and continuous search dimensions.
RANGE_AXES = names(ranged=True)
#: The settings a variant declares whether it uses.
VARIANT_AXES = names(per_variant=True)
#: What a reused row takes from the row it reuses.
REUSED = names(reused=True)
#: What a worker writes with a job's result.
RESULT = names(result=True)
#: The settings that must be equal for jobs to train as one batch (the device aside: a batch is
#: for one device already).
BATCH_KEY = tuple(n for n in names(role="setting", per_job=False) if n != "device")
#: Settings a job's id leaves out while they are None.
LATER = names(later=True)
#: Columns held as JSON lists, and times.
LISTS = tuple(f.name for f in FIELDS if f.type is list)
TIMES = tuple(f.name for f in FIELDS if f.type is datetime)
