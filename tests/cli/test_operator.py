"""Operator commands (`opensci user|token|org|demo|db`) against the test's own home and database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from opensci.cli.main import app as cli
from opensci.settings import Settings
from tests.conftest import LiveServer

runner = CliRunner()


@pytest.fixture
def operator_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("OPENSCI_HOME", str(settings.home))
    monkeypatch.setenv("OPENSCI_DATABASE_URL", settings.effective_database_url)
    return settings


def run(*args: str) -> str:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_user_token_org_commands_give_working_credentials(
    operator_env: Settings, live_server: LiveServer
) -> None:
    run("user", "create", "root", "--password", "s3cret-pass", "--admin")
    run("user", "create", "ana", "--password", "s3cret-pass")
    out = run("token", "create", "--user", "ana", "--scope", "write")
    token = out.strip().splitlines()[-1]
    assert token.startswith("osci_")
    run("org", "create", "lab", "--owner", "root")
    run("org", "add-member", "lab", "ana", "--role", "write")

    h = {"Authorization": f"Bearer {token}"}
    me = httpx.get(f"{live_server.url}/api/v1/user", headers=h).json()
    assert me["name"] == "ana" and me["is_admin"] is False
    assert me["orgs"] == [{"name": "lab", "display_name": "lab", "role": "write"}]
    r = httpx.post(f"{live_server.url}/api/v1/repos", json={"name": "x", "owner": "lab"}, headers=h)
    assert r.status_code == 201, r.text


def test_read_token_cannot_write(operator_env: Settings, live_server: LiveServer) -> None:
    run("user", "create", "ana", "--password", "s3cret-pass")
    token = run("token", "create", "--user", "ana", "--scope", "read").strip().splitlines()[-1]
    r = httpx.post(
        f"{live_server.url}/api/v1/repos", json={"name": "x"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 403
    assert r.json()["error"] == "insufficient_scope"


def test_operator_errors_are_one_clear_line(operator_env: Settings) -> None:
    run("user", "create", "ana", "--password", "s3cret-pass")
    result = runner.invoke(cli, ["user", "create", "ANA", "--password", "s3cret-pass"])
    assert result.exit_code == 1
    assert "taken" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["token", "create", "--user", "nobody"])
    assert result.exit_code == 1 and "nobody" in result.output


def test_demo_seed_is_idempotent_and_serves_the_demo(operator_env: Settings, live_server: LiveServer) -> None:
    assert "demo created" in run("demo", "seed", "--password", "demo-password")
    assert "already present" in run("demo", "seed")
    repos = httpx.get(f"{live_server.url}/api/v1/repos?owner=demo-lab&sort=name").json()["items"]
    assert {(r["name"], r["kind"]) for r in repos} == {
        ("hello-science", "code"),
        ("star-sample", "dataset"),
        ("photo-z-linear", "model"),
    }
    for r in repos:
        readme = httpx.get(f"{live_server.url}/api/v1/repos/demo-lab/{r['name']}/raw/main/README.md")
        assert readme.status_code == 200 and readme.text.startswith(("#", "---"))
    token = httpx.post(
        f"{live_server.url}/api/v1/auth/token", json={"name": "admin", "password": "demo-password"}
    ).json()["token"]
    me = httpx.get(f"{live_server.url}/api/v1/user", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["is_admin"] is True


def test_db_upgrade_on_an_empty_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENSCI_HOME", str(tmp_path / "fresh"))
    assert "head" in run("db", "upgrade")
    assert (tmp_path / "fresh" / "opensci.db").exists()


def test_serve_starts_a_real_server(tmp_path: Path) -> None:
    """`opensci serve --host --port` migrates a fresh home and answers /api/health."""
    from tests.conftest import free_port

    port = free_port()
    env = {"OPENSCI_HOME": str(tmp_path / "srv"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "opensci"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("opensci serve did not answer /api/health")
        assert r.json()["status"] == "ok"
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/repos/x/y")
        assert r.status_code == 404 and "request_id" not in r.json()
        assert r.headers["x-request-id"]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode()
    assert "GET /api/v1/repos/x/y 404" in out and "request_id=" in out
