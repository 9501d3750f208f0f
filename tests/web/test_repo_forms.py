"""The forms that change repositories: /new and a repository's settings."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import Account
from tests.web.conftest import RepoRef, csrf_of


def test_new_repository_form_offers_own_namespace_and_writable_orgs(
    alice: Account,
    bob: Account,
    make_org: Callable[..., str],
    logged_in: Callable[[Account], TestClient],
) -> None:
    make_org(bob, "writers", members={"alice": "write"})
    make_org(bob, "readers", members={"alice": "read"})
    make_org(alice, "mine")
    page = logged_in(alice).get("/new?kind=dataset")
    assert page.status_code == 200
    assert '<option value="alice" selected>' in page.text
    assert '<option value="writers"' in page.text and '<option value="mine"' in page.text
    assert '<option value="readers"' not in page.text
    assert 'value="dataset" checked' in page.text


def test_create_a_repository_with_a_readme(
    alice: Account, logged_in: Callable[[Account], TestClient], web: TestClient
) -> None:
    client = logged_in(alice)
    token = csrf_of(client.get("/new").text)
    r = client.post(
        "/new",
        data={
            "owner": "alice",
            "name": "galaxies",
            "kind": "dataset",
            "visibility": "public",
            "description": "Galaxy <survey> data",
            "license": "CC-BY-4.0",
            "readme": "1",
            "csrf_token": token,
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/datasets/alice/galaxies"
    page = web.get("/datasets/alice/galaxies")
    assert page.status_code == 200
    assert "<h1>galaxies</h1>" in page.text and "Galaxy &lt;survey&gt; data" in page.text
    assert "Initial commit" in page.text and ">README.md</a>" in page.text
    commits = web.get("/api/v1/repos/alice/galaxies/commits").json()["items"]
    assert [c["title"] for c in commits] == ["Initial commit"]
    assert web.get("/api/v1/repos/alice/galaxies/raw/main/README.md").text.startswith("# galaxies\n")
    # a dataset's settings live under /datasets too
    settings = client.get("/datasets/alice/galaxies/settings")
    assert settings.status_code == 200
    assert 'action="/datasets/alice/galaxies/settings/delete"' in settings.text
    assert client.get("/alice/galaxies/settings").headers["location"] == "/datasets/alice/galaxies/settings"
    r = client.post(
        "/datasets/alice/galaxies/settings",
        data={"description": "Updated", "visibility": "public", "csrf_token": csrf_of(settings.text)},
    )
    assert r.headers["location"] == "/datasets/alice/galaxies/settings?saved=settings"
    assert "Updated" in web.get("/datasets/alice/galaxies").text


def test_create_an_empty_private_repository_in_an_org(
    alice: Account,
    bob: Account,
    make_org: Callable[..., str],
    logged_in: Callable[[Account], TestClient],
    web: TestClient,
) -> None:
    make_org(alice, "lab", members={"bob": "write"})
    client = logged_in(bob)
    r = client.post(
        "/new",
        data={
            "owner": "lab",
            "name": "notes",
            "kind": "code",
            "visibility": "private",
            "csrf_token": csrf_of(client.get("/new").text),
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/lab/notes"
    page = client.get("/lab/notes")
    assert "This repository is empty" in page.text and ">private<" in page.text
    assert web.get("/lab/notes").status_code == 404


def test_new_repository_errors_keep_the_form(
    alice: Account,
    bob: Account,
    make_repo: Callable[..., RepoRef],
    make_org: Callable[..., str],
    logged_in: Callable[[Account], TestClient],
) -> None:
    make_repo(alice, "taken")
    make_org(bob, "closed", members={"alice": "read"})
    client = logged_in(alice)
    token = csrf_of(client.get("/new").text)
    base = {"owner": "alice", "kind": "code", "visibility": "public", "csrf_token": token}
    r = client.post("/new", data={**base, "name": "taken", "description": "keep me"})
    assert r.status_code == 409 and "already exists" in r.text and 'value="keep me"' in r.text
    r = client.post("/new", data={**base, "name": "bad name!"})
    assert r.status_code == 422 and "invalid repository name" in r.text
    r = client.post("/new", data={**base, "name": "ok", "license": "not a license"})
    assert r.status_code == 422 and "invalid license" in r.text
    r = client.post("/new", data={**base, "name": "ok", "owner": "closed"})
    assert r.status_code == 403 and "may not create" in r.text
    r = client.post("/new", data={**base, "name": "ok", "kind": "spreadsheet"})
    assert r.status_code == 422 and "kind must be" in r.text


def test_settings_page_is_for_admins(
    alice: Account,
    bob: Account,
    make_repo: Callable[..., RepoRef],
    make_org: Callable[..., str],
    logged_in: Callable[[Account], TestClient],
    web: TestClient,
) -> None:
    make_org(alice, "lab", members={"bob": "write"})
    make_repo(alice, "tool", owner="lab", files={"a": "1"})
    owner = logged_in(alice)
    page = owner.get("/lab/tool/settings")
    assert page.status_code == 200 and "Delete this repository" in page.text
    assert 'href="/lab/tool/settings"' in owner.get("/lab/tool").text
    writer = logged_in(bob)
    assert writer.get("/lab/tool/settings").status_code == 403
    assert 'href="/lab/tool/settings"' not in writer.get("/lab/tool").text
    r = web.get("/lab/tool/settings")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Flab%2Ftool%2Fsettings"
    token = csrf_of(writer.get("/lab/tool").text)
    r = writer.post(
        "/lab/tool/settings", data={"description": "x", "visibility": "public", "csrf_token": token}
    )
    assert r.status_code == 403


def test_update_settings(
    alice: Account,
    make_repo: Callable[..., RepoRef],
    commit: Callable[..., str],
    logged_in: Callable[[Account], TestClient],
    web: TestClient,
) -> None:
    ref = make_repo(alice, "proj", files={"a": "1"})
    commit(alice, ref, {"b": "2"}, branch="dev")
    client = logged_in(alice)
    token = csrf_of(client.get("/alice/proj/settings").text)
    form = {
        "description": "Now described",
        "license": "MIT",
        "tags": "physics, optics  lasers",
        "visibility": "private",
        "default_branch": "dev",
        "csrf_token": token,
    }
    r = client.post("/alice/proj/settings", data=form)
    assert r.status_code == 303 and r.headers["location"] == "/alice/proj/settings?saved=settings"
    assert "Settings saved" in client.get(r.headers["location"]).text
    meta = client.get("/api/v1/repos/alice/proj", headers=alice.headers).json()
    assert meta["description"] == "Now described" and meta["license"] == "MIT"
    assert meta["tags"] == ["physics", "optics", "lasers"]
    assert meta["private"] is True and meta["default_branch"] == "dev"
    assert web.get("/alice/proj").status_code == 404  # now private
    # invalid values are refused and nothing changes
    r = client.post("/alice/proj/settings", data={**form, "license": "bad license", "description": "Other"})
    assert r.status_code == 422 and "invalid license" in r.text and 'value="bad license"' in r.text
    r = client.post("/alice/proj/settings", data={**form, "default_branch": "nope"})
    assert r.status_code == 422 and "does not exist" in r.text
    meta = client.get("/api/v1/repos/alice/proj", headers=alice.headers).json()
    assert meta["description"] == "Now described" and meta["default_branch"] == "dev"


def test_rename_and_delete(
    app: FastAPI,
    alice: Account,
    make_repo: Callable[..., RepoRef],
    logged_in: Callable[[Account], TestClient],
    web: TestClient,
) -> None:
    make_repo(alice, "old-name", files={"a": "1"})
    make_repo(alice, "other")
    client = logged_in(alice)
    token = csrf_of(client.get("/alice/old-name/settings").text)
    r = client.post("/alice/old-name/settings/rename", data={"new_name": "other", "csrf_token": token})
    assert r.status_code == 409 and "already exists" in r.text
    r = client.post("/alice/old-name/settings/rename", data={"new_name": "new-name", "csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/alice/new-name/settings?saved=rename"
    assert web.get("/alice/old-name").status_code == 404
    assert web.get("/alice/new-name").status_code == 200
    # deletion needs the full name typed
    r = client.post("/alice/new-name/settings/delete", data={"confirm": "new-name", "csrf_token": token})
    assert r.status_code == 400 and "nothing was deleted" in r.text
    assert web.get("/alice/new-name").status_code == 200
    r = client.post(
        "/alice/new-name/settings/delete", data={"confirm": "alice/new-name", "csrf_token": token}
    )
    assert r.status_code == 303 and r.headers["location"] == "/alice"
    assert web.get("/alice/new-name").status_code == 404
    assert "new-name" not in web.get("/alice").text
