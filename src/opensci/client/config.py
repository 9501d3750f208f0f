"""Where the SDK finds its server and token, and the config file `opensci login` writes.

Precedence, highest first: the arguments given to `Client`, the environment (OPENSCI_URL, OPENSCI_TOKEN),
the config file (`$XDG_CONFIG_HOME/opensci/config.toml`, else `~/.config/opensci/config.toml`), then
http://127.0.0.1:8000 without a token. A token from the config file is only sent to the server it was
saved for, so pointing the client at another URL never leaks it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from opensci.client.errors import OpenSciError

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class SavedLogin:
    url: str = ""
    token: str = ""
    token_id: str = ""  # set when `opensci login` created the token, so `opensci logout` can revoke it


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "opensci" / "config.toml"


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url


def load() -> SavedLogin:
    """The saved login, or an empty one when there is no config file."""
    path = config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SavedLogin()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise OpenSciError(f"cannot read {path}: {exc}", code="bad_config") from exc
    return SavedLogin(
        url=str(data.get("url", "")), token=str(data.get("token", "")), token_id=str(data.get("token_id", ""))
    )


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'


def save(login: SavedLogin) -> Path:
    """Write the config file atomically, readable by its owner only (mode 0600, folder 0700)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [f"{key} = {_toml_string(value)}" for key, value in vars(login).items() if value]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# Written by `opensci login`. Keep it private: it holds an API token.\n")
            f.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove() -> bool:
    """Delete the config file; False when there was none."""
    try:
        config_path().unlink()
    except FileNotFoundError:
        return False
    return True


def resolve(url: str | None, token: str | None) -> tuple[str, str | None]:
    """The (url, token) a client uses, following the precedence described above."""
    saved: SavedLogin | None = None
    if not url:
        url = os.environ.get("OPENSCI_URL") or ""
    if not url:
        saved = load()
        url = saved.url
    url = normalize_url(url or DEFAULT_URL)
    if token is None:
        token = os.environ.get("OPENSCI_TOKEN") or None
    if token is None:
        saved = saved or load()
        if saved.token and normalize_url(saved.url or DEFAULT_URL) == url:
            token = saved.token
    return url, token
