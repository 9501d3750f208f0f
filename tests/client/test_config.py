"""Where the SDK finds its server and token: arguments, environment, the saved login, the default."""

from __future__ import annotations

import stat

import pytest

from opensci.client import Client, config
from tests.conftest import Account, LiveServer


def test_defaults_without_anything() -> None:
    with Client() as c:
        assert c.url == "http://127.0.0.1:8000"
        assert c.token is None


def test_arguments_win_over_environment_which_wins_over_the_saved_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config.save(config.SavedLogin(url="http://saved.example:1", token="osci_saved"))
    with Client() as c:
        assert (c.url, c.token) == ("http://saved.example:1", "osci_saved")
    monkeypatch.setenv("OPENSCI_URL", "http://env.example:2/")
    monkeypatch.setenv("OPENSCI_TOKEN", "osci_env")
    with Client() as c:
        assert (c.url, c.token) == ("http://env.example:2", "osci_env")
    with Client("http://arg.example:3", "osci_arg") as c:
        assert (c.url, c.token) == ("http://arg.example:3", "osci_arg")
    with Client(token="") as c:  # explicitly anonymous
        assert c.token == ""


def test_saved_token_is_only_sent_to_the_server_it_was_saved_for() -> None:
    config.save(config.SavedLogin(url="http://saved.example:1", token="osci_saved"))
    with Client("http://other.example:9") as c:
        assert c.token is None
    with Client("http://saved.example:1/") as c:
        assert c.token == "osci_saved"


def test_saved_login_file_is_private_and_honours_xdg_config_home(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config.save(config.SavedLogin(url="http://h:1", token='osci_"quoted"\\x'))
    assert path == config.config_path()
    assert str(path).endswith("opensci/config.toml")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert config.load().token == 'osci_"quoted"\\x'
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert config.config_path().parent.parent.name == ".config"


def test_client_uses_the_saved_login_against_a_live_server(live_server: LiveServer, alice: Account) -> None:
    config.save(config.SavedLogin(url=live_server.url, token=alice.token))
    with Client() as c:
        assert c.whoami().name == "alice"


def test_repr_never_shows_the_token(alice: Account) -> None:
    with Client("http://h:1", alice.token) as c:
        assert alice.token not in repr(c)
