"""Git smart HTTP: clone, fetch and push with the stock git client, at `/{owner}/{name}.git` and
`/datasets/{owner}/{name}.git`, running `git upload-pack` / `git receive-pack --stateless-rpc`.

Access follows `accounts.permissions.can`, with the credentials git sends (a token as the Basic
password, or a Bearer header) and never a browser's session cookie. Git only sends credentials after a
401 challenge, so an anonymous request for a repository it cannot see gets the same 401 as one for a
repository that does not exist; an authenticated one gets 404. A pre-receive hook (checked before every
push, reinstalled if damaged) refuses refs other than branches and tags, refs that do not name commits,
and, unless the pusher administers the repository, history rewrites and deletion of the default branch.

Each request body is read whole (gunzipped, within `max_upload_bytes`) before git starts, so a cut-off
upload never reaches git. Git runs in a process group of its own: when the exchange ends early (the
client went away, the server stops) the whole group is ended, and git's stderr is logged with the
request id whenever it fails. A git that fails before answering gives a 500 JSON reply, never an empty
200; the database connection is released while git runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pygit2
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from opensci.accounts.permissions import Actor, can
from opensci.deps import SessionDep, StoreDep, credentials, resolve_actor
from opensci.errors import Forbidden, OpenSciError, PayloadTooLarge, RepoNotFound, Unauthorized
from opensci.observability import request_id_of
from opensci.repos import service
from opensci.repos.gitstore import GitStore
from opensci.repos.models import RepoKind, Repository

log = logging.getLogger("opensci.git")
router = APIRouter(include_in_schema=False)
SERVICES = {"git-upload-pack": "upload-pack", "git-receive-pack": "receive-pack"}
CHUNK = 256 * 1024
SPOOL_IN_MEMORY = 4 * 1024 * 1024
STOP_GRACE = 2.0  # seconds git gets to clean up (temporary packs, quarantine) before it is killed
EXIT_WAIT = 30.0  # seconds git may take to exit once its output is complete
STDERR_LOGGED = 4000  # characters of git's stderr kept in a log line
HOOK_SOURCE = Path(__file__).with_name("pre-receive")


def install_hooks(store: GitStore, home: Path) -> Path:
    """Copy the hook into HOME/hooks (executable); every receive-pack runs with core.hooksPath there."""
    hooks = home / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    dst = hooks / "pre-receive"
    tmp = hooks / f".pre-receive.{os.getpid()}.tmp"
    shutil.copyfile(HOOK_SOURCE, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dst)
    return hooks


def _checked_hooks(request: Request) -> Path:
    """The hooks folder, with the hook reinstalled if it was removed, emptied or made non-executable:
    git skips such a hook silently, and a push must never go unchecked."""
    hooks: Path = request.app.state.git_hooks
    hook = hooks / "pre-receive"
    try:
        intact = os.access(hook, os.X_OK) and hook.read_bytes() == HOOK_SOURCE.read_bytes()
    except OSError:
        intact = False
    if not intact:
        log.warning("the pre-receive hook at %s was missing or altered; reinstalling it", hook)
        install_hooks(request.app.state.store, hooks.parent)
    return hooks


def _challenge(message: str) -> Response:
    return Response(
        message + "\n",
        status_code=401,
        media_type="text/plain",
        headers={"WWW-Authenticate": 'Basic realm="OpenSci", charset="UTF-8"'},
    )


def _authorize(
    request: Request, session: SessionDep, owner: str, name: str, kind: str, svc: str, advertise: bool
) -> Repository | Response:
    """The repository if the caller may use the service on it, else the reply git should see.

    Closes the session before returning: git may run for minutes and needs no database connection.
    """
    try:
        return _decide(request, session, owner, name, kind, svc, advertise)
    finally:
        session.close()


def _decide(
    request: Request, session: SessionDep, owner: str, name: str, kind: str, svc: str, advertise: bool
) -> Repository | Response:
    try:
        # Only credentials git sends count: never a browser's session cookie, which another site
        # could make the browser send along with a forged push.
        actor = resolve_actor(request, session) if credentials(request) else Actor.anonymous()
    except Unauthorized as exc:
        return _challenge(exc.message)
    want = RepoKind.dataset if kind == "dataset" else None
    try:
        repo = service.get_repo(actor, session, owner, name)
    except RepoNotFound:
        return (
            _challenge("authentication required")
            if actor.is_anonymous
            else Response("repository not found\n", 404, media_type="text/plain")
        )
    if (want is RepoKind.dataset) != (repo.kind == RepoKind.dataset):
        # Git follows a redirect of its first request, for fetches and pushes alike, and keeps using
        # the new URL for the rest of the exchange.
        if advertise:
            return RedirectResponse(f"{repo.url_path}.git/info/refs?{request.url.query}", status_code=301)
        return Response("repository not found\n", 404, media_type="text/plain")
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


# --- git processes -------------------------------------------------------------------------------------


async def _start_git(args: list[str], env: dict[str, str], stdin: int) -> asyncio.subprocess.Process:
    """Start git in a new process group, so that ending it also ends pack-objects, index-pack, hooks."""
    return await asyncio.create_subprocess_exec(
        *args,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


async def _stop_git(proc: asyncio.subprocess.Process) -> bool:
    """End a git that is still running, with its children; True if it had to be stopped.

    SIGTERM first, so git removes its temporary files and push quarantine; SIGKILL if it lingers.
    """
    if proc.returncode is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    return True


def _log_failure(request: Request, what: str, repo: Repository, code: int | None, stderr: bytes) -> None:
    log.error(
        "git %s failed for repository %s (%s) with exit status %s (request_id=%s): %s",
        what,
        repo.full_name,
        repo.id,
        code,
        request_id_of(request),
        stderr.decode(errors="replace").strip()[-STDERR_LOGGED:] or "(no output)",
    )


def _git_failed(request: Request, what: str) -> Response:
    rid = request_id_of(request)
    return JSONResponse(
        {
            "error": "git_failed",
            "message": f"git {what} failed on the server; quote request id {rid} to the operator",
        },
        status_code=500,
    )


# --- the ref advertisement -----------------------------------------------------------------------------


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
    result = await run_in_threadpool(_authorize, request, session, owner, name, kind, svc, True)
    if isinstance(result, Response):
        return result
    hooks = request.app.state.git_hooks
    env = _git_env(request, result, hooks)
    proc = await _start_git(_args(store, svc, hooks, result, advertise=True), env, asyncio.subprocess.DEVNULL)
    try:
        out, err = await proc.communicate()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop_git(proc)
    if proc.returncode != 0:
        _log_failure(request, f"{svc} --advertise-refs", result, proc.returncode, err)
        return _git_failed(request, svc)
    prefix = b"" if "version=2" in env.get("GIT_PROTOCOL", "") else _pkt(f"# service={svc_name}\n") + b"0000"
    return Response(
        prefix + out,
        media_type=f"application/x-{svc_name}-advertisement",
        headers={"Cache-Control": "no-cache, max-age=0, must-revalidate", "Pragma": "no-cache"},
    )


# --- the RPC: upload-pack and receive-pack -------------------------------------------------------------


async def _spool_body(request: Request, tmp_dir: Path, limit: int) -> tempfile.SpooledTemporaryFile[bytes]:
    """The whole request body, gunzipped if needed, so a truncated upload never reaches git.

    The limit applies to the body as git will read it, so a small gzip bomb is refused too.
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise OpenSciError(
            f"unsupported Content-Encoding {encoding!r}: send gzip or nothing", code="bad_encoding"
        )
    gz = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "identity" else None
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=tmp_dir)  # noqa: SIM115 (closed by the caller)
    size = 0

    def write(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        spool.write(data)

    try:
        async for chunk in request.stream():
            if gz is None:
                write(chunk)
                continue
            data = chunk
            while data:  # bounded steps: a tiny chunk may inflate to gigabytes
                write(gz.decompress(data, CHUNK))
                data = gz.unconsumed_tail
        if gz is not None:
            write(gz.flush())
            if not gz.eof:
                raise OpenSciError("the gzip request body is truncated", code="bad_encoding")
    except zlib.error as exc:
        spool.close()
        raise OpenSciError(f"the gzip request body is corrupt: {exc}", code="bad_encoding") from exc
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


async def _feed(proc: asyncio.subprocess.Process, body: tempfile.SpooledTemporaryFile[bytes]) -> None:
    assert proc.stdin is not None
    try:
        while (chunk := body.read(CHUNK)) and not proc.stdin.is_closing():
            proc.stdin.write(chunk)
            await proc.stdin.drain()
    except (ConnectionError, RuntimeError):
        # Git stopped reading (its exit status and stderr tell why). uvloop reports a write to the
        # pipe of a process that just exited as RuntimeError("the handler is closed").
        pass
    finally:
        body.close()
        with contextlib.suppress(Exception):
            proc.stdin.close()


class GitResponse(Response):
    """Streams git's stdout to the client, then ends the exchange with `finish` however it went:
    complete, client gone mid-stream (git is stopped at once), or cancelled."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        first: bytes,
        media_type: str,
        finish: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.proc, self.first, self.finish = proc, first, finish
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers({"Cache-Control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                chunk = self.first
                while chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    chunk = await stdout.read(CHUNK)
                # Git and the bookkeeping finish before the reply does: when `git push` returns, the
                # API already shows what it pushed.
                with anyio.CancelScope(shield=True):
                    await self.finish(True)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.finish(False)  # does nothing if the exchange completed


def _ref_snapshot(store: GitStore, repo_id: str) -> dict[str, str]:
    """Every ref and its target, to tell whether a push changed anything; empty if unreadable."""
    try:
        g = store.open(repo_id)
        return {r.name: str(r.target) for r in g.references.objects}
    except pygit2.GitError:
        return {}  # git itself will fail and say why


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
    result = await run_in_threadpool(_authorize, request, session, owner, name, kind, svc, False)
    if isinstance(result, Response):
        return result
    repo = result
    rid = request_id_of(request)
    expected = f"application/x-{svc_name}-request"
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != expected:
        return Response(f"expected Content-Type: {expected}\n", 415, media_type="text/plain")
    settings = request.app.state.settings
    try:
        body = await _spool_body(request, settings.tmp_dir, settings.max_upload_bytes)
    except ClientDisconnect:
        log.info("client went away while sending a %s request (request_id=%s)", svc, rid)
        return Response(status_code=400)
    pushing = svc == "receive-pack"
    held: Path | None = None
    try:
        refs_before = await run_in_threadpool(_ref_snapshot, store, repo.id) if pushing else {}
        hooks = await run_in_threadpool(_checked_hooks, request) if pushing else None
        env = _git_env(request, repo, hooks)
        if pushing:
            held = await run_in_threadpool(_write_held, request.app.state.db, settings.tmp_dir, repo.id)
            env |= {"OPENSCI_LFS_HELD": str(held), "OPENSCI_PYTHON": sys.executable, "OPENSCI_GIT": store.git}
        proc = await _start_git(_args(store, svc, hooks, repo, advertise=False), env, asyncio.subprocess.PIPE)
    except BaseException:
        body.close()
        if held is not None:
            held.unlink(missing_ok=True)
        raise
    assert proc.stdout is not None and proc.stderr is not None
    feeder = asyncio.create_task(_feed(proc, body))
    errors = asyncio.create_task(proc.stderr.read())
    db = request.app.state.db
    finished = False

    async def finish(complete: bool) -> None:
        """Wait for git (complete exchange) or stop it (anything else); log a failure; bookkeeping."""
        nonlocal finished
        if finished:
            return
        finished = True
        if complete:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), EXIT_WAIT)
        stopped = await _stop_git(proc)
        feeder.cancel()
        await asyncio.wait([feeder])  # never raises: how feeding ended does not matter once git is done
        if not feeder.cancelled() and (exc := feeder.exception()) is not None:
            log.warning("writing the request to git %s failed (request_id=%s): %r", svc, rid, exc)
        try:
            err = await asyncio.wait_for(errors, STOP_GRACE)
        except TimeoutError:
            err = b"(stderr not closed)"
        if stopped:
            log.info("stopped git %s for %s: exchange ended early (request_id=%s)", svc, repo.full_name, rid)
        elif proc.returncode != 0:
            _log_failure(request, svc, repo, proc.returncode, err)
        if pushing:
            if held is not None:
                held.unlink(missing_ok=True)
            await run_in_threadpool(_after_push, db, store, repo.id, refs_before)

    try:
        first = await proc.stdout.read(CHUNK)
        if not first:  # git wrote nothing: wait for it, so a failure is an error reply, not an empty 200
            await proc.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await finish(False)
        raise
    if not first and proc.returncode != 0:
        await finish(True)
        if _said_protocol_error(errors):  # the client sent something git cannot parse: its error, not ours
            return JSONResponse(
                {"error": "bad_request", "message": f"the request is not valid git {svc} protocol"},
                status_code=400,
            )
        return _git_failed(request, svc)
    return GitResponse(proc, first, f"application/x-{svc_name}-result", finish)


def _write_held(db: object, tmp_dir: Path, repo_id: str) -> Path:
    """A file of the Git LFS oids the repository holds, for the push's pre-receive check."""
    from opensci.storage.files import held_oids

    with db.session() as session:  # type: ignore[attr-defined]
        oids = held_oids(session, repo_id)
    fd, name = tempfile.mkstemp(prefix="lfs-held-", dir=tmp_dir)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(oids))
    return Path(name)


def _said_protocol_error(stderr: asyncio.Task[bytes]) -> bool:
    """Whether git stopped because the request did not follow its protocol (`fatal: protocol error: …`)."""
    if not stderr.done() or stderr.cancelled() or stderr.exception() is not None:
        return False
    return b"protocol error" in stderr.result()


def _after_push(db: object, store: GitStore, repo_id: str, refs_before: dict[str, str]) -> None:
    """Bookkeeping when a push changed refs (a refused push changes nothing, not even the update time)."""
    try:
        if _ref_snapshot(store, repo_id) == refs_before:
            return
        with db.session() as session:  # type: ignore[attr-defined]
            repo = session.get(Repository, repo_id)
            if repo is not None:
                service.after_push(session, store, repo)
    except Exception:
        log.exception("bookkeeping after a push to repository %s failed", repo_id)


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
