"""Private repositories never show through pages: not found for visitors and non-members, exactly like a
repository that does not exist; visible to their owner and to the members of their organization."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.accounts.models import User
from opensci.accounts.permissions import Actor
from opensci.repos import service as repos
from tests.conftest import Account
from tests.web.conftest import RepoRef, csrf_of, without_request_id

PAGES = [
    "",
    "/tree/main",
    "/tree/main/src",
    "/blob/main/src/secret.py",
    "/blob/main/README.md?plain=1",
    "/commits",
    "/commits/main",
    "/commits/main?path=src",
    "/branches",
    "/settings",
]


@pytest.fixture
def secret(alice: Account, make_repo: Callable[..., RepoRef], make_org: Callable[..., str]) -> RepoRef:
    make_org(alice, "lab", members={})
    return make_repo(
        alice,
        "zqsecret",
        owner="lab",
        private=True,
        description="TOP-SECRET-DESCRIPTION",
        files={"README.md": "# TOP-SECRET-README\n", "src/secret.py": "KEY = 'TOP-SECRET-CODE'\n"},
    )


def _commit_id(app: FastAPI, ref: RepoRef) -> str:
    with app.state.db.session() as s:
        repo = repos.get_repo(Actor.operator(), s, ref.owner, ref.name)
        return str(app.state.store.open(repo.id).head.target)


@pytest.mark.parametrize("who", ["anonymous", "stranger"])
def test_private_repository_pages_are_not_found(
    who: str,
    secret: RepoRef,
    app: FastAPI,
    web: TestClient,
    make_user: Callable[..., Account],
    logged_in: Callable[[Account], TestClient],
) -> None:
    client = web if who == "anonymous" else logged_in(make_user("mallory"))
    sha = _commit_id(app, secret)
    for page in [*PAGES, f"/commit/{sha}"]:
        r = client.get(f"/lab/zqsecret{page}")
        assert r.status_code == 404, page
        assert "TOP-SECRET" not in r.text, page
        assert r.headers["content-type"].startswith("text/html"), page
    for path in ("/", "/explore", "/explore?q=zqsecret", "/lab", "/alice"):
        r = client.get(path)
        assert r.status_code == 200
        assert "/lab/zqsecret" not in r.text and "TOP-SECRET" not in r.text, path
        assert ">zqsecret<" not in r.text and "<strong>zqsecret</strong>" not in r.text, path
    assert "0 repositories" in client.get("/explore?q=zqsecret").text


def test_private_repository_404_page_is_the_missing_repository_page(
    secret: RepoRef,
    app: FastAPI,
    web: TestClient,
    alice: Account,
    make_user: Callable[..., Account],
    logged_in: Callable[[Account], TestClient],
) -> None:
    stranger = logged_in(make_user("mallory"))
    pages = ["", "/tree/main/src", "/blob/main/src/secret.py", "/commits", "/branches", "/settings"]
    before = {
        (who, p): without_request_id(c.get(f"/lab/zqsecret{p}").text)
        for who, c in (("anonymous", web), ("stranger", stranger))
        for p in pages
    }
    with app.state.db.session() as s:
        actor = Actor.for_user(s, s.get(User, alice.user.id))  # type: ignore[arg-type]
        repo = repos.get_repo(actor, s, "lab", "zqsecret")
        repos.delete_repo(actor, s, app.state.store, repo)
    for (who, p), html in before.items():
        client = web if who == "anonymous" else stranger
        missing = client.get(f"/lab/zqsecret{p}")
        assert missing.status_code == 404
        assert without_request_id(missing.text) == html, (who, p)


@pytest.mark.parametrize("role", ["read", "write", "admin"])
def test_private_repository_pages_render_for_members(
    role: str,
    secret: RepoRef,
    app: FastAPI,
    alice: Account,
    make_user: Callable[..., Account],
    logged_in: Callable[[Account], TestClient],
) -> None:
    from opensci.accounts import service as accounts

    member = make_user("mia")
    with app.state.db.session() as s:
        actor = Actor.for_user(s, s.get(User, alice.user.id))  # type: ignore[arg-type]
        accounts.set_member(actor, s, accounts.get_org(s, "lab"), accounts.get_user(s, "mia"), role)
        s.commit()
    client = logged_in(member)
    sha = _commit_id(app, secret)
    for page in [*PAGES, f"/commit/{sha}"]:
        r = client.get(f"/lab/zqsecret{page}")
        if page == "/settings" and role != "admin":
            assert r.status_code == 403, page
            assert "TOP-SECRET" not in r.text
            continue
        assert r.status_code == 200, page
    assert "TOP-SECRET-README" in client.get("/lab/zqsecret").text
    assert "TOP-SECRET-CODE" in client.get("/lab/zqsecret/blob/main/src/secret.py").text
    assert ">private<" in client.get("/lab/zqsecret").text
    for path in ("/", "/explore?q=zqsecret", "/lab"):
        assert "/lab/zqsecret" in client.get(path).text, path


def test_private_repositories_of_a_user_show_only_to_that_user_and_site_admins(
    alice: Account,
    bob: Account,
    web: TestClient,
    make_user: Callable[..., Account],
    make_repo: Callable[..., RepoRef],
    logged_in: Callable[[Account], TestClient],
) -> None:
    make_repo(alice, "diary", private=True, files={"x": "PRIVATE-NOTE"})
    make_repo(alice, "paper", files={"x": "public"})
    own = logged_in(alice).get("/alice").text
    assert "diary" in own and "paper" in own
    for client in (web, logged_in(bob)):
        page = client.get("/alice").text
        assert "paper" in page and "diary" not in page
        assert client.get("/alice/diary").status_code == 404
        assert client.get("/alice/diary/blob/main/x").status_code == 404
    admin = logged_in(make_user("root", admin=True))
    assert admin.get("/alice/diary").status_code == 200
    assert "diary" in admin.get("/alice").text


def test_settings_forms_of_a_private_repository_are_not_found_for_strangers(
    secret: RepoRef,
    make_user: Callable[..., Account],
    logged_in: Callable[[Account], TestClient],
    alice: Account,
) -> None:
    stranger = logged_in(make_user("mallory"))
    token = csrf_of(stranger.get("/settings/profile").text)  # a valid token of the stranger's own session
    for action, data in (
        ("", {"description": "pwned", "visibility": "public"}),
        ("/rename", {"new_name": "pwned"}),
        ("/delete", {"confirm": "lab/zqsecret"}),
    ):
        r = stranger.post(f"/lab/zqsecret/settings{action}", data={**data, "csrf_token": token})
        assert r.status_code == 404, action
        assert "TOP-SECRET" not in r.text
    owner = logged_in(alice)
    page = owner.get("/lab/zqsecret")
    assert page.status_code == 200 and "TOP-SECRET-DESCRIPTION" in page.text and ">private<" in page.text
