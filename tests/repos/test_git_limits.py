"""`max_upload_bytes` applies to git: a push larger than the limit is refused and changes nothing,
whether git declares its size (small bodies) or streams it in chunks (bodies over git's post buffer);
and a small gzip body that inflates past the limit is refused too."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from opensci.settings import Settings
from tests.conftest import Account, LiveServer
from tests.repos.git_helpers import (
    api_commit,
    bare_path,
    create_repo,
    fsck,
    git,
    leftovers,
    pkt,
    refs,
    remote_url,
    rev,
    write_commit,
)

pytestmark = pytest.mark.live

LIMIT = 256 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_upload_bytes": LIMIT})


@pytest.mark.parametrize("size", [600_000, 3_000_000], ids=["declared length", "chunked"])
def test_push_over_the_limit_is_refused_and_changes_nothing(
    app: FastAPI, live_server: LiveServer, alice: Account, tmp_path: Path, size: int
) -> None:
    repo = create_repo(live_server, alice, "limited")
    api_commit(live_server, alice, "alice/limited", {"a.txt": b"a\n"})
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/alice/limited.git", alice), work)
    small = write_commit(work, {"small.bin": os.urandom(LIMIT // 4)}, "fits")
    git("push", "-q", "origin", "main", cwd=work)

    write_commit(work, {"big.bin": os.urandom(size)}, "too big")
    out = git("push", "origin", "main", cwd=work, check=False)
    assert out.returncode != 0
    assert "HTTP 413" in out.stderr, out.stderr
    assert refs(live_server, None, "alice/limited")["branches"] == {"main": small}
    bare = bare_path(app, str(repo["id"]))
    assert git("cat-file", "-e", f"{rev(work)}^{{commit}}", cwd=bare, check=False).returncode != 0
    assert leftovers(bare) == []
    fsck(bare)


def test_gzip_body_inflating_past_the_limit_is_refused(live_server: LiveServer, alice: Account) -> None:
    create_repo(live_server, alice, "bomb")
    api_commit(live_server, alice, "alice/bomb", {"a.txt": b"a\n"})
    url = f"{live_server.url}/alice/bomb.git/git-upload-pack"
    headers = {
        "Content-Type": "application/x-git-upload-pack-request",
        "Content-Encoding": "gzip",
        "Git-Protocol": "version=2",
    }
    ls_refs = pkt("command=ls-refs\n") + b"0000"
    padding = pkt("x" * 1000) * (LIMIT // 1000 + 10)  # ~LIMIT + 10 KB inflated, ~2 KB deflated
    bomb = gzip.compress(padding + ls_refs)
    assert len(bomb) < LIMIT // 10
    with httpx.Client(timeout=30) as c:
        r = c.post(url, content=bomb, headers=headers)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large", r.text
        r = c.post(url, content=gzip.compress(ls_refs), headers=headers)
        assert r.status_code == 200 and b"refs/heads/main" in r.content
