"""``polyfit sweep run``: submit a sweep, train it with local worker processes, show progress,
stop the workers and print the best results. (Jobs of a worker that died are re-enqueued by the
workers' own reaper, see ``worker.reaper``.)

Ctrl-C stops the local workers and leaves every finished result stored; jobs that were in a
killed worker's hands go back to ``queued`` so ``polyfit sweep resume`` finishes them. SIGTERM
(``timeout``, ``kill``, ``docker stop``, systemd), SIGHUP (a closed terminal) and SIGQUIT take the
same path (exit code 128 + the signal's number, 130 for Ctrl-C); a ``sweep run`` killed with
SIGKILL leaves no worker either: each stops by itself when its parent is gone (see
``worker.processes``), and the reaper puts back what it held.

The local workers read the run's own queue and nothing else (see ``scheduler.local``): on a
broker shared with other sweeps, they neither take nor, when the run ends, kill another's job."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import click

from polyfit_models.fields import names
from polyfit_results import queries, report
from polyfit_results.progress import LiveProgress
from scheduler.local import LocalWorkers, stopping_signals
from scheduler.plan import Plan
from scheduler.submit import BrokerError, Submitted, carry_on, drop_queue, submit
from store import StoreError
from store.activity import status_counts
from store.db import shared_engine
from store.reads import best_jobs, list_jobs
from store.records import CANCELLED, FAILED
from store.requeue import release_worker
from store.rows import SweepRow
from store.sweeps import find_sweep
from worker.launch import cpu_count
from worker.settings import Settings

#: How often the store is asked how the sweep is doing (a small read; SQLite answers in well
#: under a millisecond).
POLL_S = 0.05
#: Seconds between progress lines when stderr is not a terminal (a log).
LINE_EVERY_S = 5.0
#: Once every job has ended (and so is stored), the local workers hold nothing of the sweep:
#: they are killed at once (Celery's warm stop would spend seconds in its broker poll and the
#: pool's joins, dead time for whoever waits on ``sweep run``; SQLite and Redis both survive
#: a killed client, and a message a worker had taken but not started is handed out again).
IDLE_STOP_S = 0.0
#: After Ctrl-C the workers may be writing results: they get this long to stop warm.
INTERRUPT_STOP_S = 5.0
BEST_COLUMNS = names(shown="best")


@dataclass(frozen=True)
class Target:
    """The sweep ``sweep run`` trains: its id and its name."""

    sweep_id: str
    name: str


def run_sweep(settings: Settings, plan: Plan, *, workers: int | None, batch_size: int | None,
              top: int = 1, out=None, fresh: bool = False,
              labelled: Callable[[], None] | None = None) -> int:
    """Submit ``plan`` and train it here; returns the exit code: 0 when every job ended
    succeeded or diverged, else 1. The local workers are stopped on every way out, an error or
    Ctrl-C included. ``labelled`` is called once the sweep is recorded (its tags and note)."""
    target = Target(plan.sweep_id, plan.name)

    def enqueue(spread: int, private: tuple[str, str]) -> Submitted:
        done = submit(settings, plan, batch_size=batch_size, spread=spread, fresh=fresh,
                      private=private)
        if labelled is not None:
            labelled()
        return done

    return _run(settings, target, enqueue, workers=workers, top=top, out=out)


def continue_sweep(settings: Settings, sweep: SweepRow, *, workers: int | None,
                   batch_size: int | None, top: int = 1, out=None) -> int:
    """Train what an existing sweep still needs (queued jobs, and those of a worker that
    stopped beating) here, as ``sweep run`` does: how a sweep interrupted with Ctrl-C, or
    submitted with no worker to serve it, is finished."""
    target = Target(sweep.id, sweep.name)
    return _run(settings, target, lambda spread, private: carry_on(
        settings, sweep.id, batch_size=batch_size, spread=spread, private=private),
        workers=workers, top=top, out=out)


def _run(settings: Settings, target: Target,
         enqueue: Callable[[int, tuple[str, str]], Submitted], *,
         workers: int | None, top: int, out) -> int:
    out = out or sys.stdout
    workers = workers or cpu_count()
    local = LocalWorkers(settings, workers, target.sweep_id)
    grace = 0.0  # an error: nothing to wait for
    unreachable = False  # the broker: its queue is not there to drop
    with stopping_signals():
        try:
            # Start the workers first: their start-up (imports) overlaps with recording and
            # enqueueing.
            local.start()
            try:
                done = enqueue(workers, local.private)
            except BrokerError as e:
                click.echo(f"Error: {e}", err=True)
                unreachable = True
                return 1
            _announce(target, done, workers)
            code = _wait(settings, target, local)
            grace = IDLE_STOP_S
        except KeyboardInterrupt as e:  # Ctrl-C, or another stop signal (see stopping_signals)
            signum = getattr(e, "signum", signal.SIGINT)
            how = ("interrupted" if signum == signal.SIGINT
                   else f"stopped by {signal.Signals(signum).name}")
            _say(f"\n{how}: stopping local workers; finished results are stored, jobs in "
                 f"training keep the epochs they reached. `polyfit sweep run {target.name}` "
                 f"trains the rest here (or `polyfit sweep resume {target.name}` for workers "
                 f"elsewhere)")
            grace = INTERRUPT_STOP_S
            return 128 + signum
        finally:
            # Workers that died on their own have their log named in the error: kept. Those
            # stopped here leave nothing behind (one /tmp file per run piled up).
            died = local.returncode() is not None
            local.stop(timeout_s=grace)
            if not died:
                local.log_path.unlink(missing_ok=True)
            _release(settings, local)
            if not unreachable:
                drop_queue(settings, local.private[1])
    _print_best(settings, target, top, out)
    return code


def _announce(target: Target, done: Submitted, workers: int) -> None:
    reused = f", {done.reused_jobs} with results from other sweeps" if done.reused_jobs else ""
    size = f"{report.plural(done.jobs, 'job')}{reused}, " if done.jobs else ""
    click.echo(f"sweep {target.name} ({target.sweep_id}): {size}{done.enqueued_jobs} to run "
               f"in {report.plural(done.batches, 'batch', 'batches')} on "
               f"{report.plural(workers, 'local worker process', 'local worker processes')}",
               err=True)


def _say(line: str) -> None:
    """A line on stderr, if it is still there (after a hangup, the terminal is gone)."""
    try:
        click.echo(line, err=True)
    except OSError:
        pass


def _wait(settings: Settings, target: Target, local: LocalWorkers) -> int:
    engine = shared_engine(settings.db_url)
    sweep = find_sweep(engine, target.sweep_id)
    with LiveProgress(sys.stderr, terminal=sys.stderr.isatty(), every_s=LINE_EVERY_S,
                      label=f"sweep {target.name}") as live:
        while True:
            p = queries.progress(engine, sweep)
            if p.done:
                live.show(p, last=True)
                if p.search is not None and p.search.state == "failed":
                    click.echo(f"Error: the search failed: {p.search.error} (every result "
                               "is kept)", err=True)
                    return 1
                if p.counts.get(CANCELLED):
                    click.echo(f"note: {report.plural(p.counts[CANCELLED], 'job')} of the "
                               "sweep cancelled (`polyfit sweep resume` trains them)",
                               err=True)
                return 1 if p.counts.get(FAILED) or p.counts.get(CANCELLED) else 0
            if not local.alive():
                live.show(p, last=True)
                click.echo(f"Error: the local workers exited (code {local.returncode()}); "
                           f"log: {local.log_path}\n{local.log_tail()}", err=True)
                return 1
            live.show(p)
            time.sleep(POLL_S)


def _release(settings: Settings, local: LocalWorkers) -> None:
    """Jobs the (now stopped) local workers held but did not finish go back to ``queued``:
    those of this run's workers (their identity carries a random token), never another's."""
    if local.identity is None:
        return
    engine = shared_engine(settings.db_url)
    try:
        release_worker(engine, local.identity)
    except StoreError as e:
        click.echo(f"warning: could not release the local workers' jobs ({e}); the workers' "
                   "reaper puts them back in the queue once their heartbeat is stale", err=True)


def _print_best(settings: Settings, target: Target, top: int, out) -> None:
    if top <= 0:
        return
    engine = shared_engine(settings.db_url)
    # The store's one "best" (as ``polyfit best``): the ``top`` lowest-mse succeeded or
    # diverged jobs of each variant, ranked by the database.
    best = sorted(best_jobs(engine, target.sweep_id, ["variant"], top=top),
                  key=lambda j: (j.mse, j.id))
    failed = status_counts(engine, target.sweep_id).get(FAILED, 0)
    first_failed = list_jobs(engine, target.sweep_id, statuses=[FAILED], sort="id",
                             limit=1) if failed else []
    variants = list(dict.fromkeys(j.variant for j in best))  # by their best mse
    rows = [j.to_dict(gap=True) for j in
            sorted(best, key=lambda j: (variants.index(j.variant), j.mse, j.id))]
    click.echo(f"best results of sweep {target.name} ({target.sweep_id}), lowest mse per "
               "variant:", file=out)
    styled = getattr(out, "isatty", lambda: False)()
    click.echo(report.render(rows, BEST_COLUMNS, "table", styled), file=out)
    if first_failed:
        click.echo(f"{report.plural(failed, 'job')} failed, e.g. {first_failed[0].id}: "
                   f"{first_failed[0].error}", file=out)
