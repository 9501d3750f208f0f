"""The Hugging Face clients (huggingface_hub, datasets), unmodified, against a live OpenSci server."""

from __future__ import annotations

import pytest

from opensci.hub import api as hub_api
from tests.conftest import Account
from tests.hub.conftest import Run


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
