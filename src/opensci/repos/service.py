"""Operations on repositories: create, read, update, delete, list; commits, trees, files and refs.

Every function takes the acting identity first, then a session, then the git store where it touches
content. Reading something the actor may not read raises RepoNotFound, never Forbidden.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import pygit2
from pygit2.enums import FileMode
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opensci.accounts.models import Owner, Scope
from opensci.accounts.permissions import Action, Actor, can, readable_repos_clause
from opensci.accounts.service import get_owner
from opensci.db.base import utcnow
from opensci.errors import (
    Conflict,
    EntryNotFound,
    Forbidden,
    InvalidInput,
    NotFound,
    RepoNotFound,
    Unauthorized,
)
from opensci.repos import gitstore
from opensci.repos.gitattributes import ATTRIBUTES, track
from opensci.repos.gitstore import ZERO, Change, GitStore
from opensci.repos.models import RepoKind, Repository
from opensci.validation import (
    check_name,
    check_owner_filter,
    check_repo_path,
    check_search_text,
    is_plain_text,
)

_SPDX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,63}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._/+-]{0,63}$")
MAX_TAGS = 50
COMMIT_RETRIES = 20
MAX_PAGE = 1_000_000  # keeps OFFSET inside a 64-bit integer


def _check_license(value: str) -> str:
    value = value.strip()
    if value and not _SPDX.match(value):
        raise InvalidInput(
            f"invalid license {value!r}: give an SPDX identifier such as MIT or CC-BY-4.0",
            code="invalid_license",
        )
    return value


def _check_tags(tags: list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags", code="invalid_tags")
    out: list[str] = []
    for t in tags:
        if not isinstance(t, str) or not _TAG.match(t):
            raise InvalidInput(f"invalid tag {t!r}: 1-64 letters, digits or ':._/+-'", code="invalid_tags")
        if t not in out:
            out.append(t)
    return out


def _require(actor: Actor, action: Action, repo: Repository) -> None:
    """Raise the right error when actor may not do action on a repository it can read."""
    if can(actor, action, repo):
        return
    if actor.is_anonymous:
        raise Unauthorized("log in or send an API token with write scope", code="login_required")
    if actor.scope != Scope.write:
        raise Forbidden("this token has read scope; use a token with write scope", code="insufficient_scope")
    what = "administer" if action == "admin" else "write to"
    raise Forbidden(f"you may not {what} {repo.full_name}", code="forbidden")


# --- repositories --------------------------------------------------------------------------------------


def create_repo(
    actor: Actor,
    session: Session,
    store: GitStore,
    *,
    name: str,
    kind: RepoKind | str = RepoKind.code,
    owner: str | None = None,
    private: bool = False,
    description: str = "",
    license: str = "",
    tags: list[str] | None = None,
) -> Repository:
    if actor.user is None:
        raise Unauthorized("log in or send an API token to create a repository", code="login_required")
    try:
        kind = RepoKind(kind)
    except ValueError as exc:
        raise InvalidInput(
            f"kind must be one of code, dataset, model; not {kind!r}", code="invalid_kind"
        ) from exc
    check_name(name, "repository name")
    owner_row = get_owner(session, owner) if owner else actor.user.owner
    if not can(actor, "create_repo", owner_row):
        if actor.scope != Scope.write:
            raise Forbidden(
                "this token has read scope; use a token with write scope", code="insufficient_scope"
            )
        raise Forbidden(f"you may not create repositories under {owner_row.name}", code="forbidden")
    if session.scalar(
        select(Repository.id).where(Repository.owner_id == owner_row.id, Repository.name_key == name.lower())
    ):
        raise Conflict(f"{owner_row.name}/{name} already exists", code="repo_exists")
    repo = Repository(
        owner_id=owner_row.id,
        name=name,
        name_key=name.lower(),
        kind=kind,
        private=bool(private),
        description=description.strip()[:5000],
        license=_check_license(license),
        tags=_check_tags(tags or []),
    )
    repo.owner = owner_row
    session.add(repo)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{owner_row.name}/{name} already exists", code="repo_exists") from exc
    store.init(repo.id, repo.default_branch)
    try:
        session.commit()
    except BaseException:
        store.remove(repo.id)
        raise
    return repo


def find_repo(session: Session, owner: str, name: str) -> Repository | None:
    """The repository `owner/name` (names compared case-insensitively), whoever asks: callers that answer
    people check permissions (`get_repo` does); a signed link names what it authorizes by itself."""
    if not (is_plain_text(owner) and is_plain_text(name)):
        return None  # no name holds a control character (and PostgreSQL could not compare a NUL)
    return session.scalar(
        select(Repository)
        .join(Owner, Owner.id == Repository.owner_id)
        .where(Owner.name_key == owner.lower(), Repository.name_key == name.lower())
    )


def get_repo(
    actor: Actor,
    session: Session,
    owner: str,
    name: str,
    action: Action = "read",
    kind: RepoKind | None = None,
) -> Repository:
    """The repository `owner/name` if the actor may read it (else RepoNotFound) and may do `action`."""
    repo = find_repo(session, owner, name)
    if repo is None or not can(actor, "read", repo) or (kind is not None and repo.kind != kind):
        raise RepoNotFound(f"repository {owner}/{name} not found")
    if action != "read":
        _require(actor, action, repo)
    return repo


def update_repo(
    actor: Actor,
    session: Session,
    repo: Repository,
    *,
    name: str | None = None,
    owner: str | None = None,
    private: bool | None = None,
    description: str | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
    default_branch: str | None = None,
    store: GitStore | None = None,
) -> Repository:
    _require(actor, "admin", repo)
    target_owner = repo.owner
    if owner is not None and owner.lower() != repo.owner.name.lower():
        target_owner = get_owner(session, owner)
        if not can(actor, "create_repo", target_owner):
            raise Forbidden(f"you may not move repositories to {target_owner.name}", code="forbidden")
    new_name = check_name(name, "repository name") if name is not None else repo.name
    if (target_owner.id, new_name.lower()) != (repo.owner_id, repo.name_key) and session.scalar(
        select(Repository.id).where(
            Repository.owner_id == target_owner.id, Repository.name_key == new_name.lower()
        )
    ):
        raise Conflict(f"{target_owner.name}/{new_name} already exists", code="repo_exists")
    repo.owner_id, repo.owner, repo.name, repo.name_key = (
        target_owner.id,
        target_owner,
        new_name,
        new_name.lower(),
    )
    if private is not None:
        repo.private = bool(private)
    if description is not None:
        repo.description = description.strip()[:5000]
    if license is not None:
        repo.license = _check_license(license)
    if tags is not None:
        repo.tags = _check_tags(tags)
    if default_branch is not None:
        gitstore.valid_ref_name("heads", default_branch)
        if store is not None and gitstore.branch_head(store.open(repo.id), default_branch) is None:
            raise InvalidInput(f"branch {default_branch!r} does not exist", code="invalid_ref")
        repo.default_branch = default_branch
        if store is not None:
            store.open(repo.id).references.create("HEAD", f"refs/heads/{default_branch}", force=True)
    repo.updated_at = utcnow()
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"{target_owner.name}/{new_name} already exists", code="repo_exists") from exc
    return repo


def delete_repo(actor: Actor, session: Session, store: GitStore, repo: Repository) -> None:
    _require(actor, "admin", repo)
    repo_id = repo.id
    session.delete(repo)
    session.commit()
    store.remove(repo_id)


def list_repos(
    actor: Actor,
    session: Session,
    *,
    owner: str | None = None,
    kind: RepoKind | str | None = None,
    q: str | None = None,
    page: int = 1,
    per_page: int = 30,
    sort: str = "updated",
) -> tuple[list[Repository], int]:
    """Repositories the actor may read, filtered and paginated; returns (page, total)."""
    if not 1 <= page <= MAX_PAGE or not 1 <= per_page <= 100:
        raise InvalidInput(
            f"page must be between 1 and {MAX_PAGE} and per_page between 1 and 100", code="invalid_page"
        )
    stmt = select(Repository).join(Owner, Owner.id == Repository.owner_id).where(readable_repos_clause(actor))
    if owner:
        stmt = stmt.where(Owner.name_key == check_owner_filter(owner).lower())
    if kind:
        try:
            stmt = stmt.where(Repository.kind == RepoKind(kind))
        except ValueError as exc:
            raise InvalidInput(
                f"kind must be one of code, dataset, model; not {kind!r}", code="invalid_kind"
            ) from exc
    if q:
        check_search_text(q)
        # The words are matched literally: '%' and '_' are no wildcards for the searcher.
        escaped = q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        like = f"%{escaped}%"
        stmt = stmt.where(
            or_(
                func.lower(Repository.name).like(like, escape="\\"),
                func.lower(Repository.description).like(like, escape="\\"),
                Owner.name_key.like(like, escape="\\"),
            )
        )
    order = {
        "updated": Repository.updated_at.desc(),
        "created": Repository.created_at.desc(),
        "name": Repository.name_key,
    }
    if sort not in order:
        raise InvalidInput("sort must be updated, created or name", code="invalid_sort")
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(order[sort], Repository.id).offset((page - 1) * per_page).limit(per_page)
    )
    return list(rows), total


def touch(session: Session, repo: Repository) -> None:
    repo.updated_at = utcnow()
    session.commit()


# --- content -------------------------------------------------------------------------------------------


def open_git(store: GitStore, repo: Repository) -> pygit2.Repository:
    return store.open(repo.id)


def resolve(store: GitStore, repo: Repository, rev: str | None) -> tuple[pygit2.Repository, pygit2.Commit]:
    g = store.open(repo.id)
    return g, gitstore.resolve(g, rev or repo.default_branch)


def _author(actor: Actor) -> pygit2.Signature:
    assert actor.user is not None
    email = actor.user.email or f"{actor.user.name}@users.noreply.opensci"
    return gitstore.signature(actor.user.display_name, email)


def branch_base(g: pygit2.Repository, repo: Repository, branch: str | None) -> pygit2.Commit | None:
    """The commit a commit to `branch` builds on: its head, else (a new branch) the default branch's."""
    head = gitstore.branch_head(g, branch or repo.default_branch) or gitstore.branch_head(
        g, repo.default_branch
    )
    return g[head] if head else None


def commit_files(
    actor: Actor,
    session: Session,
    store: GitStore,
    repo: Repository,
    changes: Mapping[str, Change],
    *,
    message: str,
    branch: str | None = None,
    parent_commit: str | None = None,
    create_branch: bool = True,
    skip_unchanged: bool = False,
) -> tuple[str, str | None]:
    """Make one atomic commit of `changes` on `branch`; returns (commit id, parent id).

    With `skip_unchanged`, changes that leave the branch's files as they are make no commit:
    gitstore.NoChanges is raised, naming the head that already has that content.

    With `parent_commit`, the commit lands only if the branch still points there (else Conflict and
    nothing is written to the branch). Without it, a commit that loses a race with another writer is
    rebuilt on the new head and tried again, so neither writer's data is lost. A branch that does not
    exist yet is created (if `create_branch`) starting at `parent_commit` or else the default branch.
    """
    _require(actor, "write", repo)
    branch = gitstore.valid_ref_name("heads", branch or repo.default_branch)
    if not message.strip():
        raise InvalidInput("a commit needs a message", code="invalid_message")
    if not changes:
        raise InvalidInput("a commit needs at least one file to add or delete", code="empty_commit")
    for path in changes:
        check_repo_path(path)
    g = store.open(repo.id)
    if parent_commit is not None:
        try:
            parent_commit = str(gitstore.resolve(g, parent_commit).id)
        except Exception as exc:
            raise Conflict(
                f"parent_commit {parent_commit!r} is not a commit of this repository", code="stale_parent"
            ) from exc
    blobs = gitstore.write_blobs(g, changes)
    author = _author(actor)
    ref = f"refs/heads/{branch}"
    for _ in range(COMMIT_RETRIES):
        head = gitstore.branch_head(g, branch)
        if head is None and not create_branch:
            raise InvalidInput(f"branch {branch!r} does not exist", code="invalid_ref")
        if head is not None and parent_commit is not None and head != parent_commit:
            raise Conflict(
                f"{branch} is at {head[:12]}, not at parent_commit {parent_commit[:12]}: "
                "fetch the new head and retry",
                code="stale_parent",
            )
        # A new branch starts at parent_commit, else at the default branch (an orphan only when empty).
        base = head or parent_commit or gitstore.branch_head(g, repo.default_branch)
        parent = g[base] if base else None
        new = gitstore.build_commit(
            g,
            parent,
            _with_lfs_tracking(g, parent, changes, blobs),
            message=message.strip() + "\n",
            author=author,
            committer=author,
            unless_unchanged=skip_unchanged and head is not None,
        )
        if store.update_ref(
            repo.id, ref, new, head or ZERO, f"commit (api): {message.splitlines()[0][:100]}"
        ):
            touch(session, repo)
            return new, base
    raise Conflict(f"{branch} is changing too fast; try again", code="busy_branch")


def _with_lfs_tracking(
    g: pygit2.Repository,
    parent: pygit2.Commit | None,
    changes: Mapping[str, Change],
    blobs: dict[str, gitstore.BlobRef],
) -> dict[str, gitstore.BlobRef]:
    """`blobs`, plus a `.gitattributes` tracking every LFS pointer of the commit that no pattern covers."""
    lfs_paths = [p for p, c in changes.items() if c is not None and c.lfs]
    if not lfs_paths:
        return blobs
    attrs = changes.get(ATTRIBUTES, ...)
    if attrs is None:
        text = ""  # deleted in this very commit
    elif attrs is not ...:
        text = gitattributes_text(attrs)
    else:
        try:
            text = gitstore.read_blob(g, parent, ATTRIBUTES).data.decode("utf-8", "replace") if parent else ""
        except (EntryNotFound, InvalidInput):
            text = ""
    updated = track(text, lfs_paths)
    if updated is None:
        return blobs
    return {**blobs, ATTRIBUTES: (g.create_blob(updated.encode()), FileMode.BLOB)}


def gitattributes_text(upload: gitstore.Upload) -> str:
    if upload.data is not None:
        data = upload.data
    elif upload.file is not None:
        data = upload.file.read_bytes()
    else:
        assert upload.stream is not None
        upload.stream.seek(0)
        data = upload.stream.read()
    return data.decode("utf-8", "replace")


def create_ref(
    actor: Actor,
    session: Session,
    store: GitStore,
    repo: Repository,
    *,
    type: str,
    name: str,
    revision: str | None = None,
    message: str | None = None,
) -> gitstore.RefInfo:
    _require(actor, "write", repo)
    kind = {"branch": "heads", "tag": "tags"}.get(type)
    if kind is None:
        raise InvalidInput("type must be 'branch' or 'tag'", code="invalid_ref")
    gitstore.valid_ref_name(kind, name)
    g, commit = resolve(store, repo, revision)
    target = str(commit.id)
    target_obj = (
        gitstore.write_tag(g, name, commit, _author(actor), message) if kind == "tags" and message else target
    )
    if not store.update_ref(repo.id, f"refs/{kind}/{name}", target_obj, ZERO, f"create {type} (api)"):
        raise Conflict(f"{type} {name!r} already exists", code="ref_exists")
    touch(session, repo)
    return gitstore.RefInfo(name=name, ref=f"refs/{kind}/{name}", target=target)


def delete_ref(
    actor: Actor, session: Session, store: GitStore, repo: Repository, *, type: str, name: str
) -> None:
    kind = {"branch": "heads", "tag": "tags"}.get(type)
    if kind is None:
        raise InvalidInput("type must be 'branch' or 'tag'", code="invalid_ref")
    _require(actor, "write", repo)
    if kind == "heads" and name == repo.default_branch:
        raise Conflict(f"{name!r} is the default branch and cannot be deleted", code="protected_branch")
    g = store.open(repo.id)
    # pygit2 would read "a\x00b" as "a": a name git cannot hold names no ref.
    ref = g.references.get(f"refs/{kind}/{name}") if is_plain_text(name) else None
    if ref is None:
        raise NotFound(f"{type} {name!r} does not exist", code="ref_not_found")
    if not store.delete_ref(repo.id, ref.name, str(ref.target)):
        raise Conflict(f"{type} {name!r} changed while deleting it; try again", code="busy_branch")
    touch(session, repo)


def after_push(session: Session, store: GitStore, repo: Repository) -> None:
    """Bookkeeping after a push: the update time, and a default branch for a repository pushed into empty."""
    g = store.open(repo.id)
    if gitstore.branch_head(g, repo.default_branch) is None:
        branches = gitstore.list_refs(g, "refs/heads/")
        if branches:
            chosen = next((b.name for b in branches if b.name in ("main", "master")), branches[0].name)
            repo.default_branch = chosen
            g.references.create("HEAD", f"refs/heads/{chosen}", force=True)
    touch(session, repo)
