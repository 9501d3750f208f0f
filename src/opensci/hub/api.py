"""Routes the `huggingface_hub` client calls (see protocols/hf-hub.md): thin wrappers over hub.service.

Revisions and paths are read from the raw path (`routing.tail`), never from the decoded path parameters.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from opensci.accounts import service as accounts
from opensci.accounts.models import Token
from opensci.accounts.security import sha256_hex
from opensci.deps import ActorDep, BlobsDep, SessionDep, SettingsDep, StoreDep, credentials
from opensci.errors import Conflict, EntryNotFound, InvalidInput, Unauthorized
from opensci.hub import service as hub
from opensci.hub.errors import XetNotSupported
from opensci.hub.ndjson import read_ndjson
from opensci.hub.routing import (
    REPO_TYPES,
    HubRoute,
    next_link,
    repo_url,
    resolve_revision,
    split_revision,
    tail,
)
from opensci.repos import gitstore
from opensci.repos import service as repos
from opensci.repos.api import RAW_CSP
from opensci.settings import Settings
from opensci.storage import files

router = APIRouter(include_in_schema=False, route_class=HubRoute)

# Page sizes (module constants so tests can lower them); a client's `limit` can only lower them further.
LIST_PAGE_SIZE = 1000
TREE_PAGE_SIZE = 1000
TREE_EXPANDED_PAGE_SIZE = 100
COMMITS_PAGE_SIZE = 100

REPO = "/api/{repo_type}/{namespace}/{name}"


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")


def _int(request: Request, name: str, default: int, *, low: int = 0) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number", code="invalid_page") from None
    if value < low:
        raise InvalidInput(f"{name} must be at least {low}", code="invalid_page")
    return value


def _page_size(request: Request, size: int) -> int:
    return min(size, _int(request, "limit", size, low=1))


def _paged(request: Request, items: list[Any], offset: int, more: bool) -> JSONResponse:
    headers = {"Link": next_link(request, offset + len(items))} if more and items else {}
    return JSONResponse(items, headers=headers)


# --- accounts and repositories -------------------------------------------------------------------------


@router.get("/api/whoami-v2")
def whoami(request: Request, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    user = actor.user
    if user is None:
        raise Unauthorized("send an API token of this server as a Bearer token", code="login_required")
    creds = credentials(request)
    token = session.scalar(select(Token).where(Token.token_hash == sha256_hex(creds[1]))) if creds else None
    return {
        "type": "user",
        "id": user.id,
        "name": user.name,
        "fullname": user.display_name,
        "email": user.email,
        "emailVerified": False,
        "isPro": False,
        "orgs": [
            {"type": "org", "name": org.name, "fullname": org.display_name, "roleInOrg": str(role.value)}
            for org, role in accounts.list_user_orgs(session, user)
        ],
        "auth": {
            "type": "access_token",
            "accessToken": {
                "displayName": token.name if token else "web session",
                "role": str(actor.scope.value),
            },
        },
    }


@router.post("/api/repos/create")
def create_repo(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    payload: dict[str, Any] = Body(...),
) -> Response:
    if actor.user is None:
        raise Unauthorized("log in or send an API token to create a repository", code="login_required")
    name, owner = payload.get("name"), payload.get("organization") or actor.user.name
    if not isinstance(name, str) or not isinstance(owner, str):
        raise InvalidInput("name and organization must be strings", code="invalid_input")
    kind = hub.kind_for(payload.get("type"))
    private = payload.get("visibility", "") == "private" or payload.get("private") is True
    try:
        repo = hub.create_repo(actor, session, store, name=name, owner=owner, kind=kind, private=private)
    except Conflict as exc:
        found = hub.existing(session, owner, name) if exc.code == "repo_exists" else None
        wanted = "models" if kind != "dataset" else "datasets"
        if found is None or found.kind not in REPO_TYPES[wanted]:
            raise
        # With exist_ok the client ignores the 409 but reads the repository's URL from it.
        body = {"error": exc.code, "message": exc.message, "url": repo_url(request, found)}
        return JSONResponse(
            body, status_code=409, headers={"X-Error-Message": "You already created this repo"}
        )
    return JSONResponse({"url": repo_url(request, repo), "name": repo.full_name, "id": repo.id})


@router.delete("/api/repos/delete")
def delete_repo(
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    payload: dict[str, Any] = Body(...),
) -> dict[str, Any]:
    name, owner = payload.get("name"), payload.get("organization") or actor.name
    if not isinstance(name, str) or not isinstance(owner, str):
        raise InvalidInput("name and organization must be strings", code="invalid_input")
    repo_type = "datasets" if payload.get("type") == "dataset" else "models"
    repo = hub.hub_repo(actor, session, repo_type, owner, name, "admin")
    repos.delete_repo(actor, session, store, repo)
    return {}


@router.post("/api/validate-yaml")
def validate_yaml(payload: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Model and dataset cards are accepted as they are (the client calls this for every README.md)."""
    return {"errors": [], "warnings": []}


@router.get("/api/{repo_type}")
def list_repos(repo_type: str, request: Request, session: SessionDep, actor: ActorDep) -> Response:
    size = _page_size(request, LIST_PAGE_SIZE)
    offset = _int(request, "cursor", 0)
    found = hub.search_repos(
        actor,
        session,
        REPO_TYPES.get(repo_type, ()),
        search=request.query_params.getlist("search"),
        author=request.query_params.get("author"),
        sort=request.query_params.get("sort"),
        offset=offset,
        limit=size + 1,
    )
    items = [hub.listing_item(r) for r in found[:size]]
    return _paged(request, items, offset, len(found) > size)


@router.get(REPO)
def repo_info(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> dict[str, Any]:
    repo = hub.hub_repo(actor, session, repo_type, namespace, name)
    g, commit = hub.head(store, repo, None)
    return hub.repo_info(repo, g, commit, blobs=_flag(request, "blobs"))


@router.get(REPO + "/revision/{rest:path}")
def repo_info_at(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> dict[str, Any]:
    rev, _ = split_revision(tail(request, "revision", 4))
    repo = hub.hub_repo(actor, session, repo_type, namespace, name)
    g, commit = hub.head(store, repo, rev)
    return hub.repo_info(repo, g, commit, blobs=_flag(request, "blobs"))


# --- reading files -------------------------------------------------------------------------------------


@router.get(REPO + "/tree/{rest:path}")
def list_tree(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> Response:
    rev, path = split_revision(tail(request, "tree", 4))
    repo = hub.hub_repo(actor, session, repo_type, namespace, name)
    g, commit = hub.head(store, repo, rev)
    assert commit is not None
    expand = _flag(request, "expand")
    size = _page_size(request, TREE_EXPANDED_PAGE_SIZE if expand else TREE_PAGE_SIZE)
    offset = _int(request, "cursor", 0)
    entries = hub.tree(g, commit, path, recursive=_flag(request, "recursive"))
    items = []
    for e in entries[offset : offset + size]:
        item = hub.entry_json(g, e)
        if item is None:
            continue
        if expand:
            item["lastCommit"] = hub.last_commit(g, commit, e.path)
        items.append(item)
    return _paged(request, items, offset, offset + size < len(entries))


@router.post(REPO + "/paths-info/{rest:path}")
async def paths_info(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> list[dict[str, Any]]:
    rev, _ = split_revision(tail(request, "paths-info", 4))
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        form: dict[str, Any] = await request.json()
    else:
        form = parse_qs(body.decode("utf-8", "replace"))
    paths = form.get("paths") or []
    paths = [paths] if isinstance(paths, str) else paths
    expand = str((form.get("expand") or ["false"])[0]).lower() == "true"

    def run() -> list[dict[str, Any]]:
        repo = hub.hub_repo(actor, session, repo_type, namespace, name)
        g, commit = hub.head(store, repo, rev)
        assert commit is not None
        out = []
        for e in hub.paths_info(g, commit, [p for p in paths if isinstance(p, str)]):
            item = hub.entry_json(g, e)
            if item is not None:
                if expand:
                    item["lastCommit"] = hub.last_commit(g, commit, e.path)
                out.append(item)
        return out

    return await run_in_threadpool(run)


def _resolve(
    request: Request, session: SessionDep, store: StoreDep, blobs: BlobsDep, actor: ActorDep, repo_type: str
) -> Response:
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    rev, path = split_revision(tail(request, "resolve", 2))
    repo = hub.hub_repo(actor, session, repo_type, namespace, name)
    g = store.open(repo.id)
    commit = resolve_revision(g, rev)
    sha = str(commit.id)
    try:
        view = files.file_view(g, commit, path) if path else None
    except (EntryNotFound, InvalidInput):
        view = None
    if view is None:
        # With the commit, the client caches that the file does not exist at that revision.
        raise EntryNotFound(f"{path!r} not found at revision {rev}", headers={"X-Repo-Commit": sha})
    headers = {"X-Repo-Commit": sha, "Content-Security-Policy": RAW_CSP, "X-Content-Type-Options": "nosniff"}
    if view.lfs is not None and files.stored(session, blobs, repo, view):
        headers["X-Linked-Etag"] = f'"{view.lfs.oid}"'
        headers["X-Linked-Size"] = str(view.lfs.size)
    return files.file_response(
        request, session, blobs, repo, g, view, media_type="application/octet-stream", headers=headers
    )


@router.api_route("/datasets/{namespace}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
def resolve_dataset_file(
    request: Request, session: SessionDep, store: StoreDep, blobs: BlobsDep, actor: ActorDep
) -> Response:
    return _resolve(request, session, store, blobs, actor, "datasets")


@router.api_route("/{namespace}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
def resolve_file(
    request: Request, session: SessionDep, store: StoreDep, blobs: BlobsDep, actor: ActorDep
) -> Response:
    return _resolve(request, session, store, blobs, actor, "models")


# --- refs and history ----------------------------------------------------------------------------------


@router.get(REPO + "/refs")
def list_refs(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> dict[str, Any]:
    repo = hub.hub_repo(actor, session, repo_type, namespace, name)
    return hub.refs(store.open(repo.id), include_prs=_flag(request, "include_prs"))


@router.get(REPO + "/commits/{rest:path}")
def list_commits(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> Response:
    rev, _ = split_revision(tail(request, "commits", 4))
    repo = hub.hub_repo(actor, session, repo_type, namespace, name)
    g, commit = hub.head(store, repo, rev)
    assert commit is not None
    size = _page_size(request, COMMITS_PAGE_SIZE)
    offset = _int(request, "cursor", 0)
    items, more = hub.commits(g, commit, skip=offset, limit=size)
    return _paged(request, items, offset, more)


@router.post(REPO + "/branch/{rest:path}")
def create_branch(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    payload: dict[str, Any] | None = Body(None),
) -> dict[str, Any]:
    branch = hub.check_branch_name("/".join(tail(request, "branch", 4)))
    repo = hub.hub_repo(actor, session, repo_type, namespace, name, "write")
    start = (payload or {}).get("startingPoint")
    if start is not None:
        start = str(resolve_revision(store.open(repo.id), str(start)).id)
    ref = repos.create_ref(actor, session, store, repo, type="branch", name=branch, revision=start)
    return {"name": ref.name, "ref": ref.ref, "targetCommit": ref.target}


@router.delete(REPO + "/branch/{rest:path}")
def delete_branch(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> dict[str, Any]:
    branch = "/".join(tail(request, "branch", 4))
    repo = hub.hub_repo(actor, session, repo_type, namespace, name, "write")
    repos.delete_ref(actor, session, store, repo, type="branch", name=branch)
    return {}


@router.post(REPO + "/tag/{rest:path}")
def create_tag(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    payload: dict[str, Any] = Body(...),
) -> dict[str, Any]:
    rev, _ = split_revision(tail(request, "tag", 4))
    tag, message = payload.get("tag"), payload.get("message")
    if not isinstance(tag, str) or (message is not None and not isinstance(message, str)):
        raise InvalidInput('give the tag name as "tag" (and optionally a "message")', code="invalid_ref")
    repo = hub.hub_repo(actor, session, repo_type, namespace, name, "write")
    target = str(resolve_revision(store.open(repo.id), rev).id)
    ref = repos.create_ref(
        actor, session, store, repo, type="tag", name=tag, revision=target, message=message or None
    )
    return {"name": ref.name, "ref": ref.ref, "targetCommit": ref.target}


@router.delete(REPO + "/tag/{rest:path}")
def delete_tag(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> dict[str, Any]:
    tag = "/".join(tail(request, "tag", 4))
    repo = hub.hub_repo(actor, session, repo_type, namespace, name, "write")
    repos.delete_ref(actor, session, store, repo, type="tag", name=tag)
    return {}


# --- writing -------------------------------------------------------------------------------------------


def _branch_commit(g: Any, repo: Any, rev: str) -> Any:
    """The commit a write to `rev` starts from: None only for the default branch of an empty repository."""
    sha = gitstore.branch_head(g, rev)
    if sha is not None:
        return g[sha]
    if rev == repo.default_branch and not gitstore.list_refs(g, "refs/heads/"):
        return None
    resolve_revision(g, rev)  # RevisionNotFound, else: not a branch
    raise InvalidInput(f"{rev!r} is not a branch: commits go to a branch", code="invalid_revision")


def _check_no_pr(request: Request) -> None:
    if _flag(request, "create_pr"):
        raise InvalidInput("pull requests are not supported by this server yet", code="unsupported")


def _xet_advice(settings: Settings, lfs_first: bool = False) -> str:
    limit = f"{settings.hub_regular_upload_max_bytes / 1_000_000:g}"
    if lfs_first:  # the datasets library: Parquet shards go to LFS whatever their size
        return (
            "set HF_HUB_DISABLE_XET=1 to push datasets (push_to_hub) to this server, and to upload files "
            f"larger than {limit} MB"
        )
    return f"set HF_HUB_DISABLE_XET=1 to upload files larger than {limit} MB to this server"


@router.post(REPO + "/preupload/{rest:path}")
def preupload(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    actor: ActorDep,
    payload: dict[str, Any] = Body(...),
) -> Response:
    rev, _ = split_revision(tail(request, "preupload", 4))
    repo = hub.hub_repo(actor, session, repo_type, namespace, name, "write")
    _check_no_pr(request)
    gitstore.valid_ref_name("heads", rev)
    g = store.open(repo.id)
    commit = _branch_commit(g, repo, rev)
    entries = payload.get("files")
    if not isinstance(entries, list):
        raise InvalidInput('give the files as a "files" list', code="invalid_preupload")
    ignore = payload.get("gitIgnore")
    agent = request.headers.get("user-agent", "")
    lfs_first = hub.lfs_first(agent)
    modes = hub.preupload(
        settings,
        g,
        commit,
        entries,
        ignore if isinstance(ignore, str) else None,
        content_id=lambda view: files.content_git_id(session, blobs, repo, view),
        lfs_by_attributes=lfs_first,
    )
    body = {"files": modes, "commitOid": str(commit.id) if commit is not None else None}
    if any(m["uploadMode"] == "lfs" for m in modes) and hub.xet_capable(agent):
        # Files over the inline limit (or, for the datasets library, tracked by .gitattributes): a client
        # with Xet enabled now tries Xet, which this server does not speak, and fails without our error
        # message; so it is told first (huggingface_hub logs this header once per process).
        advice = f"xet; {_xet_advice(settings, lfs_first)} (unless it is set already)"
        return JSONResponse(body, headers={"X-HF-Warning": advice})
    return JSONResponse(body)


@router.post(REPO + "/commit/{rest:path}")
async def commit(
    repo_type: str,
    namespace: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    actor: ActorDep,
) -> dict[str, Any]:
    rev, _ = split_revision(tail(request, "commit", 4))
    repo = await run_in_threadpool(hub.hub_repo, actor, session, repo_type, namespace, name, "write")
    _check_no_pr(request)
    gitstore.valid_ref_name("heads", rev)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hub-commit-", dir=settings.tmp_dir))
    try:
        items = await read_ndjson(request.stream(), tmp)
        sha = await run_in_threadpool(hub.commit, actor, session, settings, store, blobs, repo, rev, items)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "success": True,
        "commitOid": sha,
        "commitUrl": f"{repo_url(request, repo)}/commit/{sha}",
        "hookOutput": "",
    }


@router.get(REPO + "/xet-write-token/{rest:path}")
def xet_write_token(
    repo_type: str, namespace: str, name: str, session: SessionDep, settings: SettingsDep, actor: ActorDep
) -> Response:
    hub.hub_repo(actor, session, repo_type, namespace, name, "write")
    limit = f"{settings.hub_regular_upload_max_bytes / 1_000_000:g}"
    raise XetNotSupported(f"set HF_HUB_DISABLE_XET=1 to upload files larger than {limit} MB to this server")


@router.get(REPO + "/xet-read-token/{rest:path}")
def xet_read_token(
    repo_type: str, namespace: str, name: str, session: SessionDep, actor: ActorDep
) -> Response:
    hub.hub_repo(actor, session, repo_type, namespace, name)
    raise XetNotSupported("this server serves files over plain HTTP, not Xet")
