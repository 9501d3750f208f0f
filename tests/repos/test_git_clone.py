"""Clone and fetch with the stock git client over smart HTTP: both URL forms, both protocol versions,
shallow and partial clones, and empty repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Account, LiveServer
from tests.repos.git_helpers import (
    api_commit,
    commit_ids,
    create_repo,
    git,
    remote_url,
    repo_info,
    rev,
    write_commit,
)

pytestmark = pytest.mark.live

PROTOCOLS = {"v2": ["-c", "protocol.version=2"], "v0": ["-c", "protocol.version=0"]}


@pytest.fixture
def hello(live_server: LiveServer, alice: Account) -> dict[str, str]:
    """A public code repository alice/hello with two commits: notes.txt changes between them."""
    create_repo(live_server, alice, "hello", description="greetings")
    first = api_commit(live_server, alice, "alice/hello", {"notes.txt": b"first draft\n"}, "first")
    second = api_commit(
        live_server, alice, "alice/hello", {"notes.txt": b"second draft\n", "src/a.py": b"x = 1\n"}, "second"
    )
    return {"first": first, "second": second}


def test_anonymous_clone_of_code_and_dataset_in_every_url_form(
    live_server: LiveServer, alice: Account, hello: dict[str, str], tmp_path: Path
) -> None:
    create_repo(live_server, alice, "stars", kind="dataset")
    data = api_commit(live_server, alice, "alice/stars", {"stars.csv": b"id,mag\n1,4.5\n"}, "data")

    for i, path in enumerate(["/alice/hello.git", "/alice/hello", "/ALICE/Hello.git"]):
        dest = tmp_path / f"code{i}"
        git("clone", "-q", remote_url(live_server, path), dest)
        assert (dest / "notes.txt").read_text() == "second draft\n"
        assert rev(dest) == hello["second"]

    for i, path in enumerate(["/datasets/alice/stars.git", "/datasets/alice/stars"]):
        dest = tmp_path / f"data{i}"
        git("clone", "-q", remote_url(live_server, path), dest)
        assert (dest / "stars.csv").read_text() == "id,mag\n1,4.5\n"
        assert rev(dest) == data

    # A repository asked for at the other kind's path is redirected to its own; git follows it.
    moved = git("clone", remote_url(live_server, "/alice/stars.git"), tmp_path / "moved")
    assert rev(tmp_path / "moved") == data
    assert f"redirecting to {live_server.url}/datasets/alice/stars.git/" in moved.stderr
    moved = git("clone", remote_url(live_server, "/datasets/alice/hello"), tmp_path / "moved2")
    assert rev(tmp_path / "moved2") == hello["second"]
    assert f"redirecting to {live_server.url}/alice/hello.git/" in moved.stderr

    missing = git("clone", remote_url(live_server, "/alice/nothing.git"), tmp_path / "w", check=False)
    assert missing.returncode != 0
    assert not (tmp_path / "w").exists()


def test_fetch_and_pull_see_a_new_api_commit(
    live_server: LiveServer, alice: Account, hello: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/alice/hello.git"), work)
    third = api_commit(live_server, alice, "alice/hello", {"notes.txt": b"third draft\n"}, "third")

    git("fetch", "-q", "origin", cwd=work)
    assert rev(work, "origin/main") == third
    assert git("log", "--format=%s", "origin/main", cwd=work).stdout.split() == ["third", "second", "first"]
    git("pull", "-q", "--ff-only", cwd=work)
    assert (work / "notes.txt").read_text() == "third draft\n"


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_shallow_clone(live_server: LiveServer, hello: dict[str, str], tmp_path: Path, protocol: str) -> None:
    dest = tmp_path / "shallow"
    out = git(
        *PROTOCOLS[protocol],
        "clone",
        "--depth",
        "1",
        remote_url(live_server, "/alice/hello.git"),
        dest,
        env={"GIT_TRACE_PACKET": "1"},
    )
    _assert_protocol(out.stderr, protocol)
    assert git("rev-parse", "--is-shallow-repository", cwd=dest).stdout.strip() == "true"
    assert git("rev-list", "--count", "HEAD", cwd=dest).stdout.strip() == "1"
    assert rev(dest) == hello["second"]

    git(*PROTOCOLS[protocol], "fetch", "-q", "--unshallow", cwd=dest)
    assert git("rev-list", "--count", "HEAD", cwd=dest).stdout.strip() == "2"


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_partial_clone_fetches_missing_blobs_on_demand(
    live_server: LiveServer, hello: dict[str, str], tmp_path: Path, protocol: str
) -> None:
    dest = tmp_path / "partial"
    out = git(
        *PROTOCOLS[protocol],
        "clone",
        "--filter=blob:none",
        remote_url(live_server, "/alice/hello.git"),
        dest,
        env={"GIT_TRACE_PACKET": "1"},
    )
    _assert_protocol(out.stderr, protocol)
    assert "filtering not recognized by server" not in out.stderr
    assert git("config", "remote.origin.promisor", cwd=dest).stdout.strip() == "true"
    old_blob = git("rev-parse", f"{hello['first']}:notes.txt", cwd=dest).stdout.strip()
    missing = git("rev-list", "--objects", "--all", "--missing=print", cwd=dest).stdout.split()
    assert f"?{old_blob}" in missing  # the server really filtered: the old blob was not sent

    # Reading the old version fetches that one blob from the server (a fetch by object id).
    shown = git(*PROTOCOLS[protocol], "show", f"{hello['first']}:notes.txt", cwd=dest)
    assert shown.stdout == "first draft\n"


def _assert_protocol(trace: str, protocol: str) -> None:
    if protocol == "v2":
        assert "git< version 2" in trace
    else:
        assert "git< # service=git-upload-pack" in trace
        assert "git< version 2" not in trace


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_clone_empty_repository_then_first_push_creates_main(
    live_server: LiveServer, alice: Account, tmp_path: Path, protocol: str
) -> None:
    create_repo(live_server, alice, "empty")
    work = tmp_path / "w"
    out = git(*PROTOCOLS[protocol], "clone", remote_url(live_server, "/alice/empty.git"), work)
    assert "empty repository" in out.stderr
    if protocol == "v2":  # v2 advertises the server's unborn HEAD, so the local branch is main too
        assert git("symbolic-ref", "--short", "HEAD", cwd=work).stdout.strip() == "main"
    assert commit_ids(live_server, None, "alice/empty") == []

    head = write_commit(work, {"README.md": "# empty no more\n"}, "first commit")
    git("remote", "set-url", "origin", remote_url(live_server, "/alice/empty.git", alice), cwd=work)
    git(*PROTOCOLS[protocol], "push", "-q", "origin", "HEAD:main", cwd=work)

    assert repo_info(live_server, None, "alice/empty")["default_branch"] == "main"
    assert commit_ids(live_server, None, "alice/empty") == [head]
    again = tmp_path / "again"
    git("clone", "-q", remote_url(live_server, "/alice/empty.git"), again)
    assert (again / "README.md").read_text() == "# empty no more\n"


def test_first_push_of_another_branch_makes_it_the_default(
    live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    create_repo(live_server, alice, "fresh", kind="dataset")
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/datasets/alice/fresh.git", alice), work)
    head = write_commit(work, {"a.txt": "a\n"}, "on trunk")
    git("push", "-q", "origin", "HEAD:refs/heads/trunk", cwd=work)

    info = repo_info(live_server, None, "alice/fresh")
    assert info["default_branch"] == "trunk"
    assert commit_ids(live_server, None, "alice/fresh") == [head]
    again = tmp_path / "again"
    git("clone", "-q", remote_url(live_server, "/datasets/alice/fresh"), again)
    assert git("symbolic-ref", "--short", "HEAD", cwd=again).stdout.strip() == "trunk"
    assert rev(again) == head
