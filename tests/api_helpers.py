"""Small helpers for tests that drive the REST API: create repositories, commit files, read refs; and
a module-wide app for test modules that build one expensive world and only read it (or write to
parts of it that no other test looks at)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from opensci.app import create_app
from opensci.db import Database
from opensci.settings import Settings
from tests.conftest import BACKEND, PG_ADMIN_URL, Account, isolate_env

API = "/api/v1"


@contextmanager
def standalone_app(database_template: str, tmp: Path) -> Iterator[FastAPI]:
    """An app with its own home and its own database (a copy of the SQLite template, or a freshly
    migrated PostgreSQL database), so that function-scoped tests, which empty the shared test
    database after each test, never touch it. Environment isolated as for every test."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_env(mp, tmp)
        with _database(database_template, tmp) as url:
            settings = Settings(
                home=tmp / "opensci-home",
                database_url=url,
                base_url="http://testserver",
                secret_key="test-secret",
                compute_scheduler=False,  # jobs stay queued: tests that run them start a scheduler
                _env_file=None,  # type: ignore[call-arg]
            )
            app = create_app(settings)
            try:
                yield app
            finally:
                app.state.db.dispose()


@contextmanager
def _database(template: str, tmp: Path) -> Iterator[str]:
    if BACKEND == "sqlite":
        path = tmp / "opensci.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    name = f"opensci_standalone_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        db = Database(url)
        db.upgrade()
        db.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def auth(who: Account | Mapping[str, str] | None) -> dict[str, str]:
    if who is None:
        return {}
    if isinstance(who, Account):
        return who.headers
    return dict(who)


def error_code(r: httpx.Response, status: int) -> str:
    """Assert an error reply with `status` in the one envelope; return its error code."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["message"], str) and body["message"], body
    return body["error"]


def create_repo(client: Any, who: Account, name: str, **fields: Any) -> dict[str, Any]:
    r = client.post(f"{API}/repos", json={"name": name, **fields}, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()


def commit(
    client: Any,
    who: Account | Mapping[str, str] | None,
    full_name: str,
    files: Mapping[str, bytes | str] | None = None,
    *,
    message: str = "update",
    delete: Iterable[str] = (),
    branch: str | None = None,
    parent: str | None = None,
) -> httpx.Response:
    """POST one multipart commit: each file is a `files` part named by its path."""
    data: dict[str, Any] = {"message": message}
    deletes = list(delete)
    if deletes:
        data["delete"] = deletes
    if branch is not None:
        data["branch"] = branch
    if parent is not None:
        data["parent_commit"] = parent
    parts = [
        (
            "files",
            (path, content.encode() if isinstance(content, str) else content, "application/octet-stream"),
        )
        for path, content in (files or {}).items()
    ]
    return client.post(f"{API}/repos/{full_name}/commits", data=data, files=parts or None, headers=auth(who))


def committed(client: Any, who: Account, full_name: str, files: Mapping[str, bytes | str], **kw: Any) -> str:
    """Commit and return the new commit id (the commit must succeed)."""
    r = commit(client, who, full_name, files, **kw)
    assert r.status_code == 201, r.text
    return r.json()["commit"]


def heads(client: Any, who: Account | None, full_name: str) -> dict[str, str]:
    """Branch name → commit id."""
    r = client.get(f"{API}/repos/{full_name}/refs", headers=auth(who))
    assert r.status_code == 200, r.text
    return {b["name"]: b["target"] for b in r.json()["branches"]}


def tree_paths(client: Any, who: Account | None, full_name: str, rev: str = "main") -> set[str]:
    """Every file path at `rev` (recursive)."""
    r = client.get(f"{API}/repos/{full_name}/tree/{rev}", params={"recursive": True}, headers=auth(who))
    assert r.status_code == 200, r.text
    return {e["path"] for e in r.json()["entries"] if e["type"] == "file"}


def new_account(
    app: FastAPI, name: str, *, admin: bool = False, password: str = "correct horse battery"
) -> Account:
    """A user with a write token and a read token, straight through the services (like `make_user`)."""
    from opensci.accounts import service as accounts

    with app.state.db.session() as session:
        user = accounts.create_user(session, name, password, email=f"{name}@example.org", is_admin=admin)
        _, token = accounts.issue_token(session, user, "test-write", "write")
        _, read_token = accounts.issue_token(session, user, "test-read", "read")
        session.commit()
        return Account(name, password, token, read_token, user)
