"""A polyfit fleet on the namespaced hosts of ``tests/support/hosts.py``, set up the way
docs/fleet.md's "A fleet" section says.

The shell block between ``<!-- fleet-recipe:start -->`` and ``<!-- fleet-recipe:end -->`` in
docs/fleet.md is the recipe: its ``redis-server`` line starts the services host's Redis, its
``export`` lines are the environment of every other host, its ``polyfit worker`` lines start the
workers and its ``polyfit sweep submit`` and ``polyfit status`` lines are what the scheduler host
runs. A docs edit that breaks the recipe breaks the tests built on this module.

The services host also runs a private PostgreSQL: initdb into the run folder, started as the
``postgres`` user, listening on the services host's address only, with password login for the
role ``polyfit`` from the test subnet (the recipe's URL). An audit table filled by triggers on
``jobs`` counts every write of a result (``running`` -> an ended state) and every change to a row
that had already ended. The test process reaches Redis and PostgreSQL through their Unix sockets
in the run folder: it contacts no network address."""

from __future__ import annotations

import pwd
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT
from tests.support.hosts import SUBNET, HostsError, Net, base_env, remove_pg_shm
from tests.support.waiting import wait_for

RECIPE_START = "<!-- fleet-recipe:start -->"
RECIPE_END = "<!-- fleet-recipe:end -->"
ENDED = ("succeeded", "diverged", "failed", "cancelled")


# -- the recipe ----------------------------------------------------------------------------------

class RecipeError(Exception):
    """Raised when docs/fleet.md's fleet recipe is missing or lacks a command the fleet needs."""


@dataclass(frozen=True)
class Recipe:
    exports: tuple[tuple[str, str], ...]
    redis: tuple[str, ...]
    worker_cpu: tuple[str, ...]
    worker_gpu: tuple[str, ...]
    submit: tuple[str, ...]
    status: tuple[str, ...]

    def script(self, argv: tuple[str, ...] | list[str]) -> str:
        """A shell script that sets the recipe's environment and then runs ``argv``."""
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.exports)
        return f"set -e\n{exports}exec {shlex.join(argv)}\n"


def read_recipe(readme: Path = ROOT / "docs" / "fleet.md") -> Recipe:
    text = readme.read_text()
    if RECIPE_START not in text or RECIPE_END not in text:
        raise RecipeError(f"{readme.name} has no {RECIPE_START} ... {RECIPE_END} block")
    block = text.split(RECIPE_START, 1)[1].split(RECIPE_END, 1)[0]
    exports: list[tuple[str, str]] = []
    commands: list[tuple[str, ...]] = []
    for line in block.splitlines():
        if line.strip().startswith("```"):
            continue
        tokens = shlex.split(line, comments=True)
        if tokens and tokens[-1] == "&":
            tokens.pop()
        if not tokens:
            continue
        if tokens[0] == "export":
            exports += [tuple(t.split("=", 1)) for t in tokens[1:]]
        else:
            commands.append(tuple(tokens))

    def one(what: str, test: Callable[[tuple[str, ...]], bool]) -> tuple[str, ...]:
        found = [c for c in commands if test(c)]
        if len(found) != 1:
            raise RecipeError(f"{readme.name}'s fleet recipe has {len(found)} {what} lines, "
                              "not one")
        return found[0]

    names = {k for k, _ in exports}
    for needed in ("POLYFIT_BROKER_URL", "POLYFIT_DB_URL"):
        if needed not in names:
            raise RecipeError(f"{readme.name}'s fleet recipe does not export {needed}")
    worker = ("polyfit", "worker")
    return Recipe(
        exports=tuple(exports),
        redis=one("redis-server", lambda c: c[0] == "redis-server"),
        worker_cpu=one("CPU worker", lambda c: c[:2] == worker and "cpu" in c),
        worker_gpu=one("GPU worker", lambda c: c[:2] == worker and "cuda" in c),
        submit=one("sweep submit", lambda c: c[:3] == ("polyfit", "sweep", "submit")),
        status=one("status", lambda c: c[:2] == ("polyfit", "status")),
    )


# -- the services host ---------------------------------------------------------------------------

def pg_bin(name: str) -> Path | None:
    """A PostgreSQL program: on PATH, else the newest /usr/lib/postgresql/N/bin (Debian)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = [p for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}")
                  if p.parent.parent.name.isdigit()]
    return max(candidates, key=lambda p: int(p.parent.parent.name), default=None)


def services_unavailable() -> str | None:
    """Why the services host cannot run here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    for program in ("initdb", "pg_ctl", "postgres"):
        if pg_bin(program) is None:
            return f"PostgreSQL's {program} is not installed"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres user to run PostgreSQL as"
    return None


# Counts result writes (a row leaving ``running``, or ``queued`` for a late result that nobody
# claimed since, for an ended state: what save_results does, once per job if every result is
# stored exactly once) and changes to rows that had ended (which nothing may do; ``polyfit
# sweep resume`` aside, which no test here runs).
AUDIT_SQL = """
CREATE TABLE result_writes (
    n bigserial PRIMARY KEY, sweep_id text NOT NULL, job_id text NOT NULL, worker text,
    status text, attempts int, overwrite boolean NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION audit_result_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO result_writes (sweep_id, job_id, worker, status, attempts, overwrite)
    VALUES (NEW.sweep_id, NEW.id, NEW.worker, NEW.status, NEW.attempts,
            OLD.status NOT IN ('running', 'queued'));
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_result_write AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.status IN ('running', 'queued')
          AND NEW.status IN ('succeeded', 'diverged', 'failed'))
    EXECUTE FUNCTION audit_result_write();
CREATE TRIGGER jobs_ended_row_changed AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.status IN ('succeeded', 'diverged', 'failed', 'cancelled')
          AND (NEW.status, NEW.worker, NEW.mse, NEW.final_loss, NEW.finished_at, NEW.attempts)
              IS DISTINCT FROM
              (OLD.status, OLD.worker, OLD.mse, OLD.final_loss, OLD.finished_at, OLD.attempts))
    EXECUTE FUNCTION audit_result_write();
"""


class Services:
    """Redis and PostgreSQL on the services host."""

    def __init__(self, net: Net, recipe: Recipe) -> None:
        self.net, self.recipe = net, recipe
        self.addr = net.hosts["services"].addr
        self.redis_dir = net.run_dir / "redis"
        self.redis_socket = self.redis_dir / "redis.sock"
        self.pg_dir = net.run_dir / "pg"
        self.pg_data = self.pg_dir / "data"
        self.pg_socket_dir = self.pg_dir / "sock"
        self.redis_proc: subprocess.Popen | None = None
        self.pg_running = False

    def start(self) -> Services:
        self.redis_dir.mkdir()
        self.start_redis()
        self._init_pg()
        self.start_pg()
        with self.connect("postgres", "postgres") as c:
            c.execute("CREATE ROLE polyfit LOGIN PASSWORD 'polyfit'")
        return self

    # -- Redis --

    def start_redis(self) -> None:
        """The recipe's redis-server, bound to the services host's address, its append-only
        file in the run folder (the same one after a restart)."""
        argv = [*self.recipe.redis, "--bind", self.addr, "--port", "6379",
                "--dir", str(self.redis_dir), "--unixsocket", str(self.redis_socket),
                "--unixsocketperm", "700", "--save", ""]
        self.redis_proc = self.net.start("services", argv, log="redis")
        wait_for(self._redis_answers, 30, "redis-server on the services host to answer")
        self.net.note("redis-server up")

    def _redis_answers(self) -> bool:
        import redis

        if self.redis_proc.poll() is not None:
            raise HostsError(f"redis-server exited: {self.net.log('redis')[-2000:]}")
        try:
            return bool(self.redis().ping())
        except redis.ConnectionError:
            return False

    def redis(self):
        import redis

        return redis.Redis(unix_socket_path=str(self.redis_socket), socket_timeout=10)

    def kill_redis(self) -> None:
        """SIGKILL: no shutdown, only what the append-only file holds survives."""
        self.redis_proc.kill()
        self.redis_proc.wait(10)
        self.net.note("redis-server killed")

    # -- PostgreSQL --

    def _as_postgres(self, *argv: str, timeout: float = 90) -> subprocess.CompletedProcess:
        r = self.net.run("services", ["runuser", "-u", "postgres", "--", *argv], timeout=timeout)
        if r.returncode != 0:
            raise HostsError(f"{' '.join(argv)}: {r.stdout}{r.stderr}")
        return r

    def _init_pg(self) -> None:
        self.pg_dir.mkdir()
        self.pg_socket_dir.mkdir()
        for path in (self.pg_dir, self.pg_socket_dir):
            shutil.chown(path, "postgres", "postgres")
        self._as_postgres(str(pg_bin("initdb")), "-D", str(self.pg_data), "-U", "postgres",
                          "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
                          "-E", "UTF8", "--locale=C")
        with open(self.pg_data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '{self.addr}'\nport = 5432\n"
                f"unix_socket_directories = '{self.pg_socket_dir}'\n"
                # Crash safety of the machine is not under test (processes die, the kernel
                # does not); shared memory in files under the data folder, which goes with it.
                "fsync = off\ndynamic_shared_memory_type = mmap\n")
        (self.pg_data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host polyfit polyfit {SUBNET}.0/24 scram-sha-256\n")

    def start_pg(self) -> None:
        self._as_postgres(str(pg_bin("pg_ctl")), "-D", str(self.pg_data), "-l",
                          str(self.pg_dir / "log"), "-w", "-t", "60", "start")
        self.pg_running = True
        self.net.note("postgres up")

    def stop_pg(self) -> None:
        """``pg_ctl stop -m fast``: sessions are ended, the server goes down cleanly."""
        self.pg_running = False
        self._as_postgres(str(pg_bin("pg_ctl")), "-D", str(self.pg_data), "-m", "fast", "-w",
                          "-t", "60", "stop")
        self.net.note("postgres stopped")

    def kill_pg(self) -> None:
        """SIGKILL every PostgreSQL process (the server dies at once)."""
        import os
        import signal

        from tests.support.hosts import namespace_pids

        uid = pwd.getpwnam("postgres").pw_uid

        def pg_pids() -> list[int]:
            mine = []
            for pid in namespace_pids(self.net.hosts["services"].ns):
                try:
                    if os.stat(f"/proc/{pid}").st_uid == uid:
                        mine.append(pid)
                except FileNotFoundError:
                    pass
            return mine

        self.pg_running = False
        for pid in pg_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not pg_pids(), 30, "every PostgreSQL process to be gone")
        self.net.note("postgres killed")
        self._forget_killed_postmaster()

    def _forget_killed_postmaster(self) -> None:
        # The killed postmaster's parent is the machine's init, which reaps it in its own time;
        # while it is a zombie, its pid in postmaster.pid makes the next start refuse. It is
        # dead: after a while, do what a rebooted machine would find, no pid file.
        try:
            pid = int((self.pg_data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5,
                     "the killed postmaster to be reaped")
        except AssertionError:
            remove_pg_shm(self.pg_data)
            (self.pg_data / "postmaster.pid").unlink(missing_ok=True)

    def crash(self) -> None:
        """The services host dies (``Net.crash``), Redis and PostgreSQL with it: nothing is
        shut down, no peer is told."""
        self.pg_running = False
        self.net.crash("services")
        self.redis_proc.wait(10)
        self._forget_killed_postmaster()

    def boot(self) -> None:
        """The services host comes back and starts Redis and PostgreSQL on their old data."""
        self.net.boot("services")
        self.ensure_up()

    def connect(self, user: str = "polyfit", dbname: str = "polyfit"):
        import psycopg

        return psycopg.connect(host=str(self.pg_socket_dir), port=5432, user=user,
                               dbname=dbname, autocommit=True, connect_timeout=10)

    def reset(self) -> None:
        """An empty Redis, and a new database made by polyfit's own ``create_schema`` plus the
        audit triggers."""
        from store import create_schema, make_engine

        self.ensure_up()
        self.redis().flushall()
        with self.connect("postgres", "postgres") as c:
            c.execute("DROP DATABASE IF EXISTS polyfit WITH (FORCE)")
            c.execute("CREATE DATABASE polyfit OWNER polyfit")
        engine = make_engine(f"postgresql+psycopg://polyfit@/polyfit?host={self.pg_socket_dir}")
        try:
            create_schema(engine)
        finally:
            engine.dispose()
        with self.connect() as c:
            c.execute(AUDIT_SQL)

    def ensure_up(self) -> None:
        if self.redis_proc is None or self.redis_proc.poll() is not None:
            self.start_redis()
        if not self.pg_running:
            self.start_pg()


# -- workers, the scheduler host, results --------------------------------------------------------

def host_of(worker: str | None) -> str | None:
    """``polyfit-cpu-PID@HOST/PID`` -> HOST (each worker host has its own hostname)."""
    return worker.split("@", 1)[1].split("/", 1)[0] if worker else None


class Fleet:
    """The recipe run on the hosts of ``net``."""

    def __init__(self, net: Net, services: Services, recipe: Recipe) -> None:
        self.net, self.services, self.recipe = net, services, recipe
        self.workers: dict[str, list[subprocess.Popen]] = {}

    def start_worker(self, host: str, *, gpu: bool = False, **settings: str
                     ) -> subprocess.Popen:
        """The recipe's CPU (or GPU) worker command on ``host``, named after the host and
        pinned to its core; ``settings`` are extra environment variables."""
        started = self.workers.setdefault(host, [])
        p = self.net.start(host, ["sh", "-c", self.recipe.script(
            self.recipe.worker_gpu if gpu else self.recipe.worker_cpu)],
            log=f"{host}-worker{len(started)}", env=base_env(**settings), hostname=True,
            pin=True)
        started.append(p)
        return p

    def worker_log(self, host: str) -> str:
        return "".join(self.net.log(f"{host}-worker{i}")
                       for i in range(len(self.workers.get(host, []))))

    def wait_ready(self, *hosts: str, timeout: float = 120) -> None:
        """Until the worker on each of ``hosts`` has connected and says it is ready."""
        for host in hosts:
            wait_for(lambda h=host: " ready." in self.worker_log(h), timeout,
                     f"the worker on {host} to be ready")

    def alive(self, host: str) -> bool:
        return any(p.poll() is None for p in self.workers.get(host, []))

    def stop_workers(self) -> None:
        for host in self.net.workers:
            self.net.kill_host(host)
        self.net.kill_host("scheduler")
        self.workers.clear()

    def run(self, argv: tuple[str, ...] | list[str], timeout: float = 120
            ) -> subprocess.CompletedProcess:
        """``argv`` on the scheduler host, in the recipe's environment."""
        return self.net.run("scheduler", ["sh", "-c", self.recipe.script(argv)],
                            timeout=timeout)

    def submit(self, *args: str) -> str:
        """The recipe's submit command with ``args`` instead of its spec file; the sweep id."""
        r = self.run([*self.recipe.submit[:3], *args])
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.split()[-1]

    def query(self, sql: str, *params) -> list[dict]:
        from psycopg.rows import dict_row

        with self.services.connect() as c:
            return c.cursor(row_factory=dict_row).execute(sql, params).fetchall()

    def rows(self, sweep_id: str) -> list[dict]:
        got = self.query("SELECT id, status, attempts, worker, started_at, finished_at, "
                         "duration_s FROM jobs WHERE sweep_id = %s ORDER BY id", sweep_id)
        for r in got:
            r["host"] = host_of(r["worker"])
        return got

    def writes(self, sweep_id: str) -> list[dict]:
        """Every result written for the sweep's jobs (audit trigger), in order."""
        return self.query("SELECT job_id, worker, status, attempts, overwrite, at "
                          "FROM result_writes WHERE sweep_id = %s ORDER BY n", sweep_id)

    def ended(self, sweep_id: str, jobs: int) -> list[dict] | None:
        got = self.rows(sweep_id)
        return got if len(got) == jobs and all(r["status"] in ENDED for r in got) else None

    def wait_ended(self, sweep_id: str, jobs: int, timeout: float = 150) -> list[dict]:
        return wait_for(lambda: self.ended(sweep_id, jobs), timeout,
                        f"the {jobs} jobs of sweep {sweep_id} to end")

