"""Large files and storage on the web: an LFS file's page, and storage use on profile pages."""

from __future__ import annotations

import os
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.accounts.service import get_owner
from opensci.storage import quota
from tests.conftest import Account
from tests.web.conftest import log_in


def _commit_big(app: FastAPI, alice: Account, name: str, data: bytes) -> None:
    with TestClient(app) as c:
        assert c.post("/api/v1/repos", json={"name": name}, headers=alice.headers).status_code == 201
        r = c.post(
            f"/api/v1/repos/alice/{name}/commits",
            data={"message": "big"},
            files=[("files", ("weights/model.bin", data))],
            headers=alice.headers,
        )
        assert r.status_code == 201, r.text


def test_an_lfs_file_page_shows_its_size_and_serves_its_content(
    app: FastAPI, alice: Account, web: TestClient
) -> None:
    app.state.settings.lfs_threshold_bytes = 1000
    data = os.urandom(250_000)
    _commit_big(app, alice, "models", data)
    page = web.get("/alice/models/blob/main/weights/model.bin")
    assert page.status_code == 200
    assert "Git LFS" in page.text and "244.1 KiB" in page.text
    assert web.get("/api/v1/repos/alice/models/raw/main/weights/model.bin").content == data
    attrs = web.get("/api/v1/repos/alice/models/raw/main/.gitattributes").text
    assert "/weights/model.bin filter=lfs diff=lfs merge=lfs -text" in attrs


def test_storage_use_is_shown_to_the_owner_only(
    app: FastAPI, alice: Account, bob: Account, browser: Callable[[], TestClient]
) -> None:
    app.state.settings.lfs_threshold_bytes = 1000
    _commit_big(app, alice, "data", os.urandom(50_000))
    with app.state.db.session() as session:
        quota.set_limit(session, get_owner(session, "alice"), 10**9)
        session.commit()
    own = log_in(browser(), alice).get("/alice")
    assert "Storage" in own.text and "48.8 KiB used of 953.7 MiB" in own.text and "<meter" in own.text
    other = log_in(browser(), bob).get("/alice")
    assert other.status_code == 200 and "used of" not in other.text
    anon = browser().get("/alice")
    assert "used of" not in anon.text


def test_storage_api_reports_use_and_admins_set_quotas(
    app: FastAPI, alice: Account, bob: Account, make_user: Callable[..., Account]
) -> None:
    root = make_user("root", admin=True)
    app.state.settings.lfs_threshold_bytes = 1000
    _commit_big(app, alice, "d", os.urandom(5000))
    with TestClient(app) as c:
        r = c.get("/api/v1/owners/alice/storage", headers=alice.headers)
        assert r.json() == {
            "owner": "alice",
            "used_bytes": 5000,
            "limit_bytes": None,
            "available_bytes": None,
            "objects": 1,
            "pending_bytes": 0,
        }
        assert c.get("/api/v1/owners/alice/storage", headers=bob.headers).status_code == 403
        assert (
            c.put(
                "/api/v1/owners/alice/storage", json={"limit_bytes": 6000}, headers=alice.headers
            ).status_code
            == 403
        )
        r = c.put("/api/v1/owners/alice/storage", json={"limit_bytes": 6000}, headers=root.headers)
        assert r.status_code == 200 and r.json()["available_bytes"] == 1000
        bad = c.put("/api/v1/owners/alice/storage", json={"limit_bytes": -1}, headers=root.headers)
        assert bad.status_code == 422
        # A commit that does not fit is refused whole, with nothing committed.
        r = c.post(
            "/api/v1/repos/alice/d/commits",
            data={"message": "too much"},
            files=[("files", ("more.bin", os.urandom(5000)))],
            headers=alice.headers,
        )
        assert r.status_code == 413 and r.json()["error"] == "quota_exceeded"
        assert len(c.get("/api/v1/repos/alice/d/commits", headers=alice.headers).json()["items"]) == 1
