"""Repositories, history, trees and refs through the SDK against a live server."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from opensci.client import (
    Client,
    ConflictError,
    EntryNotFoundError,
    NotFoundError,
    RepoNotFoundError,
    RevisionNotFoundError,
    ValidationError,
)
from tests.client.conftest import write_tree


def test_create_repo_and_read_it_back(sdk: Client) -> None:
    made = sdk.create_repo(
        "galaxies",
        kind="dataset",
        private=True,
        description="A catalog",
        license="CC-BY-4.0",
        tags=["astronomy", "catalog"],
    )
    info = sdk.repo_info("alice/galaxies")
    assert info == made
    assert (info.full_name, info.kind, info.private, info.default_branch) == (
        "alice/galaxies",
        "dataset",
        True,
        "main",
    )
    assert (info.description, info.license, info.tags) == ("A catalog", "CC-BY-4.0", ["astronomy", "catalog"])
    assert info.url.endswith("/datasets/alice/galaxies") and info.clone_url.endswith(".git")
    assert sdk.repo_info("datasets/alice/galaxies") == info  # web-style ids work too
    assert sdk.repo_exists("alice/galaxies") and not sdk.repo_exists("alice/nothing")


def test_create_repo_accepts_owner_slash_name_and_exist_ok(sdk: Client) -> None:
    first = sdk.create_repo("alice/notes")
    with pytest.raises(ConflictError) as err:
        sdk.create_repo("notes")
    assert err.value.code == "repo_exists" and "--exist-ok" in err.value.hint
    assert sdk.create_repo("notes", exist_ok=True) == first
    assert sdk.create_repo("alice/notes", kind="model", exist_ok=True).kind == "code"  # returned unchanged
    with pytest.raises(ValidationError):
        sdk.create_repo("x", kind="spreadsheet")


def test_update_rename_and_delete(sdk: Client) -> None:
    sdk.create_repo("draft")
    updated = sdk.update_repo("alice/draft", description="better", private=True, tags=["x"])
    assert (updated.description, updated.private, updated.tags) == ("better", True, ["x"])
    renamed = sdk.update_repo("alice/draft", name="final")
    assert renamed.full_name == "alice/final"
    with pytest.raises(RepoNotFoundError):
        sdk.repo_info("alice/draft")
    sdk.delete_repo("alice/final")
    with pytest.raises(RepoNotFoundError):
        sdk.repo_info("alice/final")
    sdk.delete_repo("alice/final", missing_ok=True)
    with pytest.raises(RepoNotFoundError):
        sdk.delete_repo("alice/final")


def test_list_repos_walks_every_page_lazily_and_filters(sdk: Client, bob_sdk: Client) -> None:
    for i in range(5):
        sdk.create_repo(f"code-{i}")
    sdk.create_repo("secret-data", kind="dataset", private=True, description="hidden galaxies")
    bob_sdk.create_repo("bobs")

    pages = sdk.list_repos(per_page=2)
    assert isinstance(pages, types.GeneratorType)
    names = [r.full_name for r in pages]
    assert len(names) == len(set(names)) == 7
    assert {r.name for r in sdk.list_repos(owner="alice", per_page=2)} == {
        *(f"code-{i}" for i in range(5)),
        "secret-data",
    }
    assert [r.name for r in sdk.list_repos(kind="dataset")] == ["secret-data"]
    assert [r.name for r in sdk.list_repos(q="GALAXIES")] == ["secret-data"]
    assert "alice/secret-data" not in {r.full_name for r in bob_sdk.list_repos()}  # private stays hidden
    assert [r.name for r in sdk.list_repos(owner="alice", sort="name", per_page=3)][:2] == [
        "code-0",
        "code-1",
    ]


def _commit_n(sdk: Client, repo: str, tmp_path: Path, n: int) -> list[str]:
    ids = []
    for i in range(n):
        f = write_tree(tmp_path / f"c{i}", {f"file{i % 2}.txt": f"version {i}\n".encode()})
        ids.append(sdk.upload(repo, f / f"file{i % 2}.txt", message=f"commit {i}"))
    return ids


def test_list_commits_pages_filters_and_resolves(sdk: Client, tmp_path: Path) -> None:
    sdk.create_repo("history")
    assert list(sdk.list_commits("alice/history")) == []  # empty repository
    with pytest.raises(RevisionNotFoundError):
        sdk.resolve("alice/history")
    ids = _commit_n(sdk, "alice/history", tmp_path, 5)

    commits = list(sdk.list_commits("alice/history", per_page=2))
    assert [c.id for c in commits] == ids[::-1]
    assert commits[0].title == "commit 4" and commits[0].parents == [ids[3]]
    assert commits[0].author_email == "alice@example.org" and commits[0].date is not None
    assert [c.title for c in sdk.list_commits("alice/history", path="file1.txt")] == [
        "commit 3",
        "commit 1",
    ]
    assert [c.id for c in sdk.list_commits("alice/history", rev=ids[1])] == ids[1::-1]
    assert sdk.resolve("alice/history") == ids[-1]
    assert sdk.resolve("alice/history", ids[2][:10]) == ids[2]
    assert sdk.get_commit("alice/history", ids[2]).title == "commit 2"
    with pytest.raises(RevisionNotFoundError) as err:
        sdk.resolve("alice/history", "no-such-branch")
    assert "opensci log" in err.value.hint


def test_list_tree_at_root_in_folders_recursively_and_at_revisions(sdk: Client, tmp_path: Path) -> None:
    sdk.create_repo("tree")
    src = write_tree(
        tmp_path / "src", {"README.md": b"# hi\n", "data/a.csv": b"x\n1\n", "data/deep/b.csv": b"y\n"}
    )
    first = sdk.upload("alice/tree", src)
    (src / "data" / "c.csv").write_bytes(b"z\n")
    second = sdk.upload("alice/tree", src)

    root = sdk.list_tree("alice/tree")
    assert root.commit == second
    assert [(e.path, e.type) for e in root] == [("data", "dir"), ("README.md", "file")]
    assert next(e for e in root if e.name == "README.md").size == 5
    data = sdk.list_tree("alice/tree", "data/")
    assert [e.path for e in data] == ["data/deep", "data/a.csv", "data/c.csv"]
    assert len(sdk.list_tree("alice/tree", "data", rev=first)) == 2
    everything = sdk.list_tree("alice/tree", recursive=True)
    assert {e.path for e in everything if e.type == "file"} == {
        "README.md",
        "data/a.csv",
        "data/c.csv",
        "data/deep/b.csv",
    }
    sdk.create_branch("alice/tree", "feature/x", revision=first)
    assert sdk.list_tree("alice/tree", "data", rev="feature/x").commit == first
    with pytest.raises(EntryNotFoundError) as err:
        sdk.list_tree("alice/tree", "nothing/here")
    assert "opensci ls" in err.value.hint
    with pytest.raises(RevisionNotFoundError):
        sdk.list_tree("alice/tree", rev="nope")


def test_branches_and_tags(sdk: Client, tmp_path: Path) -> None:
    sdk.create_repo("refs")
    ids = _commit_n(sdk, "alice/refs", tmp_path, 2)
    branch = sdk.create_branch("alice/refs", "dev", revision=ids[0])
    assert (branch.name, branch.ref, branch.target) == ("dev", "refs/heads/dev", ids[0])
    tag = sdk.create_tag("alice/refs", "v1.0", message="First release")
    assert (tag.ref, tag.target) == ("refs/tags/v1.0", ids[1])
    sdk.create_tag("alice/refs", "light", revision="dev")
    refs = sdk.list_refs("alice/refs")
    assert refs.default_branch == "main"
    assert {b.name: b.target for b in refs.branches} == {"dev": ids[0], "main": ids[1]}
    assert {t.name: t.target for t in refs.tags} == {"light": ids[0], "v1.0": ids[1]}
    assert sdk.resolve("alice/refs", "v1.0") == ids[1]
    with pytest.raises(ConflictError) as err:
        sdk.create_branch("alice/refs", "dev")
    assert err.value.code == "ref_exists"
    with pytest.raises(ConflictError) as err:
        sdk.delete_branch("alice/refs", "main")
    assert err.value.code == "protected_branch"
    sdk.delete_branch("alice/refs", "dev")
    sdk.delete_tag("alice/refs", "v1.0")
    refs = sdk.list_refs("alice/refs")
    assert [b.name for b in refs.branches] == ["main"] and [t.name for t in refs.tags] == ["light"]
    with pytest.raises(NotFoundError) as err:
        sdk.delete_tag("alice/refs", "v1.0")
    assert err.value.code == "ref_not_found"
