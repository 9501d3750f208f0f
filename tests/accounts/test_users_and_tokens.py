"""Registration, login for a token, whoami, API tokens and profiles, through the REST API."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.accounts.avatars import initials
from tests.api_helpers import API, error_code
from tests.conftest import Account

PASSWORD = "correct horse battery"


# --- registration --------------------------------------------------------------------------------------


def test_open_registration_creates_an_account_that_can_log_in(client: TestClient) -> None:
    r = client.post(
        f"{API}/users",
        json={"name": "Newton", "password": PASSWORD, "email": "isaac@example.org", "display_name": "Isaac"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "Newton"
    assert body["display_name"] == "Isaac"
    assert body["avatar_url"] == "/avatars/Newton.svg"
    assert "password" not in r.text and PASSWORD not in r.text

    login = client.post(f"{API}/auth/token", json={"name": "newton", "password": PASSWORD})
    assert login.status_code == 201, login.text
    me = client.get(f"{API}/user", headers={"Authorization": f"Bearer {login.json()['token']}"})
    assert me.status_code == 200
    assert me.json()["name"] == "Newton"
    assert me.json()["email"] == "isaac@example.org"
    assert me.json()["is_admin"] is False


def test_closed_registration_refuses_everyone_but_an_admin(
    app: FastAPI, client: TestClient, make_user: Callable[..., Account]
) -> None:
    app.state.settings.open_registration = False
    bob = make_user("bob")
    root = make_user("root", admin=True)
    body = {"name": "newcomer", "password": PASSWORD}

    assert error_code(client.post(f"{API}/users", json=body), 403) == "registration_closed"
    assert (
        error_code(client.post(f"{API}/users", json=body, headers=bob.headers), 403) == "registration_closed"
    )
    assert client.get(f"{API}/users/newcomer").status_code == 404

    r = client.post(f"{API}/users", json=body, headers=root.headers)
    assert r.status_code == 201, r.text
    assert client.get(f"{API}/users/newcomer").status_code == 200


def test_weak_password_is_refused(client: TestClient) -> None:
    r = client.post(f"{API}/users", json={"name": "weakling", "password": "short"})
    assert error_code(r, 422) == "weak_password"
    assert client.get(f"{API}/users/weakling").status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-leading-dash",
        "trailing-dash-",
        "a/b",
        "dots..inside",
        "ends.git",
        "x" * 65,
        "ünïcode",
        "with space",
        "semi;colon",
        ".hidden",
    ],
)
def test_invalid_user_names_are_refused(client: TestClient, name: str) -> None:
    r = client.post(f"{API}/users", json={"name": name, "password": PASSWORD})
    assert error_code(r, 422) == "invalid_name"


@pytest.mark.parametrize("name", ["api", "datasets", "Settings", "LOGIN", "avatars", "new"])
def test_reserved_names_are_refused(client: TestClient, name: str) -> None:
    r = client.post(f"{API}/users", json={"name": name, "password": PASSWORD})
    assert error_code(r, 422) == "invalid_name"


def test_names_are_unique_without_regard_to_case(client: TestClient, alice: Account) -> None:
    for name in ("alice", "ALICE", "Alice"):
        r = client.post(f"{API}/users", json={"name": name, "password": PASSWORD})
        assert error_code(r, 409) == "name_taken"
    # Organizations share the namespace.
    r = client.post(f"{API}/orgs", json={"name": "aLiCe"}, headers=alice.headers)
    assert error_code(r, 409) == "name_taken"


def test_invalid_email_is_refused(client: TestClient) -> None:
    r = client.post(f"{API}/users", json={"name": "mailless", "password": PASSWORD, "email": "not-an-email"})
    assert error_code(r, 422) == "invalid_email"


# --- login and whoami ----------------------------------------------------------------------------------


def test_login_with_the_right_password_gives_a_token_of_the_asked_scope(
    client: TestClient, alice: Account
) -> None:
    r = client.post(
        f"{API}/auth/token",
        json={"name": "alice", "password": alice.password, "token_name": "laptop", "scope": "read"},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "laptop"
    assert created["scope"] == "read"
    assert created["token"].startswith(created["prefix"])

    me = client.get(f"{API}/user", headers={"Authorization": f"Bearer {created['token']}"})
    assert me.status_code == 200
    assert me.json()["token_scope"] == "read"


@pytest.mark.parametrize(
    ("name", "password"),
    [("alice", "wrong password!"), ("alice", ""), ("nobody", "correct horse battery")],
)
def test_login_with_wrong_credentials_is_401(
    client: TestClient, alice: Account, name: str, password: str
) -> None:
    r = client.post(f"{API}/auth/token", json={"name": name, "password": password})
    assert error_code(r, 401) == "bad_credentials"
    # The same answer for an unknown user and a wrong password: no user enumeration.
    assert "token" not in r.json()


def test_whoami_reports_the_token_scope(client: TestClient, alice: Account) -> None:
    write = client.get(f"{API}/user", headers=alice.headers)
    assert write.status_code == 200
    assert write.json()["name"] == "alice"
    assert write.json()["token_scope"] == "write"
    assert write.json()["email"] == "alice@example.org"

    read = client.get(f"{API}/user", headers=alice.read_headers)
    assert read.status_code == 200
    assert read.json()["token_scope"] == "read"


def test_whoami_without_or_with_a_bad_token_is_401(client: TestClient) -> None:
    r = client.get(f"{API}/user")
    assert error_code(r, 401) == "login_required"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.get(f"{API}/user", headers={"Authorization": "Bearer osci_not-a-real-token"})
    assert error_code(r, 401) == "invalid_token"


def test_token_as_basic_password_is_accepted(client: TestClient, alice: Account) -> None:
    r = client.get(f"{API}/user", auth=("anything", alice.token))
    assert r.status_code == 200
    assert r.json()["name"] == "alice"


# --- tokens --------------------------------------------------------------------------------------------


def test_token_list_never_shows_a_secret(client: TestClient, alice: Account) -> None:
    created = client.post(f"{API}/user/tokens", json={"name": "ci", "scope": "write"}, headers=alice.headers)
    assert created.status_code == 201
    secret = created.json()["token"]

    r = client.get(f"{API}/user/tokens", headers=alice.headers)
    assert r.status_code == 200
    tokens = r.json()
    assert sorted(t["name"] for t in tokens) == ["ci", "test-read", "test-write"]
    for t in tokens:
        assert "token" not in t
        assert set(t) == {"id", "name", "scope", "prefix", "created_at", "last_used_at"}
    for s in (secret, alice.token, alice.read_token):
        assert s not in r.text
    assert {t["prefix"] for t in tokens} >= {secret[:12], alice.token[:12]}


def test_a_read_token_cannot_create_or_revoke_tokens(client: TestClient, alice: Account) -> None:
    r = client.post(
        f"{API}/user/tokens", json={"name": "escalate", "scope": "write"}, headers=alice.read_headers
    )
    assert error_code(r, 403) == "insufficient_scope"
    token_id = client.get(f"{API}/user/tokens", headers=alice.headers).json()[0]["id"]
    r = client.delete(f"{API}/user/tokens/{token_id}", headers=alice.read_headers)
    assert error_code(r, 403) == "insufficient_scope"


def test_invalid_token_scope_is_422(client: TestClient, alice: Account) -> None:
    r = client.post(f"{API}/user/tokens", json={"name": "x", "scope": "admin"}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_input"


def test_revoked_token_stops_working(client: TestClient, alice: Account) -> None:
    created = client.post(
        f"{API}/user/tokens", json={"name": "temp", "scope": "write"}, headers=alice.headers
    )
    secret, token_id = created.json()["token"], created.json()["id"]
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get(f"{API}/user", headers=headers).status_code == 200

    assert client.delete(f"{API}/user/tokens/{token_id}", headers=alice.headers).status_code == 204
    assert error_code(client.get(f"{API}/user", headers=headers), 401) == "invalid_token"
    assert error_code(client.get(f"{API}/repos", headers=headers), 401) == "invalid_token"
    assert all(t["id"] != token_id for t in client.get(f"{API}/user/tokens", headers=alice.headers).json())
    # The other tokens still work; revoking twice is a 404.
    assert client.get(f"{API}/user", headers=alice.headers).status_code == 200
    r = client.delete(f"{API}/user/tokens/{token_id}", headers=alice.headers)
    assert error_code(r, 404) == "token_not_found"


def test_nobody_revokes_another_users_token(client: TestClient, alice: Account, bob: Account) -> None:
    token_id = next(
        t["id"]
        for t in client.get(f"{API}/user/tokens", headers=alice.headers).json()
        if t["name"] == "test-write"
    )
    r = client.delete(f"{API}/user/tokens/{token_id}", headers=bob.headers)
    assert error_code(r, 404) == "token_not_found"
    assert client.get(f"{API}/user", headers=alice.headers).status_code == 200


# --- profiles ------------------------------------------------------------------------------------------


def test_profile_update_with_a_valid_orcid(client: TestClient, alice: Account) -> None:
    r = client.patch(
        f"{API}/user",
        json={
            "display_name": "Alice Liddell",
            "affiliation": "Wonderland Institute",
            "orcid": "0000-0002-1825-0097",
            "description": "Falls down rabbit holes.",
        },
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["display_name"] == "Alice Liddell"
    assert me["orcid"] == "0000-0002-1825-0097"

    public = client.get(f"{API}/users/alice").json()
    assert public["orcid"] == "0000-0002-1825-0097"
    assert public["affiliation"] == "Wonderland Institute"
    assert public["description"] == "Falls down rabbit holes."
    assert "email" not in public


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("https://orcid.org/0000-0002-1825-0097", "0000-0002-1825-0097"),
        ("0000-0002-1694-233X", "0000-0002-1694-233X"),  # check digit X
        ("0000-0002-1694-233x", "0000-0002-1694-233X"),
        ("http://orcid.org/0000-0002-1825-0097", "0000-0002-1825-0097"),
        ("orcid.org/0000-0002-1825-0097", "0000-0002-1825-0097"),
        (" https://www.orcid.org/0000-0002-1825-0097 ", "0000-0002-1825-0097"),
        ("", ""),
    ],
)
def test_orcid_forms_that_are_accepted(client: TestClient, alice: Account, given: str, stored: str) -> None:
    r = client.patch(f"{API}/user", json={"orcid": given}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["orcid"] == stored


@pytest.mark.parametrize("orcid", ["0000-0002-1825-0098", "0000-0002-1825-009", "0000000218250097", "abcd"])
def test_invalid_orcid_is_422_and_changes_nothing(client: TestClient, alice: Account, orcid: str) -> None:
    client.patch(f"{API}/user", json={"orcid": "0000-0002-1825-0097"}, headers=alice.headers)
    r = client.patch(f"{API}/user", json={"orcid": orcid, "display_name": "Changed"}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_orcid"
    me = client.get(f"{API}/user", headers=alice.headers).json()
    assert me["orcid"] == "0000-0002-1825-0097"
    assert me["display_name"] == "alice"


def test_a_read_token_cannot_change_the_profile(client: TestClient, alice: Account) -> None:
    r = client.patch(f"{API}/user", json={"display_name": "Mallory"}, headers=alice.read_headers)
    assert error_code(r, 403) == "insufficient_scope"
    assert client.get(f"{API}/users/alice").json()["display_name"] == "alice"


def test_profile_update_needs_a_login(client: TestClient) -> None:
    assert error_code(client.patch(f"{API}/user", json={"display_name": "x"}), 401) == "login_required"


def test_unknown_user_and_org_are_404(client: TestClient, alice: Account) -> None:
    assert error_code(client.get(f"{API}/users/nobody"), 404) == "owner_not_found"
    client.post(f"{API}/orgs", json={"name": "lab"}, headers=alice.headers)
    assert error_code(client.get(f"{API}/users/lab"), 404) == "user_not_found"
    assert error_code(client.get(f"{API}/orgs/alice"), 404) == "org_not_found"


def test_avatar_is_an_svg_for_users_and_orgs(client: TestClient, alice: Account) -> None:
    client.post(f"{API}/orgs", json={"name": "lab"}, headers=alice.headers)
    for name in ("alice", "lab", "ALICE"):
        r = client.get(f"/avatars/{name}.svg")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("image/svg+xml")
        assert r.text.lstrip().startswith("<svg")
    assert client.get("/avatars/nobody.svg").status_code == 404


@pytest.mark.parametrize(
    ("display_name", "name", "expected"),
    [
        ("Ada Lovelace", "ada", "AL"),
        ("", "demo-lab", "DL"),
        ("Avery <Lab>", "avery", "AL"),
        ("Dr. (Jane) Doe", "jane", "DJ"),
        ("<>!!", "bob", "BO"),
        ("Ünïcode", "u", "ÜN"),
    ],
)
def test_avatar_initials_are_letters_or_digits(display_name: str, name: str, expected: str) -> None:
    assert initials(display_name, name) == expected
