"""REST routes of the compute domain: submit, list, read, logs (live with server-sent events), cancel,
rerun."""

from __future__ import annotations

import asyncio
import codecs
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from opensci.accounts.permissions import Actor
from opensci.compute import service, workspace
from opensci.compute.models import FINAL, Job
from opensci.compute.schemas import (
    MAX_SPEC_BYTES,
    REPO_NAME,
    JobOut,
    JobSpec,
    parse_spec,
    spec_too_large,
)
from opensci.deps import ActorDep, IdBound, SessionDep, SettingsDep, StoreDep, is_row_id
from opensci.errors import InvalidInput, NotFound
from opensci.repos import service as repos

router = APIRouter(prefix="/api/v1/jobs", tags=["compute"])
LOG_CHUNK = 1024**2


async def read_spec(request: Request) -> JobSpec:
    """The body of `POST /api/v1/jobs`, read here rather than by FastAPI so that every refusal of a spec
    (not JSON, wrong JSON types, bad values, too large) is one 422 `invalid_spec` with a plain message."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_SPEC_BYTES:
        raise spec_too_large()  # without reading it
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SPEC_BYTES:
            raise spec_too_large()
    return parse_spec(bytes(body))


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its `$defs` written in place (the OpenAPI document has no room for them)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(
                    {**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}}
                )
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inline(JobSpec.model_json_schema())}},
    }
}


@contextmanager
def _spec_refusals() -> Iterator[None]:
    """Every 422 about a spec is `invalid_spec`, as the route promises: a check of the repositories'
    domain that the service reaches while resolving the spec (a ref or path rule: `invalid_ref`,
    `invalid_path`…) answers with the spec's code, and its message."""
    try:
        yield
    except InvalidInput as exc:
        if exc.code == "invalid_spec":
            raise
        raise InvalidInput(exc.message, code="invalid_spec", headers=exc.headers) from exc


def _job(actor: Actor, session: Session, job_id: int) -> Job:
    if not is_row_id(job_id):  # no job has it; the database would fail on it
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return service.get_job(actor, session, job_id)


def _wake(request: Request) -> None:
    scheduler = getattr(request.app.state, "scheduler", None)
    if scheduler is not None:
        scheduler.wake.set()


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={
        422: {"description": "`invalid_spec`: the spec is refused; the message names the field"},
        429: {"description": "`too_many_queued_jobs`: the submitter already has the most jobs waiting"},
    },
    openapi_extra=_SPEC_BODY,
)
def submit_job(
    spec: Annotated[JobSpec, Depends(read_spec)],
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    store: StoreDep,
) -> JSONResponse:
    """Queue a job; 201 with the job (its `id` and `status`). Nothing is queued when the spec is refused."""
    with _spec_refusals():
        job = service.submit(actor, session, settings, store, spec)
    _wake(request)
    return JSONResponse(service.job_dict(settings, session, job, actor), status_code=201)


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
    before: Annotated[IdBound, Query(description="Only jobs with a smaller id (next page).")] = None,
) -> dict[str, Any]:
    target = None
    if repo:
        if not REPO_NAME.match(repo):
            raise InvalidInput(f"repo {repo!r} is not owner/name", code="invalid_repo")
        repo_owner, _, repo_name = repo.partition("/")
        target = repos.get_repo(actor, session, repo_owner, repo_name)
    jobs = service.list_jobs(
        actor, session, owner=owner, status=status, repo=target, limit=limit, before=before
    )
    return {
        "jobs": [service.job_dict(settings, session, j, actor) for j in jobs],
        "next_before": jobs[-1].id if len(jobs) == limit else None,
    }


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: int, session: SessionDep, actor: ActorDep, settings: SettingsDep) -> dict[str, Any]:
    return service.job_dict(settings, session, _job(actor, session, job_id), actor)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(
    job_id: int, request: Request, session: SessionDep, actor: ActorDep, settings: SettingsDep
) -> dict[str, Any]:
    job = service.cancel(actor, session, _job(actor, session, job_id))
    _wake(request)
    return service.job_dict(settings, session, job, actor)


@router.post("/{job_id}/rerun", status_code=201, response_model=JobOut)
def rerun_job(
    job_id: int,
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    store: StoreDep,
) -> JSONResponse:
    """Run the recorded spec again at the same commits of code and inputs. A job with environment
    variables is rerun only by its submitter (403 `rerun_not_allowed` for others)."""
    job = _job(actor, session, job_id)
    with _spec_refusals():
        job = service.rerun(actor, session, settings, store, job)
    _wake(request)
    return JSONResponse(service.job_dict(settings, session, job, actor), status_code=201)


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
    job = _job(actor, session, job_id)
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
    """Up to `limit` bytes of the log from `offset`; nothing at or past its end (however far)."""
    try:
        with open(path, "rb") as f:
            if offset >= os.fstat(f.fileno()).st_size:
                return b""
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
