"""The privacy and permission matrix: every route, for every kind of actor and every kind of repository.

The world (built once per module, in a database of its own):
- alice owns a private repository of each kind (code, dataset, model) and a public code repository;
  each has a commit (README.md, data/table.csv), a branch `feature/x` and an annotated tag `v1`;
- the org `lab` (owner: alice; carol: read, dave: write, erin: admin) owns a private code and a
  private dataset repository, made the same way;
- bob is a stranger, root a site admin, frank a user that rows add to and remove from `lab`.

The actors: anonymous, bob, carol, dave, erin, alice with a read token, alice, root. What each may do
with a repository is written down in `ROLES` below, independently of the code under test.

The rules checked (DESIGN.md, "Errors and permissions"):
- reading a private repository one cannot read → 404 (never 403), with the same error code as for a
  repository that does not exist;
- writing: anonymous → 401; cannot read → 404; can read but not write (or a read token) → 403;
- git smart HTTP: anonymous gets a 401 Basic challenge on an invisible repository, byte for byte the
  same as on a missing one; an authenticated stranger gets 404; a reader who may not push gets 403;
- a private repository never appears in `GET /api/v1/repos`, whatever the filter, for those who cannot
  read it (and does appear for those who can).

Rows and coverage. Each `Row` names one route (method and path template exactly as in the OpenAPI
document, or as in `app.routes` for routes outside it), how to make the request for one actor and
target, and the status each actor must get. `test_every_api_operation_has_a_row` fails, listing them,
when an operation of the OpenAPI document has no row; `test_every_other_route_has_a_row` does the same
for the routes outside the schema (git, avatars, docs, metrics, pages).

Pages. Page routes are not in the OpenAPI document; `PAGE_ROUTES` has a row for each (`page` asks for
HTML like a browser; `{web}` is the target's page URL, with `/datasets` for a dataset; a page row
checks the status only, since errors are HTML pages). `test_pages_never_name_a_repository_the_viewer_
cannot_read` checks the listing pages' HTML. A new page fails the coverage check until it has a row;
`EXPECTED_UNCOVERED_PAGE_PREFIXES` can exempt one (an entry ending in "/" is a prefix) but is empty.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from opensci.app import create_app
from tests.api_helpers import API, committed, create_repo, new_account, standalone_app
from tests.conftest import Account

# --- the world -----------------------------------------------------------------------------------------


class Level(IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2
    ADMIN = 3


NONE, READ, WRITE, ADMIN = Level.NONE, Level.READ, Level.WRITE, Level.ADMIN

ACTORS = ("anonymous", "bob", "carol", "dave", "erin", "alice_read", "alice", "root")

# What each actor may do with everything an owner holds (private or not). Not derived from the code
# under test: the site admin may do everything, a read token limits its holder to reading.
ROLES: dict[str, dict[str, Level]] = {
    "alice": {"alice": ADMIN, "alice_read": READ, "root": ADMIN},
    "lab": {"carol": READ, "dave": WRITE, "erin": ADMIN, "alice": ADMIN, "alice_read": READ, "root": ADMIN},
}


@dataclass(frozen=True)
class Target:
    key: str
    owner: str
    name: str
    kind: str
    private: bool

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def web_path(self) -> str:
        """Its page: `/datasets/owner/name` for datasets, `/owner/name` otherwise (git adds `.git`)."""
        return f"{'/datasets' if self.kind == 'dataset' else ''}/{self.full_name}"


TARGETS = {
    t.key: t
    for t in (
        Target("alice-code", "alice", "secret-code", "code", True),
        Target("alice-dataset", "alice", "secret-data", "dataset", True),
        Target("alice-model", "alice", "secret-model", "model", True),
        Target("alice-public", "alice", "open-code", "code", False),
        Target("lab-code", "lab", "lab-code", "code", True),
        Target("lab-dataset", "lab", "lab-data", "dataset", True),
    )
}
ALL_REPOS = tuple(TARGETS)
NOT_DATASETS = tuple(k for k, t in TARGETS.items() if t.kind != "dataset")
DATASETS = tuple(k for k, t in TARGETS.items() if t.kind == "dataset")


def level(actor: str, owner: str, private: bool) -> Level:
    if actor == "root":
        return ADMIN
    explicit = ROLES.get(owner, {}).get(actor)
    if explicit is not None:
        return explicit
    if owner == actor:
        return ADMIN
    return NONE if private else READ


@dataclass
class World:
    app: FastAPI
    client: TestClient
    accounts: dict[str, Account]
    counter: Iterator[int] = field(default_factory=itertools.count)
    jobs: dict[str, int] = field(default_factory=dict)  # target key -> a queued job of alice's over it

    def unique(self, stem: str) -> str:
        return f"{stem}-{next(self.counter)}"

    def headers(self, actor: str, *, git: bool = False) -> dict[str, str]:
        if actor == "anonymous":
            return {}
        account = self.accounts["alice" if actor == "alice_read" else actor]
        token = account.read_token if actor == "alice_read" else account.token
        if git:  # what git sends: HTTP Basic with the token as the password
            return {"Authorization": "Basic " + base64.b64encode(f"{account.name}:{token}".encode()).decode()}
        return {"Authorization": f"Bearer {token}"}

    @property
    def alice(self) -> Account:
        return self.accounts["alice"]


def _fill(client: TestClient, alice: Account, target: Target) -> None:
    create_repo(client, alice, target.name, owner=target.owner, kind=target.kind, private=target.private)
    committed(client, alice, target.full_name, {"README.md": "# readme\n", "data/table.csv": "a,b\n1,2\n"})
    for ref in ({"name": "feature/x"}, {"type": "tag", "name": "v1", "message": "version 1"}):
        r = client.post(f"{API}/repos/{target.full_name}/refs", json=ref, headers=alice.headers)
        assert r.status_code == 201, r.text


@pytest.fixture(scope="module")
def world(database_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with standalone_app(database_template, tmp_path_factory.mktemp("matrix")) as app:
        names = ("alice", "bob", "carol", "dave", "erin", "frank")
        accounts = {name: new_account(app, name) for name in names}
        accounts["root"] = new_account(app, "root", admin=True)
        alice = accounts["alice"]
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.post(f"{API}/orgs", json={"name": "lab"}, headers=alice.headers).status_code == 201
            for member, role in (("carol", "read"), ("dave", "write"), ("erin", "admin")):
                r = client.put(f"{API}/orgs/lab/members/{member}", json={"role": role}, headers=alice.headers)
                assert r.status_code == 200, r.text
            for target in TARGETS.values():
                _fill(client, alice, target)
            yield World(app, client, accounts)


# --- rows ----------------------------------------------------------------------------------------------


@dataclass
class Req:
    url: str
    method: str | None = None  # default: the row's method
    json: Any = None
    data: dict[str, Any] | None = None
    files: list[Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


Expect = Callable[[str, Target | None], int]
Build = Callable[[World, str, Target | None], Req]


@dataclass(frozen=True)
class Row:
    method: str
    route: str  # path template, as in the OpenAPI document (or app.routes for routes outside it)
    expect: Expect
    build: Build
    targets: tuple[str, ...] = ()  # target keys; empty: the row runs once, without a target
    git: bool = False  # git's view: Basic credentials, and a 401 must be a Basic challenge
    page: bool = False  # a web page: only the status is checked (errors are HTML pages)
    label: str = ""
    not_found: str = "repo_not_found"  # the error code of a 404 for a target the actor cannot read

    @property
    def id(self) -> str:
        return f"{self.method} {self.route}{' ' + self.label if self.label else ''}"


# Expected statuses.


def anyone(ok: int) -> Expect:
    return lambda actor, target: ok


def logged_in(ok: int) -> Expect:
    return lambda actor, target: 401 if actor == "anonymous" else ok


def write_token(ok: int) -> Expect:
    return lambda actor, target: {"anonymous": 401, "alice_read": 403}.get(actor, ok)


def lab_admin(ok: int) -> Expect:
    return lambda actor, target: (
        401 if actor == "anonymous" else (ok if actor in ("erin", "alice", "root") else 403)
    )


def repo_status(need: Level, ok: int) -> Expect:
    """The REST API on a repository."""

    def expect(actor: str, target: Target | None) -> int:
        assert target is not None
        have = level(actor, target.owner, target.private)
        if need > READ and actor == "anonymous":
            return 401
        if have == NONE:
            return 404
        return ok if have >= need else 403

    return expect


def git_status(need: Level, ok: int = 200) -> Expect:
    """Git smart HTTP on a repository."""

    def expect(actor: str, target: Target | None) -> int:
        assert target is not None
        have = level(actor, target.owner, target.private)
        if have >= need:
            return ok
        if actor == "anonymous":
            return 401
        return 404 if have == NONE else 403

    return expect


# Requests.


def get(url: str) -> Build:
    """A fixed URL, with {owner}, {name}, {full} (owner/name) and {web} (the page) taken from the target."""

    def build(w: World, actor: str, t: Target | None) -> Req:
        if t is None:
            return Req(url)
        return Req(url.format(owner=t.owner, name=t.name, full=t.full_name, web=t.web_path))

    return build


def page(url: str) -> Build:
    """A web page, asked for like a browser does."""

    def build(w: World, actor: str, t: Target | None) -> Req:
        req = get(url)(w, actor, t)
        req.headers["Accept"] = "text/html,application/xhtml+xml"
        return req

    return build


def body(url: str, **fields: Any) -> Build:
    """JSON body; string values may use {unique} for a fresh name."""

    def build(w: World, actor: str, t: Target | None) -> Req:
        req = get(url)(w, actor, t)
        unique = w.unique(actor.replace("_", "-"))
        req.json = {k: v.format(unique=unique) if isinstance(v, str) else v for k, v in fields.items()}
        return req

    return build


def commit_files(w: World, actor: str, t: Target | None) -> Req:
    assert t is not None
    path = f"matrix/{w.unique(actor)}.txt"
    return Req(
        f"{API}/repos/{t.full_name}/commits",
        data={"message": f"commit by {actor}"},
        files=[("files", (path, b"x"))],
    )


def doomed_repo(w: World, actor: str, t: Target | None) -> Req:
    """A fresh repository like the target (same owner, kind, visibility), for the delete to remove."""
    assert t is not None
    name = w.unique("doomed")
    create_repo(w.client, w.alice, name, owner=t.owner, kind=t.kind, private=t.private)
    return Req(f"{API}/repos/{t.owner}/{name}")


def doomed_branch(w: World, actor: str, t: Target | None) -> Req:
    assert t is not None
    name = w.unique("gone")
    r = w.client.post(f"{API}/repos/{t.full_name}/refs", json={"name": name}, headers=w.alice.headers)
    assert r.status_code == 201, r.text
    return Req(f"{API}/repos/{t.full_name}/refs/branch/{name}")


def own_token(w: World, actor: str, t: Target | None) -> Req:
    """A fresh token of the actor's own (alice's for her read token; alice's for anonymous)."""
    holder = "alice" if actor in ("anonymous", "alice_read") else actor
    r = w.client.post(f"{API}/user/tokens", json={"name": "doomed"}, headers=w.accounts[holder].headers)
    assert r.status_code == 201, r.text
    return Req(f"{API}/user/tokens/{r.json()['id']}")


def alices_token(w: World, actor: str, t: Target | None) -> Req:
    r = w.client.post(f"{API}/user/tokens", json={"name": "alices"}, headers=w.alice.headers)
    assert r.status_code == 201, r.text
    return Req(f"{API}/user/tokens/{r.json()['id']}")


def frank_out(w: World, actor: str, t: Target | None) -> Req:
    w.client.delete(f"{API}/orgs/lab/members/frank", headers=w.alice.headers)
    return Req(f"{API}/orgs/lab/members/frank", json={"role": "read"})


def frank_in(w: World, actor: str, t: Target | None) -> Req:
    r = w.client.put(f"{API}/orgs/lab/members/frank", json={"role": "read"}, headers=w.alice.headers)
    assert r.status_code == 200, r.text
    return Req(f"{API}/orgs/lab/members/frank")


def git_rpc(service: str, prefix: str = "") -> Build:
    """A POST of an empty request (one flush packet): enough for git to answer, changing nothing."""

    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        return Req(
            f"{prefix}/{t.full_name}.git/{service}",
            content=b"0000",
            headers={"Content-Type": f"application/x-{service}-request"},
        )

    return build


def git_refs(service: str, prefix: str = "") -> Build:
    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        return Req(f"{prefix}/{t.full_name}.git/info/refs?service={service}")

    return build


REPO = f"{API}/repos/{{full}}"

API_ROWS = [
    # Operations and accounts.
    Row("GET", "/api/health", anyone(200), get("/api/health")),
    Row("POST", "/api/v1/users", anyone(201), body(f"{API}/users", name="{unique}", password="long enough")),
    Row(
        "POST",
        "/api/v1/auth/token",
        anyone(201),
        body(f"{API}/auth/token", name="alice", password="correct horse battery"),
    ),
    Row("GET", "/api/v1/user", logged_in(200), get(f"{API}/user")),
    Row("PATCH", "/api/v1/user", write_token(200), body(f"{API}/user", affiliation="Matrix Institute")),
    Row("GET", "/api/v1/user/tokens", logged_in(200), get(f"{API}/user/tokens")),
    Row("POST", "/api/v1/user/tokens", write_token(201), body(f"{API}/user/tokens", name="{unique}")),
    Row("DELETE", "/api/v1/user/tokens/{token_id}", write_token(204), own_token, label="own token"),
    Row(
        "DELETE",
        "/api/v1/user/tokens/{token_id}",
        lambda actor, t: {"anonymous": 401, "alice_read": 403, "alice": 204}.get(actor, 404),
        alices_token,
        label="someone else's token (site admins too: 404)",
    ),
    Row("GET", "/api/v1/users/{name}", anyone(200), get(f"{API}/users/alice")),
    Row("POST", "/api/v1/orgs", write_token(201), body(f"{API}/orgs", name="{unique}")),
    Row("GET", "/api/v1/orgs/{name}", anyone(200), get(f"{API}/orgs/lab")),
    Row("GET", "/api/v1/orgs/{name}/members", anyone(200), get(f"{API}/orgs/lab/members")),
    Row("PUT", "/api/v1/orgs/{name}/members/{user}", lab_admin(200), frank_out),
    Row("DELETE", "/api/v1/orgs/{name}/members/{user}", lab_admin(204), frank_in),
    # Repositories.
    Row("GET", "/api/v1/repos", anyone(200), get(f"{API}/repos")),
    Row("POST", "/api/v1/repos", write_token(201), body(f"{API}/repos", name="{unique}"), label="own"),
    Row(
        "POST",
        "/api/v1/repos",
        lambda actor, t: {"anonymous": 401, "dave": 201, "erin": 201, "alice": 201, "root": 201}.get(
            actor, 403
        ),
        body(f"{API}/repos", name="{unique}", owner="lab", private=True),
        label="in lab",
    ),
    Row("GET", "/api/v1/repos/{owner}/{name}", repo_status(READ, 200), get(REPO), ALL_REPOS),
    Row(
        "PATCH",
        "/api/v1/repos/{owner}/{name}",
        repo_status(ADMIN, 200),
        body(REPO, description="edited by the matrix"),
        ALL_REPOS,
    ),
    Row("DELETE", "/api/v1/repos/{owner}/{name}", repo_status(ADMIN, 204), doomed_repo, ALL_REPOS),
    Row(
        "GET",
        "/api/v1/repos/{owner}/{name}/commits",
        repo_status(READ, 200),
        get(REPO + "/commits?path=data"),
        ALL_REPOS,
    ),
    Row("POST", "/api/v1/repos/{owner}/{name}/commits", repo_status(WRITE, 201), commit_files, ALL_REPOS),
    Row(
        "GET",
        "/api/v1/repos/{owner}/{name}/commits/{rev}",
        repo_status(READ, 200),
        get(REPO + "/commits/feature/x"),
        ALL_REPOS,
    ),
    Row("GET", "/api/v1/repos/{owner}/{name}/tree", repo_status(READ, 200), get(REPO + "/tree"), ALL_REPOS),
    Row(
        "GET",
        "/api/v1/repos/{owner}/{name}/tree/{rev_path}",
        repo_status(READ, 200),
        get(REPO + "/tree/feature/x/data?recursive=true"),
        ALL_REPOS,
    ),
    Row(
        "GET",
        "/api/v1/repos/{owner}/{name}/raw/{rev_path}",
        repo_status(READ, 200),
        get(REPO + "/raw/v1/data/table.csv"),
        ALL_REPOS,
    ),
    Row(
        "HEAD",
        "/api/v1/repos/{owner}/{name}/raw/{rev_path}",
        repo_status(READ, 200),
        get(REPO + "/raw/main/README.md"),
        ALL_REPOS,
    ),
    Row("GET", "/api/v1/repos/{owner}/{name}/refs", repo_status(READ, 200), get(REPO + "/refs"), ALL_REPOS),
    Row(
        "POST",
        "/api/v1/repos/{owner}/{name}/refs",
        repo_status(WRITE, 201),
        body(REPO + "/refs", type="tag", name="{unique}", message="tagged by the matrix"),
        ALL_REPOS,
    ),
    Row(
        "DELETE",
        "/api/v1/repos/{owner}/{name}/refs/{type}/{ref_name}",
        repo_status(WRITE, 204),
        doomed_branch,
        ALL_REPOS,
    ),
]

GIT_SERVICES = (
    ("GET", "/{owner}/{repo_name}/info/refs", READ, "git-upload-pack", git_refs, "fetch advertisement"),
    ("GET", "/{owner}/{repo_name}/info/refs", WRITE, "git-receive-pack", git_refs, "push advertisement"),
    ("POST", "/{owner}/{repo_name}/git-upload-pack", READ, "git-upload-pack", git_rpc, "fetch"),
    ("POST", "/{owner}/{repo_name}/git-receive-pack", WRITE, "git-receive-pack", git_rpc, "push"),
)


def _git_rows() -> list[Row]:
    rows = []
    for prefix, keys in (("", NOT_DATASETS), ("/datasets", DATASETS)):
        for method, route, need, service, build, label in GIT_SERVICES:
            rows.append(
                Row(
                    method,
                    prefix + route,
                    git_status(need),
                    build(service, prefix),
                    keys,
                    git=True,
                    label=label,
                )
            )
    # At the other kind's URL, those who can read are redirected (git follows a redirect of its first
    # request) or told there is nothing there; the others get what they get at the right URL.
    for prefix, keys in (("", DATASETS), ("/datasets", NOT_DATASETS)):
        for method, route, _, service, build, label in GIT_SERVICES:
            ok = 301 if method == "GET" else 404
            rows.append(
                Row(
                    method,
                    prefix + route,
                    git_status(READ, ok),
                    build(service, prefix),
                    keys,
                    git=True,
                    label=f"{label} at the other kind's URL",
                )
            )
    return rows


GIT_ROWS = _git_rows()

OTHER_ROWS = [
    Row("GET", "/avatars/{name}.svg", anyone(200), get("/avatars/alice.svg"), label="user"),
    Row("GET", "/avatars/{name}.svg", anyone(200), get("/avatars/lab.svg"), label="org"),
    Row("GET", "/metrics", anyone(200), get("/metrics")),
    Row("GET", "/api/openapi.json", anyone(200), get("/api/openapi.json")),
    Row("GET", "/api/docs", anyone(200), get("/api/docs")),
    Row("GET", "/docs/oauth2-redirect", anyone(200), get("/docs/oauth2-redirect")),
]

# ----- Web pages ---------------------------------------------------------------------------------------
# Pages answer with the same HTTP statuses as the API (404 for an unreadable repository, an HTML page).
# A page that needs a login sends an anonymous visitor to /login (303). Forms need a browser session and
# its CSRF token: a POST without one is refused with 403 before anything is looked up, so a private
# repository and a missing one answer alike.


def login_page(ok: int) -> Expect:
    return lambda actor, target: 303 if actor == "anonymous" else ok


def logged_out_page(ok: int) -> Expect:
    return lambda actor, target: ok if actor == "anonymous" else 303


def repo_admin_page(actor: str, target: Target | None) -> int:
    assert target is not None
    have = level(actor, target.owner, target.private)
    if have == NONE:
        return 404
    if actor == "anonymous":
        return 303
    return 200 if have >= ADMIN and actor != "alice_read" else 403


def form(url: str) -> Build:
    """A form POST as a script would send it: credentials but no browser session or CSRF token."""

    def build(w: World, actor: str, t: Target | None) -> Req:
        req = page(url)(w, actor, t)
        req.data = {"description": "changed", "confirm": t.name if t else "x"}
        return req

    return build


def _page_rows() -> list[Row]:
    rows = [
        Row("GET", "/", anyone(200), page("/"), page=True),
        Row("GET", "/explore", anyone(200), page("/explore?q=secret"), page=True),
        Row("GET", "/datasets", anyone(302), page("/datasets"), page=True),
        Row("GET", "/models", anyone(302), page("/models"), page=True),
        Row("GET", "/favicon.ico", anyone(301), page("/favicon.ico"), page=True),
        Row("GET", "/static/{path}", anyone(200), page("/static/opensci.css"), page=True),
        # Signed-in visitors are sent on from the login and registration pages.
        Row("GET", "/login", logged_out_page(200), page("/login"), page=True),
        Row("GET", "/register", logged_out_page(200), page("/register"), page=True),
        # The logout page is for browser sessions; without one there is nothing to log out of.
        Row("GET", "/logout", anyone(303), page("/logout"), page=True),
        Row("GET", "/new", login_page(200), page("/new"), page=True),
        Row("GET", "/settings", login_page(303), page("/settings"), page=True),
        Row("GET", "/settings/profile", login_page(200), page("/settings/profile"), page=True),
        Row("GET", "/settings/password", login_page(200), page("/settings/password"), page=True),
        Row("GET", "/settings/tokens", login_page(200), page("/settings/tokens"), page=True),
        Row("GET", "/{owner}", anyone(200), page("/alice"), page=True, label="user"),
        Row("GET", "/{owner}", anyone(200), page("/lab"), page=True, label="org"),
        Row("GET", "/{owner}", anyone(404), page("/nobody-here"), page=True, label="missing"),
    ]
    rows.append(Row("POST", "/logout", anyone(303), form("/logout"), page=True))
    for path in (
        "/login",
        "/register",
        "/new",
        "/settings/profile",
        "/settings/password",
        "/settings/tokens",
        "/settings/tokens/{token_id}/revoke",
    ):
        url = path.replace("{token_id}", "0123456789abcdef0123456789abcdef")
        rows.append(Row("POST", path, anyone(403), form(url), page=True))
    for prefix, targets in (("", NOT_DATASETS), ("/datasets", DATASETS)):
        reads = {
            "": "{web}",
            "/tree/{rev_path}": "{web}/tree/feature/x/data",
            "/blob/{rev_path}": "{web}/blob/main/data/table.csv",
            "/commits": "{web}/commits",
            "/commits/{rev}": "{web}/commits/feature/x",
            "/commit/{sha}": "{web}/commit/main",
            "/branches": "{web}/branches",
        }
        for suffix, url in reads.items():
            route = f"{prefix}/{{owner}}/{{name}}{suffix}"
            rows.append(Row("GET", route, repo_status(READ, 200), page(url), targets, page=True))
        route = f"{prefix}/{{owner}}/{{name}}/settings"
        rows.append(Row("GET", route, repo_admin_page, page("{web}/settings"), targets, page=True))
        for suffix in ("/settings", "/settings/rename", "/settings/delete"):
            rows.append(
                Row(
                    "POST",
                    f"{prefix}/{{owner}}/{{name}}{suffix}",
                    anyone(403),
                    form("{web}" + suffix),
                    targets,
                    page=True,
                )
            )
    # data pages: the dataset viewer (tables, rows, statistics, the SQL console), datasets only
    viewer = {
        "/viewer": "{web}/viewer?sql=SELECT+count(*)+FROM+%22table%22",
        "/viewer/{rev}": "{web}/viewer/feature/x?table=table&offset=1",
    }
    for suffix, url in viewer.items():
        route = f"/datasets/{{owner}}/{{name}}{suffix}"
        rows.append(Row("GET", route, repo_status(READ, 200), page(url), DATASETS, page=True))  # data pages
    return rows


PAGE_ROUTES: list[Row] = _page_rows()

# Every page has rows now; an entry here would exempt a page route from the coverage check.
EXPECTED_UNCOVERED_PAGE_PREFIXES: set[str] = set()

# Rows of the storage domain (chunk uploads, LFS, quotas).
MATRIX_OID = "72b31feaf3aa24d10177fc57fa22d76c756af91ee3166b444d6b77bd3fd4679f"  # sha256 of b"matrix chunk"
MATRIX_CHUNK = (
    "7f6d9d5f8fed5456ac875fd8795da2c48a9ecf8a210603944fb41677a68b2c21"  # its BLAKE3: its name as a chunk
)
STORAGE_ROWS: list[Row] = [
    # The chunk upload protocol: one 12-byte chunk, b"matrix chunk", which is also a whole object.
    Row(
        "POST",
        "/api/v1/repos/{owner}/{name}/uploads/chunks/missing",
        repo_status(WRITE, 200),
        body(
            REPO + "/uploads/chunks/missing",
            chunks=[MATRIX_CHUNK],
        ),
        ALL_REPOS,
    ),
    Row(
        "POST",
        "/api/v1/repos/{owner}/{name}/uploads/chunks",
        repo_status(WRITE, 200),
        lambda w, actor, t: Req(
            get(REPO + "/uploads/chunks")(w, actor, t).url,
            content=bytes.fromhex(MATRIX_CHUNK + "0000000c") + b"matrix chunk",
            headers={"Content-Type": "application/octet-stream"},
        ),
        ALL_REPOS,
    ),
    Row(
        "POST",
        "/api/v1/repos/{owner}/{name}/uploads/objects",
        repo_status(WRITE, 201),
        lambda w, actor, t: (
            w.app.state.blobs.put_chunk(MATRIX_CHUNK, b"matrix chunk"),
            Req(
                get(REPO + "/uploads/objects")(w, actor, t).url,
                json={
                    "oid": MATRIX_OID,
                    "size": 12,
                    "chunks": [MATRIX_CHUNK],
                },
            ),
        )[1],
        ALL_REPOS,
    ),
    Row(
        "POST",
        "/api/v1/repos/{owner}/{name}/uploads/manifests",
        repo_status(WRITE, 201),
        lambda w, actor, t: (
            w.app.state.blobs.put_chunk(MATRIX_CHUNK, b"matrix chunk"),
            Req(
                get(REPO + "/uploads/manifests")(w, actor, t).url + "?size=12",
                content=bytes.fromhex(MATRIX_CHUNK),
                headers={"Content-Type": "application/octet-stream"},
            ),
        )[1],
        ALL_REPOS,
    ),
]

# Rows of the Git LFS server and of quotas.


def lfs_batch(operation: str, prefix: str = "") -> Build:
    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        return Req(
            f"{prefix}/{t.full_name}.git/info/lfs/objects/batch",
            content=json.dumps({"operation": operation, "objects": [{"oid": "a" * 64, "size": 1}]}).encode(),
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    return build


def lfs_object(suffix: str, method: str = "GET", prefix: str = "", content: bytes | None = None) -> Build:
    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        return Req(f"{prefix}/{t.full_name}.git/info/lfs/{suffix}", method, content=content)

    return build


VERIFY_BODY = json.dumps({"oid": "a" * 64, "size": 1}).encode()


def _lfs_rows() -> list[Row]:
    rows = []
    for prefix, keys in (("", NOT_DATASETS), ("/datasets", DATASETS)):
        base = prefix + "/{owner}/{repo_name}/info/lfs"
        rows += [
            Row(
                "POST",
                base + "/objects/batch",
                git_status(READ),
                lfs_batch("download", prefix),
                keys,
                git=True,
                label="download",
            ),
            Row(
                "POST",
                base + "/objects/batch",
                git_status(WRITE),
                lfs_batch("upload", prefix),
                keys,
                git=True,
                label="upload",
            ),
            # Without a signed link: credentials decide; the object was never uploaded, so readers get 404.
            Row(
                "GET",
                base + "/objects/{oid}",
                git_status(READ, 404),
                lfs_object("objects/" + "a" * 64, prefix=prefix),
                keys,
                git=True,
            ),
            Row(
                "GET",
                base + "/objects/{oid}",
                git_status(READ, 404),
                lfs_object("objects/" + "a" * 64, "HEAD", prefix),
                keys,
                git=True,
                label="HEAD",
            ),
            # A PUT needs a signed link from the batch API: refused alike whoever asks, whatever exists.
            Row(
                "PUT",
                base + "/objects/{oid}",
                anyone(403),
                lfs_object("objects/" + "a" * 64 + "?size=1&sig=0", "PUT", prefix, b"x"),
                keys,
                git=True,
            ),
            Row(
                "POST",
                base + "/objects/verify",
                git_status(WRITE, 404),
                lfs_object("objects/verify", "POST", prefix, VERIFY_BODY),
                keys,
                git=True,
            ),
            Row(
                "POST",
                base + "/locks/verify",
                git_status(WRITE),
                lfs_object("locks/verify", "POST", prefix, b"{}"),
                keys,
                git=True,
            ),
        ]
    return rows


def members_of(owner: str) -> Expect:
    def expect(actor: str, target: Target | None) -> int:
        if actor == "anonymous":
            return 401
        return 200 if actor == "root" or actor in ROLES[owner] or actor == owner else 403

    return expect


def site_admin(ok: int) -> Expect:
    return lambda actor, target: {"anonymous": 401, "root": ok}.get(actor, 403)


LFS_ROWS: list[Row] = [
    *_lfs_rows(),
    Row(
        "GET",
        "/api/v1/owners/{name}/storage",
        members_of("alice"),
        get(f"{API}/owners/alice/storage"),
        label="user",
    ),
    Row(
        "GET",
        "/api/v1/owners/{name}/storage",
        members_of("lab"),
        get(f"{API}/owners/lab/storage"),
        label="org",
    ),
    Row(
        "PUT",
        "/api/v1/owners/{name}/storage",
        site_admin(200),
        body(f"{API}/owners/frank/storage", limit_bytes=None),
    ),
]

# hub rows: helpers for the Hugging Face Hub-compatible API.


def hub_status(need: Level, ok: int) -> Expect:
    """The Hub API: like the REST API, except that without a token a hidden repository is a 401 (with
    the client's RepoNotFound code), as on the Hub, so that the client suggests logging in."""

    def expect(actor: str, target: Target | None) -> int:
        assert target is not None
        have = level(actor, target.owner, target.private)
        if actor == "anonymous" and have < need:
            return 401
        if have == NONE:
            return 404
        return ok if have >= need else 403

    return expect


def hub(suffix: str, **fields: Any) -> Build:
    """`/api/{models|datasets}/{owner}/{name}{suffix}`; a JSON body from `fields` ({unique} allowed)."""

    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        unique = w.unique(actor.replace("_", "-"))
        plural = "datasets" if t.kind == "dataset" else "models"
        req = Req(f"/api/{plural}/{t.full_name}{suffix.format(unique=unique)}")
        if fields:
            req.json = {k: v.format(unique=unique) if isinstance(v, str) else v for k, v in fields.items()}
        return req

    return build


def hub_paths_info(w: World, actor: str, t: Target | None) -> Req:
    req = hub("/paths-info/feature%2Fx")(w, actor, t)
    req.data = {"paths": ["README.md", "data"], "expand": "false"}
    return req


def hub_commit(w: World, actor: str, t: Target | None) -> Req:
    req = hub("/commit/main")(w, actor, t)
    lines = [
        {"key": "header", "value": {"summary": f"commit by {actor}", "description": ""}},
        {
            "key": "file",
            "value": {"path": f"hub/{w.unique(actor)}.txt", "content": "eA==", "encoding": "base64"},
        },
    ]
    req.content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    req.headers["Content-Type"] = "application/x-ndjson"
    return req


def hub_doomed_repo(w: World, actor: str, t: Target | None) -> Req:
    assert t is not None
    name = w.unique("hub-doomed")
    create_repo(w.client, w.alice, name, owner=t.owner, kind=t.kind, private=t.private)
    body = {"name": name, "organization": t.owner, "type": "dataset" if t.kind == "dataset" else "model"}
    return Req("/api/repos/delete", json=body)


def hub_doomed_ref(kind: str) -> Build:
    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        name = w.unique("hub-gone")
        ref = {"type": kind, "name": name}
        r = w.client.post(f"{API}/repos/{t.full_name}/refs", json=ref, headers=w.alice.headers)
        assert r.status_code == 201, r.text
        return hub(f"/{kind}/{name}")(w, actor, t)

    return build


HUB_REPO = "/api/{repo_type}/{namespace}/{name}"

# Rows of the Hugging Face Hub-compatible API.
HUB_ROWS: list[Row] = [
    Row("GET", "/api/whoami-v2", logged_in(200), get("/api/whoami-v2")),
    Row("POST", "/api/repos/create", write_token(200), body("/api/repos/create", name="{unique}")),
    Row("DELETE", "/api/repos/delete", hub_status(ADMIN, 200), hub_doomed_repo, ALL_REPOS),
    Row("POST", "/api/validate-yaml", anyone(200), body("/api/validate-yaml", content="", repoType="model")),
    Row("GET", "/api/{repo_type}", anyone(200), get("/api/models?search=secret&author=alice")),
    Row("GET", HUB_REPO, hub_status(READ, 200), hub(""), ALL_REPOS),
    Row("GET", HUB_REPO + "/revision/{rest}", hub_status(READ, 200), hub("/revision/feature%2Fx"), ALL_REPOS),
    Row(
        "GET",
        HUB_REPO + "/tree/{rest}",
        hub_status(READ, 200),
        hub("/tree/feature%2Fx/data?recursive=true&expand=true"),
        ALL_REPOS,
    ),
    Row("POST", HUB_REPO + "/paths-info/{rest}", hub_status(READ, 200), hub_paths_info, ALL_REPOS),
    Row(
        "GET",
        "/{namespace}/{name}/resolve/{rest}",
        hub_status(READ, 200),
        get("{web}/resolve/v1/data/table.csv"),
        NOT_DATASETS,
    ),
    Row(
        "GET",
        "/datasets/{namespace}/{name}/resolve/{rest}",
        hub_status(READ, 200),
        get("{web}/resolve/feature%2Fx/README.md"),
        DATASETS,
    ),
    Row("GET", HUB_REPO + "/refs", hub_status(READ, 200), hub("/refs?include_prs=1"), ALL_REPOS),
    Row("GET", HUB_REPO + "/commits/{rest}", hub_status(READ, 200), hub("/commits/v1"), ALL_REPOS),
    Row("POST", HUB_REPO + "/branch/{rest}", hub_status(WRITE, 200), hub("/branch/{unique}"), ALL_REPOS),
    Row("DELETE", HUB_REPO + "/branch/{rest}", hub_status(WRITE, 200), hub_doomed_ref("branch"), ALL_REPOS),
    Row(
        "POST", HUB_REPO + "/tag/{rest}", hub_status(WRITE, 200), hub("/tag/main", tag="{unique}"), ALL_REPOS
    ),
    Row("DELETE", HUB_REPO + "/tag/{rest}", hub_status(WRITE, 200), hub_doomed_ref("tag"), ALL_REPOS),
    Row(
        "POST",
        HUB_REPO + "/preupload/{rest}",
        hub_status(WRITE, 200),
        hub("/preupload/main", files=[{"path": "a.bin", "size": 10**9, "sample": ""}]),
        ALL_REPOS,
    ),
    Row("POST", HUB_REPO + "/commit/{rest}", hub_status(WRITE, 200), hub_commit, ALL_REPOS),
    Row(
        "GET",
        HUB_REPO + "/xet-write-token/{rest}",
        hub_status(WRITE, 501),
        hub("/xet-write-token/main"),
        ALL_REPOS,
    ),
    Row(
        "GET",
        HUB_REPO + "/xet-read-token/{rest}",
        hub_status(READ, 501),
        hub("/xet-read-token/main"),
        ALL_REPOS,
    ),
]

# ----- Open data: tables, rows and statistics of a dataset revision ------------------------------------
# Each dataset of the world has data/table.csv, so a table named "table". Under /api/v1/datasets/ a
# repository of another kind is not found, for everyone.

DATA = f"{API}/datasets/{{full}}"
DATA_ROWS: list[Row] = [
    row
    for method, route, url in (
        ("GET", "/api/v1/datasets/{owner}/{name}/tables", DATA + "/tables?rev=v1"),
        ("GET", "/api/v1/datasets/{owner}/{name}/tables/{table}/rows", DATA + "/tables/table/rows?limit=5"),
        ("GET", "/api/v1/datasets/{owner}/{name}/tables/{table}/stats", DATA + "/tables/table/stats"),
        (
            "GET",
            "/api/v1/datasets/{owner}/{name}/sql",
            DATA + "/sql?sql=SELECT%20count(*)%20FROM%20%22table%22",
        ),
    )
    for row in (
        Row(method, route, repo_status(READ, 200), get(url), DATASETS),
        Row(method, route, anyone(404), get(url), NOT_DATASETS, label="not a dataset"),
    )
] + [
    Row(
        "POST",
        "/api/v1/datasets/{owner}/{name}/sql",
        repo_status(READ, 200),
        body(DATA + "/sql", sql='SELECT count(*) AS n FROM "table"'),
        DATASETS,
    ),
    Row(
        "POST",
        "/api/v1/datasets/{owner}/{name}/sql",
        anyone(404),
        body(DATA + "/sql", sql="SELECT 1"),
        NOT_DATASETS,
        label="not a dataset",
    ),
]

# ----- Open compute: jobs ------------------------------------------------------------------------------
# A job "over" a target touches it (a code target as the job's code; a dataset or model as its input,
# with alice's public code), so it is visible to exactly the target's readers; to others it is not found
# (`job_not_found`). The jobs are alice's and stay queued: no scheduler runs in the world.

JOB = f"{API}/jobs"
NOT_CODE = tuple(k for k, t in TARGETS.items() if t.kind != "code")


def job_spec(t: Target, role: str = "input") -> dict[str, Any]:
    if t.kind == "code":
        return {"code": {"repo": t.full_name}, "command": ["python", "main.py"]}
    spec: dict[str, Any] = {"code": {"repo": TARGETS["alice-public"].full_name}, "command": ["true"]}
    if role == "output":
        spec["output"] = {"repo": t.full_name, "branch": "matrix"}
    else:
        spec["inputs"] = {"data": {"repo": t.full_name}}
    return spec


def alices_job(w: World, t: Target, *, fresh: bool = False) -> int:
    """A queued job of alice's over the target: the same one each time, or a new one (`fresh`)."""
    if not fresh and t.key in w.jobs:
        return w.jobs[t.key]
    r = w.client.post(JOB, json=job_spec(t), headers=w.alice.headers)
    assert r.status_code == 201, r.text
    if not fresh:
        w.jobs[t.key] = r.json()["id"]
    return int(r.json()["id"])


def job_url(suffix: str = "", *, fresh: bool = False) -> Build:
    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        return Req(f"{JOB}/{alices_job(w, t, fresh=fresh)}{suffix}")

    return build


def submit_over(role: str) -> Build:
    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        return Req(JOB, json=job_spec(t, role))

    return build


def job_submit(actor: str, target: Target | None) -> int:
    """Submitting a job that reads the target: a login (401) and a write token (403) come first, then
    read access to the target (404)."""
    assert target is not None
    if actor in ("anonymous", "alice_read"):
        return 401 if actor == "anonymous" else 403
    return 404 if level(actor, target.owner, target.private) == NONE else 201


def job_status(ok: int, *, act: bool = False, submitter: bool = False) -> Expect:
    """On a job of alice's over the target: 404 for those who cannot read the target; acting (`act`)
    needs a login (401) and a write token (403); `submitter`: only alice and the site admin (else 403)."""

    def expect(actor: str, target: Target | None) -> int:
        assert target is not None
        if level(actor, target.owner, target.private) == NONE:
            return 404
        if act and actor in ("anonymous", "alice_read"):
            return 401 if actor == "anonymous" else 403
        if submitter and actor not in ("alice", "root"):
            return 403
        return ok

    return expect


JOB_ROWS: list[Row] = [
    Row("POST", "/api/v1/jobs", job_submit, submit_over("input"), ALL_REPOS, label="reading the target"),
    Row(
        "POST",
        "/api/v1/jobs",
        repo_status(WRITE, 201),
        submit_over("output"),
        NOT_CODE,
        label="writing to the target",
    ),
    Row("GET", "/api/v1/jobs", anyone(200), get(JOB + "?owner=alice&status=queued")),
    Row(
        "GET",
        "/api/v1/jobs",
        repo_status(READ, 200),
        get(JOB + "?repo={full}"),
        ALL_REPOS,
        label="by repository",
    ),
    Row("GET", "/api/v1/jobs/{job_id}", job_status(200), job_url(), ALL_REPOS, not_found="job_not_found"),
    Row(
        "GET",
        "/api/v1/jobs/{job_id}/logs",
        job_status(200),
        job_url("/logs?offset=0"),
        ALL_REPOS,
        not_found="job_not_found",
    ),
    Row(
        "POST",
        "/api/v1/jobs/{job_id}/cancel",
        job_status(200, act=True, submitter=True),
        job_url("/cancel", fresh=True),
        ALL_REPOS,
        not_found="job_not_found",
    ),
    Row(
        "POST",
        "/api/v1/jobs/{job_id}/rerun",
        job_status(201, act=True),
        job_url("/rerun"),
        ALL_REPOS,
        not_found="job_not_found",
    ),
]


# Pages of jobs: the list, a job's page (a private job is a 404 page), its forms, and the Run form of a
# code repository (only code repositories have one: other kinds are not found, like a hidden one).
def job_page(suffix: str = "") -> Build:
    def build(w: World, actor: str, t: Target | None) -> Req:
        assert t is not None
        return Req(
            f"/jobs/{alices_job(w, t)}{suffix}",
            data={"command": "true"},
            headers={"Accept": "text/html,application/xhtml+xml"},
        )

    return build


def run_page(actor: str, target: Target | None) -> int:
    assert target is not None
    if target.kind != "code" or level(actor, target.owner, target.private) == NONE:
        return 404
    return 303 if actor == "anonymous" else 200


JOB_PAGE_ROWS: list[Row] = [
    Row("GET", "/jobs", anyone(200), page("/jobs?status=queued&owner=alice"), page=True),
    Row(
        "GET", "/jobs", repo_status(READ, 200), page("/jobs?repo={full}"), ALL_REPOS, page=True, label="repo"
    ),
    Row("GET", "/jobs/{job_id}", job_status(200), job_page(), ALL_REPOS, page=True),
    Row("POST", "/jobs/{job_id}/cancel", anyone(403), job_page("/cancel"), ALL_REPOS, page=True),
    Row("POST", "/jobs/{job_id}/rerun", anyone(403), job_page("/rerun"), ALL_REPOS, page=True),
    Row("GET", "/{owner}/{name}/run", run_page, page("/{full}/run"), ALL_REPOS, page=True),
    Row("POST", "/{owner}/{name}/run", anyone(403), form("/{full}/run"), ALL_REPOS, page=True),
]

ROWS = [
    *API_ROWS,
    *GIT_ROWS,
    *OTHER_ROWS,
    *PAGE_ROUTES,
    *STORAGE_ROWS,
    *LFS_ROWS,
    *HUB_ROWS,
    *DATA_ROWS,
    *JOB_ROWS,
    *JOB_PAGE_ROWS,
]


# --- running a row -------------------------------------------------------------------------------------


def send(w: World, row: Row, actor: str, req: Req, headers: dict[str, str]) -> Any:
    return w.client.request(
        req.method or row.method,
        req.url,
        json=req.json,
        data=req.data,
        files=req.files,
        content=req.content,
        headers={**headers, **req.headers},
        follow_redirects=False,
    )


def check(w: World, row: Row, actor: str, target: Target | None) -> str | None:
    """Run one cell of the matrix; a description of what is wrong, or None."""
    req = row.build(w, actor, target)
    r = send(w, row, actor, req, w.headers(actor, git=row.git))
    want = row.expect(actor, target)
    where = f"{actor:>10} {target.key if target else '-':<13} {req.method or row.method} {req.url}"
    if r.status_code != want:
        return f"{where}: expected {want}, got {r.status_code} {r.text[:120]!r}"
    if row.git:
        if want == 401:
            challenge = r.headers.get("www-authenticate", "")
            if not challenge.startswith("Basic"):
                return f"{where}: a 401 for git must be a Basic challenge, got {challenge!r}"
            if target is not None and target.private:
                # Exactly what a repository that does not exist gets.
                missing = send(w, row, actor, _missing(req, target), w.headers(actor, git=True))
                same = (missing.status_code, missing.headers.get("www-authenticate"), missing.content)
                if same != (r.status_code, r.headers.get("www-authenticate"), r.content):
                    return f"{where}: the 401 differs from the one for a missing repository"
        return None
    if want >= 400 and not row.page and (req.method or row.method) != "HEAD":
        body = r.json()
        if set(body) != {"error", "message"}:
            return f"{where}: not the error envelope: {body}"
        if want == 404 and target is not None and body["error"] != row.not_found:
            return f"{where}: a hidden repository must look missing, got {body['error']!r}"
        if want == 401 and not r.headers.get("www-authenticate", "").startswith("Bearer"):
            return f"{where}: a 401 must carry a Bearer challenge"
    return None


def _missing(req: Req, target: Target) -> Req:
    return Req(
        req.url.replace(f"/{target.full_name}.git", f"/{target.owner}/no-such-repo.git"),
        req.method,
        content=req.content,
        headers=req.headers,
    )


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_matrix(world: World, row: Row) -> None:
    targets: list[Target | None] = [TARGETS[k] for k in row.targets] if row.targets else [None]
    problems = [p for t in targets for actor in ACTORS if (p := check(world, row, actor, t)) is not None]
    assert not problems, f"{row.id}:\n" + "\n".join(problems)


# --- listings ------------------------------------------------------------------------------------------


LISTING_QUERIES: list[dict[str, Any]] = [
    {},
    {"owner": "alice"},
    {"owner": "ALICE"},
    {"owner": "lab"},
    {"kind": "code"},
    {"kind": "dataset"},
    {"kind": "model"},
    {"q": "secret"},
    {"q": "lab"},
    {"q": "alice"},
    {"q": "data"},
    {"q": "%"},
    {"q": "_"},
    {"sort": "name"},
    {"sort": "created"},
    {"owner": "lab", "kind": "dataset", "q": "lab"},
]


def listing(w: World, actor: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Every page of a listing, walked with a small page size; (items, the total it reported)."""
    items: list[dict[str, Any]] = []
    page: int | None = 1
    totals = set()
    while page is not None:
        r = w.client.get(
            f"{API}/repos", params={**params, "per_page": 7, "page": page}, headers=w.headers(actor)
        )
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        totals.add(r.json()["total"])
        page = r.json()["next_page"]
    assert len(totals) == 1, totals
    return items, totals.pop()


def test_private_repos_are_listed_only_for_their_readers(world: World) -> None:
    everything, _ = listing(world, "root", {})
    assert {t.full_name for t in TARGETS.values()} <= {r["full_name"] for r in everything}
    problems = []
    for actor in ACTORS:
        readable = {r["full_name"] for r in everything if level(actor, r["owner"], r["private"]) != NONE}
        for params in LISTING_QUERIES:
            items, total = listing(world, actor, params)
            names = [r["full_name"] for r in items]
            leaked = {n for n in names if n not in readable}
            if leaked:
                problems.append(f"{actor} {params}: lists {sorted(leaked)}")
            if total != len(names) or len(set(names)) != len(names):
                problems.append(
                    f"{actor} {params}: total {total} for {len(names)} items ({len(set(names))} distinct)"
                )
        seen, _ = listing(world, actor, {})
        missing = readable - {r["full_name"] for r in seen}
        if missing:
            problems.append(f"{actor}: does not see {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_private_repos_are_hidden_from_owner_filtered_listings_of_strangers(world: World) -> None:
    for actor in ("anonymous", "bob"):
        for owner in ("alice", "lab"):
            items, total = listing(world, actor, {"owner": owner})
            assert all(not r["private"] for r in items), (actor, owner)
            assert total == len(items)


def test_jobs_are_listed_only_for_the_readers_of_what_they_touch(world: World) -> None:
    jobs = {key: alices_job(world, t) for key, t in TARGETS.items()}
    problems = []
    for actor in ACTORS:
        for params in ({}, {"owner": "alice"}, {"status": "queued"}):
            seen: set[int] = set()
            before = None
            while True:  # every page
                query = {**params, "limit": 50, **({"before": before} if before else {})}
                r = world.client.get(JOB, params=query, headers=world.headers(actor))
                assert r.status_code == 200, r.text
                seen |= {j["id"] for j in r.json()["jobs"]}
                if (before := r.json()["next_before"]) is None:
                    break
            for key, job_id in jobs.items():
                t = TARGETS[key]
                if (job_id in seen) != (level(actor, t.owner, t.private) != NONE):
                    problems.append(f"{actor} {params}: {'lists' if job_id in seen else 'misses'} {key}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("actor", ACTORS)
def test_the_jobs_page_lists_only_jobs_over_what_the_viewer_can_read(world: World, actor: str) -> None:
    jobs = {key: alices_job(world, t) for key, t in TARGETS.items()}
    html, url = "", "/jobs"
    while url:  # every page, by the "Older" link
        page = world.client.get(url, headers={**world.headers(actor), "Accept": "text/html"}).text
        html += page
        older = re.search(r'href="/jobs\?before=(\d+)"', page)
        url = f"/jobs?before={older.group(1)}" if older else ""
    for key, job_id in jobs.items():
        t = TARGETS[key]
        readable = level(actor, t.owner, t.private) != NONE
        assert (f'href="/jobs/{job_id}"' in html) == readable, f"{actor}: job over {key}"
        if not readable:
            assert t.full_name not in html, f"{actor} sees {t.full_name} on /jobs"


# --- coverage ------------------------------------------------------------------------------------------


def _covered() -> set[tuple[str, str]]:
    return {(row.method, row.route) for row in ROWS}


def _exempt(path: str) -> bool:
    return any(
        path == entry or (entry.endswith("/") and entry != "/" and path.startswith(entry))
        for entry in EXPECTED_UNCOVERED_PAGE_PREFIXES
    )


def uncovered_api_operations(app: FastAPI) -> list[tuple[str, str]]:
    operations = {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}
    return sorted(operations - _covered())


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every route, included routers and mounts flattened; HEAD, which
    Starlette adds to every GET route, only where it is the only other method."""
    out = set()
    for route in iter_route_contexts(app.routes):
        path = route.path_format
        if path is None:
            continue
        methods = set(route.methods or {"GET"})  # a mount (static files) answers GET
        if "GET" in methods:
            methods.discard("HEAD")
        out |= {(m, path) for m in methods}
    return out


def uncovered_other_routes(app: FastAPI) -> list[tuple[str, str]]:
    in_schema = set(app.openapi()["paths"])
    others = {(m, p) for m, p in app_routes(app) if p not in in_schema}
    return sorted((m, p) for m, p in others - _covered() if not _exempt(p))


def test_every_api_operation_has_a_row(world: World) -> None:
    uncovered = uncovered_api_operations(world.app)
    assert not uncovered, "operations without a row in the permission matrix:\n" + "\n".join(
        f"  {m} {p}" for m, p in uncovered
    )


def test_every_other_route_has_a_row(world: World) -> None:
    uncovered = uncovered_other_routes(world.app)
    assert not uncovered, (
        "routes outside the OpenAPI document without a row in the permission matrix (add a Row to "
        "GIT_ROWS, OTHER_ROWS or PAGE_ROUTES):\n" + "\n".join(f"  {m} {p}" for m, p in uncovered)
    )


def test_the_coverage_checks_notice_a_new_route(world: World) -> None:
    """The guard itself: a second app on the same home and database, with routes nobody put in the matrix."""
    app = create_app(world.app.state.settings)
    try:
        router = APIRouter()

        @router.get("/api/v1/repos/{owner}/{name}/stars")
        def stars(owner: str, name: str) -> list[str]:
            return []

        @router.post("/{owner}/{repo_name}/info/lfs/locks", include_in_schema=False)
        def lfs_locks(owner: str, repo_name: str) -> dict[str, str]:
            return {}

        @router.get("/datasets/{owner}/{name}/previews/{rev}", include_in_schema=False)
        def viewer(owner: str, name: str, rev: str) -> dict[str, str]:
            return {}

        app.include_router(router, prefix="")
        assert uncovered_api_operations(app) == [("GET", "/api/v1/repos/{owner}/{name}/stars")]
        assert ("POST", "/{owner}/{repo_name}/info/lfs/locks") in uncovered_other_routes(app)
        # Every page is in the matrix, so a new page is reported too.
        assert ("GET", "/datasets/{owner}/{name}/previews/{rev}") in uncovered_other_routes(app)
    finally:
        app.state.db.dispose()


def test_every_row_names_a_real_route(world: World) -> None:
    in_schema = {
        (method.upper(), path) for path, ops in world.app.openapi()["paths"].items() for method in ops
    }
    real = in_schema | app_routes(world.app)
    unknown = sorted(_covered() - real)
    assert not unknown, "rows for routes the app does not have:\n" + "\n".join(
        f"  {m} {p}" for m, p in unknown
    )


def test_the_world_is_what_the_matrix_assumes(world: World) -> None:
    c, alice = world.client, world.alice
    for t in TARGETS.values():
        repo = c.get(f"{API}/repos/{t.full_name}", headers=alice.headers).json()
        assert (repo["kind"], repo["private"]) == (t.kind, t.private)
        refs = c.get(f"{API}/repos/{t.full_name}/refs", headers=alice.headers).json()
        assert {"main", "feature/x"} <= {b["name"] for b in refs["branches"]}
        assert "v1" in {tag["name"] for tag in refs["tags"]}
    roles = {m["name"]: m["role"] for m in c.get(f"{API}/orgs/lab/members").json()}
    assert {k: v for k, v in roles.items() if k != "frank"} == {
        "alice": "owner",
        "carol": "read",
        "dave": "write",
        "erin": "admin",
    }
    assert c.get(f"{API}/user", headers=world.headers("root")).json()["is_admin"] is True


def test_openapi_operation_ids_are_unique(world: World) -> None:
    """Rows are keyed by method and path; clients generated from the document, by operationId."""
    ids = [op["operationId"] for ops in world.app.openapi()["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


PAGES_THAT_LIST_REPOS = (
    "/",
    "/explore",
    "/explore?q=secret",
    "/explore?q=lab&kind=dataset",
    "/alice",
    "/lab",
)


@pytest.mark.parametrize("actor", ACTORS)
def test_pages_never_name_a_repository_the_viewer_cannot_read(world: World, actor: str) -> None:
    """The web's listings follow the same rule as the API's: names of unreadable repositories never appear."""
    html = {
        url: world.client.get(url, headers={**world.headers(actor), "Accept": "text/html"}).text
        for url in PAGES_THAT_LIST_REPOS
    }
    for t in TARGETS.values():
        readable = level(actor, t.owner, t.private) >= READ
        for url, text in html.items():
            if not readable:
                assert t.name not in text, f"{actor} sees {t.full_name} on {url}"
        owner_page = html[f"/{t.owner}"]
        if readable:
            assert f"/{t.full_name}" in owner_page, f"{actor} misses {t.full_name} on /{t.owner}"
