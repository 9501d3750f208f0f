"""The Hugging Face clients (huggingface_hub, datasets), unmodified, against a live OpenSci server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from opensci.hub import api as hub_api
from opensci.storage.store import BlobStore
from tests.api_helpers import commit, create_repo
from tests.conftest import Account, LiveServer
from tests.hub.conftest import Run
from tests.storage.test_corruption import chunk_locations, flip_byte


@pytest.mark.parametrize("xet", [True, False], ids=["hf_xet-installed", "HF_HUB_DISABLE_XET"])
def test_repos_files_refs_and_listings(run_client: Run, alice: Account, xet: bool) -> None:
    run_client("repos_and_files.py", alice.token, xet=xet, SUFFIX="xet" if xet else "noxet")


def test_datasets_and_hf_file_system(run_client: Run, alice: Account) -> None:
    run_client("datasets_and_fs.py", alice.token)


def test_who_may_see_and_write_what(run_client: Run, alice: Account, bob: Account) -> None:
    run_client("access.py", alice.token, MODE="setup")
    run_client("access.py", bob.token, MODE="stranger")
    run_client("access.py", None, MODE="anonymous")
    run_client("access.py", None, MODE="bad-token")
    run_client("access.py", alice.read_token, MODE="read-token")


@pytest.mark.parametrize("xet", [True, False], ids=["hf_xet-installed", "HF_HUB_DISABLE_XET"])
def test_large_files(run_client: Run, alice: Account, xet: bool) -> None:
    proc = run_client("large_files.py", alice.token, xet=xet, XET="1" if xet else "0")
    if xet:  # hf_xet talks to the server itself and drops error messages: the preupload warns first
        assert "set HF_HUB_DISABLE_XET=1 to upload files larger than 1 MB to this server" in proc.stderr


def test_pagination(run_client: Run, alice: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    for size in ("LIST_PAGE_SIZE", "TREE_PAGE_SIZE", "TREE_EXPANDED_PAGE_SIZE", "COMMITS_PAGE_SIZE"):
        monkeypatch.setattr(hub_api, size, 2)
    run_client("pagination.py", alice.token)


@pytest.mark.parametrize("xet", [True, False], ids=["hf_xet-installed", "HF_HUB_DISABLE_XET"])
def test_datasets_push_to_hub_then_load_dataset(run_client: Run, alice: Account, xet: bool) -> None:
    """push_to_hub deletes each Parquet shard once preuploaded: the server answers "lfs" for the paths
    .gitattributes track when the client is the datasets library, so the shard is sent at once (over Git
    LFS with HF_HUB_DISABLE_XET=1; with hf_xet, the client is told to set it)."""
    proc = run_client("push_to_hub.py", alice.token, xet=xet, XET="1" if xet else "0")
    if xet:
        assert "set HF_HUB_DISABLE_XET=1 to push datasets (push_to_hub) to this server" in proc.stderr


def test_a_damaged_file_fails_at_once_with_the_servers_message(
    app: FastAPI, live_server: LiveServer, run_client: Run, alice: Account, tmp_path: Path
) -> None:
    """Quarantined content answers 409 object_damaged, a status huggingface_hub does not retry (it retries
    a 5xx HEAD five times, about 23 s, then says only "check your connection")."""
    data = os.urandom(800_000)  # above lfs_threshold_bytes: kept in the blob store
    with httpx.Client(base_url=live_server.url, headers=alice.headers, timeout=60) as c:
        create_repo(c, alice, "fragile")
        assert commit(c, alice, "alice/fragile", {"f.bin": data}).status_code == 201
    blobs: BlobStore = app.state.blobs
    flip_byte(blobs, chunk_locations(blobs, hashlib.sha256(data).hexdigest())[0][1])
    assert not blobs.verify().ok  # the scrub quarantines it
    original = tmp_path / "f.bin"
    original.write_bytes(data)
    run_client(
        "damaged_file.py",
        alice.token,
        REPO="alice/fragile",
        MESSAGE="is damaged and quarantined; uploading the file again repairs it",
        ORIGINAL=str(original),
    )
