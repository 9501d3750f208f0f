"""Helpers for the page tests: browser-like clients (they ask for HTML and keep cookies), logging in through
the real form, and repositories with content made through the services."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.accounts.models import User
from opensci.accounts.permissions import Actor
from opensci.repos import service as repos
from opensci.repos.gitstore import Upload
from tests.conftest import Account

HTML = {"Accept": "text/html,application/xhtml+xml"}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    match = _CSRF.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def without_request_id(html: str) -> str:
    return re.sub(r"Request id: <code>[^<]*</code>", "", html)


@pytest.fixture
def browser(app: FastAPI) -> Iterator[Callable[[], TestClient]]:
    """A factory of clients that behave like separate browsers: own cookie jars, asking for HTML."""
    clients: list[TestClient] = []

    def make() -> TestClient:
        c = TestClient(app, raise_server_exceptions=False, headers=HTML, follow_redirects=False)
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def web(browser: Callable[[], TestClient]) -> TestClient:
    """An anonymous browser."""
    return browser()


def log_in(client: TestClient, account: Account) -> TestClient:
    page = client.get("/login")
    assert page.status_code == 200
    r = client.post(
        "/login",
        data={"name": account.name, "password": account.password, "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 303, r.text
    return client


@pytest.fixture
def logged_in(browser: Callable[[], TestClient]) -> Callable[[Account], TestClient]:
    """A new browser logged in as the given account."""
    return lambda account: log_in(browser(), account)


@dataclass
class RepoRef:
    owner: str
    name: str
    url: str  # the page path: /owner/name or /datasets/owner/name
    id: str


@pytest.fixture
def make_repo(app: FastAPI) -> Callable[..., RepoRef]:
    """Create a repository as `account` (through repos.service), optionally with a first commit of `files`."""

    def make(
        account: Account,
        name: str,
        *,
        kind: str = "code",
        private: bool = False,
        owner: str | None = None,
        files: dict[str, bytes | str] | None = None,
        description: str = "",
        license: str = "",
        tags: list[str] | None = None,
        message: str = "Add files",
        branch: str | None = None,
    ) -> RepoRef:
        with app.state.db.session() as s:
            user = s.get(User, account.user.id)
            assert user is not None
            actor = Actor.for_user(s, user)
            repo = repos.create_repo(
                actor,
                s,
                app.state.store,
                name=name,
                kind=kind,
                owner=owner,
                private=private,
                description=description,
                license=license,
                tags=tags,
            )
            if files:
                changes = {p: Upload(data=d.encode() if isinstance(d, str) else d) for p, d in files.items()}
                repos.commit_files(actor, s, app.state.store, repo, changes, message=message, branch=branch)
            return RepoRef(repo.owner.name, repo.name, repo.url_path, repo.id)

    return make


@pytest.fixture
def commit(app: FastAPI) -> Callable[..., str]:
    """Commit files (None deletes) to an existing repository as `account`; returns the commit id."""

    def do(
        account: Account,
        ref: RepoRef,
        files: dict[str, bytes | str | None],
        *,
        message: str = "Change files",
        branch: str | None = None,
    ) -> str:
        with app.state.db.session() as s:
            user = s.get(User, account.user.id)
            assert user is not None
            actor = Actor.for_user(s, user)
            repo = repos.get_repo(actor, s, ref.owner, ref.name)
            changes = {
                p: None if d is None else Upload(data=d.encode() if isinstance(d, str) else d)
                for p, d in files.items()
            }
            sha, _ = repos.commit_files(
                actor, s, app.state.store, repo, changes, message=message, branch=branch
            )
            return sha

    return do


@pytest.fixture
def make_org(app: FastAPI) -> Callable[..., str]:
    """Create an organization owned by `owner`, with extra members {account: role}."""
    from opensci.accounts import service as accounts

    def make(owner: Account, name: str, members: dict[str, str] | None = None, **kw: str) -> str:
        with app.state.db.session() as s:
            user = s.get(User, owner.user.id)
            assert user is not None
            actor = Actor.for_user(s, user)
            org = accounts.create_org(actor, s, name, **kw)
            for member, role in (members or {}).items():
                accounts.set_member(actor, s, org, accounts.get_user(s, member), role)
            s.commit()
            return org.name

    return make
