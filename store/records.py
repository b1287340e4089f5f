"""ORM records for the results database. Named ``...Record`` because "model" already means a
fitted polynomial here. Column names of ``jobs`` and ``sweeps`` are part of the user contract:
people query them with plain SQL."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobStatus(StrEnum):
    """The states of a job row: ``queued -> running -> succeeded | diverged | failed``, or
    ``cancelled`` before it ran. With successive halving (``halving:`` in the spec) a job that
    reaches its rung's end is ``paused`` (its rung's result and training state kept) until the
    rung is ranked; then it is ``queued`` again for the next rung, or ends ``pruned`` with the
    result of the epoch it reached. The values are what the ``status`` column holds."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DIVERGED = "diverged"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    PRUNED = "pruned"


QUEUED, RUNNING = JobStatus.QUEUED, JobStatus.RUNNING
SUCCEEDED, DIVERGED = JobStatus.SUCCEEDED, JobStatus.DIVERGED
FAILED, CANCELLED = JobStatus.FAILED, JobStatus.CANCELLED
PAUSED, PRUNED = JobStatus.PAUSED, JobStatus.PRUNED
STATUSES = tuple(s.value for s in JobStatus)
# A job in one of these states will not change again unless someone resumes it.
ENDED = (SUCCEEDED, DIVERGED, FAILED, CANCELLED, PRUNED)
# The states a sweep counts as a success, whose results are a job's full training (a pruned
# job's result is of fewer epochs: never reused, nor a sweep's best).
OK = (SUCCEEDED, DIVERGED)


class Base(DeclarativeBase):
    """The tables polyfit declares (``Base.metadata``: what a results database holds)."""


class SweepRecord(Base):
    """A row of ``sweeps``: a sweep's id, name, normalized spec, labels and times."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # When the sweep was last submitted to, grown, continued or resumed: the sweep a command
    # means when none is named. Deferred: a database made before it (read, never upgraded,
    # by the read commands) has no such column, and loading a sweep must not ask for it.
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True,
                                                     deferred=True)
    # A user's labels (``--tag``, ``--note``, ``polyfit sweep tag`` and ``note``): a JSON
    # list of words, and a paragraph. Deferred for the same reason as ``used_at``.
    tags: Mapped[list | None] = mapped_column(JSON, nullable=True, deferred=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)


class JobRecord(Base):
    """A row of ``jobs``: one column per field of the job's declaration
    (``polyfit_models.fields``), with its SQL type, and the indexes its queries need."""

    __tablename__ = "jobs"

    # (sweep_id, id) is the unique key that makes a redelivered result a no-op.
    sweep_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    variant: Mapped[str] = mapped_column(String(32))
    lr: Mapped[float] = mapped_column(Float)
    degree: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    optimizer: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(16))
    dtype: Mapped[str] = mapped_column(String(16))
    x_start: Mapped[float] = mapped_column(Float)
    x_stop: Mapped[float] = mapped_column(Float)
    x_points: Mapped[int] = mapped_column(Integer)
    # The gap to the optimum at which the job stops early (a setting; None: every epoch).
    stop_gap: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    final_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    mse: Mapped[float | None] = mapped_column(Float, nullable=True)
    optimum_mse: Mapped[float | None] = mapped_column(Float, nullable=True)
    coefficients: Mapped[list | None] = mapped_column(JSON, nullable=True)
    monomial: Mapped[list | None] = mapped_column(JSON, nullable=True)
    diverged_at_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The epoch at which a job with a stop_gap was within it of the optimum, and stopped.
    stopped_at_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Epochs trained: a running job's progress (written every few seconds while it trains,
    # with its loss curve so far), and once it ended how far it went.
    epochs_done: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What trained the result, for reproducing it: a JSON object (as text, for every SQL
    # dialect and export) of polyfit's, torch's, NumPy's and Python's versions, the host and
    # the device (its model), written by the worker with the result.
    versions: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ran_on: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The sweep whose result for the same settings this row holds (not trained here), or None.
    reused_from: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Successive halving: the rung the job trains in or reached (0 first; None: no halving).
    rung: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        # A sweep's jobs of a status, and its best mse among them read from the index's end
        # (``polyfit sweeps`` on a million-job sweep in the time of a small one).
        Index("ix_jobs_sweep_status_mse", "sweep_id", "status", "mse"),
        # What a sweep's progress sums (jobs and work per status and device), read from the
        # index alone: a million-job sweep's status in a few tenths of a second, not seconds.
        Index("ix_jobs_sweep_progress", "sweep_id", "status", "device", "epochs", "x_points"),
        # The jobs a sweep finished lately (its recent rate) and its last finish.
        Index("ix_jobs_sweep_finished", "sweep_id", "finished_at"),
        # Every worker's reaper looks for running jobs with a stale heartbeat, and queued ones
        # that waited too long, across all sweeps: without this, a scan of the whole table.
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
        # A job's results across sweeps (reuse at submit looks a new job's id up in every
        # sweep): without it, a scan of the whole table per chunk of a submit.
        Index("ix_jobs_id_status", "id", "status"),
    )


class LossPointRecord(Base):
    """One point of a job's loss curve (every 100 epochs, as the lesson prints it)."""

    __tablename__ = "loss_curve"

    sweep_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobStateRecord(Base):
    """Where a job's training stopped when its batch was stopped on purpose (a user's Ctrl-C,
    a worker's warm shutdown): the state its next run continues from (``polyfit_models.state``,
    a blob of float64 arrays behind a JSON header; never pickled). Written with the job put back
    in the queue, deleted when its result is stored. A table of its own: the blobs stay out of
    ``SELECT * FROM jobs`` and out of every query that reads jobs."""

    __tablename__ = "job_state"

    sweep_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)  # epochs done
    state: Mapped[bytes] = mapped_column(LargeBinary)


class SearchRecord(Base):
    """A sweep whose jobs a sampler asks for, round after round (``search:`` in its spec).

    ``round`` counts the rounds asked so far; the worker that stores a round's last result
    advances it with a compare-and-set (``store.search.advance_round``) in the transaction
    that records the next round's jobs, so each round is asked and enqueued once."""

    __tablename__ = "searches"

    sweep_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    sampler: Mapped[str] = mapped_column(String(16))
    trials: Mapped[int] = mapped_column(Integer)
    round_size: Mapped[int] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer, default=0)
    # running, done or failed (a sampler that raised: ``error`` says why).
    state: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The study's system attributes after the last round asked (QMC's place in its sequence).
    study_attrs: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class TrialRecord(Base):
    """One trial of a search: the job it made and what the sampler asked (its parameters and
    the sampler's own notes on it, e.g. CMA-ES's state), in the order asked."""

    __tablename__ = "trials"

    sweep_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    round: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict] = mapped_column(JSON)
    system_attrs: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (Index("ix_trials_sweep_round", "sweep_id", "round"),)


class WorkerRecord(Base):
    """A worker of the fleet that is up: its node name, device and training processes, and
    when it last said so (by the database's clock). What a submit sizes its batches by."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(16))
    processes: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
