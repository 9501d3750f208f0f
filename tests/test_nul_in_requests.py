"""A NUL (or another control character) in any name or text of a GET request is a 4xx, never a 500.

PostgreSQL text cannot hold a NUL (psycopg refuses the query: a 500 unless handled) and pygit2 reads a
name only up to one (`alice%00x` would pass as `alice`). So every GET route is swept with `%00x` appended
to a valid value of each path parameter and each text query parameter in turn, on both backends: names
that are looked up answer "not found", like any unknown name; text that filters or searches is refused
with 422. The API answers in the one error envelope.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import BACKEND, Account

# A route, and valid values of its parameters: `{x}` in the path, and the query string's parameters.
ROUTES: list[tuple[str, dict[str, str]]] = [
    (f"{API}/users/{{name}}", {"name": "alice"}),
    (f"{API}/orgs/{{name}}", {"name": "lab"}),
    (f"{API}/orgs/{{name}}/members", {"name": "lab"}),
    (f"{API}/owners/{{name}}/storage", {"name": "alice"}),
    (f"{API}/repos", {"?owner": "alice", "?q": "data", "?kind": "dataset", "?sort": "name"}),
    (f"{API}/repos/{{owner}}/{{name}}", {"owner": "alice", "name": "data"}),
    (f"{API}/repos/{{owner}}/{{name}}/refs", {"owner": "alice", "name": "data"}),
    (f"{API}/repos/{{owner}}/{{name}}/commits", {"owner": "alice", "name": "data", "?rev": "main"}),
    (f"{API}/repos/{{owner}}/{{name}}/commits", {"owner": "alice", "name": "data", "?path": "values.csv"}),
    (f"{API}/repos/{{owner}}/{{name}}/commits/{{rev}}", {"owner": "alice", "name": "data", "rev": "main"}),
    (f"{API}/repos/{{owner}}/{{name}}/tree", {"owner": "alice", "name": "data"}),
    (f"{API}/repos/{{owner}}/{{name}}/tree/{{rev}}", {"owner": "alice", "name": "data", "rev": "main"}),
    (
        f"{API}/repos/{{owner}}/{{name}}/raw/main/{{path}}",
        {"owner": "alice", "name": "data", "path": "values.csv"},
    ),
    (
        f"{API}/repos/{{owner}}/{{name}}/raw/{{rev}}/values.csv",
        {"owner": "alice", "name": "data", "rev": "main"},
    ),
    (f"{API}/datasets/{{owner}}/{{name}}/tables", {"owner": "alice", "name": "data", "?rev": "main"}),
    (
        f"{API}/datasets/{{owner}}/{{name}}/tables/{{table}}/rows",
        {"owner": "alice", "name": "data", "table": "values", "?rev": "main"},
    ),
    (
        f"{API}/datasets/{{owner}}/{{name}}/tables/{{table}}/stats",
        {"owner": "alice", "name": "data", "table": "values", "?rev": "main"},
    ),
    (
        f"{API}/datasets/{{owner}}/{{name}}/sql",
        {"owner": "alice", "name": "data", "?~sql": "select 1", "?rev": "main", "?format": "json"},
    ),
    (f"{API}/jobs", {"?owner": "alice", "?status": "queued", "?repo": "alice/data"}),
    (f"{API}/jobs/{{job_id}}", {"job_id": "1"}),
    (f"{API}/jobs/{{job_id}}/logs", {"job_id": "1"}),
    # The Hub-compatible API.
    ("/api/{type}", {"type": "datasets", "?search": "data", "?author": "alice", "?~sort": "createdAt"}),
    ("/api/{type}/{owner}/{name}", {"type": "datasets", "owner": "alice", "name": "data"}),
    ("/api/datasets/{owner}/{name}/revision/{rev}", {"owner": "alice", "name": "data", "rev": "main"}),
    (
        "/api/datasets/{owner}/{name}/revision/{rev}",
        {"owner": "alice", "name": "data", "rev": "refs%2Fheads%2Fmain"},
    ),
    ("/api/datasets/{owner}/{name}/tree/{rev}", {"owner": "alice", "name": "data", "rev": "main"}),
    ("/api/datasets/{owner}/{name}/refs", {"owner": "alice", "name": "data"}),
    ("/api/datasets/{owner}/{name}/commits/{rev}", {"owner": "alice", "name": "data", "rev": "main"}),
    ("/api/whoami-v2", {}),
]

# Pages, files and git: a 4xx (an HTML page, a file download's or git's own reply), never a 500.
PAGES: list[tuple[str, dict[str, str]]] = [
    ("/avatars/{name}.svg", {"name": "alice"}),
    (
        "/datasets/{owner}/{name}/resolve/{rev}/{path}",
        {"owner": "alice", "name": "data", "rev": "main", "path": "values.csv"},
    ),
    (
        "/{owner}/{name}/resolve/{rev}/{path}",
        {"owner": "alice", "name": "tool", "rev": "main", "path": "a.txt"},
    ),
    (
        "/datasets/{owner}/{name}.git/info/refs",
        {"owner": "alice", "name": "data", "?service": "git-upload-pack"},
    ),
    ("/{owner}/{name}.git/info/refs", {"owner": "alice", "name": "tool", "?service": "git-upload-pack"}),
    ("/{owner}/{name}.git/info/lfs/objects/{oid}", {"owner": "alice", "name": "tool", "oid": "0" * 64}),
    ("/explore", {"?q": "data", "?~kind": "dataset", "?~sort": "name"}),
    ("/", {"?q": "data"}),
    ("/login", {"?~next": "/alice"}),
    ("/new", {"?~kind": "dataset"}),
    ("/jobs", {"?owner": "alice", "?~status": "queued", "?repo": "alice/data"}),
    ("/jobs/{job_id}", {"job_id": "1"}),
    ("/{owner}", {"owner": "alice"}),
    ("/{owner}", {"owner": "lab"}),
    ("/{owner}/{name}", {"owner": "alice", "name": "tool"}),
    ("/{owner}/{name}/tree/{rev}", {"owner": "alice", "name": "tool", "rev": "main"}),
    ("/{owner}/{name}/blob/main/{path}", {"owner": "alice", "name": "tool", "path": "a.txt"}),
    ("/{owner}/{name}/commits", {"owner": "alice", "name": "tool", "?rev": "main", "?path": "a.txt"}),
    ("/{owner}/{name}/commits/{rev}", {"owner": "alice", "name": "tool", "rev": "main"}),
    ("/{owner}/{name}/commit/{sha}", {"owner": "alice", "name": "tool", "sha": "main"}),
    ("/{owner}/{name}/branches", {"owner": "alice", "name": "tool"}),
    ("/{owner}/{name}/settings", {"owner": "alice", "name": "tool"}),
    ("/{owner}/{name}/run", {"owner": "alice", "name": "tool"}),
    ("/datasets/{owner}/{name}", {"owner": "alice", "name": "data"}),
    ("/datasets/{owner}/{name}/tree/{rev}", {"owner": "alice", "name": "data", "rev": "main"}),
    ("/datasets/{owner}/{name}/blob/main/{path}", {"owner": "alice", "name": "data", "path": "values.csv"}),
    (
        "/datasets/{owner}/{name}/viewer",
        {"owner": "alice", "name": "data", "?rev": "main", "?~table": "values"},
    ),
    ("/datasets/{owner}/{name}/viewer", {"owner": "alice", "name": "data", "?~sql": "select 1"}),
    ("/datasets/{owner}/{name}/viewer/{rev}", {"owner": "alice", "name": "data", "rev": "main"}),
]

POISONS = ["%00x", "%00", "%01x", "%0Ax"]


@dataclass(frozen=True)
class Request:
    url: str
    must_refuse: bool  # whether the poisoned value must be a 4xx; else anything but a 5xx will do


def requests(routes: list[tuple[str, dict[str, str]]], poison: str) -> list[Request]:
    """Each route once per parameter, that parameter's valid value followed by `poison`.

    A name in the path must always be refused (nothing is named so). A query parameter must be refused
    when it holds a NUL, unless it is marked `?~`: a value that is ignored when it is not one of a few
    known words (a sort order, a kind…), or that never reaches the database. Other control characters
    in a query parameter are only characters: a search for them may well find nothing (200)."""
    out = []
    for template, values in routes:
        for param in values:
            path = template
            query = []
            for name, value in values.items():
                value = value + poison if name == param else value
                if name.startswith("?"):
                    query.append(f"{name.lstrip('?~')}={value}")
                else:
                    path = path.replace(f"{{{name}}}", value)
            url = path + ("?" + "&".join(query) if query else "")
            if not param.startswith("?"):
                must_refuse = True
            else:
                must_refuse = poison.startswith("%00") and not param.startswith("?~")
            out.append(Request(url, must_refuse))
    return out


def wrong_reply(request: Request, status: int) -> bool:
    return status >= 500 or (request.must_refuse and not 400 <= status < 500)


@pytest.fixture
def world(client: TestClient, alice: Account, bob: Account) -> Account:
    r = client.post(f"{API}/orgs", json={"name": "lab"}, headers=alice.headers)
    assert r.status_code == 201, r.text
    create_repo(client, alice, "data", kind="dataset")
    committed(client, alice, "alice/data", {"values.csv": "v\n1\n2\n"})
    create_repo(client, alice, "tool", kind="code")
    committed(client, alice, "alice/tool", {"a.txt": "hello\n"})
    return alice


def test_every_route_answers_its_valid_values(client: TestClient, world: Account) -> None:
    """The sweep's routes and values are right: without the poison, none answers an error."""
    for template, values in ROUTES + PAGES:
        if {"job_id", "oid"} & set(values) or template.endswith("/run") or "/settings" in template:
            continue  # no job 1 nor LFS object; the run and settings pages are for browsers logged in
        url = requests([(template, values)], "")[0].url if values else template
        r = client.get(url, headers=world.headers, follow_redirects=False)
        assert r.status_code < 400, (url, r.status_code, r.text[:300])


@pytest.mark.parametrize("poison", POISONS)
def test_a_control_character_in_an_api_request_is_4xx_json(
    client: TestClient, world: Account, poison: str
) -> None:
    wrong = []
    for request in requests(ROUTES, poison):
        for headers in ({}, world.headers):
            r = client.get(request.url, headers=headers, follow_redirects=False)
            if wrong_reply(request, r.status_code):
                wrong.append(f"{request.url}: {r.status_code} {r.text[:200]}")
            elif r.status_code >= 400:
                try:
                    error_code(r, r.status_code)
                except AssertionError as exc:
                    wrong.append(f"{request.url}: {exc}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("poison", POISONS)
def test_a_control_character_in_a_page_file_or_git_url_is_4xx(
    client: TestClient, world: Account, poison: str
) -> None:
    wrong = []
    for request in requests(PAGES, poison):
        r = client.get(request.url, headers={**world.headers, "Accept": "text/html"}, follow_redirects=False)
        if wrong_reply(request, r.status_code):
            wrong.append(f"{request.url}: {r.status_code} {r.text[:200]}")
    assert not wrong, "\n".join(wrong)


def test_a_name_with_a_nul_names_nothing(client: TestClient, world: Account) -> None:
    """Looked up, such a name is unknown (404, as any unknown name: nothing about what exists leaks);
    never the name cut at the NUL."""
    for url, code in [
        (f"{API}/users/alice%00x", "owner_not_found"),
        (f"{API}/orgs/lab%00", "owner_not_found"),
        (f"{API}/repos/al%00ice/data", "repo_not_found"),
        (f"{API}/repos/alice/data%00", "repo_not_found"),
        (f"{API}/repos/alice/data/raw/main/values.csv%00x", "entry_not_found"),
        (f"{API}/repos/alice/data/raw/main%00x/values.csv", "revision_not_found"),
        ("/api/datasets/alice%00/data", "RepoNotFound"),
        ("/datasets/alice/data/resolve/main/values.csv%00x", "EntryNotFound"),
    ]:
        r = client.get(url, headers=world.headers)
        assert r.status_code == 404, (url, r.status_code, r.text)
        assert code in (r.json().get("error"), r.headers.get("x-error-code")), (url, r.json(), r.headers)
    r = client.post(f"{API}/repos", json={"name": "x", "owner": "lab\x00"}, headers=world.headers)
    assert error_code(r, 404) == "owner_not_found"
    r = client.post(f"{API}/auth/token", json={"name": "alice\x00", "password": world.password})
    assert error_code(r, 401) == "bad_credentials"


def test_filters_and_searches_with_a_nul_are_422(client: TestClient, world: Account) -> None:
    r = client.get(f"{API}/repos?owner=alice%00")
    assert error_code(r, 422) == "invalid_name"
    assert "is not a name" in r.json()["message"]
    r = client.get(f"{API}/repos?q=da%00ta")
    assert error_code(r, 422) == "invalid_input"
    assert r.json()["message"] == "the search contains a NUL character"
    r = client.get("/api/models?author=alice%00")
    assert r.status_code == 422 and r.json()["error"] == "invalid_name"
    r = client.get("/api/models?search=da%00ta")
    assert r.status_code == 422 and r.json()["error"] == "invalid_input"
    r = client.get(f"{API}/jobs?owner=alice%00")
    assert error_code(r, 422) == "invalid_name"
    r = client.get(f"{API}/repos/alice/data/commits?path=values.csv%00")
    assert error_code(r, 422) == "invalid_path"
    # Other control characters are only characters: nothing holds them, so nothing is found.
    r = client.get(f"{API}/repos?q=da%01ta")
    assert r.status_code == 200 and r.json()["items"] == []


def test_text_that_the_database_cannot_hold_is_422(client: TestClient, world: Account) -> None:
    """The safety net for text that reaches the database unchecked: an unpaired surrogate (JSON can
    spell one) fails on both backends, a NUL on PostgreSQL; either is the request's mistake."""
    r = client.post(
        f"{API}/repos",
        content=b'{"name": "surrogate", "description": "a\\udcffb"}',
        headers={**world.headers, "Content-Type": "application/json"},
    )
    assert error_code(r, 422) == "invalid_input"
    assert "not valid Unicode" in r.json()["message"]
    if BACKEND == "postgresql":
        r = client.post(f"{API}/repos", json={"name": "nul", "description": "a\x00b"}, headers=world.headers)
        assert error_code(r, 422) == "invalid_input"
        assert "contains a NUL character" in r.json()["message"]
    names = {repo["name"] for repo in client.get(f"{API}/repos?owner=alice").json()["items"]}
    assert "surrogate" not in names and (BACKEND != "postgresql" or "nul" not in names)
