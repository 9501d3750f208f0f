"""Edge cases found by a new-user pass over large files: damaged content, racing uploads of one object,
paths that are not text, oversized manifests, unchanged re-uploads, and what reindex brings back."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.client.errors import ValidationError
from opensci.client.transfer import collect
from opensci.storage.maintenance import reindex
from opensci.storage.store import BlobStore
from tests.api_helpers import API, create_repo, error_code
from tests.conftest import Account, LiveServer
from tests.storage.test_corruption import chunk_locations, flip_byte

LFS = {"Accept": "application/vnd.git-lfs+json", "Content-Type": "application/vnd.git-lfs+json"}


def _commit(client: TestClient, who: Account, full: str, files: dict[str, bytes]) -> httpx.Response:
    return client.post(
        f"{API}/repos/{full}/commits",
        data={"message": "files"},
        files=[("files", (path, data)) for path, data in files.items()],
        headers=who.headers,
    )


def test_damaged_content_is_an_error_never_the_pointer(
    app: FastAPI, client: TestClient, alice: Account
) -> None:
    app.state.settings.lfs_threshold_bytes = 1000
    create_repo(client, alice, "fragile", kind="dataset")
    data = os.urandom(200_000)
    assert _commit(client, alice, "alice/fragile", {"f.bin": data}).status_code == 201
    blobs: BlobStore = app.state.blobs
    oid = hashlib.sha256(data).hexdigest()
    flip_byte(blobs, chunk_locations(blobs, oid)[0][1])
    assert not blobs.verify().ok  # the scrub quarantines it
    raw = client.get(f"{API}/repos/alice/fragile/raw/main/f.bin", headers=alice.headers)
    assert error_code(raw, 409) == "object_damaged"
    resolve = client.get("/datasets/alice/fragile/resolve/main/f.bin", headers=alice.headers)
    assert error_code(resolve, 409) == "object_damaged"  # not a 5xx, which Hub clients retry for 23 s
    assert "quarantined" in resolve.headers["x-error-message"]
    page = client.get(
        "/datasets/alice/fragile/blob/main/f.bin", headers={**alice.headers, "Accept": "text/html"}
    )
    assert page.status_code == 409 and "damaged" in page.text
    # Uploading the same content again repairs it.
    assert _commit(client, alice, "alice/fragile", {"again.bin": data}).status_code == 201
    assert client.get(f"{API}/repos/alice/fragile/raw/main/f.bin", headers=alice.headers).content == data


def test_concurrent_lfs_puts_of_one_object_all_succeed(live_server: LiveServer, alice: Account) -> None:
    with httpx.Client(base_url=live_server.url, headers=alice.headers, timeout=60) as c:
        assert c.post(f"{API}/repos", json={"name": "race", "kind": "dataset"}).status_code == 201
        data = os.urandom(3_000_000)
        oid = hashlib.sha256(data).hexdigest()
        batch = c.post(
            "/datasets/alice/race.git/info/lfs/objects/batch",
            json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
            headers=LFS,
        ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    statuses: list[int] = []

    def put() -> None:
        statuses.append(httpx.put(href, content=data, timeout=60).status_code)

    threads = [threading.Thread(target=put) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 5


def test_paths_that_are_not_text_are_refused(client: TestClient, alice: Account, tmp_path: Path) -> None:
    create_repo(client, alice, "names", kind="model")
    lines = [
        json.dumps({"key": "header", "value": {"summary": "t"}}),
        '{"key": "file", "value": {"path": "\\ud800.txt", "content": "'
        + base64.b64encode(b"hello").decode()
        + '", "encoding": "base64"}}',
    ]
    r = client.post(
        "/api/models/alice/names/commit/main",
        content="\n".join(lines).encode(),
        headers={**alice.headers, "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_path"
    r = client.post(
        f"{API}/repos/alice/names/commits",
        data={"message": "m", "lfs": '{"path": "\\ud800", "oid": "' + "a" * 64 + '", "size": 1}'},
        headers=alice.headers,
    )
    assert error_code(r, 422) == "invalid_path"
    # The SDK refuses a local name that is not UTF-8 before anything is created.
    folder = tmp_path / "bad"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"\xff\xfe.txt"), "wb") as f:
        f.write(b"x")
    with pytest.raises(ValidationError, match="not valid UTF-8"):
        collect(folder, None)


def test_an_object_larger_than_the_server_accepts_is_refused_before_any_work(
    app: FastAPI, client: TestClient, alice: Account
) -> None:
    create_repo(client, alice, "huge", kind="dataset")
    app.state.settings.max_upload_bytes = 10_000_000
    r = client.post(
        f"{API}/repos/alice/huge/uploads/objects",
        json={"oid": "f" * 64, "size": 10_000_001, "chunks": ["a" * 64]},
        headers=alice.headers,
    )
    assert error_code(r, 413) == "payload_too_large"


def test_an_unchanged_upload_makes_no_commit(app: FastAPI, client: TestClient, alice: Account) -> None:
    app.state.settings.lfs_threshold_bytes = 1000
    create_repo(client, alice, "same", kind="dataset")
    data = {"big.bin": os.urandom(5000), "small.txt": b"hello\n"}
    first = _commit(client, alice, "alice/same", data)
    assert first.status_code == 201 and first.json()["changed"] is True
    again = _commit(client, alice, "alice/same", data)
    assert again.status_code == 200
    assert again.json() == {
        "commit": first.json()["commit"],
        "branch": "main",
        "parent": None,
        "changed": False,
    }
    commits = client.get(f"{API}/repos/alice/same/commits", headers=alice.headers).json()["items"]
    assert len(commits) == 1


def test_reindex_does_not_bring_back_what_gc_collected(app: FastAPI, make_store) -> None:  # type: ignore[no-untyped-def]
    from tests.storage.conftest import backdate

    store: BlobStore = make_store()
    import io

    kept = store.put(io.BytesIO(os.urandom(300_000)))
    dropped = store.put(io.BytesIO(os.urandom(300_000)))
    backdate(store.db, 2 * 86400)
    report = store.gc([kept.oid], grace=3600)
    assert report.objects_deleted == 1 and report.chunks_deleted > 0
    again = reindex(store)
    assert again.chunks_added == 0
    assert store.missing_chunks([d.hex() for d, _ in chunk_locations(store, kept.oid)]) == set()
    assert not store.has(dropped.oid)
