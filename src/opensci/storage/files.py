"""Repository files whose bytes live in the blob store: Git LFS pointers in git, content here.

Every door that writes such files (the LFS batch API, our chunk protocol, the REST commit endpoint, the
Hub API) records that the repository holds the object (`hold_object`, which enforces the owner's quota);
every door that reads them (raw, resolve, LFS downloads, the web) goes through `file_view` and
`file_response`, so they agree on ETags, sizes and ranges.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import pygit2
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pygit2.enums import AttrCheck
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opensci.accounts.permissions import Actor, can
from opensci.db.base import utcnow
from opensci.errors import InvalidInput
from opensci.http_range import bytes_response, effective_range, parse_range
from opensci.repos import gitstore
from opensci.repos.gitstore import Change, Upload
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage import index, quota
from opensci.storage.errors import ObjectDamaged, ObjectNotFound
from opensci.storage.index import check_oid
from opensci.storage.models import ObjectState, RepoObject
from opensci.storage.pointers import POINTER_MAX, format_pointer, parse_pointer
from opensci.storage.readback import Base
from opensci.storage.store import BlobStore, ObjectInfo

# --- pointers ------------------------------------------------------------------------------------------


def lfs_upload(oid: str, size: int) -> Upload:
    """A commit change writing a pointer to a stored object; commit_files tracks the path in
    .gitattributes."""
    return Upload(data=format_pointer(check_oid(oid), size), lfs=True)


# --- which repositories hold which objects -------------------------------------------------------------


def holds(session: Session, repo_id: str, oid: str) -> bool:
    return session.get(RepoObject, (repo_id, oid)) is not None


def base_for(session: Session, blobs: BlobStore, repo: Repository, oid: str) -> Base | None:
    """The stored object `oid` as the start of a new file of `repo` (see `readback.Base`): only an object
    the repository holds (a hint naming another is ignored: it must open no door to other content)."""
    return blobs.base(oid) if holds(session, repo.id, oid) else None


def held_oids(session: Session, repo_id: str) -> list[str]:
    return list(session.scalars(select(RepoObject.oid).where(RepoObject.repo_id == repo_id)))


def hold_object(session: Session, settings: Settings, repo: Repository, oid: str, size: int) -> None:
    """Record that `repo` holds a stored object, after the caller proved it has the bytes (it uploaded
    them), or that it relies on it again (a hold it has is dated now: see `gc.release_holds`). Raises
    QuotaExceeded when the object is new to the owner and does not fit its quota. Flushes, does not
    commit: the caller's transaction decides."""
    now = utcnow()
    mine = (RepoObject.repo_id == repo.id, RepoObject.oid == oid)
    if session.execute(update(RepoObject).where(*mine).values(created_at=now)).rowcount:
        return
    if not quota.owner_holds(session, repo.owner_id, oid):
        quota.check(session, settings, repo.owner, size)
        quota.settle_pending(session, repo.owner_id, size)
    try:
        with session.begin_nested():  # concurrent uploads of one object: the second finds the first's row
            session.add(RepoObject(repo_id=repo.id, oid=oid, size=size, created_at=now))
    except IntegrityError:
        if not holds(session, repo.id, oid):
            raise


def attach_object(
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    repo: Repository,
    actor: Actor,
    oid: str,
    size: int | None = None,
) -> ObjectInfo:
    """Check that a commit may point at object `oid` in `repo`, and record that the repository holds it.

    The object must be stored and healthy, and already held by this repository or by another the actor
    may read (copies between repositories one can read). Knowing an oid alone never gives access to
    the bytes of a repository one cannot read: such content has to be uploaded (deduplication then
    stores nothing new)."""
    try:
        oid = check_oid(oid)
    except InvalidInput as exc:
        raise InvalidInput(f"invalid LFS oid {oid!r}: {exc.message}", code="invalid_oid") from exc
    missing = InvalidInput(
        f"no object {oid} was uploaded to {repo.full_name}; upload the file's content (Git LFS batch "
        "API, or the chunk upload of the SDK and CLI) before committing a pointer to it",
        code="lfs_object_missing",
    )
    try:
        info = blobs.stat(oid)
    except ObjectNotFound:
        raise missing from None
    if info.state != ObjectState.ok:
        raise InvalidInput(
            f"object {oid} is damaged in storage; upload the file again to repair it",
            code="lfs_object_damaged",
        )
    if size is not None and size != info.size:
        raise InvalidInput(f"object {oid} has {info.size} bytes, not {size}", code="size_mismatch")
    if not holds(session, repo.id, oid):
        holders = session.scalars(select(Repository).join(RepoObject).where(RepoObject.oid == oid)).all()
        if not any(can(actor, "read", r) for r in holders):
            raise missing
    # The commit relies on the object from now on: the object and the hold are dated now, in the
    # commit's transaction. A garbage collection that read the repositories' references before this
    # commit moved its branch re-checks these dates as it deletes (see `gc`), so it spares both; one
    # that deleted the object first leaves nothing to touch here, and the commit is refused.
    if not index.touch_object(session, oid, utcnow()):
        raise missing
    hold_object(session, settings, repo, oid, info.size)
    return info


def _size_of(upload: Upload) -> int:
    if upload.data is not None:
        return len(upload.data)
    if upload.file is not None:
        return upload.file.stat().st_size
    assert upload.stream is not None
    stream = upload.stream
    pos = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    return pos


def _stream_of(upload: Upload) -> BinaryIO:
    if upload.data is not None:
        return io.BytesIO(upload.data)
    if upload.file is not None:
        return open(upload.file, "rb")
    assert upload.stream is not None
    upload.stream.seek(0)
    return upload.stream


def _is_pointer(change: Upload) -> bool:
    stream = _stream_of(change)
    try:
        return parse_pointer(stream.read(POINTER_MAX + 1)) is not None
    finally:
        if change.file is not None:
            stream.close()
        elif change.stream is not None:
            change.stream.seek(0)


def lfs_tracker(
    g: pygit2.Repository, commit: pygit2.Commit | None, paths: Iterable[str]
) -> Callable[[str], bool]:
    """Whether the `.gitattributes` of `commit` send a path through Git LFS (`filter=lfs`), for these
    paths (others are answered from the attribute files of the folders these are in).

    libgit2 decides, as git would, but from a commit that holds only the attribute files that matter
    here: asked of a commit with a large tree, it reads that tree again for every path (10 ms a path
    for a folder of 30,000 files: minutes for a job's outputs). That commit is written to the repository
    but referenced by nothing (a few small objects, shared by every lookup with the same attributes)."""
    if commit is None:
        return lambda path: False
    folders = {""}
    for path in paths:
        parts = path.strip("/").split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    found: dict[str, pygit2.Oid] = {}
    for folder in folders:
        name = f"{folder}/.gitattributes" if folder else ".gitattributes"
        try:
            entry = commit.tree[name]
        except (KeyError, ValueError, pygit2.GitError):
            continue
        if entry.filemode in (pygit2.GIT_FILEMODE_BLOB, pygit2.GIT_FILEMODE_BLOB_EXECUTABLE):
            found[name] = entry.id
    if not found:
        return lambda path: False
    only = _commit_of(g, found)
    flags = AttrCheck.INDEX_ONLY | AttrCheck.INCLUDE_COMMIT | AttrCheck.NO_SYSTEM

    def tracked(path: str) -> bool:
        try:
            return g.get_attr(path, "filter", flags=flags, commit=only) == "lfs"
        except (pygit2.GitError, ValueError):
            return False  # not a valid repository path: the commit refuses it with a clear error

    return tracked


_NOBODY = pygit2.Signature("OpenSci", "opensci@localhost", 0, 0)


def _commit_of(g: pygit2.Repository, blobs: Mapping[str, pygit2.Oid]) -> pygit2.Oid:
    """A commit (on no branch) whose tree holds just these files, by path."""
    subtrees: dict[str, dict[str, tuple[pygit2.Oid, int]]] = {"": {}}
    for path, oid in blobs.items():
        folder, _, name = path.rpartition("/")
        subtrees.setdefault(folder, {})[name] = (oid, pygit2.GIT_FILEMODE_BLOB)
        while folder:  # and every folder above it
            folder = folder.rpartition("/")[0]
            subtrees.setdefault(folder, {})
    for folder in sorted(subtrees, key=lambda f: f.count("/") + bool(f), reverse=True):  # deepest first
        builder = g.TreeBuilder()
        for name, (oid, mode) in subtrees[folder].items():
            builder.insert(name, oid, mode)
        tree = builder.write()
        if folder:
            parent, _, child = folder.rpartition("/")
            subtrees[parent][child] = (tree, pygit2.GIT_FILEMODE_TREE)
        else:
            return g.create_commit(None, _NOBODY, _NOBODY, "attributes\n", tree, [])
    raise AssertionError("the root folder is always built")


def absorb_large(
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    repo: Repository,
    changes: Mapping[str, Change],
    *,
    tracked: Callable[[str], bool] | None = None,
) -> dict[str, Change]:
    """Move the content of changes larger than `lfs_threshold_bytes` (or, with `tracked`, of non-empty
    files it says Git LFS tracks) into the blob store, deduplicated, replacing each with a pointer;
    other changes are returned as they are.

    Two phases: every file's bytes are stored first, and only then are the holds written to the
    session (the blob store commits through its own connections; on SQLite a session that has already
    written would lock them out). Quotas are checked as the holds are written, once the content is
    known (content the owner already holds costs nothing); bytes stored for a refused commit stay
    unreferenced and garbage collection removes them."""
    out: dict[str, Change] = dict(changes)
    stored: dict[str, tuple[ObjectInfo, bool]] = {}
    for path, change in changes.items():
        if change is None or change.lfs:
            continue
        size = _size_of(change)
        if size <= POINTER_MAX and _is_pointer(change):
            continue  # already a pointer (a client committing what git holds): kept as it is
        if size > settings.lfs_threshold_bytes or (size > 0 and tracked is not None and tracked(path)):
            stream = _stream_of(change)
            try:
                stored[path] = (blobs.put(stream, expected_size=size), change.executable)
            finally:
                if change.file is not None:
                    stream.close()
    for path, (info, executable) in stored.items():
        hold_object(session, settings, repo, info.oid, info.size)
        pointer = lfs_upload(info.oid, info.size)
        pointer.executable = executable
        out[path] = pointer
    return out


def with_large_files(
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    repo: Repository,
    actor: Actor,
    g: pygit2.Repository,
    base: pygit2.Commit | None,
    changes: Mapping[str, Change],
    pointers: Iterable[tuple[str, str, int | None]] = (),
) -> dict[str, Change]:
    """The changes of a commit onto `base` with its large files in the blob store: contents over the
    threshold, or that `base`'s .gitattributes send through LFS, absorbed; and each pointer (path, oid,
    size) to an uploaded object attached. Absorbing comes first, so the session writes nothing before
    every byte is stored (see `absorb_large`)."""
    out = absorb_large(session, settings, blobs, repo, changes, tracked=lfs_tracker(g, base, changes))
    for path, oid, size in pointers:
        info = attach_object(session, settings, blobs, repo, actor, oid, size)
        out[path] = lfs_upload(info.oid, info.size)
    return out


# --- reading -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LfsInfo:
    oid: str  # sha256 of the content
    size: int  # of the content
    pointer_size: int


@dataclass(frozen=True)
class FileView:
    """A file of a commit: its git blob, and when that blob is an LFS pointer, the object it names."""

    path: str
    commit: str
    blob_id: str  # git blob sha1 (of the pointer, for LFS files)
    blob_size: int
    lfs: LfsInfo | None

    @property
    def size(self) -> int:
        """The content's size (the object's, for LFS files)."""
        return self.lfs.size if self.lfs is not None else self.blob_size

    @property
    def etag(self) -> str:
        """Hex, filesystem-safe: the sha256 for LFS content, else the git blob id (as the Hub does)."""
        return self.lfs.oid if self.lfs is not None else self.blob_id


def pointer_of(blob: pygit2.Blob) -> LfsInfo | None:
    if blob.size > POINTER_MAX:
        return None
    parsed = parse_pointer(blob.data)
    return None if parsed is None else LfsInfo(parsed[0], parsed[1], blob.size)


def entry_lfs(g: pygit2.Repository, blob_id: str, size: int | None) -> LfsInfo | None:
    """The LFS pointer a tree entry's blob holds, if it is one (only small blobs are read)."""
    if size is None or size > POINTER_MAX:
        return None
    return pointer_of(g[blob_id])


def file_view(g: pygit2.Repository, commit: pygit2.Commit, path: str) -> FileView:
    """The file at `path` of `commit` (EntryNotFound, or InvalidInput for a folder or a submodule)."""
    blob = gitstore.read_blob(g, commit, path)
    return FileView(path, str(commit.id), str(blob.id), blob.size, pointer_of(blob))


def stored(session: Session, blobs: BlobStore, repo: Repository, view: FileView) -> bool:
    """Whether an LFS file's content can be served from this repository: the repository holds the
    object and the store has it. A pointer pushed without its object (or naming another repository's
    object) is served as what git holds: the pointer's text. Content held but quarantined as damaged
    raises ObjectDamaged: never the pointer in its place."""
    if view.lfs is None or not holds(session, repo.id, view.lfs.oid):
        return False
    if blobs.has(view.lfs.oid):
        return True
    try:
        info = blobs.stat(view.lfs.oid)
    except ObjectNotFound:
        return False  # collected: what git holds is all there is
    raise ObjectDamaged(
        f"the stored content of {view.path!r} ({info.oid[:12]}…) is damaged and quarantined; uploading the "
        "file again repairs it (`opensci storage verify` lists the damage)"
    )


def content_git_id(session: Session, blobs: BlobStore, repo: Repository, view: FileView) -> str | None:
    """The git blob id the content of an LFS file would have as a regular file (what Hugging Face
    clients compare before re-sending a file inline), read from the blob store; None if not stored."""
    try:
        if view.lfs is None or not stored(session, blobs, repo, view):
            return None
        digest = hashlib.sha1(f"blob {view.lfs.size}\0".encode(), usedforsecurity=False)
        for block in blobs.iter_range(view.lfs.oid):
            digest.update(block)
    except ObjectDamaged:
        return None  # unknown: the client sends the file again, which repairs it
    return digest.hexdigest()


def _not_modified(request: Request, etag: str) -> bool:
    inm = request.headers.get("if-none-match")
    return inm is not None and etag in {t.strip() for t in inm.split(",")}


def object_response(
    request: Request,
    blobs: BlobStore,
    oid: str,
    size: int,
    *,
    media_type: str = "application/octet-stream",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Serve a stored object: 200 or 206 (single Range), HEAD without a body, ETag `"<oid>"`."""
    out = {**(headers or {}), "Accept-Ranges": "bytes"}
    out.setdefault("ETag", f'"{oid}"')
    if _not_modified(request, out["ETag"]):
        return Response(status_code=304, headers=out)
    rng = parse_range(effective_range(request.headers, out["ETag"]), size)
    start, end, status = (0, size - 1, 200) if rng is None else (*rng, 206)
    if status == 206:
        out["Content-Range"] = f"bytes {start}-{end}/{size}"
    out["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD":  # the caller checked that the object is stored
        return Response(status_code=status, headers=out, media_type=media_type)
    body: Iterator[memoryview] = blobs.iter_range(oid, start, end + 1) if size else iter(())
    return StreamingResponse(body, status_code=status, headers=out, media_type=media_type)


def file_response(
    request: Request,
    session: Session,
    blobs: BlobStore,
    repo: Repository,
    g: pygit2.Repository,
    view: FileView,
    *,
    media_type: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Serve a file of a commit with GET/HEAD, Range and ETag: an LFS file's content from the blob store,
    else the git blob (also a pointer whose object is not stored: what git holds is all there is)."""
    out = dict(headers or {})
    if view.lfs is not None and stored(session, blobs, repo, view):
        out.setdefault("ETag", f'"{view.lfs.oid}"')
        return object_response(
            request, blobs, view.lfs.oid, view.lfs.size, media_type=media_type, headers=out
        )
    out.setdefault("ETag", f'"{view.blob_id}"')
    if _not_modified(request, out["ETag"]):
        return Response(status_code=304, headers={**out, "Accept-Ranges": "bytes"})
    blob = g[view.blob_id]
    return bytes_response(
        blob.data,
        effective_range(request.headers, out["ETag"]),
        media_type=media_type,
        headers=out,
        head=request.method == "HEAD",
    )
