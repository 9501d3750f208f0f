"""Wire details the Hub clients depend on, checked in-process: raw-path revisions, error headers, Link
pagination, resolve headers, and the streaming NDJSON reader."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.errors import InvalidInput
from opensci.hub import api as hub_api
from opensci.hub.ndjson import NdjsonReader
from tests.conftest import Account


def _commit(client: TestClient, who: Account, repo: str, rev: str, files: dict[str, bytes]) -> str:
    lines = [{"key": "header", "value": {"summary": "add"}}] + [
        {"key": "file", "value": {"path": p, "content": base64.b64encode(c).decode(), "encoding": "base64"}}
        for p, c in files.items()
    ]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    r = client.post(f"/api/models/{repo}/commit/{rev}", content=body, headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()["commitOid"]


@pytest.fixture
def repo(client: TestClient, alice: Account) -> str:
    r = client.post("/api/repos/create", json={"name": "wire", "organization": None}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["url"] == "http://testserver/alice/wire"
    return "alice/wire"


def test_create_conflict_carries_the_url(client: TestClient, alice: Account, repo: str) -> None:
    r = client.post("/api/repos/create", json={"name": "wire"}, headers=alice.headers)
    assert r.status_code == 409 and r.json()["url"] == "http://testserver/alice/wire"
    r = client.post("/api/repos/create", json={"name": "wire", "type": "dataset"}, headers=alice.headers)
    assert r.status_code == 409 and "url" not in r.json()  # another kind: not "already yours"


def test_revisions_with_slashes_come_from_the_raw_path(client: TestClient, alice: Account, repo: str) -> None:
    r = client.post(f"/api/models/{repo}/branch/feat%2Fx", json={}, headers=alice.headers)
    assert r.status_code == 200, r.text
    sha = _commit(client, alice, repo, "feat%2Fx", {"dir/a.txt": b"a"})
    r = client.get(f"/api/models/{repo}/tree/feat%2Fx/dir", headers=alice.headers)
    assert [e["path"] for e in r.json()] == ["dir/a.txt"]
    r = client.get(f"/api/models/{repo}/revision/feat%2Fx")
    assert r.json()["sha"] == sha and r.json()["lastModified"].endswith("Z")
    r = client.head("/alice/wire/resolve/feat%2Fx/dir/a.txt")
    assert r.status_code == 200 and r.headers["x-repo-commit"] == sha and r.headers["etag"]
    assert "x-xet-hash" not in r.headers
    r = client.get(f"/alice/wire/resolve/{sha}/dir/a.txt", headers={"Range": "bytes=0-0"})
    assert r.status_code == 206 and r.content == b"a"


def test_branch_and_tag_names_with_control_characters_are_refused(
    client: TestClient, alice: Account, repo: str
) -> None:
    """pygit2 reads a ref name only up to a NUL: `a%00b` must neither create nor delete branch `a`."""
    _commit(client, alice, repo, "main", {"a.txt": b"a"})
    assert client.post(f"/api/models/{repo}/branch/a", json={}, headers=alice.headers).status_code == 200
    for name in ("a%00b", "a%00", "a%01b", "a%1Fb", "a%7Fb"):
        r = client.post(f"/api/models/{repo}/branch/{name}", json={}, headers=alice.headers)
        assert r.status_code == 422 and r.json()["error"] == "invalid_ref", r.text
        assert "control characters" in r.json()["message"]
        r = client.post(f"/api/models/{repo}/commit/{name}", content=b"", headers=alice.headers)
        assert r.status_code == 422 and r.json()["error"] == "invalid_ref", r.text
        r = client.delete(f"/api/models/{repo}/branch/{name}", headers=alice.headers)
        assert r.status_code == 404, r.text
    r = client.post(f"/api/models/{repo}/tag/main", json={"tag": "v\x00"}, headers=alice.headers)
    assert r.status_code == 422 and r.json()["error"] == "invalid_ref", r.text
    r = client.get(f"/api/models/{repo}/revision/refs%2Fheads%2Fa%00x")
    assert r.status_code == 404 and r.headers["x-error-code"] == "RevisionNotFound"
    refs = client.get(f"/api/models/{repo}/refs").json()
    assert sorted(b["name"] for b in refs["branches"]) == ["a", "main"] and refs["tags"] == []


def test_errors_carry_the_client_codes(client: TestClient, alice: Account, bob: Account, repo: str) -> None:
    r = client.head("/alice/wire/resolve/main/nope.txt")
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
    assert len(r.headers["x-repo-commit"]) == 40
    r = client.get(f"/api/models/{repo}/tree/nope")
    assert r.status_code == 404 and r.headers["x-error-code"] == "RevisionNotFound"
    r = client.get(f"/api/models/{repo}/tree/main/nope")
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
    assert set(r.json()) == {"error", "message"}
    r = client.get("/api/datasets/alice/wire")  # a model is not a dataset
    assert r.status_code == 401 and r.headers["x-error-code"] == "RepoNotFound"
    r = client.get("/api/datasets/alice/wire", headers=bob.headers)
    assert r.status_code == 404 and r.headers["x-error-code"] == "RepoNotFound"
    r = client.get("/api/models/alice/wire", headers={"Authorization": "Bearer wrong"})
    assert (
        r.status_code == 401 and r.headers["x-error-message"] == "Invalid credentials in Authorization header"
    )
    assert "x-error-code" not in r.headers
    r = client.get(f"/api/models/{repo}/xet-write-token/main", headers=alice.headers)
    assert r.status_code == 501
    assert r.headers["x-error-message"] == (
        "set HF_HUB_DISABLE_XET=1 to upload files larger than 1 MB to this server"
    )


def test_link_pagination_keeps_the_query(
    client: TestClient, alice: Account, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_api, "TREE_PAGE_SIZE", 2)
    _commit(client, alice, repo, "main", {f"d/{i}.txt": b"x" for i in range(3)})
    url, seen = f"/api/models/{repo}/tree/main?recursive=true", []
    while url:
        r = client.get(url)
        seen += [e["path"] for e in r.json()]
        link = r.headers.get("link")
        assert link is None or ("recursive=true" in link and link.startswith("<http://testserver/"))
        url = link[1 : link.index(">")] if link else ""
    assert sorted(seen) == [".gitattributes", "d", "d/0.txt", "d/1.txt", "d/2.txt"], seen


def test_preupload_modes(client: TestClient, alice: Account, repo: str) -> None:
    files = [
        {"path": "small.txt", "size": 10, "sample": ""},
        {"path": "big.bin", "size": 2_000_000, "sample": ""},
        {"path": "logs/x.log", "size": 1, "sample": ""},
        {"path": ".gitattributes", "size": 1, "sample": ""},
    ]
    r = client.post(
        f"/api/models/{repo}/preupload/main",
        json={"files": files, "gitIgnore": "logs/\n"},
        headers={**alice.headers, "User-Agent": client_agents()[0]},
    )
    assert r.status_code == 200, r.text
    modes = {f["path"]: (f["uploadMode"], f["shouldIgnore"], f["oid"]) for f in r.json()["files"]}
    assert modes["small.txt"] == ("regular", False, None) and modes["big.bin"][0] == "lfs"
    assert modes["logs/x.log"][1] is True and len(modes[".gitattributes"][2]) == 40
    assert "HF_HUB_DISABLE_XET=1" in r.headers["x-hf-warning"]


_AGENTS = """
import datasets
from huggingface_hub import HfApi

for name, version in ((None, None), ("datasets", datasets.__version__)):
    print(HfApi(token=False, library_name=name, library_version=version)._build_hf_headers()["user-agent"])
"""


@functools.cache
def client_agents(disable_xet: bool = False) -> tuple[str, str]:
    """The user agents huggingface_hub sends, alone and for the datasets library (push_to_hub), as their
    own code builds them: in a fresh process, since huggingface_hub reads its environment at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    if disable_xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _AGENTS], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    plain, for_datasets = proc.stdout.splitlines()
    return plain, for_datasets


def test_the_xet_advice_goes_only_to_clients_that_would_try_xet(
    client: TestClient, alice: Account, repo: str
) -> None:
    """The advice to set HF_HUB_DISABLE_XET=1 goes with a preupload answering "lfs" (a file over the
    inline limit; for datasets, also what .gitattributes track) to huggingface_hub 1.20 or later, which
    then sends those files over Xet. Not when every file goes inline, nor to earlier versions (the LFS
    batch reply keeps them on Git LFS) or other clients. A client with Xet disabled sends the very same
    request, so it cannot be spared the advice."""
    plain, for_datasets = client_agents()
    assert client_agents(disable_xet=True) == (plain, for_datasets)
    version = plain.split("hf_hub/")[1].split(";")[0]
    small = [{"path": "small.csv", "size": 10, "sample": ""}, {"path": "notes.txt", "size": 5, "sample": ""}]
    large = [*small, {"path": "big.bin", "size": 2_000_000, "sample": ""}]
    shard = [{"path": "data/train-00000-of-00001.parquet", "size": 3000, "sample": ""}]

    def advice(agent: str, files: list[dict[str, Any]]) -> str | None:
        r = client.post(
            f"/api/models/{repo}/preupload/main",
            json={"files": files},
            headers={**alice.headers, "User-Agent": agent},
        )
        assert r.status_code == 200, r.text
        return r.headers.get("x-hf-warning")

    assert advice(plain, small) is None
    assert advice(for_datasets, small) is None
    assert (
        advice(plain, large)
        == "xet; set HF_HUB_DISABLE_XET=1 to upload files larger than 1 MB to this server (unless it is set "
        "already)"
    )
    assert "push_to_hub" in (advice(for_datasets, large) or "")
    assert "push_to_hub" in (advice(for_datasets, shard) or "")  # goes to LFS, hence Xet, whatever its size
    for old in ("1.19.0", "0.36.2"):
        assert advice(plain.replace(f"hf_hub/{version}", f"hf_hub/{old}"), large) is None, old
        assert advice(for_datasets.replace(f"hf_hub/{version}", f"hf_hub/{old}"), shard) is None, old
    for other in (
        "git-lfs/3.4.1 (GitHub; linux amd64; go 1.21.8)",
        "python-httpx/0.28.1",
        "my_hf_hub/2.0",
        "",
    ):
        assert advice(other, large) is None, other


def test_the_datasets_library_gets_lfs_for_paths_gitattributes_track(
    client: TestClient, alice: Account, repo: str
) -> None:
    """datasets' push_to_hub deletes a Parquet shard right after its preupload, as the Hub answers "lfs"
    for paths .gitattributes track: so does this server for that client. Others keep "regular" (a client
    with hf_xet sends every "lfs" file over Xet)."""
    files = [
        {"path": "data/train-00000-of-00001.parquet", "size": 3000, "sample": ""},
        {"path": "README.md", "size": 300, "sample": ""},
        {"path": "empty.parquet", "size": 0, "sample": ""},
    ]
    agents = {
        "datasets/5.2.0; hf_hub/2.4.0; python/3.11.7": ("lfs", "regular", "regular"),
        "unknown/None; hf_hub/2.4.0; python/3.11.7; datasets/5.2.0": ("lfs", "regular", "regular"),
        "unknown/None; hf_hub/2.4.0; python/3.11.7": ("regular", "regular", "regular"),
        "mydatasets/1.0; hf_hub/2.4.0": ("regular", "regular", "regular"),
    }
    for agent, expected in agents.items():
        r = client.post(
            f"/api/models/{repo}/preupload/main",
            json={"files": files},
            headers={**alice.headers, "User-Agent": agent},
        )
        assert r.status_code == 200, r.text
        assert tuple(f["uploadMode"] for f in r.json()["files"]) == expected, agent
        if "lfs" in expected:
            assert "push_to_hub" in r.headers["x-hf-warning"]


def _feed(data: bytes, tmp: Path, step: int, spool_over: int = 300) -> list[dict]:
    reader = NdjsonReader(tmp, spool_over=spool_over)
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
    return reader.close()


@pytest.mark.parametrize("step", [1, 7, 100, 1000])
def test_ndjson_reader_spools_big_contents_to_files(tmp_path: Path, step: int) -> None:
    big = bytes(range(256)) * 40
    lines = [
        {"key": "header", "value": {"summary": "s"}},
        {
            "key": "file",
            "value": {"content": base64.b64encode(big).decode(), "path": "big", "encoding": "base64"},
        },
        {"key": "file", "value": {"path": "small", "content": "eA==", "encoding": "base64"}},
        {"key": "deletedFile", "value": {"path": "gone"}},
    ]
    body = b"".join(json.dumps(x).replace("/", "\\/").encode() + b"\n" for x in lines)
    items = _feed(body.rstrip(b"\n"), tmp_path, step)
    assert [i["key"] for i in items] == ["header", "file", "file", "deletedFile"]
    spooled = items[1]["value"]
    assert spooled["path"] == "big" and spooled["content"] == "" and spooled["_file"].read_bytes() == big
    assert items[2]["value"]["content"] == "eA==" and "_file" not in items[2]["value"]


def test_ndjson_reader_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        _feed(b'{"key": "header"}\nnot json\n', tmp_path, 5)
    with pytest.raises(InvalidInput):
        _feed(b'{"key": "file", "value": {"content": "' + b"!" * 400 + b'"}}\n', tmp_path, 50)


def test_preupload_names_inline_files_kept_in_lfs_by_their_git_id(
    app: FastAPI, client: TestClient, alice: Account, repo: str
) -> None:
    """A file sent inline but stored in the blob store (here: *.bin is LFS-tracked by the Hub's default
    .gitattributes) is named by the git id of its content, which is what the client compares: sending
    the same file again is recognized as no change."""
    data = b"weights " * 1000
    _commit(client, alice, repo, "main", {"w.bin": data})
    tree = client.get(f"/api/models/{repo}/tree/main", headers=alice.headers).json()
    assert next(e for e in tree if e["path"] == "w.bin")["lfs"]["oid"] == hashlib.sha256(data).hexdigest()
    r = client.post(
        f"/api/models/{repo}/preupload/main",
        json={"files": [{"path": "w.bin", "size": len(data), "sample": ""}]},
        headers=alice.headers,
    )
    git_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert r.json()["files"][0]["uploadMode"] == "regular" and r.json()["files"][0]["oid"] == git_id


def test_a_commit_header_whose_summary_is_not_text_is_refused(
    client: TestClient, alice: Account, repo: str
) -> None:
    for header in ({"summary": 5}, {"summary": "ok", "description": ["a"]}):
        lines = [{"key": "header", "value": header}]
        body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        r = client.post(f"/api/models/{repo}/commit/main", content=body, headers=alice.headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_commit" and "must be a string" in r.json()["message"]
