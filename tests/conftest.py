"""Shared fixtures. Every test gets its own OPENSCI_HOME and an empty database.

The database backend is chosen by OPENSCI_TEST_DB: `sqlite` (default) or `postgresql` (the server at
OPENSCI_TEST_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/postgres; each pytest
worker gets a database of its own, migrated once and truncated between tests). `make test` runs both.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.accounts import service as accounts
from opensci.accounts.models import User
from opensci.app import create_app
from opensci.db import Base, Database
from opensci.settings import Settings

BACKEND = os.environ.get("OPENSCI_TEST_DB", "sqlite")
PG_ADMIN_URL = os.environ.get(
    "OPENSCI_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip a test whose component is missing on a developer's machine; under CI=true, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required component missing under CI: {reason}")
    pytest.skip(reason)


def need_binary(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} is not installed (make test installs it)")
    assert path is not None
    return path


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing() -> Iterator[None]:
    """Real argon2, with the smallest cost parameters: the default costs ~0.2 s a hash, and tests hash
    hundreds of passwords. Servers started as subprocesses keep the production parameters."""
    from argon2 import PasswordHasher

    from opensci.accounts import security

    production = security._hasher
    security._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    security._hasher = production


def isolate_env(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    """No test sees the developer's configuration: own HOME (git config, SDK config), no OPENSCI_* or
    GIT_* variables, a fixed git identity, and `tmp` as the working directory."""
    for key in list(os.environ):
        if key.startswith(("OPENSCI_", "GIT_")) and not key.startswith("OPENSCI_TEST_"):
            mp.delenv(key, raising=False)
    home = tmp / "user-home"
    home.mkdir(exist_ok=True)
    mp.setenv("HOME", str(home))
    (home / ".config").mkdir(exist_ok=True)
    mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
    mp.setenv("GIT_TERMINAL_PROMPT", "0")
    for role in ("AUTHOR", "COMMITTER"):
        mp.setenv(f"GIT_{role}_NAME", "Test Author")
        mp.setenv(f"GIT_{role}_EMAIL", "author@example.org")
    mp.chdir(tmp)


@pytest.fixture(autouse=True)
def _isolate_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_env(monkeypatch, tmp_path)


# --- databases -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Per test session: a migrated SQLite file to copy, or a migrated PostgreSQL database to truncate."""
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("db-template") / "template.db"
        db = Database(f"sqlite:///{path}")
        db.upgrade()
        db.dispose()
        yield str(path)
        return
    if BACKEND != "postgresql":
        raise RuntimeError(f"OPENSCI_TEST_DB must be sqlite or postgresql, not {BACKEND!r}")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"opensci_test_{worker}_{os.getpid()}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        if IN_CI:
            raise
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    db = Database(url)
    db.upgrade()
    db.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(database_template: str, tmp_path: Path) -> Iterator[str]:
    if BACKEND == "sqlite":
        path = tmp_path / "opensci.db"
        shutil.copyfile(database_template, path)
        yield f"sqlite:///{path}"
        return
    yield database_template
    engine = sa.create_engine(database_template)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


# --- the app ---------------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        home=tmp_path / "opensci-home",
        database_url=database_url,
        base_url="http://testserver",
        secret_key="test-secret",
        # Tests of jobs start the scheduler themselves (tests/compute/conftest.py).
        compute_scheduler=False,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.db.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """An anonymous in-process client."""
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@dataclass
class Account:
    name: str
    password: str
    token: str
    read_token: str
    user: User

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def read_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.read_token}"}


@pytest.fixture
def make_user(app: FastAPI) -> Callable[..., Account]:
    """Create a user with a write token and a read token, straight through the services."""

    def make(name: str, *, admin: bool = False, password: str = "correct horse battery") -> Account:
        with app.state.db.session() as session:
            user = accounts.create_user(session, name, password, email=f"{name}@example.org", is_admin=admin)
            _, token = accounts.issue_token(session, user, "test-write", "write")
            _, read_token = accounts.issue_token(session, user, "test-read", "read")
            session.commit()
            return Account(name, password, token, read_token, user)

    return make


@pytest.fixture
def alice(make_user: Callable[..., Account]) -> Account:
    return make_user("alice")


@pytest.fixture
def bob(make_user: Callable[..., Account]) -> Account:
    return make_user("bob")


# --- a live server, for real clients (git, browsers, the SDK over a socket) ------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app.state.settings.base_url = self.url
        # Test clients keep connections idle for seconds while jobs run: uvicorn's 5-second keep-alive
        # would close them just as a client reuses one (connection reset). Idle ones stay open here.
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_keep_alive=300,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("live server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    server = LiveServer(app)
    server.start()
    yield server
    server.stop()
