"""The protected default branch: writers may not rewrite or delete it, admins may; only branches and
tags may be pushed. The pre-receive hook must run whichever URL the push comes through."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.conftest import Account, LiveServer
from tests.repos.git_helpers import (
    api,
    api_commit,
    create_repo,
    git,
    make_org,
    refs,
    remote_url,
    repo_info,
    rev,
    write_commit,
)

pytestmark = pytest.mark.live


@dataclass
class Lab:
    owner: Account  # owner of the org
    admin: Account  # org admin
    writer: Account  # org member with role write


@pytest.fixture
def lab(live_server: LiveServer, alice: Account, make_user: Callable[..., Account]) -> Lab:
    """Org `lab` with a code repository lab/proj and a dataset lab/data, two commits each."""
    team = Lab(owner=alice, admin=make_user("dora"), writer=make_user("walt"))
    make_org(live_server, alice, "lab", [(team.admin, "admin"), (team.writer, "write")])
    for name, kind in (("proj", "code"), ("data", "dataset")):
        create_repo(live_server, alice, name, owner="lab", kind=kind)
        api_commit(live_server, alice, f"lab/{name}", {"a.txt": b"one\n"}, "one")
        api_commit(live_server, alice, f"lab/{name}", {"a.txt": b"two\n"}, "two")
    return team


def _rewrite_head(work: Path) -> str:
    """Replace the last commit by another one (a history rewrite)."""
    git("reset", "-q", "--hard", "HEAD~1", cwd=work)
    return write_commit(work, {"a.txt": "rewritten\n"}, "rewritten history")


URL_FORMS = {
    "lab/proj": ["/lab/proj.git", "/lab/proj", "/LAB/Proj.git"],
    "lab/data": ["/datasets/lab/data.git", "/datasets/lab/data", "/lab/data.git"],  # the last redirects
}


def test_writer_may_not_rewrite_or_delete_the_default_branch_through_any_url(
    live_server: LiveServer, lab: Lab, tmp_path: Path
) -> None:
    for full, paths in URL_FORMS.items():
        work = tmp_path / full
        git("clone", "-q", remote_url(live_server, paths[0], lab.writer), work)
        main = rev(work)
        before = repo_info(live_server, None, full)["updated_at"]
        _rewrite_head(work)
        for path in paths:
            url = remote_url(live_server, path, lab.writer)
            out = git("push", "--force", url, "HEAD:main", cwd=work, check=False)
            assert out.returncode != 0, (path, out.stderr)
            assert "protected" in out.stderr and "force-push refused" in out.stderr, (path, out.stderr)
            assert "pre-receive hook declined" in out.stderr
            out = git("push", url, ":main", cwd=work, check=False)
            assert out.returncode != 0, (path, out.stderr)
            assert "protected" in out.stderr and "cannot be deleted" in out.stderr, (path, out.stderr)
        assert refs(live_server, None, full)["branches"] == {"main": main}
        assert repo_info(live_server, None, full)["updated_at"] == before  # a refused push changes nothing


def test_writer_may_fast_forward_main_and_rewrite_other_branches(
    live_server: LiveServer, lab: Lab, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/lab/proj.git", lab.writer), work)
    ahead = write_commit(work, {"b.txt": "b\n"}, "fast-forward")
    git("push", "-q", "origin", "main", cwd=work)
    git("switch", "-q", "-c", "topic", cwd=work)
    write_commit(work, {"c.txt": "c\n"}, "topic 1")
    git("push", "-q", "origin", "topic", cwd=work)
    rewritten = _rewrite_head(work)
    git("push", "-q", "--force", "origin", "topic", cwd=work)
    assert refs(live_server, None, "lab/proj")["branches"] == {"main": ahead, "topic": rewritten}
    git("push", "-q", "origin", ":topic", cwd=work)
    assert refs(live_server, None, "lab/proj")["branches"] == {"main": ahead}


def test_repository_admins_may_force_push_the_default_branch(
    live_server: LiveServer, lab: Lab, tmp_path: Path
) -> None:
    alice = lab.owner
    create_repo(live_server, alice, "mine")
    api_commit(live_server, alice, "alice/mine", {"a.txt": b"one\n"}, "one")
    api_commit(live_server, alice, "alice/mine", {"a.txt": b"two\n"}, "two")
    cases = {
        "org owner": (lab.owner, "/lab/proj.git", "lab/proj"),
        "org admin": (lab.admin, "/datasets/lab/data.git", "lab/data"),
        "personal owner": (alice, "/alice/mine", "alice/mine"),
    }
    for label, (who, path, full) in cases.items():
        work = tmp_path / label
        git("clone", "-q", remote_url(live_server, path, who), work)
        new = _rewrite_head(work)
        git("push", "-q", "--force", "origin", "main", cwd=work)
        assert refs(live_server, None, full)["branches"] == {"main": new}, label


def test_protection_follows_the_default_branch(live_server: LiveServer, lab: Lab, tmp_path: Path) -> None:
    # lab/proj's default branch becomes `develop`: now develop is protected and main is not.
    work = tmp_path / "proj"
    git("clone", "-q", remote_url(live_server, "/lab/proj.git", lab.writer), work)
    git("push", "-q", "origin", "main:develop", cwd=work)
    with api(live_server, lab.owner) as c:
        r = c.patch("/repos/lab/proj", json={"default_branch": "develop"})
        assert r.status_code == 200, r.text
    rewritten = _rewrite_head(work)
    out = git("push", "--force", "origin", "HEAD:develop", cwd=work, check=False)
    assert out.returncode != 0 and "protected" in out.stderr
    git("push", "-q", "--force", "origin", "HEAD:main", cwd=work)
    branches = refs(live_server, None, "lab/proj")["branches"]
    assert branches["main"] == rewritten and branches["develop"] != rewritten


def test_only_branches_and_tags_may_be_pushed(live_server: LiveServer, lab: Lab, tmp_path: Path) -> None:
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/lab/proj.git", lab.owner), work)
    head = write_commit(work, {"pr.txt": "pr\n"}, "a pull request")
    for ref in ("refs/pull/1/head", "refs/notes/commits", "refs/meta/config"):
        out = git("push", "origin", f"HEAD:{ref}", cwd=work, check=False)
        assert out.returncode != 0 and "only branches" in out.stderr, out.stderr
    # One bad ref refuses the whole push: the branch pushed with it does not land either.
    out = git("push", "origin", "HEAD:refs/heads/ok", "HEAD:refs/pull/2/head", cwd=work, check=False)
    assert out.returncode != 0
    listed = git("ls-remote", "origin", cwd=work).stdout
    assert "refs/pull" not in listed and "refs/notes" not in listed and "refs/heads/ok" not in listed
    # Names the API refuses (git would read them as options or as HEAD) are refused by git too.
    for ref in ("refs/heads/-x", "refs/heads/HEAD", "refs/heads/@", "refs/tags/-t"):
        out = git("push", "origin", f"HEAD:{ref}", cwd=work, check=False)
        assert out.returncode != 0 and "choose another" in out.stderr, out.stderr
    git("push", "-q", "origin", "HEAD:refs/heads/ok", "HEAD:refs/tags/t1", cwd=work)
    seen = refs(live_server, None, "lab/proj")
    assert seen["branches"]["ok"] == head and seen["tags"] == {"t1": head}


def test_a_removed_or_broken_hook_is_reinstalled_before_a_push(
    app: FastAPI, live_server: LiveServer, lab: Lab, tmp_path: Path
) -> None:
    """Git silently skips a missing or non-executable hook: the server must not let that bypass it."""
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/lab/proj.git", lab.writer), work)
    main = rev(work)
    _rewrite_head(work)
    hooks: Path = app.state.git_hooks
    hook = hooks / "pre-receive"
    breakages = {
        "removed": lambda: shutil.rmtree(hooks),
        "not executable": lambda: hook.chmod(0o644),
        "emptied": lambda: hook.write_text("#!/bin/sh\nexit 0\n"),
    }
    for label, damage in breakages.items():
        damage()
        out = git("push", "--force", "origin", "main", cwd=work, check=False)
        assert out.returncode != 0 and "protected" in out.stderr, (label, out.stderr)
        assert refs(live_server, None, "lab/proj")["branches"] == {"main": main}
        assert os.access(hook, os.X_OK)


def test_tags_must_name_commits(app: FastAPI, live_server: LiveServer, lab: Lab, tmp_path: Path) -> None:
    """Git lets a tag name a tree or a blob; the platform's refs are revisions, so the hook refuses them,
    and one that got onto disk some other way is left out of listings instead of breaking them."""
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/lab/proj.git", lab.owner), work)
    tree, blob = rev(work, "HEAD^{tree}"), rev(work, "HEAD:a.txt")
    git("tag", "-a", "tree-tag", "-m", "a tag of a tree", tree, cwd=work)
    git("tag", "blob-tag", blob, cwd=work)
    for tag in ("tree-tag", "blob-tag"):
        out = git("push", "origin", f"refs/tags/{tag}", cwd=work, check=False)
        assert out.returncode != 0 and "must point to a commit" in out.stderr, out.stderr
    git("push", "-q", "origin", "HEAD:refs/tags/fine", cwd=work)
    assert set(refs(live_server, None, "lab/proj")["tags"]) == {"fine"}

    with api(live_server) as c:
        repo_id = c.get("/repos/lab/proj").json()["id"]
        bare = app.state.store.path(repo_id)
        git("update-ref", "refs/tags/odd", tree, cwd=bare)  # as an operator's import might leave it
        r = c.get("/repos/lab/proj/refs")
        assert r.status_code == 200 and {t["name"] for t in r.json()["tags"]} == {"fine"}
        r = c.get("/repos/lab/proj/commits", params={"rev": "odd"})
        assert r.status_code == 404 and r.json()["error"] == "revision_not_found"
