"""The scheduler: claims queued jobs, prepares and launches them, watches them, and records how they end.

Everything it knows is in the database, so a restart loses nothing: a queued job waits in its row; a
running job is claimed by one scheduler (`claimed_by`), which renews its claim (`heartbeat_at`) every
tick. When a scheduler dies, another one — or the same server started again — takes its jobs over:
at once for a scheduler of this host whose process is gone, after `compute_lease_seconds` otherwise.
A job taken over while it was being prepared is queued again; one whose processes are gone without an
exit status is queued again until `compute_max_attempts`, then failed.

Candidates are each submitter's best queued jobs (see `_candidates`), so however many jobs one
submitter queues, the others' are weighed too. Claiming is safe with several schedulers on one
database: candidates are read with `FOR UPDATE SKIP LOCKED` on PostgreSQL, and each claim is a
conditional update (`WHERE status = 'queued'`) that exactly one scheduler wins. Order: priority, then
fair share (the submitter with the fewest running jobs, then the fewest started in the last hour,
first), then age; each submitter runs at most `compute_max_running_per_user` jobs, and local jobs
together take at most `compute_local_cpus` CPUs and `compute_local_memory_bytes` of memory.

Starting a job (checkout, inputs, environment) and finishing one (reading, hashing and committing its
outputs, which may take minutes) run on two separate pools of threads: however many jobs are being
collected, others still start. Right before a job is prepared, on every attempt, the submitter's rights
are checked again: one who may no longer read the code or an input, or write the output, gets the job
failed with reason `permissions`, and nothing of the repository is read.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import IO, Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from opensci.accounts.models import Owner
from opensci.compute import envs, outputs, workspace
from opensci.compute.executors import Executor, ExecutorError, Observation, make_executor
from opensci.compute.executors.base import read_json
from opensci.compute.models import Job, JobPhase, JobStatus
from opensci.compute.service import local_cpus, local_memory, submitter_refusal
from opensci.compute.shim import human_size
from opensci.db import Database
from opensci.db.base import utcnow
from opensci.repos.gitstore import GitStore
from opensci.settings import Settings
from opensci.storage.store import BlobStore

log = logging.getLogger("opensci.compute")
HOST = socket.gethostname()
FAIR_SHARE_WINDOW = 3600  # seconds: among equal priorities, who started fewer jobs lately goes first
CANDIDATES_PER_USER = 200  # of one submitter's queued jobs, at most this many are weighed per dispatch
POOL_THREADS = 4  # jobs started at once, and (separately) jobs finished at once


def _claimer_gone(claimed_by: str | None) -> bool:
    """Whether the scheduler named `claimed_by` (`host:pid:token`) is a dead process of this host."""
    if not claimed_by:
        return True
    host, _, rest = claimed_by.partition(":")
    pid = rest.partition(":")[0]
    return host == HOST and pid.isdigit() and not os.path.exists(f"/proc/{pid}")


class Scheduler:
    def __init__(self, settings: Settings, db: Database, store: GitStore, blobs: BlobStore) -> None:
        self.settings, self.db, self.store, self.blobs = settings, db, store, blobs
        self.id = f"{HOST}:{os.getpid()}:{secrets.token_hex(4)}"
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._executors: dict[str, Executor] = {}
        # Two pools, so that finishing jobs (collecting outputs may take minutes) never delays starts.
        self._starters = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="opensci-start")
        self._finishers = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="opensci-finish")
        self._busy: set[int] = set()
        self._cancel_sent: dict[int, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- life -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="opensci-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop scheduling (running jobs go on; a scheduler started later takes them over)."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for pool in (self._starters, self._finishers):
            pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            self.wake.wait(self.settings.compute_poll_seconds)
            self.wake.clear()

    def executor(self, name: str) -> Executor:
        if name not in self._executors:
            self._executors[name] = make_executor(name, self.settings, on_exit=self.wake.set)
        return self._executors[name]

    def tick(self) -> None:
        with self.db.session() as s:
            self._heartbeat(s)
            self._adopt(s)
        self._watch()
        if not self._stop.is_set():
            self._dispatch()

    # --- claims -----------------------------------------------------------------------------------------

    def _heartbeat(self, s: Session) -> None:
        s.execute(
            update(Job)
            .where(Job.claimed_by == self.id, Job.status == JobStatus.running)
            .values(heartbeat_at=utcnow())
        )
        s.commit()

    def _adopt(self, s: Session) -> None:
        stale = utcnow() - timedelta(seconds=self.settings.compute_lease_seconds)
        rows = s.scalars(select(Job).where(Job.status == JobStatus.running, Job.claimed_by != self.id)).all()
        for job in rows:
            dead = _claimer_gone(job.claimed_by) or (
                job.heartbeat_at is not None and job.heartbeat_at < stale
            )
            if not dead or (job.executor == "local" and job.host not in (None, HOST)):
                continue
            won = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.claimed_by == job.claimed_by, Job.status == JobStatus.running)
                .values(claimed_by=self.id, heartbeat_at=utcnow())
            )
            s.commit()
            if won.rowcount != 1:  # type: ignore[attr-defined]
                continue
            s.refresh(job)
            with self._log(job.id) as out:
                workspace.note(out, f"taken over by scheduler {self.id} (the one that ran it stopped)")
                if job.handle is None:
                    self._retry_or_fail(s, job, out, "the scheduler preparing it stopped")

    def _retry_or_fail(self, s: Session, job: Job, out: IO[bytes], why: str) -> None:
        if job.cancel_requested:  # whatever became of it, it was to stop: it has
            self._end(s, job, out, JobStatus.cancelled, reason="cancelled", message=f"cancelled ({why})")
        elif job.attempts < self.settings.compute_max_attempts:
            workspace.note(out, f"{why}; queued again (attempt {job.attempts + 1})")
            s.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(
                    status=JobStatus.queued, phase=JobPhase.waiting, claimed_by=None, handle=None, host=None
                )
            )
            s.commit()
        else:
            self._end(s, job, out, JobStatus.failed, reason="lost", message=why)

    def _fail_what_never_fits(self, s: Session) -> None:
        """Fail the queued local jobs that ask more CPUs or memory than the local executor has in all
        (submissions are refused that; these were queued before the operator lowered the budget): they
        would wait forever."""
        cpus, memory = local_cpus(self.settings), local_memory(self.settings)
        never = s.scalars(
            select(Job).where(
                Job.status == JobStatus.queued,
                Job.executor == "local",
                or_(Job.cpus > cpus, Job.memory_bytes > memory),
            )
        ).all()
        for job in never:
            message = (
                f"it asks {job.cpus} CPU{'s' if job.cpus != 1 else ''} and {human_size(job.memory_bytes)} of "
                "memory; the local executor "
                f"has {cpus} CPUs and {human_size(memory)} for jobs in all (OPENSCI_COMPUTE_LOCAL_CPUS, "
                "OPENSCI_COMPUTE_LOCAL_MEMORY_BYTES)"
            )
            failed = s.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == JobStatus.queued)
                .values(
                    status=JobStatus.failed,
                    phase=JobPhase.done,
                    reason="resources",
                    message=message,
                    ended_at=utcnow(),
                )
            )
            s.commit()
            if failed.rowcount == 1:  # type: ignore[attr-defined]
                with self._log(job.id) as out:
                    workspace.note(out, f"job {job.id} failed: {message}")

    def _dispatch(self) -> None:
        claimed: list[int] = []
        with self.db.session() as s:
            self._fail_what_never_fits(s)
            running = dict(
                s.execute(
                    select(Job.submitter_id, func.count())
                    .where(Job.status == JobStatus.running)
                    .group_by(Job.submitter_id)
                ).all()
            )
            used_cpus, used_memory = s.execute(
                select(
                    func.coalesce(func.sum(Job.cpus), 0), func.coalesce(func.sum(Job.memory_bytes), 0)
                ).where(Job.status == JobStatus.running, Job.executor == "local", Job.host == HOST)
            ).one()
            free_cpus = local_cpus(self.settings) - int(used_cpus or 0)
            free_memory = local_memory(self.settings) - int(used_memory or 0)
            per_user = self.settings.compute_max_running_per_user
            queues = self._candidates(s, running, free_cpus, free_memory, per_user)
            if not queues:
                s.rollback()
                return
            recent = dict(
                s.execute(
                    select(Job.submitter_id, func.count())
                    .where(Job.started_at > utcnow() - timedelta(seconds=FAIR_SHARE_WINDOW))
                    .group_by(Job.submitter_id)
                ).all()
            )
            while queues:
                # The best job overall is the best of the submitters' first ones (each queue is in
                # order, and a submitter's fair share is the same for all of its jobs).
                who = min(
                    queues,
                    key=lambda u: (
                        -queues[u][0].priority,
                        running.get(u, 0),
                        recent.get(u, 0),
                        queues[u][0].id,
                    ),
                )
                job = queues[who].popleft()
                if not queues[who]:
                    del queues[who]
                if per_user and running.get(who, 0) >= per_user:
                    queues.pop(who, None)  # none of its jobs may start now
                    continue
                if job.executor == "local" and (job.cpus > free_cpus or job.memory_bytes > free_memory):
                    continue
                won = s.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.status == JobStatus.queued)
                    .values(
                        status=JobStatus.running,
                        phase=JobPhase.preparing,
                        claimed_by=self.id,
                        host=HOST,
                        handle=None,
                        started_at=utcnow(),
                        heartbeat_at=utcnow(),
                        attempts=Job.attempts + 1,
                    )
                )
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                running[job.submitter_id] = running.get(job.submitter_id, 0) + 1
                recent[job.submitter_id] = recent.get(job.submitter_id, 0) + 1
                if job.executor == "local":
                    free_cpus -= job.cpus
                    free_memory -= job.memory_bytes
                claimed.append(job.id)
            s.commit()
        for job_id in claimed:
            with self._lock:
                self._busy.add(job_id)
            self._starters.submit(self._start, job_id)

    def _candidates(
        self,
        s: Session,
        running: dict[str | None, int],
        free_cpus: int,
        free_memory: int,
        per_user: int,
    ) -> dict[str | None, deque[Job]]:
        """The queued jobs worth weighing now, by submitter, each submitter's in order (priority, then
        age): of each submitter under the per-user limit, the best of the jobs that could start (another
        executor's, or a local one that fits the free CPUs and memory), as many as the submitter may still
        start.
        However long one submitter's queue, every other submitter's best jobs are among them.

        One query finds who has such jobs (a probe of the index on submitter and status per user), then
        one per submitter under the limit reads a top-N of that submitter's queued jobs through the same
        index: users at their limit cost one probe, however long their queues. Rows are read with
        `FOR UPDATE SKIP LOCKED` on PostgreSQL: those another scheduler is claiming are passed over, not
        waited for."""
        fits = or_(Job.executor != "local", and_(Job.cpus <= free_cpus, Job.memory_bytes <= free_memory))

        def runnable(whose: Any) -> Any:
            return exists().where(whose, Job.status == JobStatus.queued, fits)

        waiting: list[str | None] = list(
            s.scalars(select(Owner.id).where(runnable(Job.submitter_id == Owner.id)))
        )
        if s.scalar(select(runnable(Job.submitter_id.is_(None)))):
            waiting.append(None)  # the jobs of deleted submitters count as one submitter's
        queues: dict[str | None, deque[Job]] = {}
        for who in waiting:
            left = CANDIDATES_PER_USER
            if per_user:
                left = min(per_user - running.get(who, 0), CANDIDATES_PER_USER)
            if left <= 0:
                continue
            theirs = Job.submitter_id.is_(None) if who is None else Job.submitter_id == who
            jobs = s.scalars(
                select(Job)
                .where(Job.status == JobStatus.queued, theirs, fits)
                # Highest priority first, written so that SQLite, which has no statistics, reads the
                # index on (submitter, status) rather than the whole queue in priority order.
                .order_by(-Job.priority, Job.id)
                .limit(left)
                .with_for_update(skip_locked=True)
            ).all()
            if jobs:
                queues[who] = deque(jobs)
        return queues

    # --- one job ----------------------------------------------------------------------------------------

    def _log(self, job_id: int) -> IO[bytes]:
        """The job's log, appended to, in a directory that is the job's own (see `workspace.claim_dir`)."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            jd = workspace.claim_dir(self.settings, job) if job else workspace.job_dir(self.settings, job_id)
        jd.mkdir(parents=True, exist_ok=True)
        return open(jd / "log", "ab", buffering=0)

    def _start(self, job_id: int) -> None:
        try:
            with self.db.session() as s, self._log(job_id) as out:
                job = s.get(Job, job_id)
                if job is None or job.claimed_by != self.id or job.status != JobStatus.running:
                    return
                workspace.note(
                    out, f"job {job.id} started on {HOST} (attempt {job.attempts}, {job.executor})"
                )
                if job.cancel_requested:
                    self._end(s, job, out, JobStatus.cancelled, reason="cancelled", message="cancelled")
                    return
                refusal = submitter_refusal(s, job)
                if refusal:
                    self._end(s, job, out, JobStatus.failed, reason="permissions", message=refusal)
                    return
                try:
                    launch, env = workspace.prepare(self.settings, s, self.store, self.blobs, job, out)
                except (workspace.PrepareError, envs.EnvError) as exc:
                    reason = "environment" if isinstance(exc, envs.EnvError) else "preparation"
                    self._end(s, job, out, JobStatus.failed, reason=reason, message=str(exc))
                    return
                job.environment = env.as_record(list(job.environment.get("requirements", [])))
                s.commit()
                s.refresh(job)
                if job.cancel_requested:
                    self._end(s, job, out, JobStatus.cancelled, reason="cancelled", message="cancelled")
                    return
                try:
                    handle = self.executor(job.executor).submit(launch)
                except ExecutorError as exc:
                    self._end(s, job, out, JobStatus.failed, reason="executor", message=str(exc))
                    return
                job.handle = handle
                job.phase = JobPhase.executing if job.executor == "local" else JobPhase.pending
                s.commit()
                workspace.note(out, f"{job.executor} executor: {handle}")
        except Exception:
            log.exception("starting job %s failed", job_id)
            self._fail_quietly(job_id, "internal error while starting the job; the server log has details")
        finally:
            with self._lock:
                self._busy.discard(job_id)
            self.wake.set()

    def _watch(self) -> None:
        with self.db.session() as s:
            jobs = s.scalars(
                select(Job).where(
                    Job.status == JobStatus.running, Job.claimed_by == self.id, Job.handle.is_not(None)
                )
            ).all()
            for job in jobs:
                with self._lock:
                    if job.id in self._busy:
                        continue
                assert job.handle is not None
                executor = self.executor(job.executor)
                launch = workspace.launch_of(self.settings, job)
                if job.cancel_requested:
                    sent = self._cancel_sent.get(job.id)
                    if sent is None or time.monotonic() - sent > 10:
                        self._cancel_sent[job.id] = time.monotonic()
                        try:
                            executor.cancel(job.handle, launch)
                        except ExecutorError as exc:
                            log.warning("cancelling job %s: %s", job.id, exc)
                try:
                    seen = executor.poll(job.handle, launch)
                except ExecutorError as exc:
                    log.warning("watching job %s: %s", job.id, exc)
                    continue
                if seen.phase == "running" and job.phase == JobPhase.pending:
                    job.phase = JobPhase.executing
                    s.commit()
                elif seen.phase == "ended":
                    with self._lock:
                        self._busy.add(job.id)
                    self._finishers.submit(self._finish, job.id, seen)
                elif seen.phase == "lost":
                    with self._log(job.id) as out:
                        self._retry_or_fail(s, job, out, f"the job was lost: {seen.detail}")

    def _finish(self, job_id: int, seen: Observation) -> None:
        try:
            with self.db.session() as s, self._log(job_id) as out:
                job = s.get(Job, job_id)
                if job is None or job.claimed_by != self.id or job.status != JobStatus.running:
                    return
                jd = workspace.job_dir(self.settings, job.id)
                status = read_json(jd / "status.json") or {}
                reason = status.get("reason") or seen.reason
                if seen.reason in ("timeout", "memory", "node_failure") and not job.cancel_requested:
                    # The cluster stopped it (the shim saw only a SIGTERM and says "cancelled").
                    reason = seen.reason
                    status = {**status, "message": seen.detail or status.get("message", "")} if status else {}
                exit_code = status.get("exit_code", seen.exit_code)
                if exit_code is not None and exit_code < 0:  # the shim itself was killed by a signal
                    exit_code = 128 - exit_code
                if not status and (job.cancel_requested or reason == "cancelled"):
                    exit_code = None  # cancelled before the shim ran the command (e.g. pending in Slurm)
                job.exit_code = exit_code
                job.usage = _usage(status)
                if job.cancel_requested or reason == "cancelled":
                    self._end(
                        s, job, out, JobStatus.cancelled, reason="cancelled", message="cancelled on request"
                    )
                elif reason == "timeout":
                    msg = status.get("message") or seen.detail or f"time limit of {job.time_limit} s reached"
                    self._end(s, job, out, JobStatus.timeout, reason="timeout", message=msg)
                elif reason == "memory":
                    msg = status.get("message") or seen.detail or "memory limit exceeded"
                    self._end(s, job, out, JobStatus.failed, reason="memory", message=msg)
                elif not status:
                    msg = seen.detail or "the job ended without reporting an exit status"
                    self._end(s, job, out, JobStatus.failed, reason=reason or "failed", message=msg)
                elif exit_code != 0:
                    msg = status.get("message") or f"the command exited with code {exit_code}"
                    self._end(s, job, out, JobStatus.failed, reason="exit_code", message=msg)
                elif not self._start_collecting(s, job):  # a cancel came first
                    self._end(
                        s, job, out, JobStatus.cancelled, reason="cancelled", message="cancelled on request"
                    )
                else:
                    try:
                        commit = outputs.commit_outputs(
                            self.settings, s, self.store, self.blobs, job, jd / "work" / "outputs", out
                        )
                    except outputs.OutputError as exc:
                        self._end(s, job, out, JobStatus.failed, reason=exc.reason, message=str(exc))
                    else:
                        job.output_commit = commit
                        self._end(s, job, out, JobStatus.succeeded, reason="", message="")
        except Exception:
            log.exception("finishing job %s failed", job_id)
            self._fail_quietly(job_id, "internal error while finishing the job; the server log has details")
        finally:
            with self._lock:
                self._busy.discard(job_id)
            self._cancel_sent.pop(job_id, None)
            self.wake.set()  # capacity is free: dispatch the next job now

    @staticmethod
    def _start_collecting(s: Session, job: Job) -> bool:
        """Enter the collecting phase unless a cancel was asked meanwhile (then False): from here on the
        job can no longer be cancelled (see `service.cancel`)."""
        won = s.execute(
            update(Job)
            .where(Job.id == job.id, Job.cancel_requested.is_(False))
            .values(phase=JobPhase.collecting)
        )
        s.commit()
        s.refresh(job)
        return bool(won.rowcount == 1)  # type: ignore[attr-defined]

    def _end(
        self, s: Session, job: Job, out: IO[bytes], status: JobStatus, *, reason: str, message: str
    ) -> None:
        summary = f"job {job.id} {status}" + (f": {message}" if message else "")
        if job.exit_code is not None:
            summary += f" (exit code {job.exit_code})"
        # The log's last line first: whoever sees the final status (a follower of the log) finds it.
        workspace.note(out, summary)
        job.status, job.phase, job.reason, job.message = status, JobPhase.done, reason, message
        job.ended_at = utcnow()
        s.commit()
        if not self.settings.compute_keep_work_dirs:
            try:
                workspace.clean(self.settings, job.id)
            except OSError as exc:
                log.warning("cleaning job %s: %s", job.id, exc)

    def _fail_quietly(self, job_id: int, message: str) -> None:
        try:
            with self.db.session() as s, self._log(job_id) as out:
                job = s.get(Job, job_id)
                if job is not None and job.status == JobStatus.running and job.claimed_by == self.id:
                    self._end(s, job, out, JobStatus.failed, reason="internal", message=message)
        except Exception:
            log.exception("could not record the failure of job %s", job_id)


def _usage(status: dict[str, Any]) -> dict[str, Any]:
    if not status:
        return {}
    started, ended = status.get("started_at"), status.get("ended_at")
    return {
        "cpu_seconds": status.get("cpu_seconds"),
        "max_rss_bytes": status.get("max_rss_bytes"),
        "wall_seconds": round(ended - started, 3) if started and ended else None,
        "command_started_at": started,  # seconds since the epoch, as the shim saw them
        "command_ended_at": ended,
        "host": status.get("host"),
        "signal": status.get("signal"),
    }
