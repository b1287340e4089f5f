"""A fleet across a network: docs/fleet.md's recipe run on hosts made of Linux network namespaces
(``tests/support/hosts.py``, ``tests/support/fleet.py``): a services host (Redis, PostgreSQL), a
scheduler host and worker hosts, each worker host on a core of its own, all on one virtual switch.
Then faults on that network: a worker host cut off for longer and for shorter than the stale
timeout, the services' Redis and PostgreSQL restarted mid-sweep, the services host crashing while a
worker waits on its database, a slow and lossy link, a worker host that dies for good.

Every test waits for states in the database, never for a fixed time; the only fixed times are
the lengths of the faults themselves. Counts come from the rows and from an audit trigger that
records every write of a result. Needs root (skipped otherwise; CI runs as root):

    sudo .venv/bin/python -m pytest tests/e2e/test_netns.py      # or: -m "not netns" to skip

Each test's logs (workers, Redis, PostgreSQL, the faults' timeline) are copied to its tmp_path,
e.g. /tmp/pytest-of-root/pytest-N/test_NAME0/logs/."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.support.fleet import (
    Fleet,
    Services,
    read_recipe,
    services_unavailable,
)
from tests.support.hosts import Net, unavailable
from tests.support.sweeps import numpy_epochs_per_second
from tests.support.waiting import wait_for

_why_not = unavailable() or services_unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.netns,
              pytest.mark.skipif(_why_not is not None, reason=str(_why_not))]

# Seconds of training per job, alone on a core; faults are sized against it.
JOB_S = 3.0
# "Work flowing again within a few seconds" of a service's return: the first job claimed.
RECOVERY_S = 5.0


@pytest.fixture(scope="module")
def recipe():
    return read_recipe()


@pytest.fixture(scope="module")
def services(recipe):
    net = Net(workers=3).up()
    try:
        yield Services(net, recipe).start()
    finally:
        net.down()


@pytest.fixture
def fleet(services, recipe, tmp_path):
    """A fresh database and an empty Redis on the module's hosts; at the end every worker and
    scheduler process is killed, every link healed and both services up again."""
    net = services.net
    services.reset()
    f = Fleet(net, services, recipe)
    yield f
    net.keep_logs(tmp_path / "logs")  # pytest keeps the last runs' tmp_path: look there
    for path in [*net.logs.glob("worker*.log"), net.logs / "faults.log"]:
        path.unlink(missing_ok=True)
    f.stop_workers()
    net.restore()
    services.ensure_up()


@pytest.fixture(scope="module")
def job_epochs() -> int:
    return int(JOB_S * numpy_epochs_per_second())


def numpy_sweep(f: Fleet, name: str, jobs: int, epochs: int) -> str:
    return f.submit("--name", name, "--variant", "numpy", "--seed", f"0-{jobs - 1}",
                    "--epochs", str(epochs), "--batch-size", "1")


def running_on(f: Fleet, sweep_id: str, host: str) -> list[dict]:
    return [r for r in f.rows(sweep_id) if r["status"] == "running" and r["host"] == host]


def assert_stored_exactly_once(f: Fleet, sweep_id: str, rows: list[dict], jobs: int) -> None:
    """``jobs`` distinct rows, all succeeded, each result written once (audit trigger), by the
    worker the row names, and no ended row changed afterwards."""
    assert len(rows) == jobs and len({r["id"] for r in rows}) == jobs
    assert Counter(r["status"] for r in rows) == {"succeeded": jobs}, rows
    writes = f.writes(sweep_id)
    assert [w for w in writes if w["overwrite"]] == [], "an ended row was written again"
    assert Counter(w["job_id"] for w in writes) == {r["id"]: 1 for r in rows}, writes
    assert {w["job_id"]: w["worker"] for w in writes} == {r["id"]: r["worker"] for r in rows}


def nothing_unacknowledged(f: Fleet, host: str, addr: str, port: int) -> bool:
    """``host`` has connections to ``addr:port`` and no data on them waiting for an ACK."""
    out = f.net.run(host, ["ss", "-tnoH", "state", "established", "dst", f"{addr}:{port}"])
    return bool(out.stdout.strip()) and "timer:(on" not in out.stdout


def since(rows: list[dict], key: str, t: float) -> float | None:
    """Seconds from ``t`` (time.time()) to the first ``key`` time after it among ``rows``."""
    later = [r[key].timestamp() - t for r in rows if r[key] and r[key].timestamp() > t]
    return min(later, default=None)


# -- the recipe ----------------------------------------------------------------------------------

def test_the_readme_recipe_runs_a_sweep_across_hosts_by_name(fleet, recipe):
    for host in ("worker1", "worker2"):
        fleet.start_worker(host)
    fleet.wait_ready("worker1", "worker2")  # so that both can take part
    sub = fleet.run(recipe.submit)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    sweep_id = sub.stdout.split()[-1]
    done = fleet.run(recipe.status, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr

    rows = fleet.rows(sweep_id)
    assert len(rows) == 18 and len({r["id"] for r in rows}) == 18  # examples/tutorial.yaml
    assert {r["status"] for r in rows} <= {"succeeded", "diverged"}
    assert all(r["attempts"] == 1 for r in rows)
    assert Counter(w["job_id"] for w in fleet.writes(sweep_id)) == {r["id"]: 1 for r in rows}
    hosts = {r["host"] for r in rows}
    assert hosts and hosts <= {"worker1", "worker2"}
    # Each worker host reaches the services by name from its own host. Which of two ready
    # workers takes a message first is theirs to decide (one may take the whole sweep on a busy
    # machine), so a host that took no part shows it on a sweep of its own, trained alone.
    for idle in sorted({"worker1", "worker2"} - hosts):
        for host in hosts:
            fleet.net.kill_host(host)
        alone = numpy_sweep(fleet, f"by-name-on-{idle}", 2, 100)
        assert {r["host"] for r in fleet.wait_ended(alone, 2)} == {idle}


# -- a worker host cut off -----------------------------------------------------------------------

def test_a_host_cut_off_past_the_stale_timeout_has_its_jobs_finished_elsewhere(
        fleet, job_epochs):
    stale = 10
    for host in ("worker1", "worker2", "worker3"):
        fleet.start_worker(host, POLYFIT_STALE_AFTER_S=str(stale))
    sweep_id = numpy_sweep(fleet, "cut-long", 9, job_epochs)
    in_hand = wait_for(lambda: running_on(fleet, sweep_id, "worker1"), 90,
                       "worker1 to start a job")
    ids = {r["id"] for r in in_hand}
    fleet.net.partition("worker1")
    cut = time.monotonic()

    def taken_over() -> bool:
        now = {r["id"]: r for r in fleet.rows(sweep_id)}
        return all(now[i]["attempts"] == 2 and now[i]["host"] in ("worker2", "worker3")
                   for i in ids)

    wait_for(taken_over, 90, "worker1's jobs to be claimed again by another host")
    moved_in = time.monotonic() - cut
    fleet.net.heal("worker1")
    rows = fleet.wait_ended(sweep_id, 9)
    # Back on the network, worker1 stores what it trained while cut off: the store refuses it
    # (its jobs belong to another worker now), or its retried task finds them ended.
    refused = wait_for(
        lambda: [s for s in ("'stored': 0", "'ran': 0") if s in fleet.worker_log("worker1")],
        120, "worker1 to come back and have its late result refused")
    print(f"taken over {moved_in:.1f} s after the cut; worker1's late result: {refused}")

    assert_stored_exactly_once(fleet, sweep_id, rows, 9)
    for r in rows:
        if r["id"] in ids:
            assert r["attempts"] == 2 and r["host"] != "worker1", r
        else:
            assert r["attempts"] == 1, r
    # Reclaimed once the heartbeat (refreshed every stale/4) was stale, a reaper had run (every
    # stale/2) and a worker was free (each job takes JOB_S).
    assert stale * 3 / 4 <= moved_in <= stale + stale / 2 + 2 * JOB_S + 10, moved_in
    assert fleet.alive("worker1")


def test_a_cut_off_hosts_result_is_kept_when_no_other_host_took_its_job(fleet, job_epochs):
    # worker2 is a GPU host: its reaper puts worker1's job back in the queue once its heartbeat
    # is stale, but it never takes a CPU job. Nobody claims the job again, so when worker1
    # comes back with the result, nothing stands against storing it.
    stale = 8
    fleet.start_worker("worker1", POLYFIT_STALE_AFTER_S=str(stale))
    fleet.start_worker("worker2", gpu=True, POLYFIT_STALE_AFTER_S=str(stale),
                       POLYFIT_EMULATE_CUDA="1")
    sweep_id = numpy_sweep(fleet, "cut-unclaimed", 1, job_epochs)
    wait_for(lambda: running_on(fleet, sweep_id, "worker1"), 90,
                     "worker1 to start the job")
    fleet.net.partition("worker1")
    wait_for(lambda: fleet.rows(sweep_id)[0]["status"] == "queued", 60,
             "the GPU host's reaper to put the job back in the queue")
    fleet.net.heal("worker1")
    [row] = fleet.wait_ended(sweep_id, 1, timeout=120)

    assert_stored_exactly_once(fleet, sweep_id, [row], 1)
    assert row["host"] == "worker1"
    assert row["attempts"] == 1, (
        "worker1's result was thrown away although no other host had claimed the job, and "
        "the job was trained again")


def test_a_host_cut_off_for_less_than_the_stale_timeout_runs_nothing_twice(fleet, job_epochs):
    stale, cut_s = 20, 4.0
    for host in ("worker1", "worker2"):
        fleet.start_worker(host, POLYFIT_STALE_AFTER_S=str(stale))
    sweep_id = numpy_sweep(fleet, "cut-short", 4, job_epochs)
    in_hand = wait_for(lambda: running_on(fleet, sweep_id, "worker1"), 90,
                       "worker1 to start a job")
    fleet.net.partition("worker1")
    time.sleep(cut_s)  # the length of the fault, not a wait for a state
    fleet.net.heal("worker1")
    rows = fleet.wait_ended(sweep_id, 4)

    assert_stored_exactly_once(fleet, sweep_id, rows, 4)
    assert all(r["attempts"] == 1 for r in rows), rows
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[r["id"]]["host"] == "worker1" for r in in_hand)


# -- the services host ---------------------------------------------------------------------------

def test_redis_restarted_on_the_services_host_loses_nothing(fleet, services, job_epochs):
    outage_s = 3.0
    for host in ("worker1", "worker2"):
        fleet.start_worker(host, POLYFIT_STALE_AFTER_S="10")
    sweep_id = numpy_sweep(fleet, "redis-restart", 10, job_epochs // 2)
    wait_for(lambda: sum(r["status"] == "succeeded" for r in fleet.rows(sweep_id)) >= 2, 90,
             "two jobs to finish")
    services.kill_redis()
    assert sum(r["status"] == "queued" for r in fleet.rows(sweep_id)) >= 2  # mid-sweep
    time.sleep(outage_s)
    services.start_redis()
    back = time.time()
    rows = fleet.wait_ended(sweep_id, 10)

    assert_stored_exactly_once(fleet, sweep_id, rows, 10)
    assert all(r["attempts"] == 1 for r in rows), rows
    assert fleet.alive("worker1") and fleet.alive("worker2")
    claimed = since(rows, "started_at", back)
    print(f"redis back: first claim after {claimed:.1f} s, first result after "
          f"{since(rows, 'finished_at', back):.1f} s")
    assert claimed is not None and claimed < RECOVERY_S, claimed


def test_postgres_stopped_on_the_services_host_loses_nothing_and_trains_nothing_twice(
        fleet, services, job_epochs):
    # stale 20 s: a 10 s outage does not make the jobs in hand look abandoned.
    outage_s = 10.0
    for host in ("worker1", "worker2"):
        fleet.start_worker(host, POLYFIT_STALE_AFTER_S="20")
    sweep_id = numpy_sweep(fleet, "pg-restart", 8, job_epochs)
    wait_for(lambda: {r["host"] for r in fleet.rows(sweep_id) if r["status"] == "running"}
             == {"worker1", "worker2"}, 90, "both hosts to train a job")
    services.stop_pg()  # both hosts finish their job while the database is away
    time.sleep(outage_s)
    services.start_pg()
    back = time.time()
    rows = fleet.wait_ended(sweep_id, 8, timeout=180)

    assert_stored_exactly_once(fleet, sweep_id, rows, 8)
    twice = [r for r in rows if r["attempts"] != 1]
    claimed = since(rows, "started_at", back)
    stored = since(rows, "finished_at", back)
    print(f"postgres back: first claim after {claimed} s, first result after {stored} s; "
          f"{len(twice)} jobs trained twice")
    assert twice == [], "jobs trained twice across the database outage"
    assert fleet.alive("worker1") and fleet.alive("worker2")
    # Both reconnected by themselves: each claimed work after the restart.
    assert {r["host"] for r in rows if r["started_at"].timestamp() > back} == {
        "worker1", "worker2"}
    assert claimed is not None and claimed < RECOVERY_S, claimed


def test_a_worker_waiting_on_the_database_when_its_host_crashes_does_not_hang(
        fleet, services, job_epochs):
    # A row lock taken here keeps worker1's heartbeat UPDATE waiting on the server; then the
    # services host crashes (every process killed, its kernel's sockets gone, so no FIN or RST
    # ever reaches worker1) and boots again. Nothing will ever arrive on worker1's old
    # connection: only a TCP keepalive or a timeout on the client side can tell it so. The same
    # happens, by chance, to any statement in flight when a database host crashes or drops off
    # the network. stale 20 s: the heartbeat beats every 5 s, and a 9 s job is saved long
    # before its blocked heartbeat makes it look abandoned.
    fleet.start_worker("worker1", POLYFIT_STALE_AFTER_S="20")
    sweep_id = numpy_sweep(fleet, "db-host-crash", 1, 3 * job_epochs)
    [job] = wait_for(lambda: running_on(fleet, sweep_id, "worker1"), 90,
                     "worker1 to start the job")
    worker1 = fleet.net.hosts["worker1"].addr
    locker = services.connect()  # dies with the server below
    try:
        locker.execute("BEGIN")
        locker.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job["id"],))
        wait_for(lambda: fleet.query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND host(client_addr) = %s", worker1)[0]["n"], 30,
            "worker1's heartbeat to wait for the lock")
        # ...and the server to have acknowledged it: a segment still to be retransmitted would
        # draw an RST from the rebooted host and tell worker1 after all.
        wait_for(lambda: nothing_unacknowledged(fleet, "worker1", services.addr, 5432), 30,
                 "the server to acknowledge worker1's statements")
        services.crash()
    finally:
        locker.close()
    services.boot()
    back = time.monotonic()
    [row] = fleet.wait_ended(sweep_id, 1, timeout=60)
    assert_stored_exactly_once(fleet, sweep_id, [row], 1)

    # worker1 must work again: its one pool process finishes the task (instead of joining,
    # forever, a heartbeat thread that waits for an answer that will never come) and takes
    # the next sweep.
    follow_up = numpy_sweep(fleet, "db-host-crash-after", 2, job_epochs // 10)
    try:
        rows = fleet.wait_ended(follow_up, 2, timeout=45)
    except AssertionError as e:
        sockets = fleet.net.run("worker1", ["ss", "-tnpoH", "dst", services.addr]).stdout
        raise AssertionError(f"{e}: worker1 does not work again; its connections to the "
                             f"services host:\n{sockets}") from None
    print(f"worker1 working again {time.monotonic() - back:.1f} s after the services host "
          "came back")
    assert_stored_exactly_once(fleet, follow_up, rows, 2)


# -- links and hosts -----------------------------------------------------------------------------

def test_a_slow_lossy_link_loses_and_doubles_nothing(fleet, job_epochs):
    fleet.net.slow("worker1", delay_ms=100, loss_pct=2)
    # The stale timeout is far above what the link delays a heartbeat by (a few retransmits,
    # about a second), also on a busy machine: a job reclaimed here would be a test of the load.
    fleet.start_worker("worker1", POLYFIT_STALE_AFTER_S="30")
    fleet.wait_ready("worker1")
    sweep_id = numpy_sweep(fleet, "slow-link", 6, job_epochs // 2)
    # The slow host takes part for certain: the fast one starts only once it holds a job (two
    # ready workers race for the first message, and the fast one won on a loaded machine).
    wait_for(lambda: fleet.rows(sweep_id) and any(r["host"] == "worker1" for r in
                                                  fleet.rows(sweep_id)), 120,
             "the slow host to take a job")
    fleet.start_worker("worker2", POLYFIT_STALE_AFTER_S="30")
    rows = fleet.wait_ended(sweep_id, 6, timeout=240)

    assert_stored_exactly_once(fleet, sweep_id, rows, 6)
    assert all(r["attempts"] == 1 for r in rows), rows
    assert "worker1" in {r["host"] for r in rows}


def test_a_worker_host_that_dies_for_good_leaves_its_jobs_to_the_others(fleet, job_epochs):
    stale = 8
    for host in ("worker1", "worker2", "worker3"):
        fleet.start_worker(host, POLYFIT_STALE_AFTER_S=str(stale))
    sweep_id = numpy_sweep(fleet, "host-dies", 6, job_epochs)
    in_hand = wait_for(lambda: running_on(fleet, sweep_id, "worker1"), 90,
                       "worker1 to start a job")
    assert fleet.net.kill_host("worker1") >= 2  # the worker and its pool process at least
    rows = fleet.wait_ended(sweep_id, 6)

    assert_stored_exactly_once(fleet, sweep_id, rows, 6)
    ids = {r["id"] for r in in_hand}
    for r in rows:
        assert r["attempts"] == (2 if r["id"] in ids else 1), r
        if r["id"] in ids:
            assert r["host"] in ("worker2", "worker3")
    assert not fleet.alive("worker1")
    assert fleet.alive("worker2") and fleet.alive("worker3")
