"""REST routes of the repos domain under /api/v1/repos: thin wrappers over repos.service."""

from __future__ import annotations

import json
import mimetypes
from typing import Annotated

import pygit2
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from opensci.deps import ActorDep, BlobsDep, SessionDep, SettingsDep, StoreDep, UserActorDep
from opensci.errors import InvalidInput
from opensci.repos import gitstore, service
from opensci.repos.gitstore import Upload
from opensci.repos.models import Repository
from opensci.repos.schemas import (
    CommitCreated,
    CommitOut,
    LfsOut,
    Page,
    RefCreate,
    RefOut,
    RefsOut,
    RepoCreate,
    RepoOut,
    RepoUpdate,
    TreeEntryOut,
    TreeOut,
)
from opensci.settings import Settings
from opensci.storage import files
from opensci.validation import check_repo_path

router = APIRouter(prefix="/api/v1/repos", tags=["repos"])

# Raw files are user content on our origin: no scripts, no plugins, no requests, an opaque origin.
RAW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"

# Types a browser would run or render as active content: served as plain text from the raw endpoint.
# SVG is the exception (figures in READMEs): it keeps its type, under a policy that runs no script.
_ACTIVE = (
    "text/html",
    "application/xhtml+xml",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
)


def repo_out(repo: Repository, settings: Settings) -> RepoOut:
    base = settings.base_url.rstrip("/")
    return RepoOut(
        id=repo.id,
        owner=repo.owner.name,
        name=repo.name,
        full_name=repo.full_name,
        kind=repo.kind,
        private=repo.private,
        description=repo.description,
        license=repo.license,
        tags=repo.tags or [],
        default_branch=repo.default_branch,
        created_at=repo.created_at,
        updated_at=repo.updated_at,
        url=f"{base}{repo.url_path}",
        clone_url=f"{base}{repo.url_path}.git",
    )


def commit_out(c: gitstore.CommitInfo) -> CommitOut:
    return CommitOut(
        id=c.id,
        title=c.title,
        message=c.message,
        author={"name": c.author_name, "email": c.author_email},
        date=c.date,
        parents=c.parents,
    )


@router.post("", status_code=201, response_model=RepoOut)
def create_repo(
    body: RepoCreate, session: SessionDep, store: StoreDep, actor: UserActorDep, settings: SettingsDep
) -> RepoOut:
    repo = service.create_repo(actor, session, store, **body.model_dump())
    return repo_out(repo, settings)


@router.get("", response_model=Page[RepoOut])
def list_repos(
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    owner: str | None = None,
    kind: str | None = None,
    q: str | None = None,
    sort: str = "updated",
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 30,
) -> Page[RepoOut]:
    items, total = service.list_repos(
        actor, session, owner=owner, kind=kind, q=q, page=page, per_page=per_page, sort=sort
    )
    return Page[RepoOut](
        items=[repo_out(r, settings) for r in items],
        page=page,
        per_page=per_page,
        total=total,
        next_page=page + 1 if page * per_page < total else None,
    )


@router.get("/{owner}/{name}", response_model=RepoOut)
def get_repo(owner: str, name: str, session: SessionDep, actor: ActorDep, settings: SettingsDep) -> RepoOut:
    return repo_out(service.get_repo(actor, session, owner, name), settings)


@router.patch("/{owner}/{name}", response_model=RepoOut)
def update_repo(
    owner: str,
    name: str,
    body: RepoUpdate,
    session: SessionDep,
    store: StoreDep,
    actor: UserActorDep,
    settings: SettingsDep,
) -> RepoOut:
    repo = service.get_repo(actor, session, owner, name)
    repo = service.update_repo(actor, session, repo, store=store, **body.model_dump(exclude_unset=True))
    return repo_out(repo, settings)


@router.delete("/{owner}/{name}", status_code=204)
def delete_repo(owner: str, name: str, session: SessionDep, store: StoreDep, actor: UserActorDep) -> Response:
    repo = service.get_repo(actor, session, owner, name)
    service.delete_repo(actor, session, store, repo)
    return Response(status_code=204)


@router.get("/{owner}/{name}/commits", response_model=Page[CommitOut])
def list_commits(
    owner: str,
    name: str,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    rev: str | None = None,
    path: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 30,
) -> Page[CommitOut]:
    repo = service.get_repo(actor, session, owner, name)
    g = service.open_git(store, repo)
    if rev is None and gitstore.branch_head(g, repo.default_branch) is None:
        return Page[CommitOut](items=[], page=page, per_page=per_page, next_page=None)  # empty repository
    _, head = service.resolve(store, repo, rev)
    commits, more = gitstore.log(g, head, path=path.strip("/"), skip=(page - 1) * per_page, limit=per_page)
    return Page[CommitOut](
        items=[commit_out(c) for c in commits],
        page=page,
        per_page=per_page,
        next_page=page + 1 if more else None,
    )


@router.get("/{owner}/{name}/commits/{rev:path}", response_model=CommitOut)
def get_commit(
    owner: str, name: str, rev: str, session: SessionDep, store: StoreDep, actor: ActorDep
) -> CommitOut:
    repo = service.get_repo(actor, session, owner, name)
    _, commit = service.resolve(store, repo, rev)
    return commit_out(gitstore.commit_info(commit))


@router.post("/{owner}/{name}/commits", status_code=201, response_model=CommitCreated)
async def create_commit(
    owner: str,
    name: str,
    request: Request,
    response: Response,
    session: SessionDep,
    store: StoreDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    actor: UserActorDep,
) -> CommitCreated:
    """One atomic commit from a multipart form: `message`, `branch`, `parent_commit`, `files` parts
    (each part's filename is its path in the repository), `delete` fields (paths to remove) and `lfs`
    fields, each a JSON object `{"path", "oid", "size"}` naming a file uploaded to this repository with
    the chunk upload protocol (`/uploads/...`), committed as a Git LFS pointer. Files larger than the
    server's LFS threshold are stored in the blob store and committed as pointers too."""
    repo = await run_in_threadpool(service.get_repo, actor, session, owner, name, "write")
    form = await request.form(max_files=100_000, max_fields=100_000)
    try:
        changes: dict[str, Upload | None] = {}
        pointers: dict[str, tuple[str, int]] = {}
        message, branch, parent = "", None, None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "files":
                    raise InvalidInput(
                        f"unexpected file field {key!r}; send files as 'files' parts", code="invalid_form"
                    )
                path = value.filename or ""
                _add_change(changes, path, Upload(stream=value.file))
            elif key == "message":
                message = value
            elif key == "branch":
                branch = value or None
            elif key == "parent_commit":
                parent = value or None
            elif key == "delete":
                _add_change(changes, value, None)
            elif key == "lfs":
                try:
                    entry = json.loads(value)
                    path, oid, size = entry["path"], entry["oid"], entry["size"]
                    if not isinstance(path, str) or not isinstance(oid, str) or type(size) is not int:
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    raise InvalidInput(
                        'an lfs field is a JSON object {"path": str, "oid": sha256 hex, "size": int}',
                        code="invalid_form",
                    ) from None
                _add_change(changes, path, None)
                pointers[path] = (oid, size)
            else:
                raise InvalidInput(f"unexpected form field {key!r}", code="invalid_form")

        def prepare() -> dict[str, Upload | None]:
            g = service.open_git(store, repo)
            base = service.branch_base(g, repo, branch)
            found = [(path, oid, size) for path, (oid, size) in pointers.items()]
            return files.with_large_files(session, settings, blobs, repo, actor, g, base, changes, found)

        changes = await run_in_threadpool(prepare)
        try:
            sha, parent_sha = await run_in_threadpool(
                service.commit_files,
                actor,
                session,
                store,
                repo,
                changes,
                message=message,
                branch=branch,
                parent_commit=parent,
                skip_unchanged=True,
            )
        except gitstore.NoChanges as same:
            session.commit()  # an upload held by the repository stays recorded
            response.status_code = 200
            return CommitCreated(
                commit=same.head, branch=branch or repo.default_branch, parent=None, changed=False
            )
    finally:
        await form.close()
    return CommitCreated(commit=sha, branch=branch or repo.default_branch, parent=parent_sha)


def _add_change(changes: dict[str, Upload | None], path: str, change: Upload | None) -> None:
    check_repo_path(path)
    if path in changes:
        raise InvalidInput(f"{path!r} appears twice in one commit", code="duplicate_path")
    changes[path] = change


def _tree(
    owner: str,
    name: str,
    rev_path: str,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    recursive: bool,
) -> TreeOut:
    repo = service.get_repo(actor, session, owner, name)
    g = service.open_git(store, repo)
    commit, _, path = gitstore.split_rev_path(g, rev_path or repo.default_branch)
    entries = gitstore.list_tree(g, commit, path, recursive=recursive)
    return TreeOut(
        commit=str(commit.id),
        path=path,
        entries=[_entry_out(g, e) for e in entries],
    )


def _entry_out(g: pygit2.Repository, e: gitstore.TreeEntry) -> TreeEntryOut:
    lfs = files.entry_lfs(g, e.oid, e.size) if e.type == "file" else None
    return TreeEntryOut(
        path=e.path,
        name=e.name,
        type=e.type,
        oid=e.oid,
        size=lfs.size if lfs else e.size,
        lfs=LfsOut(oid=lfs.oid, size=lfs.size, pointer_size=lfs.pointer_size) if lfs else None,
    )


@router.get("/{owner}/{name}/tree", response_model=TreeOut)
def tree_root(
    owner: str, name: str, session: SessionDep, store: StoreDep, actor: ActorDep, recursive: bool = False
) -> TreeOut:
    return _tree(owner, name, "", session, store, actor, recursive)


@router.get("/{owner}/{name}/tree/{rev_path:path}", response_model=TreeOut)
def tree(
    owner: str,
    name: str,
    rev_path: str,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    recursive: bool = False,
) -> TreeOut:
    """Entries of a folder: `tree/{rev}/{path}`; a rev with slashes is matched longest first."""
    return _tree(owner, name, rev_path, session, store, actor, recursive)


# Two routes, not one api_route with both methods: that gives both operations one OpenAPI operationId.
@router.get("/{owner}/{name}/raw/{rev_path:path}")
@router.head("/{owner}/{name}/raw/{rev_path:path}")
def raw(
    owner: str,
    name: str,
    rev_path: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    blobs: BlobsDep,
    actor: ActorDep,
) -> Response:
    """A file's bytes at a revision, with HTTP Range and an ETag (the git blob id; the sha256 of the
    content for Git LFS files, whose bytes come from the blob store)."""
    repo = service.get_repo(actor, session, owner, name)
    g = service.open_git(store, repo)
    commit, _, path = gitstore.split_rev_path(g, rev_path)
    view = files.file_view(g, commit, path)
    headers = {
        "X-Repo-Commit": str(commit.id),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": RAW_CSP,
        "Cache-Control": "private, max-age=0, must-revalidate"
        if repo.private
        else "public, max-age=0, must-revalidate",
    }
    media = mimetypes.guess_type(path)[0]
    if media is None:
        binary = view.lfs is not None or g[view.blob_id].is_binary
        media = "application/octet-stream" if binary else "text/plain; charset=utf-8"
    if media.split(";")[0] in _ACTIVE:
        media = "text/plain; charset=utf-8"
    return files.file_response(request, session, blobs, repo, g, view, media_type=media, headers=headers)


@router.get("/{owner}/{name}/refs", response_model=RefsOut)
def list_refs(owner: str, name: str, session: SessionDep, store: StoreDep, actor: ActorDep) -> RefsOut:
    repo = service.get_repo(actor, session, owner, name)
    g = service.open_git(store, repo)
    return RefsOut(
        default_branch=repo.default_branch,
        branches=[RefOut(**vars(r)) for r in gitstore.list_refs(g, "refs/heads/")],
        tags=[RefOut(**vars(r)) for r in gitstore.list_refs(g, "refs/tags/")],
    )


@router.post("/{owner}/{name}/refs", status_code=201, response_model=RefOut)
def create_ref(
    owner: str, name: str, body: RefCreate, session: SessionDep, store: StoreDep, actor: UserActorDep
) -> RefOut:
    repo = service.get_repo(actor, session, owner, name)
    ref = service.create_ref(actor, session, store, repo, **body.model_dump())
    return RefOut(**vars(ref))


_REF_TYPES = {"branch": "branch", "branches": "branch", "heads": "branch", "tag": "tag", "tags": "tag"}


@router.delete("/{owner}/{name}/refs/{type}/{ref_name:path}", status_code=204)
def delete_ref(
    owner: str, name: str, type: str, ref_name: str, session: SessionDep, store: StoreDep, actor: UserActorDep
) -> Response:
    """Delete `refs/branch/{name}` or `refs/tag/{name}` (plural forms accepted)."""
    repo = service.get_repo(actor, session, owner, name)
    kind = _REF_TYPES.get(type)
    if kind is None:
        raise InvalidInput(f"unknown ref type {type!r}: use 'branch' or 'tag'", code="invalid_ref")
    service.delete_ref(actor, session, store, repo, type=kind, name=ref_name)
    return Response(status_code=204)
