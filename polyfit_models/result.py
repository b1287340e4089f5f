"""The outcome of one fit, as a frozen record of JSON-safe values.

Non-finite numbers never appear: a value that is not finite is reported as ``None``. ``mse`` is
the one figure that compares variants (mean squared error of the final model against the target
on the job's grid, evaluated in float64 from the final coefficients); ``final_loss`` is the
variant's own training objective at the end (sum of squared errors or mean squared error).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

STATUSES = ("succeeded", "diverged")
#: The loss curve keeps the loss at every epoch with ``epoch % CURVE_EVERY == CURVE_EVERY - 1``,
#: where the lesson prints it.
CURVE_EVERY = 100


@dataclass(frozen=True)
class FitResult:
    """What one fit produced (see the module docstring for the meaning of each figure)."""

    status: str  # "succeeded" | "diverged"
    final_loss: float | None  # training objective at the end; last good value if diverged
    mse: float | None  # mean squared error of the final model on the grid vs the target
    optimum_mse: float  # least-squares optimum mse for a polynomial of the job's degree
    coefficients: list  # the variant's own parameters (None where not finite)
    monomial: list | None  # ascending-power coefficients in the ordinary basis, if defined
    loss_curve: list  # [epoch, loss] at every epoch % 100 == 99 before divergence
    diverged_at_epoch: int | None
    duration_s: float  # this job's share of its batch's wall time
    #: The epoch whose model was within the job's ``stop_gap`` of the optimum, where it stopped
    #: (None: it trained every epoch, or diverged).
    stopped_at_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a dict of JSON-safe values; its lists are copies."""
        d = {f: getattr(self, f) for f in _FIELD_ORDER}
        d["coefficients"] = list(self.coefficients)
        d["monomial"] = None if self.monomial is None else list(self.monomial)
        d["loss_curve"] = [list(point) for point in self.loss_curve]
        return d


_FIELD_ORDER = tuple(f.name for f in dataclasses.fields(FitResult))


def finite_or_none(value: float) -> float | None:
    """``float(value)`` if it is finite, else None (results never hold NaN or inf)."""
    value = float(value)
    return value if math.isfinite(value) else None
