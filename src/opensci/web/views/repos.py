"""Pages of the repos domain for reading: explore, a repository's home, folders, files, history, one
commit with its diff, branches and tags.

Every repository page exists at `/{owner}/{name}/…` (code, model) and `/datasets/{owner}/{name}/…`
(dataset); a dataset asked for at the first redirects to the second, a code repository asked for under
`/datasets` is not found. Revisions may contain slashes: `split_rev_path` picks the longest that exists.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import pygit2
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from opensci.accounts.permissions import Action, Actor, can
from opensci.deps import ActorDep, SessionDep, StoreDep
from opensci.errors import RepoNotFound
from opensci.repos import gitstore
from opensci.repos import service as repos
from opensci.repos.models import RepoKind, Repository
from opensci.storage import files
from opensci.web.render import (
    MAX_HIGHLIGHT_BYTES,
    MAX_MARKDOWN_BYTES,
    highlight_diff,
    highlight_file,
    is_markdown,
    markdown,
    raw_href,
    render,
    repo_href,
)

explore_router = APIRouter(include_in_schema=False)

EXPLORE_PER_PAGE = 20
COMMITS_PER_PAGE = 30
MAX_DIFF_FILES = 300  # files listed in one commit
MAX_DIFF_BYTES = 512 * 1024  # diff text shown for one commit
MAX_FILE_DIFF_BYTES = 128 * 1024  # diff text shown for one file
_README_NAMES = ("readme.md", "readme.markdown", "readme.txt", "readme")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".ico")
_KINDS = {k.value for k in RepoKind}
_SORTS = ("updated", "created", "name")


# --- explore ------------------------------------------------------------------------------------------------


@explore_router.get("/")
@explore_router.get("/explore")
def explore(
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    q: str = "",
    kind: str = "",
    sort: str = "updated",
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> Response:
    kind = kind if kind in _KINDS else ""
    sort = sort if sort in _SORTS else "updated"
    q = q.strip()[:200]
    items, total = repos.list_repos(
        actor, session, kind=kind or None, q=q or None, sort=sort, page=page, per_page=EXPLORE_PER_PAGE
    )
    context = {
        "repos": items,
        "total": total,
        "q": q,
        "search_q": q,
        "kind": kind,
        "sort": sort,
        "page": page,
        "pages": max(1, -(-total // EXPLORE_PER_PAGE)),
    }
    headers = {"Vary": "HX-Request"}
    if request.headers.get("hx-request") and not request.headers.get("hx-history-restore-request"):
        return render(request, "repos/_results.html", headers=headers, **context)  # live search
    return render(request, "repos/explore.html", headers=headers, **context)


@explore_router.get("/datasets")
@explore_router.get("/models")
def explore_kind(request: Request) -> Response:
    kind = "dataset" if request.url.path == "/datasets" else "model"
    return RedirectResponse(f"/explore?kind={kind}", status_code=302)


# --- loading a repository --------------------------------------------------------------------------------


def load_repo(
    request: Request, session: Session, actor: Actor, owner: str, name: str, action: Action = "read"
) -> Repository | Response:
    """The repository of this page, a redirect to its `/datasets/` address, or RepoNotFound."""
    under_datasets = request.scope["route"].path.startswith("/datasets/")
    repo = repos.get_repo(actor, session, owner, name, action)
    is_dataset = repo.kind == RepoKind.dataset
    if under_datasets and not is_dataset:
        raise RepoNotFound(f"repository {owner}/{name} not found")
    if is_dataset and not under_datasets:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/datasets{request.url.path}{query}", status_code=302)
    return repo


@dataclass
class Refs:
    branches: list[gitstore.RefInfo]
    tags: list[gitstore.RefInfo]


def repo_page(
    request: Request,
    template: str,
    actor: Actor,
    repo: Repository,
    g: pygit2.Repository,
    tab: str,
    status: int = 200,
    **context: Any,
) -> Response:
    """Render a page of a repository with its header (tabs, badges) and the branch selector."""
    base = request.app.state.settings.base_url.rstrip("/")
    refs = Refs(gitstore.list_refs(g, "refs/heads/"), gitstore.list_refs(g, "refs/tags/"))
    context.setdefault("rev", repo.default_branch)
    context.setdefault("path", "")
    context.setdefault("selector_view", "tree")
    return render(
        request,
        template,
        status=status,
        repo=repo,
        tab=tab,
        refs=refs,
        can_admin=can(actor, "admin", repo),
        can_write=can(actor, "write", repo),
        clone_url=f"{base}{repo.url_path}.git",
        **context,
    )


def _breadcrumbs(repo: Repository, rev: str, path: str) -> list[tuple[str, str]]:
    crumbs = [(repo.name, repo_href(repo, "tree", rev))]
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        crumbs.append((part, repo_href(repo, "tree", rev, "/".join(parts[: i + 1]))))
    return crumbs


def _readme(
    repo: Repository, g: pygit2.Repository, commit: pygit2.Commit, rev: str, entries: list[Any], folder: str
) -> dict[str, Any] | None:
    files = {e.name.lower(): e for e in entries if e.type == "file"}
    found = next((files[n] for n in _README_NAMES if n in files), None)
    if found is None:
        return None
    if (found.size or 0) > MAX_MARKDOWN_BYTES:
        return {"entry": found, "html": None, "text": None}
    text = gitstore.read_blob(g, commit, found.path).data.decode("utf-8", errors="replace")
    if not is_markdown(found.name):
        return {"entry": found, "html": None, "text": text}
    html = markdown(
        text,
        link_base=repo_href(repo, "blob", rev),
        raw_base=raw_href(repo, rev, "").rstrip("/"),
        folder=folder,
    )
    return {"entry": found, "html": html, "text": None}


def _last_commit(g: pygit2.Repository, head: pygit2.Commit, path: str) -> gitstore.CommitInfo:
    """The newest commit that changed `path` (the head itself for the root)."""
    if path:
        found, _ = gitstore.log(g, head, path=path, limit=1)
        if found:
            return found[0]
    return gitstore.commit_info(head)


# --- pages -----------------------------------------------------------------------------------------------


def repo_home(
    owner: str, name: str, request: Request, session: SessionDep, store: StoreDep, actor: ActorDep
) -> Response:
    if name.lower().endswith(".git") and len(name) > 4:  # someone pasted the clone URL into the browser
        return RedirectResponse(request.url.path[:-4], status_code=302)
    repo = load_repo(request, session, actor, owner, name)
    if isinstance(repo, Response):
        return repo
    g = repos.open_git(store, repo)
    if gitstore.branch_head(g, repo.default_branch) is None:
        return repo_page(request, "repos/empty.html", actor, repo, g, "files")
    _, commit = repos.resolve(store, repo, repo.default_branch)
    entries = gitstore.list_tree(g, commit)
    return repo_page(
        request,
        "repos/tree.html",
        actor,
        repo,
        g,
        "files",
        commit=gitstore.commit_info(commit),
        entries=entries,
        readme=_readme(repo, g, commit, repo.default_branch, entries, ""),
        crumbs=[],
        is_root=True,
    )


def tree(
    owner: str,
    name: str,
    rev_path: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
) -> Response:
    repo = load_repo(request, session, actor, owner, name)
    if isinstance(repo, Response):
        return repo
    g = repos.open_git(store, repo)
    commit, rev, path = gitstore.split_rev_path(g, rev_path)
    if path and gitstore.entry(g, commit, path).type != "dir":
        return RedirectResponse(repo_href(repo, "blob", rev, path), status_code=302)
    entries = gitstore.list_tree(g, commit, path)
    return repo_page(
        request,
        "repos/tree.html",
        actor,
        repo,
        g,
        "files",
        rev=rev,
        path=path,
        commit=_last_commit(g, commit, path),
        entries=entries,
        readme=_readme(repo, g, commit, rev, entries, path),
        crumbs=_breadcrumbs(repo, rev, path),
        parent=repo_href(repo, "tree", rev, posixpath.dirname(path)) if path else None,
        is_root=not path,
    )


def blob(
    owner: str,
    name: str,
    rev_path: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    plain: bool = False,
) -> Response:
    repo = load_repo(request, session, actor, owner, name)
    if isinstance(repo, Response):
        return repo
    g = repos.open_git(store, repo)
    commit, rev, path = gitstore.split_rev_path(g, rev_path)
    if not path or gitstore.entry(g, commit, path).type == "dir":
        return RedirectResponse(repo_href(repo, "tree", rev, path), status_code=302)
    obj = gitstore.read_blob(g, commit, path)
    filename = posixpath.basename(path)
    view: dict[str, Any] = {"kind": "code", "size": obj.size, "lines": 0, "html": None, "lfs": None}
    fv = files.FileView(path, str(commit.id), str(obj.id), obj.size, files.pointer_of(obj))
    if fv.lfs is not None:
        view["lfs"] = {"oid": fv.lfs.oid, "stored": files.stored(session, request.app.state.blobs, repo, fv)}
    if fv.lfs is not None and view["lfs"]["stored"]:
        view["size"] = fv.lfs.size
        view["kind"] = "image" if filename.lower().endswith(_IMAGE_EXTS) else "lfs"
    elif filename.lower().endswith(_IMAGE_EXTS):
        view["kind"] = "image"
    elif obj.size > MAX_HIGHLIGHT_BYTES:
        view["kind"] = "large"
    elif obj.is_binary:
        view["kind"] = "binary"
    else:
        text = obj.data.decode("utf-8", errors="replace")
        view["lines"] = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        if is_markdown(filename) and not plain:
            view["kind"] = "markdown"
            view["html"] = markdown(
                text,
                link_base=repo_href(repo, "blob", rev),
                raw_base=raw_href(repo, rev, "").rstrip("/"),
                folder=posixpath.dirname(path),
            )
        else:
            view["html"] = highlight_file(filename, text)
    return repo_page(
        request,
        "repos/blob.html",
        actor,
        repo,
        g,
        "files",
        rev=rev,
        path=path,
        filename=filename,
        view=view,
        plain=plain,
        is_md=is_markdown(filename),
        commit=_last_commit(g, commit, path),
        crumbs=_breadcrumbs(repo, rev, path),
        raw_url=raw_href(repo, rev, path),
        selector_view="blob",
    )


def commits(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    rev: str = "",
    path: str = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    repo = load_repo(request, session, actor, owner, name)
    if isinstance(repo, Response):
        return repo
    g = repos.open_git(store, repo)
    rev = rev.strip("/") or repo.default_branch
    path = path.strip("/")
    if rev == repo.default_branch and gitstore.branch_head(g, rev) is None:
        items: list[gitstore.CommitInfo] = []
        more = False
    else:
        head = gitstore.resolve(g, rev)
        items, more = gitstore.log(
            g, head, path=path, skip=(page - 1) * COMMITS_PER_PAGE, limit=COMMITS_PER_PAGE
        )
    return repo_page(
        request,
        "repos/commits.html",
        actor,
        repo,
        g,
        "commits",
        rev=rev,
        path=path,
        commits=items,
        page=page,
        more=more,
        selector_view="commits",
    )


@dataclass
class FileDiff:
    status: str  # A, D, M, R, C, T …
    path: str
    old_path: str
    additions: int | None
    deletions: int | None
    html: Any  # highlighted diff, or None
    note: str  # why there is no diff: binary, too large …


def _file_diffs(g: pygit2.Repository, commit: pygit2.Commit) -> tuple[list[FileDiff], int]:
    if commit.parents:
        diff = g.diff(commit.parents[0].tree, commit.tree)
    else:
        diff = commit.tree.diff_to_tree(swap=True)
    diff.find_similar()
    out: list[FileDiff] = []
    budget = MAX_DIFF_BYTES
    deltas = list(diff.deltas)
    for i, d in enumerate(deltas[:MAX_DIFF_FILES]):
        sizes = [  # of blobs: a submodule's commit lives in another repository
            gitstore.blob_size(g, f.id)
            for f in (d.old_file, d.new_file)
            if f.id != pygit2.Oid(hex="0" * 40) and f.mode != pygit2.enums.FileMode.COMMIT
        ]
        item = FileDiff(d.status_char(), d.new_file.path, d.old_file.path, None, None, None, "")
        if any(s > MAX_HIGHLIGHT_BYTES for s in sizes):
            item.note = "File too large to show a diff."
        elif budget <= 0:
            item.note = "Diff not shown: this commit changes too much to show every diff."
        else:
            patch = diff[i]
            _, item.additions, item.deletions = patch.line_stats
            if patch.delta.is_binary:
                item.note = "Binary file."
            else:
                text = patch.text or ""
                hunks = text[text.find("\n@@") + 1 :] if "\n@@" in text else ""
                if len(hunks) > MAX_FILE_DIFF_BYTES:
                    item.note = "Diff too large to show."
                elif hunks:
                    budget -= len(hunks)
                    item.html = highlight_diff(hunks)
                elif item.status in ("A", "D"):
                    item.note = "Empty file."
                else:
                    item.note = "No content change (mode or rename only)."
        out.append(item)
    return out, len(deltas)


def commit(
    owner: str, name: str, sha: str, request: Request, session: SessionDep, store: StoreDep, actor: ActorDep
) -> Response:
    repo = load_repo(request, session, actor, owner, name)
    if isinstance(repo, Response):
        return repo
    g, c = repos.resolve(store, repo, sha)
    files, total = _file_diffs(g, c)
    return repo_page(
        request,
        "repos/commit.html",
        actor,
        repo,
        g,
        "commits",
        rev=str(c.id),
        commit=gitstore.commit_info(c),
        files=files,
        total_files=total,
        additions=sum(f.additions or 0 for f in files),
        deletions=sum(f.deletions or 0 for f in files),
    )


def branches(
    owner: str, name: str, request: Request, session: SessionDep, store: StoreDep, actor: ActorDep
) -> Response:
    repo = load_repo(request, session, actor, owner, name)
    if isinstance(repo, Response):
        return repo
    g = repos.open_git(store, repo)

    def described(refs: list[gitstore.RefInfo]) -> list[tuple[gitstore.RefInfo, gitstore.CommitInfo]]:
        rows = [(r, gitstore.commit_info(g[r.target])) for r in refs]
        return sorted(rows, key=lambda row: (row[0].name != repo.default_branch, -row[1].date.timestamp()))

    return repo_page(
        request,
        "repos/branches.html",
        actor,
        repo,
        g,
        "branches",
        branch_rows=described(gitstore.list_refs(g, "refs/heads/")),
        tag_rows=described(gitstore.list_refs(g, "refs/tags/")),
    )


# Registered by `opensci.web.mount` under both "/datasets" and "": every "/datasets/…" route first.
PAGES: list[tuple[str, Callable[..., Response], list[str]]] = [
    ("/{owner}/{name}", repo_home, ["GET"]),
    ("/{owner}/{name}/tree/{rev_path:path}", tree, ["GET"]),
    ("/{owner}/{name}/blob/{rev_path:path}", blob, ["GET"]),
    ("/{owner}/{name}/commits", commits, ["GET"]),
    ("/{owner}/{name}/commits/{rev:path}", commits, ["GET"]),
    ("/{owner}/{name}/commit/{sha}", commit, ["GET"]),
    ("/{owner}/{name}/branches", branches, ["GET"]),
]
