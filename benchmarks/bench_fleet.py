"""A fleet across a network, measured: docs/fleet.md's recipe on hosts made of network namespaces
(``tests/support/hosts.py``, ``tests/support/fleet.py``: a services host with Redis and PostgreSQL,
a scheduler host, up to three worker hosts, each on a core of its own), with the same faults as
``tests/e2e/test_netns.py``. Measures, in one run on one machine:

  1. a worker host cut off mid-job: seconds from the cut until its jobs run on another host;
  2. Redis killed and restarted from its AOF (down 3 s): seconds from its return to the first
     job claimed, and to the first result stored;
  3. PostgreSQL stopped (``pg_ctl stop -m fast``) for 10 s: the same;
  4. a worker host killed for good: seconds from the kill until its jobs run elsewhere;
  5. worker hosts whose clocks are off (``tests/support/clockshift.py``: one 120 s behind, one
     90 s ahead, one right), no other fault: jobs taken from a live worker are trained twice;
  6. the same, the host 90 s ahead killed: seconds until its jobs run elsewhere;
  7. for each fault, the work done twice: jobs trained more than once, and their fit-seconds
     (``duration_s`` x (attempts - 1));
  8. throughput of the same sweep on 1, 2 and 3 worker hosts (jobs/s from submit to the last
     result, workers started and ready first) and the ratio to one host;
  9. ``polyfit sweep run`` killed with SIGKILL mid-sweep (on this host, the embedded broker, no
     namespaces needed): seconds until none of its worker processes is left, the training its
     held jobs had done (lost: they start again), and a second ``sweep run`` of the sweep:
     seconds to the end, and jobs trained twice.

Prints a table. Needs root, like the tests; cleans up the same way (finalizers, atexit,
SIGTERM, and the next run removes what a SIGKILLed one left).

    sudo .venv/bin/python benchmarks/bench_fleet.py [--stale 10] [--jobs 36] [--only skew]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.clockshift import build, shifted  # noqa: E402
from tests.support.fleet import (  # noqa: E402
    Fleet,
    Services,
    read_recipe,
    services_unavailable,
)
from tests.support.hosts import Net, unavailable  # noqa: E402
from tests.support.sweeps import numpy_epochs_per_second  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

JOB_S = 3.0


def sweep(f: Fleet, name: str, jobs: int, epochs: int) -> str:
    return f.submit("--name", name, "--variant", "numpy", "--seed", f"0-{jobs - 1}",
                    "--epochs", str(epochs), "--batch-size", "1")


def running_on(f: Fleet, sweep_id: str, host: str) -> list[dict]:
    return [r for r in f.rows(sweep_id) if r["status"] == "running" and r["host"] == host]


def wasted(rows: list[dict]) -> tuple[int, float]:
    twice = [r for r in rows if r["attempts"] > 1]
    return len(twice), sum((r["duration_s"] or 0) * (r["attempts"] - 1) for r in twice)


def first_after(rows: list[dict], key: str, t: float) -> float | None:
    later = [r[key].timestamp() - t for r in rows if r[key] and r[key].timestamp() > t]
    return min(later, default=None)


def recovered(rows: list[dict], back: float) -> str:
    claim, stored = first_after(rows, "started_at", back), first_after(rows, "finished_at", back)
    return f"claim {claim:.1f} s, result {stored:.1f} s after restart"


def moved_away(f: Fleet, sweep_id: str, ids: set[str], gone: str) -> bool:
    now = {r["id"]: r for r in f.rows(sweep_id)}
    return all(now[i]["attempts"] >= 2 and now[i]["host"] not in (None, gone) for i in ids)


# -- the faults ----------------------------------------------------------------------------------

def cut_off(f: Fleet, epochs: int, stale: int) -> tuple[str, str, list[dict]]:
    for host in ("worker1", "worker2", "worker3"):
        f.start_worker(host, POLYFIT_STALE_AFTER_S=str(stale))
    sweep_id = sweep(f, "bench-cut", 9, epochs)
    ids = {r["id"] for r in wait_for(lambda: running_on(f, sweep_id, "worker1"), 120,
                                     "worker1 to start a job")}
    f.net.partition("worker1")
    t = time.monotonic()
    wait_for(lambda: moved_away(f, sweep_id, ids, "worker1"), 120,
             "worker1's jobs to run elsewhere")
    moved = time.monotonic() - t
    f.net.heal("worker1")
    return (f"worker host cut off (stale {stale} s)",
            f"running elsewhere {moved:.1f} s after the cut", f.wait_ended(sweep_id, 9))


def redis_restart(f: Fleet, epochs: int, stale: int) -> tuple[str, str, list[dict]]:
    for host in ("worker1", "worker2"):
        f.start_worker(host, POLYFIT_STALE_AFTER_S=str(stale))
    sweep_id = sweep(f, "bench-redis", 10, epochs // 2)
    wait_for(lambda: sum(r["status"] == "succeeded" for r in f.rows(sweep_id)) >= 2, 120,
             "two jobs to finish")
    f.services.kill_redis()
    time.sleep(3.0)  # the outage
    f.services.start_redis()
    back = time.time()
    rows = f.wait_ended(sweep_id, 10)
    return "Redis SIGKILLed, restarted after 3 s", recovered(rows, back), rows


def pg_restart(f: Fleet, epochs: int, _stale: int) -> tuple[str, str, list[dict]]:
    for host in ("worker1", "worker2"):
        f.start_worker(host, POLYFIT_STALE_AFTER_S="20")
    sweep_id = sweep(f, "bench-pg", 8, epochs)
    wait_for(lambda: {r["host"] for r in f.rows(sweep_id) if r["status"] == "running"}
             == {"worker1", "worker2"}, 120, "both hosts to train a job")
    f.services.stop_pg()
    time.sleep(10.0)  # the outage
    f.services.start_pg()
    back = time.time()
    rows = f.wait_ended(sweep_id, 8, timeout=240)
    return "PostgreSQL stopped 10 s (stale 20 s)", recovered(rows, back), rows


def host_dies(f: Fleet, epochs: int, stale: int) -> tuple[str, str, list[dict]]:
    for host in ("worker1", "worker2", "worker3"):
        f.start_worker(host, POLYFIT_STALE_AFTER_S=str(stale))
    sweep_id = sweep(f, "bench-dies", 6, epochs)
    ids = {r["id"] for r in wait_for(lambda: running_on(f, sweep_id, "worker1"), 120,
                                     "worker1 to start a job")}
    f.net.kill_host("worker1")
    t = time.monotonic()
    wait_for(lambda: moved_away(f, sweep_id, ids, "worker1"), 120,
             "worker1's jobs to run elsewhere")
    moved = time.monotonic() - t
    return (f"worker host killed (stale {stale} s)",
            f"running elsewhere {moved:.1f} s after the kill", f.wait_ended(sweep_id, 6))


# Worker hosts whose wall clocks are off (no NTP): behind, ahead, right.
SKEWS = {"worker1": -120.0, "worker2": 90.0, "worker3": 0.0}


def start_skewed(f: Fleet, stale: int) -> None:
    lib = build(f.net.run_dir)
    for host, seconds in SKEWS.items():
        f.start_worker(host, POLYFIT_STALE_AFTER_S=str(stale), **shifted(lib, seconds))


def skewed_clocks(f: Fleet, epochs: int, stale: int) -> tuple[str, str, list[dict]]:
    start_skewed(f, stale)
    sweep_id = sweep(f, "bench-skew", 9, 2 * epochs)
    return (f"clocks 120 s behind, 90 s ahead (stale {stale} s)", "no fault to recover from",
            f.wait_ended(sweep_id, 9))


def skewed_host_dies(f: Fleet, epochs: int, stale: int) -> tuple[str, str, list[dict]]:
    start_skewed(f, stale)
    sweep_id = sweep(f, "bench-skew-dies", 6, epochs)
    ids = {r["id"] for r in wait_for(lambda: running_on(f, sweep_id, "worker2"), 120,
                                     "worker2 to start a job")}
    f.net.kill_host("worker2")
    t = time.monotonic()
    # Judged by the hosts' own clocks, its heartbeats would look fresh 90 s longer (and 210 s
    # longer to the host that is behind): wait long enough to measure that too.
    wait_for(lambda: moved_away(f, sweep_id, ids, "worker2"), 360,
             "worker2's jobs to run elsewhere")
    moved = time.monotonic() - t
    return (f"host 90 s ahead killed (stale {stale} s)",
            f"running elsewhere {moved:.1f} s after the kill", f.wait_ended(sweep_id, 6))


SCENARIOS = {"cut": cut_off, "redis": redis_restart, "pg": pg_restart, "dies": host_dies,
             "skew": skewed_clocks, "skew-dies": skewed_host_dies}


def run_killed(eps: int, stale: int, jobs: int = 8) -> tuple[str, str, int, int, float]:
    """Measurement 9 (see the module docstring), in a temporary folder of this host; ``eps``:
    numpy epochs a second on a core (the lost work is given in seconds of training)."""
    epochs = int(JOB_S * eps)
    import signal
    import subprocess
    import tempfile

    from tests.support.database import query
    from tests.support.processes import alive, polyfit_env, processes_with

    folder = Path(tempfile.mkdtemp(prefix="polyfit-bench-killed-"))
    db = f"sqlite:///{folder / 'polyfit.sqlite'}"
    mark = f"POLYFIT_BENCH_KILLED={os.getpid()}"
    env = polyfit_env(POLYFIT_STALE_AFTER_S=str(stale), POLYFIT_BENCH_KILLED=str(os.getpid()))
    argv = [sys.executable, "-m", "scheduler", "sweep", "run", "--name", "killed", "--variant",
            "numpy", "--seed", f"0-{jobs - 1}", "--epochs", str(4 * epochs), "--batch-size",
            "1", "--workers", "2", "--db", db]
    run = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def held() -> list[dict]:
        return query(db, "SELECT id, epochs_done FROM jobs WHERE status = 'running'")

    try:
        wait_for(lambda: (folder / "polyfit.sqlite").exists() and any(
            (r["epochs_done"] or 0) > 0 for r in held()), 180, "a job to report progress")
        workers = [pid for pid in processes_with(mark) if pid != run.pid]
        lost = sum(r["epochs_done"] or 0 for r in held()) / eps
        run.send_signal(signal.SIGKILL)
        run.wait()
        t = time.monotonic()
        wait_for(lambda: not alive(workers), 60, "the killed run's workers to stop")
        orphans_gone = time.monotonic() - t
        t = time.monotonic()
        again = subprocess.run([*argv[:5], "killed", "--workers", "2", "--db", db], cwd=folder,
                               env=env, capture_output=True, text=True, timeout=600)
        finished = time.monotonic() - t
        rows = query(db, "SELECT attempts FROM jobs")
        twice = sum(r["attempts"] > 1 for r in rows)
        ok = "finished" if again.returncode == 0 else f"exit {again.returncode}"
        return ("sweep run killed (SIGKILL), run again",
                f"workers gone {orphans_gone:.1f} s after; rerun {ok} in {finished:.1f} s",
                len(rows), twice, float(lost))
    finally:
        if run.poll() is None:
            run.kill()
        for pid in alive(processes_with(mark)):
            os.kill(pid, signal.SIGKILL)


def throughput(f: Fleet, hosts: int, jobs: int, epochs: int) -> float:
    names = [f"worker{i}" for i in range(1, hosts + 1)]
    for host in names:
        f.start_worker(host)
    f.wait_ready(*names)
    t = time.monotonic()
    sweep_id = sweep(f, "bench-throughput", jobs, epochs)
    f.wait_ended(sweep_id, jobs, timeout=600)
    return time.monotonic() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stale", type=int, default=10, help="POLYFIT_STALE_AFTER_S for the faults")
    p.add_argument("--jobs", type=int, default=36, help="jobs of the throughput sweep")
    p.add_argument("--only", choices=[*SCENARIOS, "throughput", "run-killed"],
                   action="append",
                   help="run only these measurements (repeatable) [default: all]")
    args = p.parse_args()
    only = set(args.only or [*SCENARIOS, "throughput", "run-killed"])
    killed = None
    if "run-killed" in only:
        killed = run_killed(numpy_epochs_per_second(), args.stale)
        print(f"  {killed[0]}: {killed[1]}", file=sys.stderr)
        if only == {"run-killed"}:
            what, recovery, jobs, n, lost = killed
            print(f"{what}: {recovery}; {jobs} jobs, {n} trained twice, {lost:.1f} fit-s of "
                  "the held jobs lost")
            return
    why_not = unavailable() or services_unavailable()
    if why_not:
        sys.exit(f"bench_fleet: {why_not}")
    recipe = read_recipe()
    eps = numpy_epochs_per_second()
    epochs = int(JOB_S * eps)
    faults, rates = [], {}
    with Net(workers=3) as net:
        services = Services(net, recipe).start()

        def fresh() -> Fleet:
            services.reset()
            return Fleet(net, services, recipe)

        def done(f: Fleet) -> None:
            f.stop_workers()
            net.restore()
            services.ensure_up()

        for scenario in (s for name, s in SCENARIOS.items() if name in only):
            f = fresh()
            try:
                what, recovery, rows = scenario(f, epochs, args.stale)
            finally:
                done(f)
            n, seconds = wasted(rows)
            faults.append((what, recovery, len(rows), n, seconds))
            print(f"  {what}: {recovery}", file=sys.stderr)
        for hosts in (1, 2, 3) if "throughput" in only else ():
            f = fresh()
            try:
                rates[hosts] = args.jobs / throughput(f, hosts, args.jobs, epochs // 3)
            finally:
                done(f)
            print(f"  {hosts} worker host(s): {rates[hosts]:.2f} jobs/s", file=sys.stderr)

    print(f"\nbench_fleet: {os.cpu_count()} cores, numpy job {JOB_S:.0f} s "
          f"({epochs} epochs) alone on a core\n")
    w = max((len(x[0]) for x in faults), default=5)
    r = max((len(x[1]) for x in faults), default=12)
    print(f"{'fault':<{w}}  {'back to work':<{r}}  jobs  trained twice  fit-s wasted")
    for what, recovery, jobs, n, seconds in faults:
        print(f"{what:<{w}}  {recovery:<{r}}  {jobs:>4}  {n:>13}  {seconds:>12.1f}")
    if killed is not None:
        what, recovery, jobs, n, lost = killed
        print(f"{what}: {recovery}; {jobs} jobs, {n} trained twice, {lost:.1f} fit-s of the "
              "held jobs lost")
    if not rates:
        return
    print(f"\nthroughput, {args.jobs} numpy jobs of {JOB_S / 3:.0f} s, --batch-size 1, "
          "from submit to the last result:")
    print("worker hosts  jobs/s  x one host")
    for hosts, rate in rates.items():
        print(f"{hosts:>12}  {rate:>6.2f}  {rate / rates[1]:>10.2f}")


if __name__ == "__main__":
    main()
