"""Repositories through the REST API: create, read, update (rename, transfer, visibility, default
branch), delete and list."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api_helpers import API, committed, create_repo, error_code, heads, tree_paths
from tests.conftest import Account, LiveServer, need_binary


@pytest.fixture
def lab(client: TestClient, make_user: Callable[..., Account], alice: Account) -> dict[str, Account]:
    """Org `lab` owned by alice, with carol (read), dave (write) and erin (admin)."""
    assert client.post(f"{API}/orgs", json={"name": "lab"}, headers=alice.headers).status_code == 201
    people = {}
    for name, role in (("carol", "read"), ("dave", "write"), ("erin", "admin")):
        people[name] = make_user(name)
        r = client.put(f"{API}/orgs/lab/members/{name}", json={"role": role}, headers=alice.headers)
        assert r.status_code == 200
    return people


def bare_path(app: FastAPI, repo_id: str) -> Path:
    return app.state.store.path(repo_id)


# --- create --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "prefix"), [("code", ""), ("dataset", "/datasets"), ("model", "")])
def test_create_each_kind(app: FastAPI, client: TestClient, alice: Account, kind: str, prefix: str) -> None:
    r = client.post(
        f"{API}/repos",
        json={
            "name": f"my-{kind}",
            "kind": kind,
            "description": "Something useful.",
            "license": "CC-BY-4.0",
            "tags": ["astro", "astro", "survey"],
        },
        headers=alice.headers,
    )
    assert r.status_code == 201, r.text
    repo = r.json()
    assert repo["full_name"] == f"alice/my-{kind}"
    assert repo["kind"] == kind
    assert repo["private"] is False
    assert repo["default_branch"] == "main"
    assert repo["license"] == "CC-BY-4.0"
    assert repo["tags"] == ["astro", "survey"]
    assert repo["url"] == f"http://testserver{prefix}/alice/my-{kind}"
    assert repo["clone_url"] == f"http://testserver{prefix}/alice/my-{kind}.git"
    assert (bare_path(app, repo["id"]) / "HEAD").read_text().strip() == "ref: refs/heads/main"

    got = client.get(f"{API}/repos/alice/my-{kind}")
    assert got.status_code == 200
    assert got.json() == repo


def test_create_private_repo_is_invisible_to_others(client: TestClient, alice: Account, bob: Account) -> None:
    repo = create_repo(client, alice, "secret", private=True)
    assert repo["private"] is True
    assert client.get(f"{API}/repos/alice/secret", headers=alice.headers).status_code == 200
    assert client.get(f"{API}/repos/alice/secret", headers=alice.read_headers).status_code == 200
    assert error_code(client.get(f"{API}/repos/alice/secret"), 404) == "repo_not_found"
    assert error_code(client.get(f"{API}/repos/alice/secret", headers=bob.headers), 404) == "repo_not_found"


def test_create_in_an_org_needs_write_there(
    client: TestClient, alice: Account, bob: Account, lab: dict[str, Account]
) -> None:
    r = client.post(f"{API}/repos", json={"name": "by-dave", "owner": "lab"}, headers=lab["dave"].headers)
    assert r.status_code == 201, r.text
    assert r.json()["full_name"] == "lab/by-dave"
    r = client.post(
        f"{API}/repos", json={"name": "by-erin", "owner": "LAB", "private": True}, headers=lab["erin"].headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == "lab"

    for who in (lab["carol"], bob):
        r = client.post(f"{API}/repos", json={"name": f"by-{who.name}", "owner": "lab"}, headers=who.headers)
        assert error_code(r, 403) == "forbidden"
    # Not under another user, either.
    r = client.post(f"{API}/repos", json={"name": "squat", "owner": "alice"}, headers=bob.headers)
    assert error_code(r, 403) == "forbidden"
    r = client.post(f"{API}/repos", json={"name": "x", "owner": "nobody"}, headers=bob.headers)
    assert error_code(r, 404) == "owner_not_found"
    names = {
        x["name"]
        for x in client.get(f"{API}/repos", params={"owner": "lab"}, headers=alice.headers).json()["items"]
    }
    assert names == {"by-dave", "by-erin"}


def test_create_needs_a_write_login(client: TestClient, alice: Account) -> None:
    assert error_code(client.post(f"{API}/repos", json={"name": "anon"}), 401) == "login_required"
    r = client.post(f"{API}/repos", json={"name": "readonly"}, headers=alice.read_headers)
    assert error_code(r, 403) == "insufficient_scope"
    assert client.get(f"{API}/repos", params={"owner": "alice"}).json()["total"] == 0


def test_duplicate_name_is_409_whatever_the_case_or_kind(client: TestClient, alice: Account) -> None:
    create_repo(client, alice, "Data")
    for name, kind in (("Data", "code"), ("data", "dataset"), ("DATA", "model")):
        r = client.post(f"{API}/repos", json={"name": name, "kind": kind}, headers=alice.headers)
        assert error_code(r, 409) == "repo_exists"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "a/b",
        "x.git",
        "X.GIT",
        "x" * 97,
        "ünïcode",
        "-dash",
        "dot.",
        "a..b",
        "sp ace",
        ".",
        "a\\b",
        "a\x00b",
    ],
)
def test_invalid_repo_names_are_422(app: FastAPI, client: TestClient, alice: Account, name: str) -> None:
    r = client.post(f"{API}/repos", json={"name": name}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_name"
    assert [p.name for p in app.state.settings.git_dir.iterdir()] == []


def test_invalid_kind_license_or_tags_are_422(client: TestClient, alice: Account) -> None:
    r = client.post(f"{API}/repos", json={"name": "k", "kind": "space"}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_input"
    r = client.post(f"{API}/repos", json={"name": "l", "license": "not a license!"}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_license"
    r = client.post(f"{API}/repos", json={"name": "t", "tags": ["bad tag"]}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_tags"
    assert client.get(f"{API}/repos", params={"owner": "alice"}).json()["total"] == 0


# --- update --------------------------------------------------------------------------------------------


def test_rename_keeps_the_git_data(app: FastAPI, client: TestClient, alice: Account) -> None:
    repo = create_repo(client, alice, "old-name")
    first = committed(client, alice, "alice/old-name", {"README.md": "hello\n"})

    r = client.patch(f"{API}/repos/alice/old-name", json={"name": "new-name"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["full_name"] == "alice/new-name"
    assert r.json()["id"] == repo["id"]
    assert bare_path(app, repo["id"]).is_dir()  # renames never move files

    assert error_code(client.get(f"{API}/repos/alice/old-name"), 404) == "repo_not_found"
    assert client.get(f"{API}/repos/alice/new-name/raw/main/README.md").text == "hello\n"
    second = committed(client, alice, "alice/new-name", {"more.txt": "more"}, parent=first)
    assert heads(client, alice, "alice/new-name") == {"main": second}
    assert tree_paths(client, alice, "alice/new-name") == {"README.md", "more.txt"}
    refs = client.get("/alice/new-name.git/info/refs", params={"service": "git-upload-pack"})
    assert refs.status_code == 200
    assert second.encode() in refs.content
    assert (
        client.get("/alice/old-name.git/info/refs", params={"service": "git-upload-pack"}).status_code == 401
    )


@pytest.mark.live
def test_clone_and_push_still_work_after_rename(
    app: FastAPI, live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    git = need_binary("git")
    with TestClient(app) as client:
        create_repo(client, alice, "before")
        committed(client, alice, "alice/before", {"a.txt": "a"})
        assert (
            client.patch(
                f"{API}/repos/alice/before", json={"name": "after"}, headers=alice.headers
            ).status_code
            == 200
        )
    url = live_server.url.replace("http://", f"http://alice:{alice.token}@") + "/alice/after.git"
    work = tmp_path / "clone"
    subprocess.run([git, "clone", "-q", url, str(work)], check=True, capture_output=True)
    assert (work / "a.txt").read_text() == "a"
    (work / "b.txt").write_text("b")
    subprocess.run([git, "-C", str(work), "add", "b.txt"], check=True)
    subprocess.run([git, "-C", str(work), "commit", "-qm", "b"], check=True)
    subprocess.run([git, "-C", str(work), "push", "-q", "origin", "main"], check=True, capture_output=True)
    with TestClient(app) as client:
        assert tree_paths(client, alice, "alice/after") == {"a.txt", "b.txt"}


def test_rename_onto_an_existing_name_is_409(client: TestClient, alice: Account) -> None:
    create_repo(client, alice, "one")
    create_repo(client, alice, "two")
    r = client.patch(f"{API}/repos/alice/one", json={"name": "TWO"}, headers=alice.headers)
    assert error_code(r, 409) == "repo_exists"
    r = client.patch(f"{API}/repos/alice/one", json={"name": "in/valid"}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_name"
    # Changing only the case of one's own name is fine.
    r = client.patch(f"{API}/repos/alice/one", json={"name": "One"}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["name"] == "One"


def test_transfer_to_an_org(
    app: FastAPI, client: TestClient, alice: Account, lab: dict[str, Account]
) -> None:
    repo = create_repo(client, alice, "moving", private=True)
    committed(client, alice, "alice/moving", {"data.csv": "a,b\n1,2\n"})
    r = client.patch(f"{API}/repos/alice/moving", json={"owner": "lab"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["full_name"] == "lab/moving"
    assert r.json()["id"] == repo["id"]
    assert client.get(f"{API}/repos/alice/moving", headers=alice.headers).status_code == 404
    # Now the org's members see it, by their role.
    carol, dave = lab["carol"], lab["dave"]
    assert client.get(f"{API}/repos/lab/moving/raw/main/data.csv", headers=carol.headers).text == "a,b\n1,2\n"
    assert (
        error_code(
            client.post(f"{API}/repos/lab/moving/refs", json={"name": "x"}, headers=carol.headers), 403
        )
        == "forbidden"
    )
    assert (
        client.post(f"{API}/repos/lab/moving/refs", json={"name": "x"}, headers=dave.headers).status_code
        == 201
    )


def test_transfer_needs_create_rights_at_the_target(
    client: TestClient, alice: Account, bob: Account, lab: dict[str, Account]
) -> None:
    create_repo(client, bob, "bobs")
    r = client.patch(f"{API}/repos/bob/bobs", json={"owner": "lab"}, headers=bob.headers)
    assert error_code(r, 403) == "forbidden"
    r = client.patch(f"{API}/repos/bob/bobs", json={"owner": "alice"}, headers=bob.headers)
    assert error_code(r, 403) == "forbidden"
    r = client.patch(f"{API}/repos/bob/bobs", json={"owner": "nobody"}, headers=bob.headers)
    assert error_code(r, 404) == "owner_not_found"
    assert client.get(f"{API}/repos/bob/bobs").status_code == 200


def test_visibility_change(client: TestClient, alice: Account, bob: Account) -> None:
    create_repo(client, alice, "flip")
    assert client.get(f"{API}/repos/alice/flip", headers=bob.headers).status_code == 200
    r = client.patch(f"{API}/repos/alice/flip", json={"private": True}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["private"] is True
    assert client.get(f"{API}/repos/alice/flip", headers=bob.headers).status_code == 404
    assert client.get(f"{API}/repos", params={"q": "flip"}, headers=bob.headers).json()["total"] == 0
    r = client.patch(f"{API}/repos/alice/flip", json={"private": False}, headers=alice.headers)
    assert r.json()["private"] is False
    assert client.get(f"{API}/repos/alice/flip").status_code == 200


def test_default_branch_change_only_to_an_existing_branch(
    app: FastAPI, client: TestClient, alice: Account
) -> None:
    repo = create_repo(client, alice, "branches")
    committed(client, alice, "alice/branches", {"a.txt": "main"})
    r = client.patch(f"{API}/repos/alice/branches", json={"default_branch": "dev"}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_ref"
    r = client.patch(
        f"{API}/repos/alice/branches", json={"default_branch": "bad..name"}, headers=alice.headers
    )
    assert error_code(r, 422) == "invalid_ref"

    committed(client, alice, "alice/branches", {"a.txt": "dev"}, branch="dev")
    r = client.patch(f"{API}/repos/alice/branches", json={"default_branch": "dev"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["default_branch"] == "dev"
    assert (bare_path(app, repo["id"]) / "HEAD").read_text().strip() == "ref: refs/heads/dev"
    # Reads without a revision now use the new default branch.
    assert (
        client.get(f"{API}/repos/alice/branches/tree").json()["commit"]
        == heads(client, alice, "alice/branches")["dev"]
    )
    assert (
        client.get(f"{API}/repos/alice/branches/commits").json()["items"][0]["id"]
        == heads(client, alice, "alice/branches")["dev"]
    )
    # And it is protected.
    r = client.delete(f"{API}/repos/alice/branches/refs/branch/dev", headers=alice.headers)
    assert error_code(r, 409) == "protected_branch"
    assert (
        client.delete(f"{API}/repos/alice/branches/refs/branch/main", headers=alice.headers).status_code
        == 204
    )


def test_metadata_update(client: TestClient, alice: Account) -> None:
    create_repo(client, alice, "meta")
    r = client.patch(
        f"{API}/repos/alice/meta",
        json={"description": "  New text.  ", "license": "MIT", "tags": ["a", "b"]},
        headers=alice.headers,
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["description"], body["license"], body["tags"]) == ("New text.", "MIT", ["a", "b"])
    assert client.get(f"{API}/repos/alice/meta").json()["tags"] == ["a", "b"]


def test_only_admins_update_or_delete(client: TestClient, alice: Account, lab: dict[str, Account]) -> None:
    create_repo(client, alice, "shared", owner="lab")
    for who in (lab["carol"], lab["dave"]):
        r = client.patch(f"{API}/repos/lab/shared", json={"description": "mine"}, headers=who.headers)
        assert error_code(r, 403) == "forbidden"
        assert error_code(client.delete(f"{API}/repos/lab/shared", headers=who.headers), 403) == "forbidden"
    r = client.patch(f"{API}/repos/lab/shared", json={"description": "ours"}, headers=lab["erin"].headers)
    assert r.status_code == 200
    r = client.patch(f"{API}/repos/lab/shared", json={"description": "x"}, headers=alice.read_headers)
    assert error_code(r, 403) == "insufficient_scope"
    assert client.get(f"{API}/repos/lab/shared").json()["description"] == "ours"


# --- delete --------------------------------------------------------------------------------------------


def test_delete_removes_the_row_and_the_bare_repository(
    app: FastAPI, client: TestClient, alice: Account
) -> None:
    repo = create_repo(client, alice, "doomed")
    committed(client, alice, "alice/doomed", {"a.txt": "a"})
    path = bare_path(app, repo["id"])
    assert path.is_dir()

    assert client.delete(f"{API}/repos/alice/doomed", headers=alice.headers).status_code == 204
    assert error_code(client.get(f"{API}/repos/alice/doomed", headers=alice.headers), 404) == "repo_not_found"
    assert not path.exists()
    assert [p.name for p in app.state.settings.git_dir.iterdir()] == []
    assert (
        error_code(client.delete(f"{API}/repos/alice/doomed", headers=alice.headers), 404) == "repo_not_found"
    )
    # The name is free again, and the new repository starts empty.
    fresh = create_repo(client, alice, "doomed")
    assert fresh["id"] != repo["id"]
    assert client.get(f"{API}/repos/alice/doomed/commits").json()["items"] == []


def test_delete_of_a_private_repo_by_a_stranger_is_404(
    client: TestClient, alice: Account, bob: Account
) -> None:
    create_repo(client, alice, "hidden", private=True)
    assert (
        error_code(client.delete(f"{API}/repos/alice/hidden", headers=bob.headers), 404) == "repo_not_found"
    )
    assert error_code(client.delete(f"{API}/repos/alice/hidden"), 401) == "login_required"
    assert client.get(f"{API}/repos/alice/hidden", headers=alice.headers).status_code == 200


# --- list ----------------------------------------------------------------------------------------------


def names(r) -> list[str]:  # type: ignore[no-untyped-def]
    assert r.status_code == 200, r.text
    return [x["full_name"] for x in r.json()["items"]]


def test_list_filters(client: TestClient, alice: Account, bob: Account) -> None:
    create_repo(client, alice, "galaxy-code", kind="code", description="Fits spectra")
    create_repo(client, alice, "galaxy-data", kind="dataset")
    create_repo(client, alice, "weights", kind="model", description="Trained on GALAXY images")
    create_repo(client, bob, "bobs-data", kind="dataset")

    assert set(names(client.get(f"{API}/repos", params={"owner": "alice"}))) == {
        "alice/galaxy-code",
        "alice/galaxy-data",
        "alice/weights",
    }
    assert set(names(client.get(f"{API}/repos", params={"owner": "ALICE", "kind": "dataset"}))) == {
        "alice/galaxy-data"
    }
    assert set(names(client.get(f"{API}/repos", params={"kind": "dataset"}))) == {
        "alice/galaxy-data",
        "bob/bobs-data",
    }
    # q matches the name, the description and the owner, without regard to case.
    assert set(names(client.get(f"{API}/repos", params={"q": "galaxy"}))) == {
        "alice/galaxy-code",
        "alice/galaxy-data",
        "alice/weights",
    }
    assert names(client.get(f"{API}/repos", params={"q": "SPECTRA"})) == ["alice/galaxy-code"]
    assert names(client.get(f"{API}/repos", params={"q": "bob"})) == ["bob/bobs-data"]
    assert names(client.get(f"{API}/repos", params={"owner": "nobody"})) == []
    assert names(client.get(f"{API}/repos", params={"sort": "name", "owner": "alice"})) == [
        "alice/galaxy-code",
        "alice/galaxy-data",
        "alice/weights",
    ]
    assert error_code(client.get(f"{API}/repos", params={"kind": "space"}), 422) == "invalid_kind"
    assert error_code(client.get(f"{API}/repos", params={"sort": "stars"}), 422) == "invalid_sort"


def test_list_pagination(client: TestClient, alice: Account) -> None:
    for i in range(7):
        create_repo(client, alice, f"r{i}")
    seen: list[str] = []
    page: int | None = 1
    pages = 0
    while page is not None:
        r = client.get(f"{API}/repos", params={"per_page": 3, "page": page, "sort": "name"})
        body = r.json()
        assert body["total"] == 7
        assert body["per_page"] == 3
        assert body["page"] == page
        assert len(body["items"]) <= 3
        seen += [x["name"] for x in body["items"]]
        page = body["next_page"]
        pages += 1
    assert pages == 3
    assert seen == [f"r{i}" for i in range(7)]
    beyond = client.get(f"{API}/repos", params={"per_page": 3, "page": 9}).json()
    assert (beyond["items"], beyond["total"], beyond["next_page"]) == ([], 7, None)
    assert error_code(client.get(f"{API}/repos", params={"per_page": 0}), 422) == "invalid_input"
    assert error_code(client.get(f"{API}/repos", params={"per_page": 101}), 422) == "invalid_input"
    assert error_code(client.get(f"{API}/repos", params={"page": 0}), 422) == "invalid_input"
    huge = client.get(f"{API}/repos", params={"page": 10**20})  # an OFFSET past 64 bits
    assert error_code(huge, 422) == "invalid_page"


def test_search_words_are_literal_not_sql_wildcards(client: TestClient, alice: Account) -> None:
    create_repo(client, alice, "plain", description="nothing special")
    create_repo(client, alice, "rate_100pct", description="100% of the time")
    assert names(client.get(f"{API}/repos", params={"q": "%"})) == ["alice/rate_100pct"]
    assert names(client.get(f"{API}/repos", params={"q": "_"})) == ["alice/rate_100pct"]
    assert names(client.get(f"{API}/repos", params={"q": "' OR 1=1 --"})) == []
    assert names(client.get(f"{API}/repos", params={"q": "\\"})) == []


def test_list_shows_private_repos_only_to_readers(
    client: TestClient,
    make_user: Callable[..., Account],
    alice: Account,
    bob: Account,
    lab: dict[str, Account],
) -> None:
    create_repo(client, alice, "public-one")
    create_repo(client, alice, "private-one", private=True)
    create_repo(client, alice, "lab-private", owner="lab", private=True)
    root = make_user("root", admin=True)

    everything = {"alice/public-one", "alice/private-one", "lab/lab-private"}
    expect: list[tuple[Account | None, set[str]]] = [
        (None, {"alice/public-one"}),
        (bob, {"alice/public-one"}),
        (lab["carol"], {"alice/public-one", "lab/lab-private"}),
        (alice, everything),
        (root, everything),
    ]
    for who, visible in expect:
        headers = who.headers if who else {}
        for params in ({}, {"owner": "alice"}, {"owner": "lab"}, {"q": "private"}, {"kind": "code"}):
            r = client.get(f"{API}/repos", params=params, headers=headers)
            got = set(names(r))
            assert got <= visible, (who and who.name, params, got)
            assert r.json()["total"] == len(got)
        assert set(names(client.get(f"{API}/repos", headers=headers))) == visible
    assert set(names(client.get(f"{API}/repos", headers=alice.read_headers))) == everything
