"""Bare git repositories on disk, one per repository, stored by the repository's immutable id.

Reads go through pygit2. Branch updates go through `git update-ref NEW OLD`, a compare-and-swap that
takes the same lock files as `git receive-pack`, so commits made over the API and pushes never
overwrite each other.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

import pygit2
from pygit2.enums import FileMode, ObjectType, SortMode

from opensci.errors import Conflict, EntryNotFound, InvalidInput, RevisionNotFound
from opensci.validation import CONTROL, is_plain_text

ZERO = "0" * 40
_HEX = re.compile(r"^[0-9a-fA-F]{4,40}$")


@dataclass(frozen=True)
class CommitInfo:
    id: str
    message: str
    title: str
    author_name: str
    author_email: str
    date: datetime
    parents: list[str]


@dataclass(frozen=True)
class TreeEntry:
    path: str
    name: str
    type: str  # "file" or "dir" (or "submodule")
    oid: str
    size: int | None
    mode: int


@dataclass(frozen=True)
class RefInfo:
    name: str
    ref: str
    target: str


class Upload:
    """New content for one path of a commit: bytes, a file on disk, or an open binary stream."""

    def __init__(
        self,
        data: bytes | None = None,
        file: Path | None = None,
        stream: BinaryIO | None = None,
        executable: bool = False,
        lfs: bool = False,
    ) -> None:
        if sum(x is not None for x in (data, file, stream)) != 1:
            raise ValueError("give exactly one of data, file, stream")
        self.data, self.file, self.stream, self.executable = data, file, stream, executable
        self.lfs = lfs  # the content is a Git LFS pointer: the commit tracks the path in .gitattributes


Change = Upload | None  # None deletes the path (a file, or a whole folder)


class GitStore:
    """Where the bare repositories live, and the operations on them."""

    def __init__(self, root: Path, git_binary: str = "git") -> None:
        self.root = root
        self.git = git_binary

    def path(self, repo_id: str) -> Path:
        return self.root / f"{repo_id}.git"

    def init(self, repo_id: str, default_branch: str = "main") -> Path:
        """Create an empty bare repository atomically: built in a temp folder, then renamed into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(repo_id)
        tmp = Path(tempfile.mkdtemp(prefix=f".init-{repo_id}-", dir=self.root))
        try:
            pygit2.init_repository(str(tmp), bare=True, initial_head=default_branch)
            with open(tmp / "config", "a") as fh:
                # Every ref update is logged; git never auto-deletes objects a concurrent push may need.
                fh.write("[core]\n\tlogAllRefUpdates = always\n[receive]\n\tfsckObjects = true\n")
                fh.write(
                    "[gc]\n\tauto = 0\n"
                    "[uploadpack]\n\tallowFilter = true\n\tallowReachableSHA1InWant = true\n"
                )
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def remove(self, repo_id: str) -> None:
        path = self.path(repo_id)
        if path.exists():
            trash = self.root / f".trash-{repo_id}-{os.getpid()}"
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def open(self, repo_id: str) -> pygit2.Repository:
        return pygit2.Repository(str(self.path(repo_id)))

    # --- refs ----------------------------------------------------------------------------------------

    def update_ref(self, repo_id: str, ref: str, new: str, old: str | None, message: str) -> bool:
        """Compare-and-swap a ref: set it to `new` only if it is `old` now (ZERO: must not exist).

        Returns False when another writer got there first.
        """
        args = [self.git, "update-ref", "-m", message, ref, new]
        if old is not None:
            args.append(old)
        proc = subprocess.run(args, cwd=self.path(repo_id), capture_output=True, text=True)
        if proc.returncode == 0:
            return True
        if (
            "cannot lock ref" in proc.stderr
            or "but expected" in proc.stderr
            or "reference already exists" in proc.stderr
        ):
            return False
        raise RuntimeError(f"git update-ref failed: {proc.stderr.strip()}")

    def delete_ref(self, repo_id: str, ref: str, old: str) -> bool:
        proc = subprocess.run(
            [self.git, "update-ref", "-d", ref, old], cwd=self.path(repo_id), capture_output=True, text=True
        )
        return proc.returncode == 0


def valid_ref_name(kind: str, name: str) -> str:
    """A branch or tag name, checked with git's own rules (pygit2 checks them but reads a name only up to
    a NUL: "a\x00b" would pass as "a"; git refuses every ASCII control character)."""
    what = "branch" if kind == "heads" else "tag"
    if CONTROL.search(name):
        raise InvalidInput(
            f"invalid {what} name {name!r}: git refuses control characters (such as NUL or a line break) "
            "in names",
            code="invalid_ref",
        )
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InvalidInput(
            f"invalid {what} name {name!r}: it is not valid Unicode text (it holds an unpaired surrogate)",
            code="invalid_ref",
        ) from None
    if (
        not name
        or len(name) > 200
        or name.startswith("-")  # git's own `check-ref-format --branch` refuses these, as options
        or name in ("@", "HEAD")
        or not pygit2.reference_is_valid_name(f"refs/{kind}/{name}")
    ):
        raise InvalidInput(f"invalid {what} name {name!r}", code="invalid_ref")
    return name


def list_refs(repo: pygit2.Repository, prefix: str) -> list[RefInfo]:
    """Branches or tags and the commit each points at. Git lets a tag name a tree or a blob; such a
    tag is no revision, so it is left out rather than breaking the listing."""
    out = []
    for ref in repo.references.iterator():
        if not ref.name.startswith(prefix):
            continue
        try:
            target = ref.resolve().peel(pygit2.Commit)
        except (pygit2.GitError, KeyError):
            continue
        out.append(RefInfo(name=ref.name[len(prefix) :], ref=ref.name, target=str(target.id)))
    return sorted(out, key=lambda r: r.name)


def branch_head(repo: pygit2.Repository, branch: str) -> str | None:
    ref = repo.references.get(f"refs/heads/{branch}")
    return str(ref.target) if ref is not None else None


def resolve(repo: pygit2.Repository, rev: str) -> pygit2.Commit:
    """A branch, a tag or a (possibly abbreviated) commit id → the commit. Nothing else is accepted."""
    if not rev or len(rev) > 256 or not is_plain_text(rev):
        raise RevisionNotFound(f"invalid revision {rev!r}")
    for prefix in ("refs/heads/", "refs/tags/"):
        if not pygit2.reference_is_valid_name(prefix + rev):
            continue
        ref = repo.references.get(prefix + rev)
        if ref is not None:
            try:
                return ref.resolve().peel(pygit2.Commit)
            except (pygit2.GitError, KeyError) as exc:
                raise RevisionNotFound(f"{rev!r} does not point to a commit") from exc
    if _HEX.match(rev):
        try:
            obj = repo.revparse_single(rev)
            return obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            pass
    raise RevisionNotFound(f"revision {rev!r} not found")


def split_rev_path(repo: pygit2.Repository, rev_and_path: str) -> tuple[pygit2.Commit, str, str]:
    """`feature/x/src/a.py` → the longest leading part that names a revision, and the rest as the path."""
    parts = rev_and_path.strip("/").split("/")
    for i in range(len(parts), 0, -1):
        rev = "/".join(parts[:i])
        try:
            return resolve(repo, rev), rev, "/".join(parts[i:])
        except RevisionNotFound:
            continue
    raise RevisionNotFound(f"revision {parts[0]!r} not found")


# --- reading -------------------------------------------------------------------------------------------


def _commit_info(c: pygit2.Commit) -> CommitInfo:
    tz = timezone(timedelta(minutes=c.author.offset))
    return CommitInfo(
        id=str(c.id),
        message=c.message,
        title=c.message.split("\n", 1)[0],
        author_name=c.author.name,
        author_email=c.author.email,
        date=datetime.fromtimestamp(c.author.time, tz),
        parents=[str(p) for p in c.parent_ids],
    )


def commit_info(c: pygit2.Commit) -> CommitInfo:
    return _commit_info(c)


def _entry_at(tree: pygit2.Tree, path: str) -> pygit2.Object | None:
    if "\x00" in path:  # no git path holds a NUL; pygit2 would look the path up only to it
        return None
    try:
        return tree[path] if path else tree
    except KeyError:
        return None


def log(
    repo: pygit2.Repository, head: pygit2.Commit, *, path: str = "", skip: int = 0, limit: int = 50
) -> tuple[list[CommitInfo], bool]:
    """Commits reachable from head, newest first, optionally only those that changed `path`.

    Returns one page and whether more follow.
    """
    if "\x00" in path:
        raise InvalidInput("a path may not contain NUL bytes", code="invalid_path")
    walker = repo.walk(head.id, SortMode.TOPOLOGICAL | SortMode.TIME)
    out: list[CommitInfo] = []
    seen = 0
    for c in walker:
        if path:
            here = _entry_at(c.tree, path)
            parent = _entry_at(c.parents[0].tree, path) if c.parents else None
            if (here.id if here else None) == (parent.id if parent else None):
                continue
        if seen >= skip:
            if len(out) == limit:
                return out, True
            out.append(_commit_info(c))
        seen += 1
    return out, False


def blob_size(repo: pygit2.Repository, oid: pygit2.Oid) -> int:
    return repo.odb.read_header(oid)[1]


def list_tree(
    repo: pygit2.Repository, commit: pygit2.Commit, path: str = "", recursive: bool = False
) -> list[TreeEntry]:
    obj = _entry_at(commit.tree, path)
    if obj is None:
        raise EntryNotFound(f"{path!r} not found at {str(commit.id)[:12]}")
    if obj.type != ObjectType.TREE:
        what = "a submodule" if obj.filemode == FileMode.COMMIT else "a file"
        raise InvalidInput(f"{path!r} is {what}, not a folder", code="not_a_folder")
    return list(_walk_tree(repo, obj, path, recursive))


def _walk_tree(repo: pygit2.Repository, tree: pygit2.Tree, base: str, recursive: bool) -> Iterator[TreeEntry]:
    dirs, files = [], []
    for e in tree:
        p = f"{base}/{e.name}" if base else e.name
        if e.filemode == FileMode.TREE:
            dirs.append(TreeEntry(p, e.name, "dir", str(e.id), None, e.filemode))
            if recursive:
                dirs.extend(_walk_tree(repo, repo[e.id], p, True))
        elif e.filemode == FileMode.COMMIT:
            files.append(TreeEntry(p, e.name, "submodule", str(e.id), None, e.filemode))
        else:
            files.append(TreeEntry(p, e.name, "file", str(e.id), blob_size(repo, e.id), e.filemode))
    yield from dirs
    yield from files


def entry(repo: pygit2.Repository, commit: pygit2.Commit, path: str) -> TreeEntry:
    obj = _entry_at(commit.tree, path)
    if obj is None:
        raise EntryNotFound(f"{path!r} not found at {str(commit.id)[:12]}")
    name = path.rsplit("/", 1)[-1]
    if obj.type == ObjectType.TREE:
        return TreeEntry(path, name, "dir", str(obj.id), None, FileMode.TREE)
    if obj.filemode == FileMode.COMMIT:  # a submodule: its commit lives in another repository
        return TreeEntry(path, name, "submodule", str(obj.id), None, FileMode.COMMIT)
    return TreeEntry(path, name, "file", str(obj.id), blob_size(repo, obj.id), FileMode.BLOB)


def read_blob(repo: pygit2.Repository, commit: pygit2.Commit, path: str) -> pygit2.Blob:
    obj = _entry_at(commit.tree, path) if path else None
    if obj is None:
        raise EntryNotFound(f"{path!r} not found at {str(commit.id)[:12]}")
    if obj.filemode == FileMode.COMMIT:
        raise InvalidInput(
            f"{path!r} is a submodule (a commit of another repository), not a file", code="not_a_file"
        )
    if obj.type != ObjectType.BLOB:
        raise InvalidInput(f"{path!r} is a folder, not a file", code="not_a_file")
    return obj


# --- writing -------------------------------------------------------------------------------------------

BlobRef = tuple[pygit2.Oid, FileMode] | None  # a stored blob and its mode, or None to delete


def _apply(
    repo: pygit2.Repository, tree: pygit2.Tree | None, changes: Mapping[str, BlobRef], base: str
) -> pygit2.Oid | None:
    """Write the tree that results from applying changes (paths relative to this tree) to `tree`."""
    tb = repo.TreeBuilder(tree) if tree is not None else repo.TreeBuilder()
    leaves: dict[str, BlobRef] = {}
    nested: dict[str, dict[str, BlobRef]] = {}
    for path, change in changes.items():
        head, _, rest = path.partition("/")
        if rest:
            nested.setdefault(head, {})[rest] = change
        else:
            leaves[head] = change
    for name, change in leaves.items():
        full = f"{base}{name}"
        existing = tree[name] if tree is not None and name in tree else None
        if change is None:
            if existing is None:
                raise EntryNotFound(f"cannot delete {full!r}: no such file or folder")
            tb.remove(name)
        elif name in nested:
            raise InvalidInput(f"{full!r} is written both as a file and as a folder", code="path_conflict")
        else:
            if existing is not None and existing.type == ObjectType.TREE:
                raise Conflict(
                    f"cannot write file {full!r}: a folder of that name exists", code="path_conflict"
                )
            tb.insert(name, *change)
    for name, sub in nested.items():
        full = f"{base}{name}"
        existing = tree[name] if tree is not None and name in tree and name not in leaves else None
        if existing is not None and existing.type != ObjectType.TREE:
            raise Conflict(f"cannot write into {full!r}/: a file of that name exists", code="path_conflict")
        new = _apply(repo, repo[existing.id] if existing is not None else None, sub, f"{full}/")
        if new is None:
            if tb.get(name) is not None:
                tb.remove(name)
        else:
            tb.insert(name, new, FileMode.TREE)
    if len(tb) == 0 and base:
        return None
    return tb.write()


def write_blobs(repo: pygit2.Repository, changes: Mapping[str, Change]) -> dict[str, BlobRef]:
    """Store the new contents as git blobs (idempotent: a blob is named by its content)."""
    out: dict[str, BlobRef] = {}
    for path, change in changes.items():
        if change is None:
            out[path] = None
            continue
        if change.data is not None:
            oid = repo.create_blob(change.data)
        elif change.file is not None:
            oid = repo.create_blob_fromdisk(str(change.file))
        else:
            assert change.stream is not None
            change.stream.seek(0)
            oid = repo.create_blob_fromiobase(change.stream)
        out[path] = (oid, FileMode.BLOB_EXECUTABLE if change.executable else FileMode.BLOB)
    return out


class NoChanges(Exception):
    """The commit would change nothing: `head` is the commit that already has that content."""

    def __init__(self, head: str) -> None:
        super().__init__(f"nothing changed since {head[:12]}")
        self.head = head


def build_commit(
    repo: pygit2.Repository,
    parent: pygit2.Commit | None,
    blobs: Mapping[str, BlobRef],
    *,
    message: str,
    author: pygit2.Signature,
    committer: pygit2.Signature,
    unless_unchanged: bool = False,
) -> str:
    """Write (not publish) a commit applying `blobs` on top of `parent`; returns its id. With
    `unless_unchanged`, a commit whose tree is the parent's is not written: NoChanges is raised."""
    tree = _apply(repo, parent.tree if parent is not None else None, blobs, "")
    if unless_unchanged and parent is not None and tree == parent.tree_id:
        raise NoChanges(str(parent.id))
    parents = [parent.id] if parent is not None else []
    return str(repo.create_commit(None, author, committer, message, tree, parents))


_NOT_IN_SIGNATURE = re.compile(r"[<>\x00-\x1f\x7f]")


def signature(name: str, email: str) -> pygit2.Signature:
    """An author or committer now. Git's format has no room for '<', '>' or line breaks in either part
    (a display name may hold them), so they are dropped; an empty result becomes a placeholder."""
    now = datetime.now(UTC)
    name = " ".join(_NOT_IN_SIGNATURE.sub(" ", name).split()) or "unknown"
    email = _NOT_IN_SIGNATURE.sub("", email).strip() or "unknown@users.noreply.opensci"
    return pygit2.Signature(name, email, int(now.timestamp()), 0)


def write_tag(
    repo: pygit2.Repository, name: str, commit: pygit2.Commit, tagger: pygit2.Signature, message: str
) -> str:
    """Write an annotated tag object (not its ref, which the caller publishes with a compare-and-swap)."""
    raw = (
        f"object {commit.id}\ntype commit\ntag {name}\n"
        f"tagger {tagger.name} <{tagger.email}> {tagger.time} +0000\n\n{message.strip()}\n"
    )
    return str(repo.odb.write(ObjectType.TAG, raw.encode()))
