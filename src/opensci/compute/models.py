"""Tables of the compute domain: jobs, and which repositories each job reads or writes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from opensci.db.base import Base, UTCDateTime, utcnow


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timeout = "timeout"


FINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.timeout})


class JobPhase(StrEnum):
    """Finer steps inside `queued` and `running`."""

    waiting = "waiting"  # queued: not claimed yet
    preparing = "preparing"  # running: checkout, inputs, environment
    pending = "pending"  # running: handed to the executor, which has not started it (e.g. Slurm queue)
    executing = "executing"  # running: the command runs
    collecting = "collecting"  # running: committing outputs
    done = "done"


class Job(Base):
    __tablename__ = "compute_jobs"
    __table_args__ = (
        Index("ix_compute_jobs_status_priority", "status", "priority", "id"),
        Index("ix_compute_jobs_submitter_status", "submitter_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    submitter_id: Mapped[str | None] = mapped_column(ForeignKey("owners.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    phase: Mapped[str] = mapped_column(String(16), default=JobPhase.waiting)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # The request as normalized at submission: repositories by name, revisions as given.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What the request resolved to: {"code": {...}, "inputs": {name: {...}}, "output": {...}} with
    # repository ids, full names and commit shas. Reruns use these commits.
    resolved: Mapped[dict[str, Any]] = mapped_column(JSON)
    executor: Mapped[str] = mapped_column(String(16))
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    time_limit: Mapped[int] = mapped_column(Integer)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    rerun_of: Mapped[int | None] = mapped_column(ForeignKey("compute_jobs.id", ondelete="SET NULL"))
    # Provenance filled in as the job runs.
    environment: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    output_commit: Mapped[str | None] = mapped_column(String(64))
    # Scheduling state.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    host: Mapped[str | None] = mapped_column(String(128))
    handle: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def final(self) -> bool:
        return self.status in FINAL


class JobRepo(Base):
    """Each repository a job reads (code, inputs) or writes (output): the job is visible to whoever can
    read all of them. A deleted repository leaves its row with a null id, hiding the job from all but
    administrators."""

    __tablename__ = "compute_job_repos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("compute_jobs.id", ondelete="CASCADE"), index=True)
    repo_id: Mapped[str | None] = mapped_column(
        ForeignKey("repositories.id", ondelete="SET NULL"), index=True
    )
    role: Mapped[str] = mapped_column(String(8))  # code | input | output
