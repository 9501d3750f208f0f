"""`opensci token create|list|revoke` for the logged-in user, against a live server."""

from __future__ import annotations

import json

import httpx
from typer.testing import CliRunner

from opensci.cli.main import app as cli
from tests.conftest import Account, LiveServer


def invoke(server: LiveServer, token: str, *args: str, code: int = 0, columns: int = 200) -> str:
    env = {"OPENSCI_URL": server.url, "OPENSCI_TOKEN": token, "COLUMNS": str(columns)}
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.stdout if code == 0 else result.output


def whoami_status(server: LiveServer, token: str) -> int:
    return httpx.get(f"{server.url}/api/v1/user", headers={"Authorization": f"Bearer {token}"}).status_code


def test_create_list_and_revoke_a_token(live_server: LiveServer, alice: Account) -> None:
    secret = invoke(live_server, alice.token, "token", "create", "--scope", "write", "--name", "laptop")
    secret = secret.strip().splitlines()[-1]
    assert secret.startswith("osci_") and whoami_status(live_server, secret) == 200

    listed = json.loads(invoke(live_server, alice.token, "token", "list", "--json"))
    laptop = next(t for t in listed if t["name"] == "laptop")
    assert laptop["scope"] == "write" and secret.startswith(laptop["prefix"])
    assert all("token" not in t for t in listed), "a listing must never contain a secret"
    table = invoke(live_server, alice.token, "token", "list")
    assert "laptop" in table and secret not in table
    narrow = invoke(live_server, alice.token, "token", "list", columns=80)  # a pipe, or a small terminal
    assert laptop["id"] in narrow, narrow

    invoke(live_server, alice.token, "token", "revoke", laptop["id"])
    assert whoami_status(live_server, secret) == 401
    assert laptop["id"] not in invoke(live_server, alice.token, "token", "list")


def test_a_read_token_cannot_mint_tokens_and_others_tokens_cannot_be_revoked(
    live_server: LiveServer, alice: Account, bob: Account
) -> None:
    out = invoke(live_server, alice.read_token, "token", "create", "--scope", "write", code=1)
    assert "read scope" in out or "read-only" in out
    alices = json.loads(invoke(live_server, alice.token, "token", "list", "--json"))
    invoke(live_server, bob.token, "token", "revoke", alices[0]["id"], code=1)
    assert whoami_status(live_server, alice.token) == 200


def test_json_output_of_create_carries_the_secret_once(live_server: LiveServer, alice: Account) -> None:
    made = json.loads(invoke(live_server, alice.token, "token", "create", "--json"))
    assert made["scope"] == "read" and made["token"].startswith("osci_")
    assert whoami_status(live_server, made["token"]) == 200
