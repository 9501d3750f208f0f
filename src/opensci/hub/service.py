"""Hub operations over repos/ and storage/: the Hub's shapes of repositories, trees, refs and commits.

No HTTP here: functions take the acting identity first and raise `opensci.errors` exceptions; `api.py`
turns them into the Hub's replies.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import pathspec
import pygit2
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opensci.accounts.models import Owner
from opensci.accounts.permissions import Action, Actor, readable_repos_clause
from opensci.errors import EntryNotFound, InvalidInput, RepoNotFound, RevisionNotFound
from opensci.hub.routing import REPO_TYPES, resolve_revision
from opensci.repos import gitstore, service
from opensci.repos.gitstore import Change, GitStore, TreeEntry, Upload
from opensci.repos.models import RepoKind, Repository
from opensci.settings import Settings
from opensci.storage import files
from opensci.storage.store import BlobStore
from opensci.validation import check_owner_filter, check_search_text, is_plain_text

# What the Hub commits first in a new repository: Git LFS for the usual large and binary formats.
_LFS_PATTERNS = [
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gz",
    "*.h5",
    "*.joblib",
    "*.lfs.*",
    "*.lz4",
    "*.mds",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pickle",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "saved_model/**/*",
    "*.tar.*",
    "*.tar",
    "*.tflite",
    "*.tgz",
    "*.wasm",
    "*.xz",
    "*.zip",
    "*.zst",
    "*tfevents*",
    "*.gguf",
    "*.keras",
    "*.mlpackage/**",
    "*.db",
    "*.duckdb",
]
_DATASET_PATTERNS = [
    "*.mp3",
    "*.ogg",
    "*.flac",
    "*.wav",
    "*.webm",
    "*.mp4",
    "*.avi",
    "*.jpg",
    "*.jpeg",
    "*.png",
    "*.gif",
    "*.webp",
    "*.bmp",
    "*.tiff",
    "*.tif",
]


def default_gitattributes(kind: RepoKind) -> bytes:
    patterns = [*_LFS_PATTERNS, *(_DATASET_PATTERNS if kind == RepoKind.dataset else ())]
    return "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in patterns).encode()


def iso(dt: datetime) -> str:
    """The Hub's date format: UTC, milliseconds, a `Z` (the client refuses `+00:00`)."""
    dt = dt.astimezone(UTC) if dt.tzinfo else dt
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# --- repositories --------------------------------------------------------------------------------------


def hub_repo(
    actor: Actor, session: Session, repo_type: str, namespace: str, name: str, action: Action = "read"
) -> Repository:
    """The repository behind `/api/{repo_type}/{namespace}/{name}` (models serve kinds model and code)."""
    repo = service.get_repo(actor, session, namespace, name)
    if repo.kind not in REPO_TYPES.get(repo_type, ()):
        raise RepoNotFound(f"repository {namespace}/{name} not found")
    if action != "read":
        service.get_repo(actor, session, namespace, name, action)
    return repo


def kind_for(repo_type: str | None) -> RepoKind:
    if repo_type in (None, "", "model"):
        return RepoKind.model
    if repo_type == "dataset":
        return RepoKind.dataset
    raise InvalidInput(
        f"repositories of type {repo_type!r} are not supported here; use model or dataset",
        code="invalid_kind",
    )


def create_repo(
    actor: Actor,
    session: Session,
    store: GitStore,
    *,
    name: str,
    owner: str | None,
    kind: RepoKind,
    private: bool,
) -> Repository:
    """A new repository with the Hub's first commit (a `.gitattributes`), so it has a sha at once."""
    repo = service.create_repo(actor, session, store, name=name, owner=owner, kind=kind, private=private)
    try:
        service.commit_files(
            actor,
            session,
            store,
            repo,
            {".gitattributes": Upload(data=default_gitattributes(kind))},
            message="initial commit",
        )
    except BaseException:
        service.delete_repo(actor, session, store, repo)
        raise
    return repo


def existing(session: Session, owner: str | None, name: str) -> Repository | None:
    if not (is_plain_text(owner or "") and is_plain_text(name)):
        return None
    return session.scalar(
        select(Repository)
        .join(Owner, Owner.id == Repository.owner_id)
        .where(Owner.name_key == (owner or "").lower(), Repository.name_key == name.lower())
    )


def head(
    store: GitStore, repo: Repository, rev: str | None
) -> tuple[pygit2.Repository, pygit2.Commit | None]:
    """The git repository and the commit of `rev` (default branch when None; None if still empty)."""
    g = store.open(repo.id)
    if rev is None:
        sha = gitstore.branch_head(g, repo.default_branch)
        return g, g[sha] if sha else None
    return g, resolve_revision(g, rev)


def repo_info(
    repo: Repository, g: pygit2.Repository, commit: pygit2.Commit | None, *, blobs: bool = False
) -> dict[str, Any]:
    out = listing_item(repo)
    out["sha"] = str(commit.id) if commit is not None else None
    if commit is not None:
        out["lastModified"] = iso(gitstore.commit_info(commit).date)
    out["siblings"] = [] if commit is None else siblings(g, commit, blobs=blobs)
    return out


def listing_item(repo: Repository) -> dict[str, Any]:
    return {
        "_id": repo.id,
        "id": repo.full_name,
        "author": repo.owner.name,
        "private": repo.private,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": list(repo.tags or []),
        "description": repo.description,
        "createdAt": iso(repo.created_at),
        "lastModified": iso(repo.updated_at),
    }


def search_repos(
    actor: Actor,
    session: Session,
    kinds: Iterable[RepoKind],
    *,
    search: list[str],
    author: str | None,
    sort: str | None,
    offset: int,
    limit: int,
) -> list[Repository]:
    """Readable repositories of these kinds whose `owner/name` contains every search string."""
    stmt = (
        select(Repository)
        .join(Owner, Owner.id == Repository.owner_id)
        .where(readable_repos_clause(actor), Repository.kind.in_(list(kinds)))
    )
    if author:
        stmt = stmt.where(Owner.name_key == check_owner_filter(author, "author").lower())
    full = func.lower(Owner.name + "/" + Repository.name)
    for s in search:
        check_search_text(s)
        escaped = s.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        if escaped:
            stmt = stmt.where(full.like(f"%{escaped}%", escape="\\"))
    order = Repository.created_at.desc() if sort == "createdAt" else Repository.updated_at.desc()
    return list(session.scalars(stmt.order_by(order, Repository.id).offset(offset).limit(limit)))


# --- files ---------------------------------------------------------------------------------------------


def entry_json(g: pygit2.Repository, e: TreeEntry) -> dict[str, Any] | None:
    """A tree or paths-info entry (never with `xetHash`: downloads stay plain HTTP)."""
    if e.type == "dir":
        return {"type": "directory", "oid": e.oid, "size": 0, "path": e.path}
    if e.type != "file":
        return None  # submodules have no Hub equivalent
    out: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": e.path}
    lfs = files.entry_lfs(g, e.oid, e.size)
    if lfs is not None:
        out["size"] = lfs.size
        out["lfs"] = {"oid": lfs.oid, "size": lfs.size, "pointerSize": lfs.pointer_size}
    return out


def last_commit(g: pygit2.Repository, commit: pygit2.Commit, path: str) -> dict[str, Any] | None:
    commits, _ = gitstore.log(g, commit, path=path, limit=1)
    if not commits:
        return None
    c = commits[0]
    return {"id": c.id, "title": c.title, "date": iso(c.date)}


def tree(g: pygit2.Repository, commit: pygit2.Commit, path: str, *, recursive: bool) -> list[TreeEntry]:
    try:
        return gitstore.list_tree(g, commit, path, recursive=recursive)
    except InvalidInput as exc:
        raise EntryNotFound(f"{path!r} is not a folder at {str(commit.id)[:12]}") from exc


def paths_info(g: pygit2.Repository, commit: pygit2.Commit, paths: list[str]) -> list[TreeEntry]:
    out = []
    for p in dict.fromkeys(p.strip("/") for p in paths):
        if not p:
            continue
        try:
            out.append(gitstore.entry(g, commit, p))
        except EntryNotFound:
            continue
    return out


def siblings(g: pygit2.Repository, commit: pygit2.Commit, *, blobs: bool) -> list[dict[str, Any]]:
    out = []
    for e in gitstore.list_tree(g, commit, "", recursive=True):
        if e.type != "file":
            continue
        item: dict[str, Any] = {"rfilename": e.path}
        if blobs:
            lfs = files.entry_lfs(g, e.oid, e.size)
            item["blobId"] = e.oid
            item["size"] = lfs.size if lfs else e.size
            if lfs is not None:
                item["lfs"] = {"size": lfs.size, "sha256": lfs.oid, "pointerSize": lfs.pointer_size}
        out.append(item)
    return out


# --- refs and history ----------------------------------------------------------------------------------


def _ref_json(r: gitstore.RefInfo) -> dict[str, str]:
    return {"name": r.name, "ref": r.ref, "targetCommit": r.target}


def refs(g: pygit2.Repository, *, include_prs: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "branches": [_ref_json(r) for r in gitstore.list_refs(g, "refs/heads/")],
        "converts": [_ref_json(r) for r in gitstore.list_refs(g, "refs/convert/")],
        "tags": [_ref_json(r) for r in gitstore.list_refs(g, "refs/tags/")],
    }
    if include_prs:
        out["pullRequests"] = [_ref_json(r) for r in gitstore.list_refs(g, "refs/pr/")]
    return out


def commits(
    g: pygit2.Repository, commit: pygit2.Commit, *, skip: int, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    infos, more = gitstore.log(g, commit, skip=skip, limit=limit)
    out = []
    for c in infos:
        body = c.message.split("\n", 1)[1].strip() if "\n" in c.message else ""
        out.append(
            {
                "id": c.id,
                "title": c.title,
                "message": body,
                "date": iso(c.date),
                "authors": [{"user": c.author_name}],
            }
        )
    return out, more


def check_branch_name(name: str) -> str:
    if name.startswith("refs/"):
        raise InvalidInput(f"invalid branch name {name!r}: it may not start with refs/", code="invalid_ref")
    return gitstore.valid_ref_name("heads", name)


# --- uploads -------------------------------------------------------------------------------------------


def preupload(
    settings: Settings,
    g: pygit2.Repository,
    commit: pygit2.Commit | None,
    entries: list[dict[str, Any]],
    git_ignore: str | None,
    content_id: Callable[[files.FileView], str | None] | None = None,
    *,
    lfs_by_attributes: bool = False,
) -> list[dict[str, Any]]:
    """The upload mode of each file: inline ("regular") up to `hub_regular_upload_max_bytes`, then Git LFS;
    whether `.gitignore` rules leave it out; and the id of what the revision holds there now, in the
    client's terms: the sha256 for a file it will send to LFS, the git blob id of the content for one it
    sends inline (also when the server keeps that content in the blob store: `content_id` computes it),
    so that an unchanged file is recognized and not sent again.

    With `lfs_by_attributes` (a client that relies on the Hub's rule, see `lfs_first`), a file that the
    branch's `.gitattributes` send through Git LFS goes to LFS whatever its size, as on the Hub: it is
    stored in the blob store either way."""
    ignore = pathspec.GitIgnoreSpec.from_lines(git_ignore.splitlines()) if git_ignore else None
    asked = [f["path"].strip("/") for f in entries if isinstance(f, dict) and isinstance(f.get("path"), str)]
    tracked = files.lfs_tracker(g, commit, asked) if lfs_by_attributes else None
    out = []
    for f in entries:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str):
            raise InvalidInput('each file needs a "path"', code="invalid_preupload")
        path, size = f["path"], f.get("size")
        if not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{path!r}: size must be a number of bytes", code="invalid_preupload")
        mode = "regular" if size <= settings.hub_regular_upload_max_bytes else "lfs"
        if mode == "regular" and tracked is not None and size > 0:
            mode = "lfs" if tracked(path.strip("/")) else mode
        oid = None
        if commit is not None:
            try:
                e = gitstore.entry(g, commit, path.strip("/"))
            except (EntryNotFound, InvalidInput):
                e = None
            if e is not None and e.type == "file":
                lfs = files.entry_lfs(g, e.oid, e.size)
                oid = lfs.oid if lfs is not None else e.oid
                if lfs is not None and mode == "regular" and lfs.size == size and content_id is not None:
                    view = files.FileView(path.strip("/"), str(commit.id), e.oid, e.size or 0, lfs)
                    oid = content_id(view) or oid
        out.append(
            {
                "path": path,
                "uploadMode": mode,
                "shouldIgnore": bool(ignore and ignore.match_file(path)),
                "oid": oid,
            }
        )
    return out


def lfs_first(user_agent: str) -> bool:
    """Whether the client relies on the Hub's rule that files its `.gitattributes` track go to Git LFS.

    The `datasets` library does: `push_to_hub` writes each Parquet shard to a temporary file, calls
    `preupload_lfs_files` (which uploads only "lfs" files) and deletes the file before the commit that
    names it, so a shard answered "regular" (inline) is gone when the commit wants to read it. Other
    clients get "regular" up to `hub_regular_upload_max_bytes` whatever the attributes, so that a client
    with hf_xet, which sends every "lfs" file over Xet, works for them (see protocols/hf-hub.md, §7)."""
    return any(part.strip().startswith("datasets/") for part in user_agent.split(";"))


# huggingface_hub from 1.20 sends every file preupload answers "lfs" over Xet when hf_xet is installed
# (a default dependency) and HF_HUB_DISABLE_XET is not set; before, the LFS batch reply chose ("basic").
XET_FIRST_VERSION = (1, 20)
_HF_HUB_VERSION = re.compile(r"(?:^|;)\s*hf_hub/(\d+)\.(\d+)")


def xet_capable(user_agent: str) -> bool:
    """Whether the client may send "lfs" files over Xet, which this server does not speak: its user agent
    names huggingface_hub 1.20 or later (`hf_hub/<version>`, also inside the datasets library's).

    Whether such a client has Xet disabled cannot be told: huggingface_hub sends the same user agent and
    the same preupload request with HF_HUB_DISABLE_XET=1 or without hf_xet (read in 2.4.0: the agent is
    built from the library, hf_hub, python, torch and agent names only)."""
    found = _HF_HUB_VERSION.search(user_agent)
    return found is not None and (int(found[1]), int(found[2])) >= XET_FIRST_VERSION


def _message(header: dict[str, Any]) -> str:
    for key in ("summary", "description"):
        if header.get(key) is not None and not isinstance(header[key], str):
            raise InvalidInput(f"the commit header's {key} must be a string", code="invalid_commit")
    summary = str(header.get("summary") or "").strip()
    description = str(header.get("description") or "").strip()
    return f"{summary}\n\n{description}" if description else summary


def _decode(value: dict[str, Any]) -> Upload:
    spooled = value.get("_file")
    if spooled is not None:
        return Upload(file=spooled)
    content = value.get("content")
    if not isinstance(content, str):
        raise InvalidInput('a "file" line needs a "content" string', code="invalid_commit")
    if value.get("encoding", "base64") == "base64":
        try:
            return Upload(data=base64.b64decode(content, validate=True))
        except binascii.Error as exc:
            raise InvalidInput(
                f"invalid base64 content for {value.get('path')!r}", code="invalid_commit"
            ) from exc
    return Upload(data=content.encode())


def _size(upload: Upload) -> int:
    return len(upload.data) if upload.data is not None else upload.file.stat().st_size  # type: ignore[union-attr]


def changes_from(
    actor: Actor,
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    repo: Repository,
    g: pygit2.Repository,
    base: pygit2.Commit | None,
    ops: list[dict[str, Any]],
) -> dict[str, Change]:
    """The commit's operations as changes: inline files (into the blob store when larger than
    `lfs_threshold_bytes`, or when `.gitattributes` track them with LFS, as the Hub does), pointers to
    uploaded objects, deletions. Files are absorbed before any pointer is attached: the session
    writes nothing until every byte is stored (see `files.absorb_large`)."""
    changes: dict[str, Change] = {}
    pointers: list[tuple[str, str, int | None]] = []
    for op in ops:
        key, value = op["key"], op.get("value")
        if not isinstance(value, dict) or not isinstance(value.get("path"), str) or not value["path"]:
            raise InvalidInput(f'a "{key}" line needs a "path"', code="invalid_commit")
        path = value["path"].strip("/")
        if key == "file":
            changes[path] = _decode(value)
        elif key == "lfsFile":
            if value.get("algo", "sha256") != "sha256" or not isinstance(value.get("oid"), str):
                raise InvalidInput('an "lfsFile" line needs a sha256 "oid"', code="invalid_commit")
            size = value.get("size")
            pointers.append((path, value["oid"], size if isinstance(size, int) else None))
        elif key in ("deletedFile", "deletedFolder"):
            if base is None:
                raise EntryNotFound(f"cannot delete {path!r}: the repository is empty")
            e = gitstore.entry(g, base, path)  # EntryNotFound: "A file with this name doesn't exist"
            if key == "deletedFile" and e.type == "dir":
                raise InvalidInput(f"{path!r} is a folder; delete it as a folder", code="not_a_file")
            changes[path] = None
        else:
            raise InvalidInput(f"unknown commit operation {key!r}", code="invalid_commit")
    return files.with_large_files(session, settings, blobs, repo, actor, g, base, changes, pointers)


def commit(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    repo: Repository,
    branch: str,
    items: list[dict[str, Any]],
) -> str:
    """Apply a Hub commit (header line, then operations) to `branch`; returns the new commit id."""
    if not items or items[0].get("key") != "header" or not isinstance(items[0].get("value"), dict):
        raise InvalidInput('the first line of a commit must be the "header"', code="invalid_commit")
    header = items[0]["value"]
    g = store.open(repo.id)
    sha = gitstore.branch_head(g, branch)
    if sha is None:
        empty = not gitstore.list_refs(g, "refs/heads/")
        if not (empty and branch == repo.default_branch):
            try:
                resolve_revision(g, branch)
            except RevisionNotFound:
                raise RevisionNotFound(f"branch {branch!r} not found") from None
            raise InvalidInput(f"{branch!r} is not a branch: commits go to a branch", code="invalid_revision")
    parent = header.get("parentCommit")
    if parent is not None and not isinstance(parent, str):
        raise InvalidInput("parentCommit must be a commit id", code="invalid_commit")
    base = g[sha] if sha else None
    changes = changes_from(actor, session, settings, blobs, repo, g, base, items[1:])
    new, _ = service.commit_files(
        actor,
        session,
        store,
        repo,
        changes,
        message=_message(header) or "update files",
        branch=branch,
        parent_commit=parent,
        create_branch=sha is None,
    )
    return new
