"""The one settings object: built once at a process edge (the CLI, or the worker module that
``celery -A worker.app`` imports) from flags and environment variables, then passed down."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from kombu import transport as kombu_transport
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from polyfit_models import SettingError, fuse_settings
from store.db import DEFAULT_DB_URL, ENV_DB, db_url_from
from store.redact import redact_url, remember_secrets

ENV_BROKER = "POLYFIT_BROKER_URL"
ENV_MAX_JOBS = "POLYFIT_MAX_JOBS"
ENV_MAX_JOB_WORK = "POLYFIT_MAX_JOB_WORK"
ENV_STALE_AFTER = "POLYFIT_STALE_AFTER_S"
ENV_MAX_RETRIES = "POLYFIT_MAX_RETRIES"
ENV_VISIBILITY = "POLYFIT_VISIBILITY_TIMEOUT_S"
ENV_MAX_ATTEMPTS = "POLYFIT_MAX_ATTEMPTS"
ENV_STORE_PATIENCE = "POLYFIT_STORE_PATIENCE_S"
ENV_CPU_MEMORY = "POLYFIT_CPU_MEMORY_MB"
ENV_GPU_MEMORY = "POLYFIT_GPU_MEMORY_MB"
ENV_SQL_URL = "POLYFIT_SQL_URL"
ENV_SQL_TIMEOUT = "POLYFIT_SQL_TIMEOUT_S"
ENV_SQL_MAX_ROWS = "POLYFIT_SQL_MAX_ROWS"
ENV_FUSE = "POLYFIT_FUSE"
ENV_PROGRESS = "POLYFIT_PROGRESS_S"
ENV_COMPILE_CACHE = "POLYFIT_COMPILE_CACHE"


def embedded_broker_url(db_url: str) -> str:
    """The no-server broker that lives next to the results database.

    For a SQLite results file ``x.sqlite`` it is kombu's SQLAlchemy transport on
    ``x-broker.sqlite`` beside it (its own file, so broker polling never contends with result
    writes); for a server database it is the same transport on that database."""
    try:
        url = make_url(db_url)
    except (ArgumentError, ValueError) as e:
        raise SettingError(f"not a database URL: {redact_url(repr(db_url))}") from e
    if url.get_backend_name() == "sqlite":
        db = url.database or "polyfit.sqlite"
        if db == ":memory:":
            raise SettingError("an in-memory database cannot be shared with workers")
        path = Path(db).expanduser().resolve()
        return f"sqla+sqlite:///{path.with_name(path.stem + '-broker.sqlite')}"
    return "sqla+" + url.render_as_string(hide_password=False)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9.+-]*)://")
_EXAMPLE = "e.g. redis://HOST:6379/0, or leave it out for the embedded broker"


def check_broker_url(url: str) -> str:
    """``url`` if it is a broker URL a worker can use, else ``SettingError`` (one line, its
    password hidden): caught here, before a sweep is recorded, instead of as a ValueError deep
    in kombu or redis-py when the first message is sent (a port or a database that is not a
    number, an IPv6 host without its ``]``, a scheme no transport has), and a broker that lives
    inside one process (``memory://``, an in-memory SQLite) where no worker can reach it."""
    if not url.strip():
        raise SettingError(f"the broker URL is empty ({_EXAMPLE})")
    for one in url.split(";"):  # kombu's failover list
        _check_one_broker(one, redact_url(repr(one)))
    return url


def _check_one_broker(url: str, shown: str) -> None:
    m = _SCHEME.match(url)
    if m is None:
        raise SettingError(f"not a broker URL: {shown} ({_EXAMPLE})")
    scheme = m.group(1).lower()
    transport = scheme.split("+", 1)[0]
    if transport in ("sqla", "sqlalchemy"):
        try:
            database = make_url(url.split("+", 1)[1] if "+" in scheme else "")
            database.get_dialect()
        except (ArgumentError, ValueError, ImportError) as e:
            raise SettingError(f"not a broker URL: {shown}: after {transport}+ comes a "
                                f"database URL ({redact_url(str(e))})") from None
        if database.get_backend_name() == "sqlite" and database.database in (
                None, "", ":memory:"):
            raise SettingError(f"an in-memory broker ({shown}) cannot be shared with workers: "
                                f"give a file, or leave --broker out for the embedded broker")
        return
    if transport == "memory":
        raise SettingError(f"a memory:// broker lives inside one process and cannot be shared "
                            f"with workers ({_EXAMPLE})")
    if transport in ("redis", "rediss"):
        if scheme.endswith("+socket"):
            if not urlsplit(url).path:
                raise SettingError(f"not a broker URL: {shown}: redis+socket:// takes the "
                                    "path of a socket, e.g. redis+socket:///run/redis.sock")
            return
        try:
            parts = urlsplit(url)
            _ = parts.port, parts.hostname  # both raise ValueError when malformed
        except ValueError as e:
            raise SettingError(f"not a broker URL: {shown}: {e}") from None
        db = parts.path.strip("/")
        if db and not (db.isdigit() and int(db) < 2**31):
            raise SettingError(f"not a broker URL: {shown}: a Redis URL ends in the number of "
                                "its database (redis://HOST:6379/0)")
        return
    try:
        kombu_transport.get_transport_cls(transport)
    except (KeyError, ImportError, ValueError, AttributeError):
        raise SettingError(f"not a broker URL: {shown}: no transport for {scheme}:// "
                            f"({_EXAMPLE})") from None


def check_db_url(url: str, what: str = "results database") -> str:
    """``url`` if it is a database URL SQLAlchemy can read, else ``SettingError`` (one line,
    its password hidden): a port that is not a number, an IPv6 host without its ``]``, an
    unknown dialect. An in-memory SQLite is refused too: it ends with the command."""
    shown = redact_url(repr(url))
    try:
        parsed = make_url(url)
        parsed.get_dialect()  # make_url raised ValueError for a port that is not a number
    except (ArgumentError, ValueError, ImportError) as e:
        raise SettingError(f"not a {what} URL: {shown} ({redact_url(str(e))})") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise SettingError(f"an in-memory {what} ({shown}) is gone when the command ends: "
                            "give a file, e.g. sqlite:///polyfit.sqlite")
    return url


def _int(env: Mapping[str, str], name: str, default: int, low: int = 1,
         high: int = 10**15) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        number = float(raw)
    except ValueError as e:
        raise SettingError(f"{name} must be a number, got {raw!r}") from e
    if not (low <= number <= high) or number != int(number):
        raise SettingError(f"{name} must be a whole number in {low}..{high:,}, got {raw!r}")
    return int(number)


@dataclass(frozen=True, repr=False)
class Settings:
    """Every setting of a command or a worker, resolved once from flags and environment."""

    db_url: str = DEFAULT_DB_URL
    # None means the embedded broker next to the database.
    broker: str | None = None
    # Refuse sweeps larger than this many jobs...
    max_jobs: int = 1_000_000
    # ...and any job whose epochs x points exceeds this (a typo like --epochs 1e12).
    max_job_work: int = 2_000_000_000
    # A running job whose heartbeat is older than this is taken to have lost its worker; a
    # queued job enqueued longer ago than this, whose queue is empty, has lost its message.
    stale_after_s: float = 60.0
    # How often a task whose store call failed (database unreachable) is retried, with
    # exponential backoff, before it is given up (its jobs are then found by the reaper).
    max_retries: int = 5
    # Redis only: how long an unacknowledged message waits before it is delivered again
    # (the batch of a worker that died with it in hand, or that lost its connection).
    visibility_timeout_s: float = 90.0
    # A job whose worker is lost this many times (its heartbeat stopped: killed, out of
    # memory, cut off) ends ``failed`` instead of going round the queue forever.
    max_attempts: int = 3
    # How long a worker keeps retrying a store call (claim, save) while the database is
    # unreachable, keeping what it trained, before it gives the task back to Celery's retries.
    store_patience_s: float = 300.0
    # Memory one batch may use on a CPU worker process, and on a GPU (a GPU worker also keeps
    # each batch within half the card's free memory); a single job that needs more than its
    # device's budget is refused at submit.
    cpu_memory_mb: int = 256
    gpu_memory_mb: int = 8192
    # ``polyfit sql`` on PostgreSQL logs in as a read-only role (see ``polyfit db
    # create-reader``); None: the results URL with the user ``polyfit_reader``.
    sql_url: str | None = None
    # ``polyfit sql``: a statement running longer than this is stopped; at most this many rows
    # are returned.
    sql_timeout_s: float = 30.0
    sql_max_rows: int = 100_000
    # POLYFIT_FUSE: fuse each epoch into compiled kernels (True), never (False), or where it
    # pays (None: ``fit_many``'s default); POLYFIT_COMPILE_CACHE: where compiled kernels are kept.
    fuse: bool | None = None
    compile_cache: str | None = None
    # How often a worker writes its running jobs' epochs done and loss curves so far (0: not
    # until they end).
    progress_s: float = 5.0

    @property
    def heartbeat_s(self) -> float:
        """How often a worker refreshes the heartbeat of the jobs it trains: several beats per
        ``stale_after_s``, so a live worker's jobs never look stale."""
        return min(10.0, self.stale_after_s / 4)

    @property
    def reap_every_s(self) -> float:
        """How often each worker looks for jobs of dead workers and for lost messages."""
        return min(15.0, self.stale_after_s / 2)

    @property
    def broker_url(self) -> str:
        return self.broker or embedded_broker_url(self.db_url)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return redact_url(f"Settings({fields})")

    def budget_bytes(self, device: str) -> int:
        """The memory budget of one batch on ``device`` (a job's device value or a torch
        device: "cpu", "cuda", "cuda:N", "any" counts as the larger)."""
        cpu, gpu = self.cpu_memory_mb * 2**20, self.gpu_memory_mb * 2**20
        if device == "any":
            return max(cpu, gpu)
        return cpu if device == "cpu" else gpu

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags) -> Settings:
        """Flags (non-None values in ``flags``) win over environment variables."""
        env = os.environ if env is None else env
        fusing = fuse_settings(env, Path.home())
        base = cls(
            db_url=db_url_from(env),
            broker=env.get(ENV_BROKER) or None,
            max_jobs=_int(env, ENV_MAX_JOBS, cls.max_jobs),
            max_job_work=_int(env, ENV_MAX_JOB_WORK, cls.max_job_work),
            stale_after_s=float(_int(env, ENV_STALE_AFTER, int(cls.stale_after_s))),
            max_retries=_int(env, ENV_MAX_RETRIES, cls.max_retries, low=0, high=100),
            visibility_timeout_s=float(_int(env, ENV_VISIBILITY, int(cls.visibility_timeout_s))),
            max_attempts=_int(env, ENV_MAX_ATTEMPTS, cls.max_attempts, high=1000),
            store_patience_s=float(_int(env, ENV_STORE_PATIENCE, int(cls.store_patience_s),
                                        low=0, high=7 * 86400)),
            cpu_memory_mb=_int(env, ENV_CPU_MEMORY, cls.cpu_memory_mb, low=16, high=2**24),
            gpu_memory_mb=_int(env, ENV_GPU_MEMORY, cls.gpu_memory_mb, low=16, high=2**24),
            sql_url=env.get(ENV_SQL_URL) or None,
            sql_timeout_s=float(_int(env, ENV_SQL_TIMEOUT, int(cls.sql_timeout_s), high=86400)),
            sql_max_rows=_int(env, ENV_SQL_MAX_ROWS, cls.sql_max_rows, high=10**9),
            progress_s=float(_int(env, ENV_PROGRESS, int(cls.progress_s), low=0, high=86400)),
            fuse=fusing.fuse,
            compile_cache=str(fusing.cache_dir),
        )
        given = {k: v for k, v in flags.items() if v is not None}
        settings = replace(base, **given)
        for url in (settings.db_url, settings.broker, settings.sql_url):
            remember_secrets(url)
        check_db_url(settings.db_url)
        if settings.sql_url is not None:
            check_db_url(settings.sql_url, f"{ENV_SQL_URL} database")
        if settings.broker:  # empty: the embedded broker, as for the variable
            check_broker_url(settings.broker)
        return settings

    def to_env(self) -> dict[str, str]:
        """Environment for a child process (keeps credentials off the command line)."""
        env = {
            ENV_DB: self.db_url,
            ENV_MAX_JOBS: str(self.max_jobs),
            ENV_MAX_JOB_WORK: str(self.max_job_work),
            ENV_STALE_AFTER: str(int(self.stale_after_s)),
            ENV_MAX_RETRIES: str(self.max_retries),
            ENV_VISIBILITY: str(int(self.visibility_timeout_s)),
            ENV_MAX_ATTEMPTS: str(self.max_attempts),
            ENV_STORE_PATIENCE: str(int(self.store_patience_s)),
            ENV_CPU_MEMORY: str(self.cpu_memory_mb),
            ENV_GPU_MEMORY: str(self.gpu_memory_mb),
            ENV_FUSE: {None: "auto", True: "1", False: "0"}[self.fuse],
            ENV_PROGRESS: str(int(self.progress_s)),
        }
        if self.compile_cache:
            env[ENV_COMPILE_CACHE] = self.compile_cache
        if self.broker:
            env[ENV_BROKER] = self.broker
        return env
