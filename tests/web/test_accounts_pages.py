"""Log in, log out, register, and the settings pages (profile, password, tokens)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.settings import Settings
from tests.conftest import Account
from tests.web.conftest import HTML, csrf_of, log_in


def _login(client: TestClient, name: str, password: str, next: str = "") -> object:
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"name": name, "password": password, "next": next, "csrf_token": token})


def test_login_sets_a_safe_session_cookie_and_logout_ends_the_session(
    alice: Account, web: TestClient, browser: Callable[[], TestClient], settings: Settings
) -> None:
    r = _login(web, "alice", alice.password)
    assert r.status_code == 303 and r.headers["location"] == "/"  # type: ignore[attr-defined]
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "opensci_session=" in v)  # type: ignore[attr-defined]
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered
    assert f"max-age={settings.session_days * 86400}" in lowered
    assert "secure" not in lowered  # http base URL
    home = web.get("/")
    assert "Log out" in home.text and 'href="/alice"' in home.text and ">Log in<" not in home.text
    stolen = web.cookies.get("opensci_session")
    r = web.post("/logout", data={"csrf_token": csrf_of(web.get("/settings/profile").text)})
    assert r.status_code == 303
    assert ">Log in<" in web.get("/").text
    # the old cookie no longer works anywhere
    replay = browser()
    replay.cookies.set("opensci_session", stolen)
    assert replay.get("/settings/profile").status_code == 303
    assert ">Log in<" in replay.get("/").text


def test_wrong_password_is_refused_with_a_message(alice: Account, web: TestClient) -> None:
    r = _login(web, "alice", "not the password")
    assert r.status_code == 400  # type: ignore[attr-defined]
    assert "wrong user name or password" in r.text  # type: ignore[attr-defined]
    assert 'value="alice"' in r.text  # type: ignore[attr-defined]
    assert "opensci_session" not in web.cookies


@pytest.mark.parametrize(
    ("next_url", "landing"),
    [
        ("/alice", "/alice"),
        ("/settings/tokens?x=1", "/settings/tokens?x=1"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/%0d%0aSet-Cookie:x", "/%0d%0aSet-Cookie:x"),
    ],
)
def test_login_goes_back_only_to_paths_of_this_site(
    next_url: str, landing: str, alice: Account, web: TestClient
) -> None:
    r = _login(web, "alice", alice.password, next=next_url)
    assert r.headers["location"] == landing  # type: ignore[attr-defined]


def test_pages_for_users_send_visitors_to_log_in_and_back(alice: Account, web: TestClient) -> None:
    for path in ("/new", "/settings/profile", "/settings/password", "/settings/tokens"):
        r = web.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=%2F"), path
    r = web.get("/new?kind=dataset")
    assert r.headers["location"] == "/login?next=%2Fnew%3Fkind%3Ddataset"
    form = web.get(r.headers["location"])
    assert 'name="next" value="/new?kind=dataset"' in form.text
    r = _login(web, "alice", alice.password, next="/new?kind=dataset")
    assert r.headers["location"] == "/new?kind=dataset"  # type: ignore[attr-defined]
    assert web.get("/login").headers["location"] == "/"  # already logged in


def test_secure_cookies_when_configured(app: FastAPI, alice: Account) -> None:
    app.state.settings.secure_cookies = True
    with TestClient(app, base_url="https://testserver", headers=HTML, follow_redirects=False) as https:
        page = https.get("/login")
        assert "secure" in page.headers["set-cookie"].lower()
        r = _login(https, "alice", alice.password)
        assert r.status_code == 303  # type: ignore[attr-defined]
        cookie = next(v for k, v in r.headers.multi_items() if "opensci_session=" in v)  # type: ignore[attr-defined]
        assert "secure" in cookie.lower()
    with TestClient(app, headers=HTML, follow_redirects=False) as http:  # a Secure cookie never comes back
        assert _login(http, "alice", alice.password).status_code == 403  # type: ignore[attr-defined]


def test_register_creates_the_account_and_logs_in(web: TestClient, browser: Callable[[], TestClient]) -> None:
    page = web.get("/register")
    assert page.status_code == 200 and "Create your account" in page.text
    data = {
        "name": "carol",
        "display_name": "Carol Curie",
        "email": "carol@example.org",
        "password": "radium-1898",
        "password2": "radium-1898",
        "csrf_token": csrf_of(page.text),
    }
    r = web.post("/register", data=data)
    assert r.status_code == 303 and r.headers["location"] == "/carol"
    profile = web.get("/carol")
    assert "Carol Curie" in profile.text and "Edit profile" in profile.text
    # mistakes are shown on the form, which keeps what was typed
    web = browser()
    data["csrf_token"] = csrf_of(web.get("/register").text)
    again = web.post("/register", data={**data, "name": "carol"})
    assert again.status_code == 400 and "taken" in again.text and 'value="Carol Curie"' in again.text
    r = web.post("/register", data={**data, "name": "dave", "password2": "different-1"})
    assert r.status_code == 400 and "differ" in r.text
    r = web.post("/register", data={**data, "name": "dave", "password": "short", "password2": "short"})
    assert r.status_code == 400 and "at least 8" in r.text
    r = web.post("/register", data={**data, "name": "settings"})
    assert r.status_code == 400 and "reserved" in r.text


def test_register_is_not_found_when_registration_is_closed(app: FastAPI, web: TestClient) -> None:
    app.state.settings.open_registration = False
    assert web.get("/register").status_code == 404
    token = csrf_of(web.get("/login").text)
    r = web.post(
        "/register", data={"name": "x1", "password": "12345678", "password2": "12345678", "csrf_token": token}
    )
    assert r.status_code == 404
    assert web.get("/x1").status_code == 404
    assert 'href="/register"' not in web.get("/").text
    assert 'href="/register"' not in web.get("/login").text


def test_profile_settings_validate_the_orcid_and_show_on_the_user_page(
    alice: Account, logged_in: Callable[[Account], TestClient], web: TestClient
) -> None:
    client = logged_in(alice)
    token = csrf_of(client.get("/settings/profile").text)
    form = {
        "display_name": "Alice Astronomer",
        "email": "alice@lab.example",
        "affiliation": "Observatory of Paris",
        "orcid": "0000-0002-1825-0098",  # wrong check digit
        "description": "Stars & galaxies",
        "csrf_token": token,
    }
    bad = client.post("/settings/profile", data=form)
    assert bad.status_code == 400 and "check digit" in bad.text
    assert 'value="Observatory of Paris"' in bad.text
    assert "Observatory" not in web.get("/alice").text  # nothing saved
    ok = client.post("/settings/profile", data={**form, "orcid": "https://orcid.org/0000-0002-1825-0097"})
    assert ok.status_code == 200 and "Profile saved" in ok.text
    page = web.get("/alice").text
    assert "Alice Astronomer" in page and "Observatory of Paris" in page and "Stars &amp; galaxies" in page
    assert 'href="https://orcid.org/0000-0002-1825-0097"' in page
    assert 'src="/avatars/alice.svg"' in page


def test_password_change_keeps_this_browser_and_logs_out_the_others(
    alice: Account, logged_in: Callable[[Account], TestClient], web: TestClient
) -> None:
    here, elsewhere = logged_in(alice), logged_in(alice)
    token = csrf_of(here.get("/settings/password").text)
    wrong = here.post(
        "/settings/password",
        data={"old": "nope", "new": "new-pass-123", "new2": "new-pass-123", "csrf_token": token},
    )
    assert wrong.status_code == 400 and "current password is wrong" in wrong.text
    ok = here.post(
        "/settings/password",
        data={"old": alice.password, "new": "new-pass-123", "new2": "new-pass-123", "csrf_token": token},
    )
    assert ok.status_code == 200 and "Password changed" in ok.text
    # the page's forms carry the new session's token
    assert (
        here.post("/settings/profile", data={"display_name": "A", "csrf_token": csrf_of(ok.text)}).status_code
        == 200
    )
    assert here.get("/settings/profile").status_code == 200
    assert elsewhere.get("/settings/profile").status_code == 303
    assert _login(web, "alice", alice.password).status_code == 400  # type: ignore[attr-defined]
    assert _login(web, "alice", "new-pass-123").status_code == 303  # type: ignore[attr-defined]


def test_tokens_are_shown_once_work_and_can_be_revoked(
    alice: Account, logged_in: Callable[[Account], TestClient], web: TestClient
) -> None:
    client = logged_in(alice)
    page = client.get("/settings/tokens")
    assert "test-write" in page.text and "test-read" in page.text  # the fixture's tokens, by prefix only
    assert alice.token not in page.text
    r = client.post(
        "/settings/tokens", data={"name": "my-laptop", "scope": "write", "csrf_token": csrf_of(page.text)}
    )
    assert r.status_code == 303 and r.headers["location"] == "/settings/tokens"
    shown = client.get("/settings/tokens")
    assert shown.headers["cache-control"] == "no-store"
    secret = shown.text.split('id="new-token">')[1].split("<")[0]
    assert secret.startswith("osci_") and "will not be shown again" in shown.text
    reloaded = client.get("/settings/tokens").text  # a reload shows the list, and no new token is made
    assert secret not in reloaded and reloaded.count("<td>my-laptop</td>") == 1
    assert web.get("/api/v1/user", headers={"Authorization": f"Bearer {secret}"}).json()["name"] == "alice"
    listing = client.get("/settings/tokens").text
    assert "<td>my-laptop</td>" in listing and secret not in listing and secret[:12] in listing
    match = re.search(r"<td>my-laptop</td>.*?/settings/tokens/([^/]+)/revoke", listing, re.DOTALL)
    assert match
    token_id = match.group(1)
    r = client.post(f"/settings/tokens/{token_id}/revoke", data={"csrf_token": csrf_of(listing)})
    assert r.status_code == 303
    assert "my-laptop" not in client.get("/settings/tokens").text
    assert web.get("/api/v1/user", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    # someone else's token id is not found
    r = client.post("/settings/tokens/not-a-token/revoke", data={"csrf_token": csrf_of(listing)})
    assert r.status_code == 404
    bad = client.post(
        "/settings/tokens", data={"name": "x", "scope": "admin", "csrf_token": csrf_of(listing)}
    )
    assert bad.status_code == 400 and "scope must be" in bad.text


def test_log_in_helper_works_for_fixture_accounts(alice: Account, web: TestClient) -> None:
    log_in(web, alice)
    assert web.get("/settings/profile").status_code == 200


def test_logout_page_holds_the_button(alice: Account, logged_in: Callable[[Account], TestClient]) -> None:
    client = logged_in(alice)
    page = client.get("/logout")
    assert page.status_code == 200 and "Log out of OpenSci?" in page.text
    assert client.get("/settings/profile").status_code == 200  # a GET never logs out
    assert client.post("/logout", data={"csrf_token": csrf_of(page.text)}).status_code == 303
    assert client.get("/settings/profile").status_code == 303
