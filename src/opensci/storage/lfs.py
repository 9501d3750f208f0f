"""The Git LFS server: the batch API and its transfer links, at `{repo-url}.git/info/lfs/...`.

- `POST objects/batch` (the Git LFS batch API, `basic` transfer): same permissions as git — reading for
  downloads, writing for uploads; an invisible repository is a 401 challenge for the anonymous (so
  `git lfs` asks for credentials) and a 404 for everyone else.
- The transfer links it hands out carry a signature (operation, repository, oid, size, expiry) in their
  query, because Hugging Face clients send no credentials with the PUT; they expire after
  `lfs_link_seconds`. Downloads also work with ordinary credentials instead of a signature.
- `PUT objects/{oid}` streams the body into the blob store, checked against the announced sha256 and
  size before the object becomes visible; `GET objects/{oid}` serves it with HTTP Range.
- `POST objects/verify` answers 200 once the repository holds the object.
- `POST locks/verify` answers that nobody holds locks (creating locks is not offered); `git lfs push`
  then suggests setting `lfs.locksverify`, which changes nothing either way.

A repository only serves objects it holds (`storage_repo_objects`): knowing an oid of someone else's
private file never yields its bytes. An upload of content the store has but this repository does not
hold is asked for anyway: the bytes prove possession, and deduplication stores nothing new.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from opensci.accounts.permissions import Actor, can
from opensci.deps import credentials, resolve_actor
from opensci.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    OpenSciError,
    PayloadTooLarge,
    RepoNotFound,
    Unauthorized,
)
from opensci.http_body import RequestBody
from opensci.repos import service as repos
from opensci.repos.models import RepoKind, Repository
from opensci.settings import Settings
from opensci.storage import files, quota
from opensci.storage.index import check_oid
from opensci.storage.store import BlobStore

router = APIRouter(include_in_schema=False)

LFS_JSON = "application/vnd.git-lfs+json"
MAX_OBJECTS = 1000  # per batch request (clients send at most 100 or 256)
MAX_BATCH_BODY = 4 * 1024 * 1024


def _reply(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, media_type=LFS_JSON, headers=headers)


def _error(exc: OpenSciError) -> Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("LFS-Authenticate", 'Basic realm="OpenSci"')
        headers.setdefault("WWW-Authenticate", 'Basic realm="OpenSci"')
    return _reply({"error": exc.code, "message": exc.message}, exc.status, headers)


# --- who may do what ---------------------------------------------------------------------------------


def _actor(request: Request, session: Any) -> Actor:
    # Only credentials git (or a Hub client) sends count, never a browser's cookie.
    return resolve_actor(request, session) if credentials(request) else Actor.anonymous()


def _repo(request: Request, session: Any, owner: str, repo_name: str, write: bool) -> Repository:
    """The repository of the URL if the caller may read it (and write, for uploads), as git decides.

    A dataset is found under the code URL form too (`/{owner}/{name}.git/info/lfs`), and a code repository
    under `/datasets/…`: git follows the server's redirect to the right form, but git-lfs keeps asking
    the URL the clone was given."""
    name = repo_name.removesuffix(".git")
    actor = _actor(request, session)
    try:
        repo = repos.get_repo(actor, session, owner, name)
    except RepoNotFound:
        if actor.is_anonymous:
            raise Unauthorized("authentication required", code="login_required") from None
        raise
    if write and not can(actor, "write", repo):
        if actor.is_anonymous:
            raise Unauthorized("authentication required to upload", code="login_required")
        raise Forbidden(f"you may not upload to {repo.full_name}")
    request.state.actor = actor
    return repo


# --- signed transfer links ---------------------------------------------------------------------------


def _signature(settings: Settings, op: str, repo_id: str, oid: str, size: int, expires: int) -> str:
    key = hashlib.sha256(b"opensci-lfs-link\0" + settings.effective_secret_key().encode()).digest()
    message = f"{op}\0{repo_id}\0{oid}\0{size}\0{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _link(
    request: Request, settings: Settings, repo: Repository, op: str, oid: str, size: int
) -> dict[str, Any]:
    expires = int(time.time()) + settings.lfs_link_seconds
    sig = _signature(settings, op, repo.id, oid, size, expires)
    base = str(request.base_url).rstrip("/")
    leaf = "verify" if op == "verify" else oid
    href = f"{base}{repo.url_path}.git/info/lfs/objects/{leaf}?op={op}&size={size}&exp={expires}&sig={sig}"
    if op == "verify":
        href += f"&oid={oid}"
    return {"href": href, "expires_in": settings.lfs_link_seconds}


def _signed(request: Request, settings: Settings, repo: Repository, op: str, oid: str, size: int) -> bool:
    q = request.query_params
    if q.get("op") != op or not q.get("sig") or not q.get("exp", "").isdigit():
        return False
    if q.get("size") != str(size) or int(q["exp"]) < time.time():
        return False
    expected = _signature(settings, op, repo.id, oid, size, int(q["exp"]))
    return hmac.compare_digest(expected, q["sig"])


def _repo_by_link(request: Request, session: Any, owner: str, repo_name: str, dataset: bool) -> Repository:
    """The repository of a signed link; the signature is checked by the caller (it names the repository
    by id, so a rename in between keeps links working and a new repository of the same name does not)."""
    repo = repos.find_repo(session, owner, repo_name.removesuffix(".git"))
    if repo is None or (repo.kind == RepoKind.dataset) != dataset:
        raise _bad_link()
    return repo


def _bad_link() -> Forbidden:
    # The same answer whether the repository exists or not: a link reveals nothing without its signature.
    return Forbidden("this link is invalid or expired; ask the batch API for a new one", code="invalid_link")


# --- the batch API -----------------------------------------------------------------------------------


def _parse_batch(raw: bytes) -> tuple[str, list[dict[str, Any]]]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"the batch request is not JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidInput("the batch request must be a JSON object", code="invalid_batch")
    op = body.get("operation")
    if op not in ("upload", "download"):
        raise InvalidInput("operation must be 'upload' or 'download'", code="invalid_batch")
    if body.get("hash_algo", "sha256") != "sha256":
        raise InvalidInput("only the sha256 hash algorithm is supported", code="unsupported_hash")
    transfers = body.get("transfers") or ["basic"]
    if not isinstance(transfers, list) or "basic" not in transfers:
        raise InvalidInput("only the 'basic' transfer adapter is supported", code="unsupported_transfer")
    objects = body.get("objects")
    if not isinstance(objects, list) or not objects:
        raise InvalidInput("objects must be a non-empty list", code="invalid_batch")
    if len(objects) > MAX_OBJECTS:
        raise InvalidInput(f"at most {MAX_OBJECTS} objects per batch request", code="too_many_objects")
    return op, objects


def _object_error(obj: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    return {"oid": obj.get("oid"), "size": obj.get("size"), "error": {"code": code, "message": message}}


def _batch(request: Request, raw: bytes, owner: str, repo_name: str, dataset: bool) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    blobs: BlobStore = request.app.state.blobs
    op, objects = _parse_batch(raw)
    with request.app.state.db.session() as session:
        repo = _repo(request, session, owner, repo_name, write=op == "upload")
        used = quota.usage(session, settings, repo.owner_id).used_bytes
        planned = 0  # bytes this batch may add to the owner's usage
        out = []
        for obj in objects:
            if not isinstance(obj, dict):
                raise InvalidInput("each object must be {oid, size}", code="invalid_batch")
            oid, size = obj.get("oid"), obj.get("size")
            try:
                oid = check_oid(oid if isinstance(oid, str) else "")
            except InvalidInput:
                out.append(_object_error(obj, 422, "oid must be 64 lowercase hex digits (a sha256)"))
                continue
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                out.append(_object_error(obj, 422, "size must be a non-negative integer"))
                continue
            held = files.holds(session, repo.id, oid) and blobs.has(oid)
            if op == "download":
                if not held:
                    out.append(_object_error(obj, 404, f"object {oid} is not stored in {repo.full_name}"))
                    continue
                actual = blobs.stat(oid).size
                link = _link(request, settings, repo, "download", oid, actual)
                out.append({"oid": oid, "size": actual, "authenticated": True, "actions": {"download": link}})
                continue
            if held:
                out.append({"oid": oid, "size": size})  # nothing to send
                continue
            if size > settings.max_upload_bytes:
                out.append(
                    _object_error(
                        obj, 413, f"{size} bytes exceed the server's limit of {settings.max_upload_bytes}"
                    )
                )
                continue
            if not quota.owner_holds(session, repo.owner_id, oid):
                limit = quota.limit_for(session, settings, repo.owner_id)
                if limit is not None and used + planned + size > limit:
                    out.append(
                        _object_error(
                            obj,
                            413,
                            f"{repo.owner.name} uses {used:,} of its {limit:,}-byte storage quota; "
                            f"this {size:,}-byte file does not fit",
                        )
                    )
                    continue
                planned += size
            out.append(
                {
                    "oid": oid,
                    "size": size,
                    "authenticated": True,
                    "actions": {
                        "upload": _link(request, settings, repo, "upload", oid, size),
                        "verify": _link(request, settings, repo, "verify", oid, size),
                    },
                }
            )
    return {"transfer": "basic", "objects": out, "hash_algo": "sha256"}


def _upload(request: Request, body: RequestBody, owner: str, repo_name: str, dataset: bool, oid: str) -> None:
    settings: Settings = request.app.state.settings
    blobs: BlobStore = request.app.state.blobs
    db = request.app.state.db
    try:
        oid = check_oid(oid)
        size = int(request.query_params.get("size", ""))
    except (InvalidInput, ValueError):
        raise _bad_link() from None
    with db.session() as session:
        repo = _repo_by_link(request, session, owner, repo_name, dataset)
        if not _signed(request, settings, repo, "upload", oid, size):
            raise _bad_link()
        repo_id = repo.id
    info = blobs.put(body, expected_oid=oid, expected_size=size)
    with db.session() as session:
        repo = session.get(Repository, repo_id)
        if repo is None:
            raise RepoNotFound("the repository was deleted during the upload")
        files.hold_object(session, settings, repo, info.oid, info.size)
        session.commit()


def _download(request: Request, owner: str, repo_name: str, dataset: bool, oid: str) -> Response:
    settings: Settings = request.app.state.settings
    blobs: BlobStore = request.app.state.blobs
    try:
        oid = check_oid(oid)
    except InvalidInput:
        raise NotFound(f"no object {oid!r}", code="object_not_found") from None
    with request.app.state.db.session() as session:
        if "sig" in request.query_params:
            repo = _repo_by_link(request, session, owner, repo_name, dataset)
            size = request.query_params.get("size", "")
            if not size.isdigit() or not _signed(request, settings, repo, "download", oid, int(size)):
                raise _bad_link()
        else:
            repo = _repo(request, session, owner, repo_name, write=False)
        if not files.holds(session, repo.id, oid) or not blobs.has(oid):
            raise NotFound(f"object {oid} is not stored in {repo.full_name}", code="object_not_found")
        size = blobs.stat(oid).size
    return files.object_response(request, blobs, oid, size)


def _verify(request: Request, raw: bytes, owner: str, repo_name: str, dataset: bool) -> None:
    settings: Settings = request.app.state.settings
    blobs: BlobStore = request.app.state.blobs
    try:
        body = json.loads(raw)
        oid, size = check_oid(body["oid"]), body["size"]
        if not isinstance(size, int):
            raise ValueError
    except (ValueError, KeyError, TypeError, InvalidInput):
        raise InvalidInput("verify takes {oid, size}", code="invalid_verify") from None
    with request.app.state.db.session() as session:
        if "sig" in request.query_params:
            repo = _repo_by_link(request, session, owner, repo_name, dataset)
            if request.query_params.get("oid") != oid or not _signed(
                request, settings, repo, "verify", oid, size
            ):
                raise _bad_link()
        else:
            repo = _repo(request, session, owner, repo_name, write=True)
        if not files.holds(session, repo.id, oid) or not blobs.has(oid):
            raise NotFound(f"object {oid} was not uploaded to {repo.full_name}", code="object_not_found")
        if blobs.stat(oid).size != size:
            raise InvalidInput(f"object {oid} does not have {size} bytes", code="size_mismatch")


async def _read_small(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BATCH_BODY:
            raise PayloadTooLarge(f"the request body exceeds {MAX_BATCH_BODY} bytes", code="body_too_large")
    return body


def _routes(prefix: str, dataset: bool) -> None:
    base = prefix + "/{owner}/{repo_name}/info/lfs"

    @router.post(base + "/objects/batch")
    async def batch(owner: str, repo_name: str, request: Request) -> Response:
        try:
            raw = await _read_small(request)
            return _reply(await run_in_threadpool(_batch, request, raw, owner, repo_name, dataset))
        except OpenSciError as exc:
            return _error(exc)

    @router.put(base + "/objects/{oid}")
    async def upload(owner: str, repo_name: str, oid: str, request: Request) -> Response:
        try:
            body = RequestBody(request)
            await run_in_threadpool(_upload, request, body, owner, repo_name, dataset, oid)
            return Response(status_code=200)
        except ClientDisconnect:
            return Response(status_code=400)
        except OpenSciError as exc:
            return _error(exc)

    @router.api_route(base + "/objects/{oid}", methods=["GET", "HEAD"])
    async def download(owner: str, repo_name: str, oid: str, request: Request) -> Response:
        try:
            return await run_in_threadpool(_download, request, owner, repo_name, dataset, oid)
        except OpenSciError as exc:
            return _error(exc)

    @router.post(base + "/objects/verify")
    async def verify(owner: str, repo_name: str, request: Request) -> Response:
        try:
            raw = await _read_small(request)
            await run_in_threadpool(_verify, request, raw, owner, repo_name, dataset)
            return _reply({"message": "ok"})
        except OpenSciError as exc:
            return _error(exc)

    @router.post(base + "/locks/verify")
    async def locks_verify(owner: str, repo_name: str, request: Request) -> Response:
        def check() -> None:
            with request.app.state.db.session() as session:
                _repo(request, session, owner, repo_name, write=True)

        try:
            await run_in_threadpool(check)
            return _reply({"ours": [], "theirs": []})
        except OpenSciError as exc:
            return _error(exc)


_routes("/datasets", True)
_routes("", False)

__all__ = ["router"]
