"""Jobs: submit (checked and resolved to commits), read, list, cancel, rerun; who may see what.

A job is visible to whoever may read every repository it touches (its code, inputs and output): a job
over a private dataset is as private as the dataset, and others get "not found". Submitting needs read
access to the code and inputs and write access to the output; cancelling is for the submitter and
site administrators.

A job's `env.variables` are its submitter's: their values are shown only to the submitter and site
administrators (others see the names, each with the value `HIDDEN`), and only the submitter may rerun a
job that has any. Each user may have at most `compute_max_queued_per_user` jobs waiting.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, exists, func, or_, select, true
from sqlalchemy.orm import Session

from opensci.accounts.models import Owner, Scope, User
from opensci.accounts.permissions import Actor, can, readable_repos_clause
from opensci.compute import envs, workspace
from opensci.compute.executors import NAMES
from opensci.compute.models import FINAL, Job, JobPhase, JobRepo, JobStatus
from opensci.compute.schemas import JobSpec, spec_error_message
from opensci.db.base import utcnow
from opensci.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    OpenSciError,
    RevisionNotFound,
    Unauthorized,
)
from opensci.repos import gitstore
from opensci.repos import service as repos
from opensci.repos.gitstore import GitStore
from opensci.repos.models import RepoKind, Repository
from opensci.settings import Settings
from opensci.validation import check_owner_filter

MAX_PAGE_SIZE = 200
HIDDEN = "(hidden)"  # the value of each of a job's variables, to whoever is not its submitter nor an admin


class TooManyQueuedJobs(OpenSciError):
    status, code = 429, "too_many_queued_jobs"


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_spec")


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def local_cpus(settings: Settings) -> int:
    return settings.compute_local_cpus or os.cpu_count() or 1


def local_memory(settings: Settings) -> int:
    """Bytes of memory the local executor hands out to its jobs at once."""
    return settings.compute_local_memory_bytes or machine_memory()


def _ref(repo: Repository, commit: str, rev: str | None) -> dict[str, Any]:
    return {"repo": repo.full_name, "repo_id": repo.id, "kind": str(repo.kind), "rev": rev, "commit": commit}


def _resolve(
    actor: Actor,
    session: Session,
    store: GitStore,
    name: str,
    rev: str | None,
    what: str,
    kinds: set[RepoKind],
) -> dict[str, Any]:
    owner, _, repo_name = name.partition("/")
    repo = repos.get_repo(actor, session, owner, repo_name)
    if repo.kind not in kinds:
        wanted = " or ".join(sorted(k.value for k in kinds))
        raise _bad(f"{what}: {repo.full_name} is a {repo.kind} repository; it must be a {wanted} repository")
    try:
        _, commit = repos.resolve(store, repo, rev)
    except RevisionNotFound as exc:  # say which of the job's repositories lacks it
        raise RevisionNotFound(f"{what}: {exc.message} in {repo.full_name}") from exc
    return _ref(repo, str(commit.id), rev or repo.default_branch)


def submit(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    spec: JobSpec,
    *,
    rerun_of: Job | None = None,
) -> Job:
    """Check the spec, resolve every revision to a commit, and queue the job. Raises before anything is
    queued: 401/403 for who may not, 404 for repositories or revisions the actor cannot see, 422 for a
    spec that cannot run here, 429 for a submitter with `compute_max_queued_per_user` jobs waiting."""
    if actor.user is None:
        raise Unauthorized("log in or send an API token to submit jobs", code="login_required")
    if actor.scope != Scope.write:
        raise Forbidden("a read-only token cannot submit jobs", code="insufficient_scope")
    executor = spec.executor or settings.compute_default_executor
    enabled = settings.enabled_executors
    if executor not in NAMES or executor not in enabled:
        raise _bad(f"executor {executor!r} is not available here; use one of: {', '.join(enabled)}")
    if spec.priority > 0 and not actor.is_admin:
        raise Forbidden("only administrators may give a job a priority above 0", code="priority_not_allowed")
    _check_queue_room(actor.user, session, settings)
    res = spec.resources
    memory = res.memory if isinstance(res.memory, int) else settings.compute_default_memory_bytes
    if not isinstance(res.memory, int) and executor == "local":  # a default never asks the impossible
        memory = min(memory, local_memory(settings))
    max_memory = settings.compute_max_memory_bytes or (machine_memory() if executor == "local" else 0)
    if max_memory and memory > max_memory:
        raise _bad(f"resources.memory: at most {max_memory} bytes may be asked for here")
    if executor == "local" and memory > local_memory(settings):
        # It would wait in the queue forever: the local executor never has that much to hand out.
        raise _bad(
            f"resources.memory: at most {local_memory(settings)} bytes may be asked for here "
            "(the memory the local executor hands out to jobs)"
        )
    time_limit = res.time_limit or settings.compute_default_time_limit
    if time_limit > settings.compute_max_time_limit:
        raise _bad(f"resources.time_limit: at most {settings.compute_max_time_limit} seconds")
    if executor == "local":
        if res.cpus > local_cpus(settings):
            raise _bad(f"resources.cpus: the local executor has {local_cpus(settings)} CPUs")
        if res.gpus:
            raise _bad("resources.gpus: the local executor has no GPUs; use the slurm executor")
    if spec.env.network and not settings.compute_allow_network:
        raise _bad(
            "env.network: this server does not let jobs use the network (OPENSCI_COMPUTE_ALLOW_NETWORK)"
        )
    requirements = envs.check_requirements(spec.env.requirements)
    code = _resolve(actor, session, store, spec.code.repo, spec.code.rev, "code", {RepoKind.code})
    data = {RepoKind.dataset, RepoKind.model}
    inputs = {
        name: _resolve(actor, session, store, ref.repo, ref.rev, f"input {name}", data)
        for name, ref in spec.inputs.items()
    }
    output = None
    if spec.output is not None:
        owner, _, name = spec.output.repo.partition("/")
        repo = repos.get_repo(actor, session, owner, name)
        if repo.kind not in data:
            raise _bad(
                f"output: {repo.full_name} is a {repo.kind} repository; outputs go to a dataset or model"
            )
        if not can(actor, "write", repo):
            raise Forbidden(f"you may not write to {repo.full_name}, the job's output", code="forbidden")
        branch = spec.output.branch or repo.default_branch
        branch = gitstore.valid_ref_name("heads", branch.removeprefix("refs/heads/"))
        output = {"repo": repo.full_name, "repo_id": repo.id, "kind": str(repo.kind), "branch": branch}
    normalized = spec.model_dump(mode="json")
    normalized["executor"] = executor
    normalized["env"]["requirements"] = requirements
    job = Job(
        submitter_id=actor.user.id,
        status=JobStatus.queued,
        phase=JobPhase.waiting,
        priority=spec.priority,
        spec=normalized,
        resolved={"code": code, "inputs": inputs, "output": output},
        executor=executor,
        cpus=res.cpus,
        memory_bytes=memory,
        time_limit=time_limit,
        gpus=res.gpus,
        rerun_of=rerun_of.id if rerun_of else None,
        environment={"requirements": requirements},
        usage={},
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    rows = [JobRepo(job_id=job.id, repo_id=code["repo_id"], role="code")]
    rows += [JobRepo(job_id=job.id, repo_id=ref["repo_id"], role="input") for ref in inputs.values()]
    if output:
        rows.append(JobRepo(job_id=job.id, repo_id=output["repo_id"], role="output"))
    session.add_all(rows)
    session.commit()
    workspace.claim_dir(settings, job)  # a directory an earlier job with this id left behind goes now
    return job


def _check_queue_room(user: User, session: Session, settings: Settings) -> None:
    """Refuse a submission of a user who already has `compute_max_queued_per_user` jobs waiting."""
    most = settings.compute_max_queued_per_user
    if not most:
        return
    queued = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.submitter_id == user.id, Job.status == JobStatus.queued)
    )
    if (queued or 0) >= most:
        raise TooManyQueuedJobs(
            f"you have {queued} jobs waiting in the queue, the most one user may have here; wait for some "
            "to start, or cancel some, before submitting more"
        )


def submitter_refusal(s: Session, job: Job) -> str | None:
    """Why the job's submitter may not run it now (None: they may): the rights `submit` checked (read the
    code and inputs, write the output), checked again when the job starts, for they may have changed while
    it waited (an input made private, a membership ended). The message names the repository as the job
    recorded it, nothing more of it."""
    user = s.get(User, job.submitter_id) if job.submitter_id else None
    if user is None:
        return "the job's submitter no longer exists"
    actor = Actor.for_user(s, user)
    name = user.name
    sources = [("the job's code", job.resolved["code"])]
    sources += [(f"the job's input {key}", ref) for key, ref in job.resolved["inputs"].items()]
    for what, ref in sources:
        repo = s.get(Repository, ref["repo_id"]) if ref.get("repo_id") else None
        if repo is None or not can(actor, "read", repo):
            return f"{name} may no longer read {ref['repo']}, {what}"
    output = job.resolved.get("output")
    if output is not None:
        repo = s.get(Repository, output["repo_id"]) if output.get("repo_id") else None
        if repo is None or not can(actor, "write", repo):
            return f"{name} may no longer write to {output['repo']}, the job's output"
    return None


def readable_jobs_clause(actor: Actor) -> Any:
    """The SQL form of "may read the job": its submitter and administrators may; others if every
    repository it touches is readable (a repository deleted or made private since hides the job from
    them; the submitter, who saw it all, keeps sight of the job, to learn why it failed)."""
    if actor.is_admin:
        return true()
    gone = JobRepo.repo_id.is_(None)
    hidden = (
        select(JobRepo.id)
        .outerjoin(Repository, Repository.id == JobRepo.repo_id)
        .where(
            JobRepo.job_id == Job.id,
            or_(gone, and_(JobRepo.repo_id.is_not(None), ~readable_repos_clause(actor))),
        )
    )
    if actor.user is None:
        return ~exists(hidden)
    return or_(Job.submitter_id == actor.user.id, ~exists(hidden))


def can_read(actor: Actor, session: Session, job: Job) -> bool:
    if actor.is_admin or _is_submitter(actor, job):
        return True
    for link in session.scalars(select(JobRepo).where(JobRepo.job_id == job.id)):
        repo = session.get(Repository, link.repo_id) if link.repo_id else None
        if repo is None or not can(actor, "read", repo):
            return False
    return True


def get_job(actor: Actor, session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None or not can_read(actor, session, job):
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return job


def state(session: Session, job_id: int) -> tuple[str, int | None, str]:
    """(status, exit code, message) of a job the caller has already been allowed to read."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return str(job.status), job.exit_code, job.message


def list_jobs(
    actor: Actor,
    session: Session,
    *,
    owner: str | None = None,
    status: str | None = None,
    repo: Repository | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[Job]:
    """Visible jobs, newest first: by submitter name (`owner`), status, or repository touched; `before`
    (a job id) pages back."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE_SIZE}", code="invalid_page")
    stmt = select(Job).where(readable_jobs_clause(actor))
    if owner:
        name_key = check_owner_filter(owner).lower()
        stmt = stmt.join(Owner, Owner.id == Job.submitter_id).where(Owner.name_key == name_key)
    if status:
        try:
            stmt = stmt.where(Job.status == JobStatus(status))
        except ValueError as exc:
            names = ", ".join(s.value for s in JobStatus)
            raise InvalidInput(
                f"status must be one of {names}; not {status!r}", code="invalid_status"
            ) from exc
    if repo is not None:
        stmt = stmt.where(
            exists(select(JobRepo.id).where(JobRepo.job_id == Job.id, JobRepo.repo_id == repo.id))
        )
    if before is not None:
        stmt = stmt.where(Job.id < before)
    return list(session.scalars(stmt.order_by(Job.id.desc()).limit(limit)))


def count_by_status(actor: Actor, session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Job.status, func.count()).where(readable_jobs_clause(actor)).group_by(Job.status)
    )
    return {str(s): n for s, n in rows}


def cancel(actor: Actor, session: Session, job: Job) -> Job:
    """Cancel a queued job at once, or ask the scheduler to stop a running one (it stops the whole
    process tree within seconds)."""
    if actor.user is None and not actor.system:
        raise Unauthorized("log in or send an API token", code="login_required")
    if not (actor.is_admin or (actor.user is not None and actor.user.id == job.submitter_id)):
        raise Forbidden("only the job's submitter or an administrator may cancel it", code="forbidden")
    if actor.scope != Scope.write:
        raise Forbidden("a read-only token cannot cancel jobs", code="insufficient_scope")
    if job.status in FINAL:
        raise Conflict(f"job {job.id} has already ended ({job.status})", code="job_finished")
    if job.status == JobStatus.queued:
        claimed = session.execute(
            Job.__table__.update()
            .where(Job.id == job.id, Job.status == JobStatus.queued)
            .values(
                status=JobStatus.cancelled,
                phase=JobPhase.done,
                reason="cancelled",
                message="cancelled before it started",
                ended_at=utcnow(),
                cancel_requested=True,
            )
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            session.commit()
            session.refresh(job)
            return job
        session.refresh(job)  # the scheduler claimed it meanwhile: ask it to stop
    # Asked only while the job's outputs are not being committed (the scheduler starts that only if no
    # cancel was asked: one of the two wins, never both).
    asked = session.execute(
        Job.__table__.update()
        .where(Job.id == job.id, Job.status == JobStatus.running, Job.phase != JobPhase.collecting)
        .values(cancel_requested=True)
    )
    session.commit()
    session.refresh(job)
    if asked.rowcount != 1:  # type: ignore[attr-defined]
        if job.status in FINAL:
            raise Conflict(f"job {job.id} has already ended ({job.status})", code="job_finished")
        raise Conflict(
            f"job {job.id} has run its command and its outputs are being committed; it can no longer be "
            "cancelled",
            code="job_collecting",
        )
    return job


def rerun(actor: Actor, session: Session, settings: Settings, store: GitStore, job: Job) -> Job:
    """Queue the recorded spec again at the same commits of code and inputs (same command, environment,
    resources, executor and output branch). A job with environment variables is rerun only by its
    submitter: the variables (tokens, say) are theirs, not to be used by others, nor shown to them."""
    if variables_of(job) and not _is_submitter(actor, job):
        raise Forbidden(
            f"job {job.id} has environment variables only its submitter may use; submit a job of your own",
            code="rerun_not_allowed",
        )
    spec = dict(job.spec)
    spec["code"] = {"repo": job.resolved["code"]["repo"], "rev": job.resolved["code"]["commit"]}
    spec["inputs"] = {n: {"repo": r["repo"], "rev": r["commit"]} for n, r in job.resolved["inputs"].items()}
    if job.resolved.get("output"):
        out = job.resolved["output"]
        spec["output"] = {"repo": out["repo"], "branch": out["branch"]}
    if spec.get("priority", 0) > 0 and not actor.is_admin:
        spec["priority"] = 0
    try:
        parsed = JobSpec.model_validate(spec)
    except ValidationError as exc:  # recorded before a limit that it does not meet
        raise _bad(f"job {job.id} cannot run again as recorded: {spec_error_message(exc)}") from None
    return submit(actor, session, settings, store, parsed, rerun_of=job)


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def variables_of(job: Job) -> dict[str, str]:
    """The job's `env.variables` as submitted."""
    variables = (job.spec.get("env") or {}).get("variables") or {}
    return dict(variables) if isinstance(variables, dict) else {}


def _is_submitter(actor: Actor | None, job: Job) -> bool:
    return (
        actor is not None
        and actor.user is not None
        and job.submitter_id is not None
        and actor.user.id == job.submitter_id
    )


def may_see_variables(actor: Actor | None, job: Job) -> bool:
    """Whether `actor` may see the values of the job's variables: its submitter and administrators."""
    return actor is not None and (actor.is_admin or _is_submitter(actor, job))


def may_rerun(actor: Actor, job: Job) -> bool:
    """Whether `actor` may be offered to rerun the job (the service still checks the rest)."""
    return actor.user is not None and (not variables_of(job) or _is_submitter(actor, job))


def _shown_spec(job: Job, viewer: Actor | None) -> dict[str, Any]:
    """The job's spec as `viewer` may see it: variables' values replaced by `HIDDEN` unless allowed."""
    variables = variables_of(job)
    if not variables or may_see_variables(viewer, job):
        return job.spec
    env = {**job.spec["env"], "variables": dict.fromkeys(variables, HIDDEN)}
    return {**job.spec, "env": env}


def job_dict(settings: Settings, session: Session, job: Job, viewer: Actor | None = None) -> dict[str, Any]:
    """The job as the API shows it to `viewer` (None: someone who may not see its variables' values)."""
    submitter = session.get(Owner, job.submitter_id) if job.submitter_id else None
    output = job.resolved.get("output")
    if output is not None:
        output = {**_public(output), "commit": job.output_commit}
    return {
        "id": job.id,
        "status": job.status,
        "phase": job.phase,
        "url": f"{settings.base_url.rstrip('/')}/jobs/{job.id}",
        "submitter": submitter.name if submitter else None,
        "spec": _shown_spec(job, viewer),
        "code": _public(job.resolved["code"]),
        "inputs": {name: _public(ref) for name, ref in job.resolved["inputs"].items()},
        "output": output,
        "command": job.spec["command"],
        "executor": job.executor,
        "resources": {
            "cpus": job.cpus,
            "memory": job.memory_bytes,
            "time_limit": job.time_limit,
            "gpus": job.gpus,
        },
        "environment": job.environment,
        "usage": job.usage,
        "exit_code": job.exit_code,
        "reason": job.reason,
        "message": job.message,
        "attempts": job.attempts,
        "priority": job.priority,
        "rerun_of": job.rerun_of,
        "cancel_requested": job.cancel_requested,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
    }


def _public(ref: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ref.items() if k != "repo_id"}
