"""Git smart HTTP: clone, fetch and push with the stock git client, at `/{owner}/{name}.git` and
`/datasets/{owner}/{name}.git`, running `git upload-pack` / `git receive-pack --stateless-rpc`.

Access follows `accounts.permissions.can`. Git only sends credentials after a 401 challenge, so an
anonymous request for a repository it cannot see gets the same 401 as one for a repository that does
not exist; an authenticated one gets 404. Pushes to the default branch that rewrite history (or delete
it) are refused by a pre-receive hook unless the pusher administers the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from opensci.accounts.permissions import Actor, can
from opensci.deps import SessionDep, StoreDep, resolve_actor
from opensci.errors import Forbidden, RepoNotFound, Unauthorized
from opensci.repos import service
from opensci.repos.gitstore import GitStore
from opensci.repos.models import RepoKind, Repository

router = APIRouter(include_in_schema=False)
SERVICES = {"git-upload-pack": "upload-pack", "git-receive-pack": "receive-pack"}
CHUNK = 256 * 1024
SPOOL_IN_MEMORY = 4 * 1024 * 1024


def install_hooks(store: GitStore, home: Path) -> Path:
    """Copy the hook into HOME/hooks (executable); every receive-pack runs with core.hooksPath there."""
    hooks = home / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    src = Path(__file__).with_name("pre-receive")
    dst = hooks / "pre-receive"
    tmp = hooks / ".pre-receive.tmp"
    shutil.copyfile(src, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dst)
    return hooks


def _challenge(message: str) -> Response:
    return Response(
        message + "\n",
        status_code=401,
        media_type="text/plain",
        headers={"WWW-Authenticate": 'Basic realm="OpenSci", charset="UTF-8"'},
    )


def _authorize(
    request: Request, session: SessionDep, owner: str, name: str, kind: str, svc: str
) -> Repository | Response:
    """The repository if the caller may use the service on it, else the reply git should see."""
    try:
        actor = resolve_actor(request, session)
    except Unauthorized as exc:
        return _challenge(exc.message)
    want = RepoKind.dataset if kind == "dataset" else None
    try:
        repo = service.get_repo(actor, session, owner, name)
    except RepoNotFound:
        return (
            _challenge("authentication required")
            if actor.is_anonymous
            else Response("repository not found\n", 404)
        )
    if (want is RepoKind.dataset) != (repo.kind == RepoKind.dataset):
        if svc == "info" and request.method == "GET":
            return RedirectResponse(f"{repo.url_path}.git/info/refs?{request.url.query}", status_code=301)
        return Response("repository not found\n", 404)
    if svc == "receive-pack" and not can(actor, "write", repo):
        if actor.is_anonymous:
            return _challenge("authentication required to push")
        return Response(
            Forbidden(f"you may not push to {repo.full_name}").message + "\n", 403, media_type="text/plain"
        )
    request.state.repo_admin = can(actor, "admin", repo)
    return repo


def _git_env(request: Request, repo: Repository, hooks: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    protocol = request.headers.get("git-protocol")
    if protocol and all(c.isalnum() or c in "=:,._-" for c in protocol):
        env["GIT_PROTOCOL"] = protocol
    if hooks is not None:
        env["OPENSCI_PROTECTED_REF"] = f"refs/heads/{repo.default_branch}"
        env["OPENSCI_CAN_ADMIN"] = "1" if getattr(request.state, "repo_admin", False) else "0"
    return env


def _args(store: GitStore, svc: str, hooks: Path | None, repo: Repository, advertise: bool) -> list[str]:
    args = [store.git]
    if svc == "receive-pack" and hooks is not None:
        args += ["-c", f"core.hooksPath={hooks}"]
    args += [svc, "--stateless-rpc"]
    if advertise:
        args.append("--advertise-refs")
    args.append(str(store.path(repo.id)))
    return args


def _pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


async def _info_refs(
    request: Request, session: SessionDep, store: StoreDep, owner: str, repo_name: str, kind: str
) -> Response:
    svc_name = request.query_params.get("service", "")
    svc = SERVICES.get(svc_name)
    if svc is None:
        return Response(
            "only the smart HTTP protocol is supported; use a git client\n", 403, media_type="text/plain"
        )
    name = repo_name.removesuffix(".git")
    result = await run_in_threadpool(
        _authorize, request, session, owner, name, kind, svc if svc == "receive-pack" else "info"
    )
    if isinstance(result, Response):
        return result
    hooks = request.app.state.git_hooks
    env = _git_env(request, result, hooks)
    proc = await asyncio.create_subprocess_exec(
        *_args(store, svc, hooks, result, advertise=True),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"git {svc} --advertise-refs failed: {err.decode(errors='replace')}")
    prefix = b"" if "version=2" in env.get("GIT_PROTOCOL", "") else _pkt(f"# service={svc_name}\n") + b"0000"
    return Response(
        prefix + out,
        media_type=f"application/x-{svc_name}-advertisement",
        headers={"Cache-Control": "no-cache, max-age=0, must-revalidate", "Pragma": "no-cache"},
    )


async def _spool_body(request: Request, tmp_dir: Path) -> tempfile.SpooledTemporaryFile[bytes]:
    """The whole request body (gunzipped if needed), so a truncated upload never reaches git."""
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=tmp_dir)  # noqa: SIM115 (closed by the caller)
    gz = (
        zlib.decompressobj(16 + zlib.MAX_WBITS) if request.headers.get("content-encoding") == "gzip" else None
    )
    async for chunk in request.stream():
        spool.write(gz.decompress(chunk) if gz else chunk)
    if gz:
        spool.write(gz.flush())
    spool.seek(0)
    return spool


async def _rpc(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    owner: str,
    repo_name: str,
    kind: str,
    svc_name: str,
) -> Response:
    svc = SERVICES[svc_name]
    name = repo_name.removesuffix(".git")
    result = await run_in_threadpool(_authorize, request, session, owner, name, kind, svc)
    if isinstance(result, Response):
        return result
    repo = result
    body = await _spool_body(request, request.app.state.settings.tmp_dir)
    hooks = request.app.state.git_hooks
    proc = await asyncio.create_subprocess_exec(
        *_args(store, svc, hooks, repo, advertise=False),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_git_env(request, repo, hooks),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def feed() -> None:
        try:
            while chunk := body.read(CHUNK):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            body.close()
            with contextlib.suppress(Exception):
                proc.stdin.close()

    feeder = asyncio.create_task(feed())
    errors = asyncio.create_task(proc.stderr.read())
    db = request.app.state.db

    async def stream() -> AsyncIterator[bytes]:
        try:
            while chunk := await proc.stdout.read(CHUNK):
                yield chunk
            await feeder
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            feeder.cancel()
            await errors
            if svc == "receive-pack":
                await run_in_threadpool(_after_push, db, store, repo.id)

    return StreamingResponse(
        stream(), media_type=f"application/x-{svc_name}-result", headers={"Cache-Control": "no-cache"}
    )


def _after_push(db: object, store: GitStore, repo_id: str) -> None:
    with db.session() as session:  # type: ignore[attr-defined]
        repo = session.get(Repository, repo_id)
        if repo is not None:
            service.after_push(session, store, repo)


def _routes(prefix: str, kind: str) -> None:
    @router.get(prefix + "/{owner}/{repo_name}/info/refs")
    async def info_refs(
        owner: str, repo_name: str, request: Request, session: SessionDep, store: StoreDep
    ) -> Response:
        return await _info_refs(request, session, store, owner, repo_name, kind)

    @router.post(prefix + "/{owner}/{repo_name}/git-upload-pack")
    async def upload_pack(
        owner: str, repo_name: str, request: Request, session: SessionDep, store: StoreDep
    ) -> Response:
        return await _rpc(request, session, store, owner, repo_name, kind, "git-upload-pack")

    @router.post(prefix + "/{owner}/{repo_name}/git-receive-pack")
    async def receive_pack(
        owner: str, repo_name: str, request: Request, session: SessionDep, store: StoreDep
    ) -> Response:
        return await _rpc(request, session, store, owner, repo_name, kind, "git-receive-pack")


_routes("/datasets", "dataset")
_routes("", "code")

__all__ = ["Actor", "install_hooks", "router"]
