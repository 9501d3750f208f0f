"""Fixtures for the SDK tests: SDK clients bound to the live server, and a raw reader to check results
through the REST API rather than through the SDK under test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from opensci.client import Client
from tests.conftest import Account, LiveServer


@pytest.fixture
def sdk(live_server: LiveServer, alice: Account) -> Iterator[Client]:
    """Alice's SDK client (write token) on the live server."""
    with Client(live_server.url, alice.token) as c:
        yield c


@pytest.fixture
def bob_sdk(live_server: LiveServer, bob: Account) -> Iterator[Client]:
    with Client(live_server.url, bob.token) as c:
        yield c


class Raw:
    """Reads over plain HTTP, independent of the SDK."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def file(self, repo: str, rev: str, path: str) -> bytes:
        r = self.http.get(f"/api/v1/repos/{repo}/raw/{rev}/{quote(path)}")
        assert r.status_code == 200, r.text
        return r.content

    def commits(self, repo: str, rev: str | None = None) -> list[str]:
        ids: list[str] = []
        page: int | None = 1
        while page:
            params = {"page": page, "per_page": 100, **({"rev": rev} if rev else {})}
            r = self.http.get(f"/api/v1/repos/{repo}/commits", params=params)
            assert r.status_code == 200, r.text
            ids += [c["id"] for c in r.json()["items"]]
            page = r.json()["next_page"]
        return ids

    def files(self, repo: str, rev: str = "main") -> dict[str, int]:
        r = self.http.get(f"/api/v1/repos/{repo}/tree/{rev}", params={"recursive": "true"})
        assert r.status_code == 200, r.text
        return {e["path"]: e["size"] for e in r.json()["entries"] if e["type"] == "file"}

    def metrics(self) -> str:
        return self.http.get("/metrics").text


@pytest.fixture
def raw(live_server: LiveServer, alice: Account) -> Iterator[Raw]:
    r = Raw(live_server.url, alice.token)
    yield r
    r.http.close()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root
