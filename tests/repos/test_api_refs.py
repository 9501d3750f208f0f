"""Branches and tags through the REST API: list, create (lightweight and annotated tags), delete."""

from __future__ import annotations

import pygit2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account

REPO = "alice/refs"


@pytest.fixture
def shas(client: TestClient, alice: Account) -> list[str]:
    create_repo(client, alice, "refs")
    return [
        committed(client, alice, REPO, {"a.txt": "1"}, message="one"),
        committed(client, alice, REPO, {"a.txt": "2"}, message="two"),
    ]


def refs(client: TestClient) -> dict[str, dict[str, str]]:
    r = client.get(f"{API}/repos/{REPO}/refs")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default_branch"] == "main"
    return {
        "branches": {b["name"]: b["target"] for b in body["branches"]},
        "tags": {t["name"]: t["target"] for t in body["tags"]},
    }


def create(client: TestClient, who: Account, **body: object):  # type: ignore[no-untyped-def]
    return client.post(f"{API}/repos/{REPO}/refs", json=body, headers=who.headers)


def test_list_refs(client: TestClient, shas: list[str]) -> None:
    assert refs(client) == {"branches": {"main": shas[1]}, "tags": {}}
    full = client.get(f"{API}/repos/{REPO}/refs").json()
    assert full["branches"] == [{"name": "main", "ref": "refs/heads/main", "target": shas[1]}]


def test_create_branches(client: TestClient, alice: Account, shas: list[str]) -> None:
    r = create(client, alice, name="dev")
    assert r.status_code == 201, r.text
    assert r.json() == {"name": "dev", "ref": "refs/heads/dev", "target": shas[1]}
    assert create(client, alice, type="branch", name="feature/old", revision=shas[0]).status_code == 201
    assert create(client, alice, name="from-dev", revision="dev").status_code == 201
    assert refs(client)["branches"] == {
        "main": shas[1],
        "dev": shas[1],
        "feature/old": shas[0],
        "from-dev": shas[1],
    }
    files = client.get(f"{API}/repos/{REPO}/raw/feature/old/a.txt")
    assert files.content == b"1"


def test_create_lightweight_and_annotated_tags(
    app: FastAPI, client: TestClient, alice: Account, shas: list[str]
) -> None:
    r = create(client, alice, type="tag", name="v1.0", revision=shas[0])
    assert r.status_code == 201, r.text
    assert r.json() == {"name": "v1.0", "ref": "refs/tags/v1.0", "target": shas[0]}
    r = create(client, alice, type="tag", name="v2.0", message="Release 2.0\n\nWith notes.")
    assert r.status_code == 201, r.text
    assert r.json()["target"] == shas[1]
    assert refs(client)["tags"] == {"v1.0": shas[0], "v2.0": shas[1]}

    repo_id = client.get(f"{API}/repos/{REPO}").json()["id"]
    g = pygit2.Repository(str(app.state.store.path(repo_id)))
    light = g.references["refs/tags/v1.0"]
    assert str(light.target) == shas[0]  # points at the commit itself
    annotated = g[g.references["refs/tags/v2.0"].target]
    assert isinstance(annotated, pygit2.Tag)
    assert annotated.name == "v2.0"
    assert annotated.message.startswith("Release 2.0")
    assert annotated.tagger.name == "alice"
    assert str(annotated.target) == shas[1]

    # Tags are revisions for reading.
    assert client.get(f"{API}/repos/{REPO}/raw/v1.0/a.txt").content == b"1"
    assert client.get(f"{API}/repos/{REPO}/raw/v2.0/a.txt").content == b"2"
    assert client.get(f"{API}/repos/{REPO}/commits/v2.0").json()["id"] == shas[1]


def test_duplicate_refs_are_409(client: TestClient, alice: Account, shas: list[str]) -> None:
    assert create(client, alice, name="dev").status_code == 201
    assert error_code(create(client, alice, name="dev", revision=shas[0]), 409) == "ref_exists"
    assert error_code(create(client, alice, name="main"), 409) == "ref_exists"
    assert create(client, alice, type="tag", name="v1").status_code == 201
    assert error_code(create(client, alice, type="tag", name="v1", message="again"), 409) == "ref_exists"
    assert refs(client) == {"branches": {"main": shas[1], "dev": shas[1]}, "tags": {"v1": shas[1]}}


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a..b",
        "with space",
        "ends/",
        "/starts",
        "x.lock",
        "a~1",
        "a^b",
        "a:b",
        "q?",
        "st*r",
        "br[",
        "a@{b",
        "-x",
        "@",
        "HEAD",
        "x" * 201,
    ],
)
def test_invalid_ref_names_are_422(client: TestClient, alice: Account, shas: list[str], name: str) -> None:
    assert error_code(create(client, alice, name=name), 422) == "invalid_ref"
    assert error_code(create(client, alice, type="tag", name=name), 422) == "invalid_ref"
    assert refs(client) == {"branches": {"main": shas[1]}, "tags": {}}


@pytest.mark.parametrize("name", ["a\x00b", "a\x00", "\x00", "a\x01b", "line\nbreak", "tab\there", "a\x7fb"])
def test_ref_names_with_control_characters_are_422(
    client: TestClient, alice: Account, shas: list[str], name: str
) -> None:
    """pygit2 reads a name only up to a NUL ("a\x00b" would pass as "a"); git refuses every control
    character in a ref name, and so do we, before anything is written."""
    for kind in ("branch", "tag"):
        for extra in ({}, {"message": "annotated"}):
            r = create(client, alice, type=kind, name=name, **extra)
            assert error_code(r, 422) == "invalid_ref"
            assert f"invalid {kind} name" in r.json()["message"]
            assert "control characters" in r.json()["message"]
    assert refs(client) == {"branches": {"main": shas[1]}, "tags": {}}


def test_ref_names_and_revisions_that_are_not_unicode_are_4xx(
    client: TestClient, alice: Account, shas: list[str]
) -> None:
    """JSON may spell an unpaired surrogate (`"\\udcff"`), which no UTF-8 git name can hold."""
    r = client.post(
        f"{API}/repos/{REPO}/refs",
        content=b'{"name": "a\\udcffb"}',
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert error_code(r, 422) == "invalid_ref"
    r = client.post(
        f"{API}/repos/{REPO}/refs",
        content=b'{"name": "x", "revision": "a\\udcffb"}',
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert error_code(r, 404) == "revision_not_found"
    assert refs(client) == {"branches": {"main": shas[1]}, "tags": {}}


def test_deleting_a_ref_named_with_a_nul_deletes_nothing(
    client: TestClient, alice: Account, shas: list[str]
) -> None:
    """`a%00b` must not name branch `a` (what pygit2 would read), nor anything else."""
    assert create(client, alice, name="a").status_code == 201
    assert create(client, alice, type="tag", name="a").status_code == 201
    for kind in ("branch", "tag"):
        r = client.delete(f"{API}/repos/{REPO}/refs/{kind}/a%00b", headers=alice.headers)
        assert error_code(r, 404) == "ref_not_found"
    assert refs(client) == {"branches": {"main": shas[1], "a": shas[1]}, "tags": {"a": shas[1]}}


def test_invalid_type_or_revision(client: TestClient, alice: Account, shas: list[str]) -> None:
    assert error_code(create(client, alice, type="note", name="x"), 422) == "invalid_input"
    assert error_code(create(client, alice, name="x", revision="nope"), 404) == "revision_not_found"
    assert refs(client)["branches"] == {"main": shas[1]}


def test_delete_branch_and_tag(client: TestClient, alice: Account, shas: list[str]) -> None:
    create(client, alice, name="feature/gone")
    create(client, alice, type="tag", name="v0", message="annotated")
    create(client, alice, type="tag", name="v00")
    assert (
        client.delete(f"{API}/repos/{REPO}/refs/branch/feature/gone", headers=alice.headers).status_code
        == 204
    )
    assert client.delete(f"{API}/repos/{REPO}/refs/tag/v0", headers=alice.headers).status_code == 204
    assert client.delete(f"{API}/repos/{REPO}/refs/tags/v00", headers=alice.headers).status_code == 204
    assert refs(client) == {"branches": {"main": shas[1]}, "tags": {}}
    r = client.delete(f"{API}/repos/{REPO}/refs/branch/feature/gone", headers=alice.headers)
    assert error_code(r, 404) == "ref_not_found"
    r = client.delete(f"{API}/repos/{REPO}/refs/note/x", headers=alice.headers)
    assert error_code(r, 422) == "invalid_ref"


def test_the_default_branch_cannot_be_deleted(client: TestClient, alice: Account, shas: list[str]) -> None:
    r = client.delete(f"{API}/repos/{REPO}/refs/branch/main", headers=alice.headers)
    assert error_code(r, 409) == "protected_branch"
    assert refs(client)["branches"] == {"main": shas[1]}


def test_refs_need_write(client: TestClient, alice: Account, bob: Account, shas: list[str]) -> None:
    create(client, alice, name="keep")
    assert error_code(client.post(f"{API}/repos/{REPO}/refs", json={"name": "x"}), 401) == "login_required"
    assert error_code(create(client, bob, name="x"), 403) == "forbidden"
    r = client.post(f"{API}/repos/{REPO}/refs", json={"name": "x"}, headers=alice.read_headers)
    assert error_code(r, 403) == "insufficient_scope"
    assert (
        error_code(client.delete(f"{API}/repos/{REPO}/refs/branch/keep", headers=bob.headers), 403)
        == "forbidden"
    )
    assert refs(client)["branches"] == {"main": shas[1], "keep": shas[1]}
