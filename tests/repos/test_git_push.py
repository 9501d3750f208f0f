"""Push with the stock git client: what lands (commits, branches, tags) and who may push at all."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from opensci.accounts import service as accounts
from opensci.deps import SESSION_COOKIE
from tests.conftest import Account, LiveServer
from tests.repos.git_helpers import (
    api,
    api_commit,
    commit_ids,
    create_repo,
    git,
    make_org,
    pkt,
    refs,
    remote_url,
    repo_info,
    rev,
    write_commit,
)

pytestmark = pytest.mark.live


@pytest.fixture
def proj(live_server: LiveServer, alice: Account) -> str:
    """alice/proj, public, one commit made over the API."""
    create_repo(live_server, alice, "proj")
    return api_commit(live_server, alice, "alice/proj", {"README.md": b"# proj\n"}, "initial")


def test_owner_pushes_commits_branches_and_tags(
    live_server: LiveServer, alice: Account, proj: str, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/alice/proj.git", alice), work)
    before = repo_info(live_server, None, "alice/proj")["updated_at"]
    time.sleep(0.01)

    one = write_commit(work, {"src/model.py": "def fit():\n    pass\n"}, "add model")
    two = write_commit(work, {"src/model.py": "def fit():\n    return 42\n"}, "fit returns 42")
    git("tag", "v1", one, cwd=work)
    git("tag", "-a", "v2", "-m", "release 2", two, cwd=work)
    git("switch", "-q", "-c", "feature/plots", cwd=work)
    three = write_commit(work, {"plots.py": "import math\n"}, "plots")
    push = git("push", "origin", "main", "feature/plots", "--tags", cwd=work)
    assert "[new tag]" in push.stderr and "[new branch]" in push.stderr

    assert commit_ids(live_server, None, "alice/proj")[:3] == [two, one, proj]
    assert commit_ids(live_server, None, "alice/proj", rev="feature/plots")[0] == three
    seen = refs(live_server, None, "alice/proj")
    assert seen["branches"] == {"main": two, "feature/plots": three}
    assert seen["tags"] == {"v1": one, "v2": two}  # the annotated tag is shown peeled to its commit
    with api(live_server) as c:
        assert c.get("/repos/alice/proj/raw/v2/src/model.py").text == "def fit():\n    return 42\n"
    after = repo_info(live_server, None, "alice/proj")["updated_at"]
    assert after > before

    # The annotated tag arrived as a tag object, not flattened to a lightweight one.
    clone = tmp_path / "c"
    git("clone", "-q", remote_url(live_server, "/alice/proj.git"), clone)
    assert git("cat-file", "-t", "v2", cwd=clone).stdout.strip() == "tag"
    assert git("cat-file", "-t", "v1", cwd=clone).stdout.strip() == "commit"

    # Deleting a branch and a tag by push.
    git("push", "-q", "origin", ":feature/plots", ":refs/tags/v1", cwd=work)
    seen = refs(live_server, None, "alice/proj")
    assert seen["branches"] == {"main": two} and seen["tags"] == {"v2": two}


def test_credentials_from_a_helper_and_from_an_extra_header(
    live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    create_repo(live_server, alice, "secret", private=True)
    api_commit(live_server, alice, "alice/secret", {"a.txt": b"a\n"})
    url = remote_url(live_server, "/alice/secret.git")  # no credentials in the URL

    helper = f"!f() {{ echo username={alice.name}; echo password={alice.token}; }}; f"
    work = tmp_path / "helper"
    git("-c", f"credential.helper={helper}", "clone", "-q", url, work)
    head = write_commit(work, {"b.txt": "b\n"}, "via helper")
    git("-c", f"credential.helper={helper}", "push", "-q", "origin", "main", cwd=work)
    assert commit_ids(live_server, alice, "alice/secret")[0] == head

    header = f"http.extraHeader=Authorization: Bearer {alice.token}"
    work2 = tmp_path / "header"
    git("-c", header, "clone", "-q", url, work2)
    head2 = write_commit(work2, {"c.txt": "c\n"}, "via header")
    git("-c", header, "push", "-q", "origin", "main", cwd=work2)
    assert commit_ids(live_server, alice, "alice/secret")[0] == head2

    # A wrong secret from the helper is refused like no secret at all.
    bad = f"!f() {{ echo username={alice.name}; echo password=osci_wrong; }}; f"
    out = git("-c", f"credential.helper={bad}", "clone", url, tmp_path / "bad", check=False)
    assert out.returncode != 0 and "Authentication failed" in out.stderr


def test_push_refused_without_write_access_and_nothing_changes(
    live_server: LiveServer, alice: Account, bob: Account, proj: str, tmp_path: Path
) -> None:
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/alice/proj.git"), work)
    write_commit(work, {"evil.txt": "x\n"}, "should not land")
    before = repo_info(live_server, None, "alice/proj")["updated_at"]
    cases = {
        "read-scope token": (remote_url(live_server, "/alice/proj.git", alice, alice.read_token), "403"),
        "stranger": (remote_url(live_server, "/alice/proj.git", bob), "403"),
        "anonymous": (remote_url(live_server, "/alice/proj.git"), "could not read Username"),
        "wrong token": (
            remote_url(live_server, "/alice/proj.git", alice, "osci_nope"),
            "Authentication failed",
        ),
    }
    for label, (url, expected) in cases.items():
        out = git("push", url, "HEAD:main", "HEAD:refs/heads/side", "--force", cwd=work, check=False)
        assert out.returncode != 0, label
        assert expected in out.stderr, (label, out.stderr)

    # Over raw HTTP: the anonymous push is a 401 challenge, the others are 401 / 403 with a reason.
    with httpx.Client(base_url=live_server.url) as c:
        anon = c.get("/alice/proj.git/info/refs", params={"service": "git-receive-pack"})
        assert anon.status_code == 401 and anon.headers["www-authenticate"].startswith("Basic")
        read = c.get(
            "/alice/proj.git/info/refs",
            params={"service": "git-receive-pack"},
            auth=(alice.name, alice.read_token),
        )
        assert read.status_code == 403
        post = c.post("/alice/proj.git/git-receive-pack", content=b"0000", auth=(bob.name, bob.token))
        assert post.status_code == 403

    assert refs(live_server, None, "alice/proj")["branches"] == {"main": proj}
    assert repo_info(live_server, None, "alice/proj")["updated_at"] == before


def test_private_repository_looks_exactly_like_a_missing_one(
    live_server: LiveServer, alice: Account, bob: Account, tmp_path: Path
) -> None:
    create_repo(live_server, alice, "hidden", private=True)
    head = api_commit(live_server, alice, "alice/hidden", {"secret.txt": b"42\n"})

    def attempt(name: str, who: Account | None) -> tuple[int, str]:
        out = git("clone", remote_url(live_server, f"/alice/{name}.git", who), tmp_path / "x", check=False)
        assert not (tmp_path / "x").exists()
        return out.returncode, out.stderr.replace(name, "NAME")

    for who in (None, bob):
        hidden, missing = attempt("hidden", who), attempt("absent", who)
        assert hidden[0] != 0 and hidden == missing, (who, hidden, missing)
    assert "not found" in attempt("hidden", bob)[1]

    with httpx.Client(base_url=live_server.url) as c:
        for service in ("git-upload-pack", "git-receive-pack"):
            for auth in (None, (bob.name, bob.token)):
                a = c.get("/alice/hidden.git/info/refs", params={"service": service}, auth=auth)
                b = c.get("/alice/absent.git/info/refs", params={"service": service}, auth=auth)
                assert a.status_code == b.status_code == (401 if auth is None else 404)
                assert a.content == b.content
                assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate")
            a = c.post(f"/alice/hidden.git/{service}", content=b"0000")
            b = c.post(f"/alice/absent.git/{service}", content=b"0000")
            assert a.status_code == b.status_code == 401 and a.content == b.content

    # The stranger's push is "not found" too; the owner clones and pushes with a token.
    work = tmp_path / "owner"
    git("clone", "-q", remote_url(live_server, "/alice/hidden.git", alice), work)
    assert (work / "secret.txt").read_text() == "42\n" and rev(work) == head
    write_commit(work, {"more.txt": "more\n"}, "more")
    out = git("push", remote_url(live_server, "/alice/hidden.git", bob), "HEAD:main", cwd=work, check=False)
    assert out.returncode != 0 and "not found" in out.stderr
    assert commit_ids(live_server, alice, "alice/hidden") == [head]
    git("push", "-q", "origin", "main", cwd=work)
    assert commit_ids(live_server, alice, "alice/hidden")[0] == rev(work)


def test_org_members_push_by_role(
    live_server: LiveServer, alice: Account, make_user: Callable[..., Account], tmp_path: Path
) -> None:
    writer, reader = make_user("wendy"), make_user("rita")
    make_org(live_server, alice, "lab", [(writer, "write"), (reader, "read")])
    create_repo(live_server, alice, "survey", owner="lab", private=True)
    base = api_commit(live_server, alice, "lab/survey", {"plan.md": b"plan\n"})

    rita = tmp_path / "rita"
    git("clone", "-q", remote_url(live_server, "/lab/survey.git", reader), rita)  # read role may clone
    write_commit(rita, {"r.txt": "r\n"}, "reader's commit")
    out = git("push", "origin", "main", cwd=rita, check=False)
    assert out.returncode != 0 and "403" in out.stderr
    assert commit_ids(live_server, alice, "lab/survey") == [base]

    wendy = tmp_path / "wendy"
    git("clone", "-q", remote_url(live_server, "/lab/survey.git", writer), wendy)
    head = write_commit(wendy, {"w.txt": "w\n"}, "writer's commit")
    git("push", "-q", "origin", "main", cwd=wendy)
    assert commit_ids(live_server, alice, "lab/survey") == [head, base]


def test_only_git_credentials_count_not_a_browser_session(
    app: FastAPI, live_server: LiveServer, alice: Account, proj: str
) -> None:
    """A forged cross-site request carries the browser's session cookie: git must not accept it."""
    create_repo(live_server, alice, "private", private=True)
    api_commit(live_server, alice, "alice/private", {"a.txt": b"a\n"})
    with api(live_server, alice) as c:
        assert c.post("/repos/alice/proj/refs", json={"name": "keep"}).status_code == 201
    with app.state.db.session() as session:
        _, secret = accounts.create_web_session(session, alice.user, 1)
        session.commit()
    delete_keep = pkt(f"{proj} {'0' * 40} refs/heads/keep\0report-status delete-refs\n") + b"0000"
    with httpx.Client(base_url=live_server.url, cookies={SESSION_COOKIE: secret}) as c:
        for content_type in ("application/x-git-receive-pack-request", "text/plain"):
            r = c.post(
                "/alice/proj.git/git-receive-pack",
                content=delete_keep,
                headers={"Content-Type": content_type},
            )
            assert r.status_code == 401, r.text
        r = c.get("/alice/private.git/info/refs", params={"service": "git-upload-pack"})
        assert r.status_code == 401
        # The same request with git's credentials works, and only with git's content type.
        auth = (alice.name, alice.token)
        r = c.post(
            "/alice/proj.git/git-receive-pack",
            content=delete_keep,
            headers={"Content-Type": "text/plain"},
            auth=auth,
        )
        assert r.status_code == 415
        assert refs(live_server, None, "alice/proj")["branches"] == {"main": proj, "keep": proj}
        r = c.post(
            "/alice/proj.git/git-receive-pack",
            content=delete_keep,
            headers={"Content-Type": "application/x-git-receive-pack-request"},
            auth=auth,
        )
        assert r.status_code == 200 and b"ok refs/heads/keep" in r.content, r.content
    assert refs(live_server, None, "alice/proj")["branches"] == {"main": proj}


def test_when_git_push_returns_the_api_shows_the_push(
    live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    """The reply to a push ends only after the server's bookkeeping: no window with stale metadata."""
    create_repo(live_server, alice, "quick")
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/alice/quick.git", alice), work)
    write_commit(work, {"0.txt": "0\n"}, "first")
    git("push", "-q", "origin", "HEAD:refs/heads/trunk", cwd=work)
    assert repo_info(live_server, None, "alice/quick")["default_branch"] == "trunk"
    seen = repo_info(live_server, None, "alice/quick")["updated_at"]
    for i in range(1, 8):
        write_commit(work, {f"{i}.txt": f"{i}\n"}, f"commit {i}")
        git("push", "-q", "origin", "HEAD:trunk", cwd=work)
        now = repo_info(live_server, None, "alice/quick")["updated_at"]
        assert now > seen, i
        seen = now
