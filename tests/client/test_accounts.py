"""whoami, login with a password, and API tokens, through the SDK against a live server."""

from __future__ import annotations

import pytest

from opensci.client import Client, UnauthorizedError
from tests.conftest import Account, LiveServer


def test_whoami_names_the_user_and_the_token_scope(live_server: LiveServer, alice: Account) -> None:
    with Client(live_server.url, alice.token) as c:
        me = c.whoami()
    assert (me.name, me.email, me.token_scope, me.is_admin) == ("alice", "alice@example.org", "write", False)
    with Client(live_server.url, alice.read_token) as c:
        assert c.whoami().token_scope == "read"


def test_login_with_password_creates_a_token_and_uses_it(live_server: LiveServer, alice: Account) -> None:
    with Client(live_server.url, token="") as c:
        created = c.login("alice", alice.password, token_name="laptop")
        assert created.token.startswith("osci_") and created.scope == "write"
        assert c.token == created.token
        assert c.whoami().name == "alice"
        assert created.id in {t.id for t in c.list_tokens()}


def test_login_with_a_wrong_password_is_unauthorized_with_a_hint(
    live_server: LiveServer, alice: Account
) -> None:
    with Client(live_server.url, token="") as c, pytest.raises(UnauthorizedError) as err:
        c.login("alice", "wrong password")
    assert err.value.status == 401 and err.value.code == "bad_credentials"
    assert "password" in err.value.hint


def test_create_list_and_revoke_tokens(live_server: LiveServer, alice: Account) -> None:
    with Client(live_server.url, alice.token) as c:
        new = c.create_token("ci", scope="read")
        listed = {t.id: t for t in c.list_tokens()}
        assert listed[new.id].name == "ci" and listed[new.id].scope == "read"
        assert new.token.startswith(listed[new.id].prefix)
        assert not hasattr(listed[new.id], "token")  # listings never carry the secret
        with Client(live_server.url, new.token) as ci:
            assert ci.whoami().token_scope == "read"
        c.revoke_token(new.id)
        assert new.id not in {t.id for t in c.list_tokens()}
    with Client(live_server.url, new.token) as ci, pytest.raises(UnauthorizedError) as err:
        ci.whoami()
    assert err.value.code == "invalid_token"
    assert "opensci login" in err.value.hint
