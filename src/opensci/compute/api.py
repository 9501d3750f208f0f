"""REST routes of the compute domain: submit, list, read, logs (live with server-sent events), cancel,
rerun."""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from opensci.compute import service, workspace
from opensci.compute.models import FINAL
from opensci.compute.schemas import JobOut, JobSpec
from opensci.deps import ActorDep, SessionDep, SettingsDep, StoreDep
from opensci.errors import InvalidInput
from opensci.repos import service as repos

router = APIRouter(prefix="/api/v1/jobs", tags=["compute"])
LOG_CHUNK = 1024**2


def _wake(request: Request) -> None:
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake.set()


@router.post("", status_code=201, response_model=JobOut)
def submit_job(
    spec: JobSpec,
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    store: StoreDep,
) -> JSONResponse:
    """Queue a job; 201 with the job (its `id` and `status`). Nothing is queued when the spec is refused."""
    job = service.submit(actor, session, settings, store, spec)
    _wake(request)
    return JSONResponse(service.job_dict(settings, session, job), status_code=201)


@router.get("")
def list_jobs(
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    owner: Annotated[str | None, Query(description="Submitter's user name.")] = None,
    status: Annotated[
        str | None, Query(description="queued, running, succeeded, failed, cancelled, timeout")
    ] = None,
    repo: Annotated[
        str | None, Query(description="owner/name of a repository the jobs read or write.")
    ] = None,
    limit: Annotated[int, Query()] = 50,
    before: Annotated[int | None, Query(description="Only jobs with a smaller id (next page).")] = None,
) -> dict[str, Any]:
    target = None
    if repo:
        repo_owner, _, repo_name = repo.partition("/")
        if not repo_name:
            raise InvalidInput(f"repo {repo!r} is not owner/name", code="invalid_repo")
        target = repos.get_repo(actor, session, repo_owner, repo_name)
    jobs = service.list_jobs(
        actor, session, owner=owner, status=status, repo=target, limit=limit, before=before
    )
    return {
        "jobs": [service.job_dict(settings, session, j) for j in jobs],
        "next_before": jobs[-1].id if len(jobs) == limit else None,
    }


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: int, session: SessionDep, actor: ActorDep, settings: SettingsDep) -> dict[str, Any]:
    return service.job_dict(settings, session, service.get_job(actor, session, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(
    job_id: int, request: Request, session: SessionDep, actor: ActorDep, settings: SettingsDep
) -> dict[str, Any]:
    job = service.cancel(actor, session, service.get_job(actor, session, job_id))
    _wake(request)
    return service.job_dict(settings, session, job)


@router.post("/{job_id}/rerun", status_code=201, response_model=JobOut)
def rerun_job(
    job_id: int,
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    store: StoreDep,
) -> JSONResponse:
    """Run the recorded spec again at the same commits of code and inputs."""
    job = service.rerun(actor, session, settings, store, service.get_job(actor, session, job_id))
    _wake(request)
    return JSONResponse(service.job_dict(settings, session, job), status_code=201)


@router.get("/{job_id}/logs")
def job_logs(
    job_id: int,
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    follow: Annotated[bool, Query(description="Stream as server-sent events until the job ends.")] = False,
) -> Response:
    """The job's log (stdout and stderr, and the platform's `[opensci]` lines) from byte `offset`. With
    `follow=true` (or `Accept: text/event-stream`): `log` events (`{"offset", "text"}`) as lines arrive,
    then one `end` event with the job's final status."""
    job = service.get_job(actor, session, job_id)
    path = workspace.job_dir(settings, job.id) / "log"
    if follow or "text/event-stream" in request.headers.get("accept", ""):
        db = request.app.state.db
        return StreamingResponse(
            _follow(db, settings, job.id, path, offset, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    data = _read(path, offset, LOG_CHUNK)
    return Response(
        data,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Log-Offset": str(offset),
            "X-Log-Next-Offset": str(offset + len(data)),
            "X-Job-Status": str(job.status),
        },
    )


def _read(path: Any, offset: int, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


async def _follow(
    db: Any, settings: Any, job_id: int, path: Any, offset: int, request: Request
) -> AsyncIterator[bytes]:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    idle = 0.0
    while True:
        data = await run_in_threadpool(_read, path, offset, LOG_CHUNK)
        if data:
            offset += len(data)
            idle = 0.0
            yield _event("log", {"offset": offset, "text": decoder.decode(data)})
            continue

        def state() -> tuple[str, int | None, str]:
            with db.session() as s:
                return service.state(s, job_id)

        status, exit_code, message = await run_in_threadpool(state)
        if status in FINAL:
            tail = await run_in_threadpool(_read, path, offset, LOG_CHUNK)
            if tail:
                offset += len(tail)
                yield _event("log", {"offset": offset, "text": decoder.decode(tail)})
            yield _event("end", {"status": status, "exit_code": exit_code, "message": message})
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.25)
        idle += 0.25
        if idle >= 15:
            idle = 0.0
            yield b": keep-alive\n\n"
