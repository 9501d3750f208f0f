"""Every error of the REST API has one shape: `{"error": <snake_case code>, "message": <sentence>}`.

Like datasette's test_error_shape: a representative failing request for each router and each status the
API uses, checked for the status, the JSON content type and exactly those two keys. Git's smart HTTP
endpoints are the one deliberate exception (git clients print a plain-text body); they are pinned at the
end so the exception stays deliberate.
"""

from __future__ import annotations

import json
import json.scanner
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from opensci.app import _decoding_json, create_app
from tests.api_helpers import API, committed, create_repo, new_account, standalone_app
from tests.conftest import Account

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


@dataclass
class World:
    client: TestClient
    alice: Account
    bob: Account
    head: str
    token_id: str


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    method: str
    url: str
    code: str | None = None  # the expected error code, when the case is about one
    who: str | None = None  # "alice", "bob", "alice-read", "bad-token" or None (anonymous)
    kwargs: Callable[[World], dict[str, Any]] = field(default=lambda w: {})


def commit_form(message: str = "m", **data: str) -> Callable[[World], dict[str, Any]]:
    return lambda w: {"data": {"message": message, **data}, "files": [("files", ("f.txt", b"x"))]}


CASES = [
    # Routing.
    Case("unknown api route", 404, "GET", f"{API}/no/such/thing", "not_found"),
    Case("unknown api root", 404, "GET", "/api/nothing", "not_found"),
    Case("method not allowed", 405, "DELETE", f"{API}/users", "method_not_allowed"),
    Case("method not allowed on health", 405, "POST", "/api/health", "method_not_allowed"),
    Case("method not allowed on repo", 405, "PUT", f"{API}/repos/alice/data", "method_not_allowed", "alice"),
    # Request validation.
    Case(
        "malformed json",
        422,
        "POST",
        f"{API}/users",
        "invalid_input",
        kwargs=lambda w: {"content": b'{"name": "x", ', "headers": {"Content-Type": "application/json"}},
    ),
    Case(
        "json that is not an object",
        422,
        "POST",
        f"{API}/repos",
        "invalid_input",
        "alice",
        lambda w: {"json": ["a", "list"]},
    ),
    Case(
        "form instead of json",
        422,
        "POST",
        f"{API}/orgs",
        None,
        "alice",
        lambda w: {"data": {"name": "x"}},
    ),
    Case("missing fields", 422, "POST", f"{API}/users", "invalid_input", kwargs=lambda w: {"json": {}}),
    Case(
        "wrong types",
        422,
        "POST",
        f"{API}/repos",
        "invalid_input",
        "alice",
        lambda w: {"json": {"name": ["not", "a", "string"], "private": "perhaps"}},
    ),
    Case(
        "wrong enum",
        422,
        "PUT",
        f"{API}/orgs/lab/members/bob",
        "invalid_input",
        "alice",
        lambda w: {"json": {"role": "king"}},
    ),
    Case("wrong query type", 422, "GET", f"{API}/repos?per_page=lots", "invalid_input"),
    Case("query out of range", 422, "GET", f"{API}/repos/alice/data/commits?page=0", "invalid_input"),
    # Domain validation (422).
    Case(
        "invalid user name",
        422,
        "POST",
        f"{API}/users",
        "invalid_name",
        kwargs=lambda w: {"json": {"name": "a/b", "password": "long enough"}},
    ),
    Case(
        "weak password",
        422,
        "POST",
        f"{API}/users",
        "weak_password",
        kwargs=lambda w: {"json": {"name": "ok", "password": "x"}},
    ),
    Case(
        "invalid orcid",
        422,
        "PATCH",
        f"{API}/user",
        "invalid_orcid",
        "alice",
        lambda w: {"json": {"orcid": "0000-0002-1825-0098"}},
    ),
    Case(
        "invalid repo name",
        422,
        "POST",
        f"{API}/repos",
        "invalid_name",
        "alice",
        lambda w: {"json": {"name": "x.git"}},
    ),
    Case(
        "invalid ref name",
        422,
        "POST",
        f"{API}/repos/alice/data/refs",
        "invalid_ref",
        "alice",
        lambda w: {"json": {"name": "a..b"}},
    ),
    Case(
        "invalid commit path",
        422,
        "POST",
        f"{API}/repos/alice/data/commits",
        "invalid_path",
        "alice",
        lambda w: {"data": {"message": "m", "delete": "../x"}},
    ),
    Case(
        "empty commit message",
        422,
        "POST",
        f"{API}/repos/alice/data/commits",
        "invalid_message",
        "alice",
        commit_form(""),
    ),
    Case("not a folder", 422, "GET", f"{API}/repos/alice/data/tree/main/README.md", "not_a_folder"),
    Case("invalid sort", 422, "GET", f"{API}/repos?sort=random", "invalid_sort"),
    # 401.
    Case("whoami anonymous", 401, "GET", f"{API}/user", "login_required"),
    Case(
        "create repo anonymous",
        401,
        "POST",
        f"{API}/repos",
        "login_required",
        kwargs=lambda w: {"json": {"name": "x"}},
    ),
    Case("bad token", 401, "GET", f"{API}/repos", "invalid_token", "bad-token"),
    Case(
        "bad basic credentials",
        401,
        "GET",
        f"{API}/user",
        "invalid_token",
        kwargs=lambda w: {"headers": {"Authorization": "Basic !!!"}},
    ),
    Case(
        "wrong password",
        401,
        "POST",
        f"{API}/auth/token",
        "bad_credentials",
        kwargs=lambda w: {"json": {"name": "alice", "password": "wrong password"}},
    ),
    Case(
        "commit anonymous",
        401,
        "POST",
        f"{API}/repos/alice/data/commits",
        "login_required",
        None,
        commit_form(),
    ),
    # 403.
    Case(
        "create under someone else",
        403,
        "POST",
        f"{API}/repos",
        "forbidden",
        "bob",
        lambda w: {"json": {"name": "x", "owner": "alice"}},
    ),
    Case(
        "commit without write",
        403,
        "POST",
        f"{API}/repos/alice/data/commits",
        "forbidden",
        "bob",
        commit_form(),
    ),
    Case(
        "read token writes",
        403,
        "POST",
        f"{API}/user/tokens",
        "insufficient_scope",
        "alice-read",
        lambda w: {"json": {"name": "x"}},
    ),
    Case(
        "non-admin adds member",
        403,
        "PUT",
        f"{API}/orgs/lab/members/bob",
        "forbidden",
        "bob",
        lambda w: {"json": {"role": "owner"}},
    ),
    # 404.
    Case("unknown repo", 404, "GET", f"{API}/repos/alice/nothing", "repo_not_found"),
    Case("private repo", 404, "GET", f"{API}/repos/alice/secret", "repo_not_found", "bob"),
    Case("unknown user", 404, "GET", f"{API}/users/nobody", "owner_not_found"),
    Case("unknown org", 404, "GET", f"{API}/orgs/nobody/members", "owner_not_found"),
    Case("unknown token", 404, "DELETE", f"{API}/user/tokens/0123456789abcdef", "token_not_found", "alice"),
    Case("unknown revision", 404, "GET", f"{API}/repos/alice/data/commits/nope", "revision_not_found"),
    Case("unknown file", 404, "GET", f"{API}/repos/alice/data/raw/main/nope.txt", "entry_not_found"),
    Case("unknown ref", 404, "DELETE", f"{API}/repos/alice/data/refs/branch/nope", "ref_not_found", "alice"),
    Case("unknown avatar", 404, "GET", "/avatars/nobody.svg", "owner_not_found"),
    # 409.
    Case(
        "duplicate repo",
        409,
        "POST",
        f"{API}/repos",
        "repo_exists",
        "alice",
        lambda w: {"json": {"name": "DATA"}},
    ),
    Case(
        "duplicate user",
        409,
        "POST",
        f"{API}/users",
        "name_taken",
        kwargs=lambda w: {"json": {"name": "Bob", "password": "long enough"}},
    ),
    Case(
        "duplicate ref",
        409,
        "POST",
        f"{API}/repos/alice/data/refs",
        "ref_exists",
        "alice",
        lambda w: {"json": {"name": "main"}},
    ),
    Case(
        "stale parent",
        409,
        "POST",
        f"{API}/repos/alice/data/commits",
        "stale_parent",
        "alice",
        commit_form(parent_commit="0" * 40),
    ),
    Case(
        "default branch",
        409,
        "DELETE",
        f"{API}/repos/alice/data/refs/branch/main",
        "protected_branch",
        "alice",
    ),
    Case("last owner", 409, "DELETE", f"{API}/orgs/lab/members/alice", "last_owner", "alice"),
    # 416.
    Case(
        "range outside the file",
        416,
        "GET",
        f"{API}/repos/alice/data/raw/main/README.md",
        "range_not_satisfiable",
        kwargs=lambda w: {"headers": {"Range": "bytes=1000-"}},
    ),
]


@pytest.fixture(scope="module")
def world(database_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world for the whole module: every case fails, so none changes it."""
    with standalone_app(database_template, tmp_path_factory.mktemp("error-shape")) as app:
        alice, bob = new_account(app, "alice"), new_account(app, "bob")
        with TestClient(app, raise_server_exceptions=False) as client:
            create_repo(client, alice, "data", kind="dataset")
            create_repo(client, alice, "secret", private=True)
            head = committed(client, alice, "alice/data", {"README.md": "# data\n"})
            assert client.post(f"{API}/orgs", json={"name": "lab"}, headers=alice.headers).status_code == 201
            token_id = client.get(f"{API}/user/tokens", headers=alice.headers).json()[0]["id"]
            yield World(client, alice, bob, head, token_id)


def assert_envelope(r: Any, status: int, code: str | None = None) -> None:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].split(";")[0] == "application/json", r.headers["content-type"]
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error", "message"}, body
    assert isinstance(body["error"], str) and SNAKE.match(body["error"]), body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    if code is not None:
        assert body["error"] == code, body


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_shape(world: World, case: Case) -> None:
    headers = {
        "alice": world.alice.headers,
        "bob": world.bob.headers,
        "alice-read": world.alice.read_headers,
        "bad-token": {"Authorization": "Bearer osci_revoked-or-never-issued"},
        None: {},
    }[case.who]
    kwargs = case.kwargs(world)
    kwargs["headers"] = {**headers, **kwargs.get("headers", {})}
    r = world.client.request(case.method, case.url, **kwargs)
    assert_envelope(r, case.status, case.code)


def test_every_status_the_api_uses_is_covered() -> None:
    assert {c.status for c in CASES} >= {401, 403, 404, 405, 409, 416, 422}


def test_401_carries_a_challenge(world: World) -> None:
    r = world.client.get(f"{API}/user")
    assert_envelope(r, 401, "login_required")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_416_carries_the_size(world: World) -> None:
    r = world.client.get(f"{API}/repos/alice/data/raw/main/README.md", headers={"Range": "bytes=99-"})
    assert_envelope(r, 416, "range_not_satisfiable")
    assert r.headers["content-range"] == "bytes */7"


def test_errors_carry_the_request_id(world: World) -> None:
    r = world.client.get(f"{API}/repos/nobody/nothing", headers={"X-Request-ID": "trace-42"})
    assert_envelope(r, 404, "repo_not_found")
    assert r.headers["x-request-id"] == "trace-42"


# --- 413: a body over the limit, declared or streamed --------------------------------------------------


@pytest.fixture
def small_client(world: World) -> Iterator[TestClient]:
    """A second app on the world's home and database that accepts bodies of at most 1 KiB."""
    settings = world.client.app.state.settings  # type: ignore[attr-defined]
    small = create_app(settings.model_copy(update={"max_upload_bytes": 1024}))
    with TestClient(small, raise_server_exceptions=False) as c:
        yield c
    small.state.db.dispose()


def test_413_declared_and_streamed(world: World, small_client: TestClient) -> None:
    alice = world.alice
    big = b"x" * 5000
    cases = [
        ("POST", f"{API}/users", {"json": {"name": "n", "password": "p" * 5000}}),
        (
            "POST",
            f"{API}/repos/alice/data/commits",
            {"data": {"message": "m"}, "files": [("files", ("b", big))]},
        ),
        ("PATCH", f"{API}/user", {"json": {"description": "d" * 5000}}),
    ]
    for method, url, kwargs in cases:
        r = small_client.request(method, url, headers=alice.headers, **kwargs)
        assert_envelope(r, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 500

    r = small_client.post(
        f"{API}/repos/alice/data/commits",
        content=chunks(),
        headers={**alice.headers, "Content-Type": "multipart/form-data; boundary=zz"},
    )
    assert_envelope(r, 413, "payload_too_large")
    r = small_client.post(
        f"{API}/users", content=chunks(), headers={**alice.headers, "Content-Type": "application/json"}
    )
    assert_envelope(r, 413, "payload_too_large")


# --- the deliberate exception: git's smart HTTP speaks plain text to git clients --------------------------


def test_git_errors_are_plain_text_for_git_clients(world: World) -> None:
    c = world.client
    r = c.get("/alice/secret.git/info/refs", params={"service": "git-upload-pack"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic")
    assert not r.headers.get("content-type", "").startswith("application/json")
    r = c.get("/alice/secret.git/info/refs", params={"service": "git-upload-pack"}, headers=world.bob.headers)
    assert r.status_code == 404
    assert not r.headers.get("content-type", "").startswith("application/json")
    assert r.text.strip()
    r = c.get("/alice/data.git/info/refs")  # the dumb protocol
    assert r.status_code == 403
    assert not r.headers.get("content-type", "").startswith("application/json")
    assert r.text.strip()


# --- JSON nested deeper than Python's decoder goes ---------------------------------------------------------

DEEP = b"[" * 1000 + b"]" * 1000


def _deep(prefix: str) -> bytes:
    return prefix.encode() + DEEP + b"}"


# Every kind of JSON body the server reads: FastAPI's (a 400 "error parsing the body" before), and the
# routes that read theirs themselves (the jobs, the Hub's paths-info and commit, Git LFS: a 500 before).
DEEP_BODIES: list[tuple[str, str, bytes, str]] = [
    ("POST", f"{API}/users", _deep('{"name": "x", "password": '), "invalid_input"),
    ("PATCH", f"{API}/user", _deep('{"description": '), "invalid_input"),
    ("POST", f"{API}/repos", _deep('{"name": '), "invalid_input"),
    ("POST", f"{API}/repos", b'{"a": ' * 1000 + b"1" + b"}" * 1000, "invalid_input"),
    ("POST", f"{API}/repos/alice/data/refs", _deep('{"name": '), "invalid_input"),
    ("PUT", f"{API}/orgs/lab/members/bob", _deep('{"role": '), "invalid_input"),
    ("POST", f"{API}/datasets/alice/data/sql", _deep('{"sql": '), "invalid_input"),
    (
        "POST",
        f"{API}/jobs",
        _deep('{"code": {"repo": "alice/tool"}, "command": "true", "env": '),
        "invalid_spec",
    ),
    ("POST", "/api/repos/create", _deep('{"name": '), "invalid_input"),
    ("POST", "/api/datasets/alice/data/preupload/main", _deep('{"files": '), "invalid_input"),
    ("POST", "/api/datasets/alice/data/paths-info/main", _deep('{"paths": '), "invalid_input"),
    (
        "POST",
        "/api/datasets/alice/data/commit/main",
        b'{"key": "header", "value": {"summary": "s"}}\n' + _deep('{"key": "file", "value": ') + b"\n",
        "invalid_input",
    ),
    ("POST", "/datasets/alice/data.git/info/lfs/objects/batch", _deep('{"operation": '), "invalid_input"),
    ("POST", "/datasets/alice/data.git/info/lfs/objects/verify", _deep('{"oid": '), "invalid_input"),
]


@pytest.mark.parametrize("method,url,body,code", DEEP_BODIES, ids=[f"{m} {u}" for m, u, _, _ in DEEP_BODIES])
def test_a_body_nested_too_deeply_is_422(world: World, method: str, url: str, body: bytes, code: str) -> None:
    r = world.client.request(
        method, url, content=body, headers={**world.alice.headers, "Content-Type": "application/json"}
    )
    assert_envelope(r, 422, code)
    assert r.json()["message"].startswith("the request body is nested too deeply"), r.json()


def test_a_recursion_bug_is_still_a_500_and_logged(
    world: World, small_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Only JSON decoding is the caller's mistake: any other RecursionError is the server's bug."""

    def endless(n: int) -> int:
        return endless(n + 1) + 1

    def bug() -> None:
        endless(0)

    def decodes() -> None:
        json.loads("[" * 5000)

    app = small_client.app
    app.router.routes.insert(0, APIRoute(f"{API}/test-recursion-bug", bug))  # type: ignore[attr-defined]
    app.router.routes.insert(0, APIRoute(f"{API}/test-deep-json", decodes))  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="opensci"):
        r = small_client.get(f"{API}/test-recursion-bug")
    assert_envelope(r, 500, "internal_error")
    assert any(rec.exc_info and rec.exc_info[0] is RecursionError for rec in caplog.records), caplog.records
    assert_envelope(small_client.get(f"{API}/test-deep-json"), 422, "invalid_input")


def test_recursion_in_the_pure_python_json_decoder_is_recognized() -> None:
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    with pytest.raises(RecursionError) as caught:
        decoder.decode("[" * 5000)
    assert _decoding_json(caught.value)
    with pytest.raises(RecursionError) as caught:

        def endless(n: int) -> int:
            return endless(n + 1) + 1

        endless(0)
    assert not _decoding_json(caught.value)


def test_429_too_many_queued_jobs(app: FastAPI, client: TestClient, alice: Account) -> None:
    """The one 429 of the API: a user's queue is full (OPENSCI_COMPUTE_MAX_QUEUED_PER_USER)."""
    app.state.settings.compute_max_queued_per_user = 1
    create_repo(client, alice, "tool", kind="code")
    committed(client, alice, "alice/tool", {"run.sh": "true\n"})
    spec = {"code": {"repo": "alice/tool"}, "command": ["true"]}
    assert client.post(f"{API}/jobs", json=spec, headers=alice.headers).status_code == 201
    assert_envelope(client.post(f"{API}/jobs", json=spec, headers=alice.headers), 429, "too_many_queued_jobs")
