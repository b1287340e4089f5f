"""What the dashboard's pages show, composed from the store's reads (``store.sweeps``,
``store.reads``), the very queries the CLI and the Python API read through: the same filter,
summaries, "best" and lr x degree map. What is the dashboard's own is only which of them a page
puts together, and in which order (the registry's)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from polyfit_results.fits import variant_rank
from store.reads import best_jobs, latest_diverged, setting_values
from store.rows import JobRow

#: Rows per page of the job table that a request may ask for.
PER_PAGE = (25, 50, 100, 200, 500)
#: Loss curves drawn per variant besides its best: the next lowest-mse jobs, and a few that
#: diverged (their end is marked). Six variants give at most 6 x (1 + 12 + 4) = 102 series:
#: enough to see the spread over seeds and learning rates, few enough for a browser.
FAINT_CURVES = 12
DIVERGED_CURVES = 4

#: Variants in the registry's order (one not installed here after them), as every table and
#: chart shows.
variant_order = variant_rank


@dataclass(frozen=True)
class Best:
    """The best jobs of a sweep and the values its jobs take."""

    by_variant: list[JobRow]  # the lowest-mse job of each variant, in the registry's order
    by_degree: list[JobRow]  # of each variant and degree
    variants: tuple[str, ...]  # every variant and degree of the sweep's jobs, for the filters
    degrees: tuple[int, ...]


def best_by_variant(engine: Engine, sweep_id: str) -> list[JobRow]:
    """The best job of each variant (as ``polyfit best``), in the registry's order."""
    return sorted(best_jobs(engine, sweep_id, ("variant",)),
                  key=lambda r: variant_order(r.variant))


def best_of_sweep(engine: Engine, sweep_id: str) -> Best:
    """The best job of each variant and of each variant and degree (as ``polyfit best --by
    variant[,degree]``), and the variants and degrees the sweep's jobs take."""
    by_degree = sorted(best_jobs(engine, sweep_id, ("variant", "degree")),
                       key=lambda r: (variant_order(r.variant), r.degree))
    values = setting_values(engine, sweep_id, "variant", "degree")
    return Best(best_by_variant(engine, sweep_id), by_degree,
                tuple(sorted({v for v, _ in values}, key=variant_order)),
                tuple(sorted({d for _, d in values})))


def curve_jobs(engine: Engine, sweep_id: str, faint: int = FAINT_CURVES,
               diverged: int = DIVERGED_CURVES) -> tuple[list[JobRow], set[str]]:
    """The jobs whose loss curves the sweep page draws: per variant its best ``1 + faint`` by
    mse, and ``diverged`` of those that diverged (the latest to: the longest curves); and the
    ids of each variant's best (drawn bold)."""
    best = best_jobs(engine, sweep_id, ("variant",), top=1 + faint)
    firsts: dict[str, str] = {}
    for job in best:  # each variant's jobs come together, its best first
        firsts.setdefault(job.variant, job.id)
    gone = latest_diverged(engine, sweep_id, ("variant",), top=diverged)
    return list({r.id: r for r in best + gone}.values()), set(firsts.values())
