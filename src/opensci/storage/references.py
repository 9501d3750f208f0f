"""Which blob store objects the repositories reference: every Git LFS pointer reachable from any ref.

A pointer is a small blob (at most 1024 bytes, per the Git LFS spec):

    version https://git-lfs.github.com/spec/v1
    oid sha256:4d7a2146…
    size 12345

Every ref counts (all branches and tags, every commit of their history, other namespaces such as
`refs/pr/*`), so an old revision stays downloadable. Objects only in unreachable commits (of a deleted
branch, say) do not count.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from opensci.repos.gitstore import GitStore
from opensci.storage.pointers import pointers_in


def repo_lfs_oids(git: str, path: Path) -> set[str]:
    """The oids of every LFS pointer reachable from any ref of one bare repository."""
    return set(pointers_in(git, path, ["--all"]))


def referenced_by_repo(store: GitStore, repo_ids: Iterable[str]) -> dict[str, set[str]]:
    """repository id → the LFS oids any of its revisions references. A repository whose bare
    repository is missing raises FileNotFoundError: garbage collection must not guess."""
    out: dict[str, set[str]] = {}
    for repo_id in repo_ids:
        path = store.path(repo_id)
        if not path.is_dir():
            raise FileNotFoundError(f"the git repository of {repo_id} is missing ({path})")
        out[repo_id] = repo_lfs_oids(store.git, path)
    return out


def referenced_lfs_oids(store: GitStore, repo_ids: Iterable[str]) -> set[str]:
    """Every LFS oid referenced by any revision of these repositories."""
    return set().union(*referenced_by_repo(store, repo_ids).values())
