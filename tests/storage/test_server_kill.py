"""`kill -9` of a real server process while clients upload (Git LFS PUTs and REST commits of large files):
everything the server acknowledged is there after a restart, byte for byte, and no partial object is
visible; an interrupted upload simply succeeds when tried again."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from opensci.settings import Settings
from opensci.storage.models import StorageObject
from opensci.storage.store import BlobStore
from tests.conftest import Account
from tests.server_process import Server

LFS = {"Accept": "application/vnd.git-lfs+json", "Content-Type": "application/vnd.git-lfs+json"}


@pytest.fixture
def server(settings: Settings, app: FastAPI, tmp_path: Path) -> Iterator[Server]:
    srv = Server(
        settings,
        tmp_path,
        {"OPENSCI_LFS_THRESHOLD_BYTES": "100000", "OPENSCI_STORAGE_PACK_MAX_BYTES": str(8 * 1024 * 1024)},
    )
    yield srv
    srv.stop()


def _slowly(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 256 * 1024):
        yield data[i : i + 256 * 1024]
        time.sleep(0.002)


def test_kill_9_during_uploads_loses_nothing_acknowledged(
    server: Server, settings: Settings, app: FastAPI, alice: Account
) -> None:
    server.start()
    auth = {"Authorization": f"Bearer {alice.token}"}
    assert httpx.post(f"{server.url}/api/v1/repos", json={"name": "crash"}, headers=auth).status_code == 201
    acked_objects: dict[str, bytes] = {}  # oid → content, for PUTs answered 200
    acked_files: dict[str, bytes] = {}  # path → content, for commits answered 201
    tried: dict[str, bytes] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def lfs_uploader(k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            data = os.urandom(1_000_000 + 137 * k + n)
            oid = hashlib.sha256(data).hexdigest()
            with lock:
                tried[oid] = data
            try:
                batch = httpx.post(
                    f"{server.url}/alice/crash.git/info/lfs/objects/batch",
                    json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
                    headers={**LFS, **auth},
                    timeout=30,
                ).json()
                href = batch["objects"][0]["actions"]["upload"]["href"]
                r = httpx.put(
                    href, content=_slowly(data), headers={"Content-Length": str(len(data))}, timeout=30
                )
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                with lock:
                    acked_objects[oid] = data

    def committer(k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            path = f"big/{k}-{n}.bin"
            data = os.urandom(300_000 + n)
            try:
                r = httpx.post(
                    f"{server.url}/api/v1/repos/alice/crash/commits",
                    data={"message": f"commit {k}-{n}"},
                    files=[("files", (path, data))],
                    headers=auth,
                    timeout=30,
                )
            except httpx.HTTPError:
                return
            if r.status_code == 201:
                with lock:
                    acked_files[path] = data

    threads = [threading.Thread(target=lfs_uploader, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=committer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    server.kill()
    stop.set()
    for t in threads:
        t.join(30)
    assert acked_objects and acked_files, "the clients had no time to finish anything before the kill"
    interrupted = [oid for oid in tried if oid not in acked_objects]

    # No partial object: every visible object's bytes hash to its oid; the scrub finds nothing wrong.
    blobs = BlobStore(settings, app.state.db)
    with app.state.db.session() as session:
        visible = session.scalars(select(StorageObject.oid)).all()
    for oid in visible:
        with blobs.open(oid) as f:
            assert hashlib.sha256(f.read()).hexdigest() == oid
    report = blobs.verify()
    assert report.ok, report
    blobs.close()

    # After a restart, every acknowledged write is there.
    server.start()
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as c:
        for oid, data in acked_objects.items():
            batch = c.post(
                "/alice/crash.git/info/lfs/objects/batch",
                json={"operation": "download", "objects": [{"oid": oid, "size": len(data)}]},
                headers=LFS,
            ).json()
            href = batch["objects"][0]["actions"]["download"]["href"]
            assert httpx.get(href).content == data
        for path, data in acked_files.items():
            r = c.get(f"/api/v1/repos/alice/crash/raw/main/{path}")
            assert r.status_code == 200 and r.content == data, path
        # An interrupted upload goes through when tried again.
        if interrupted:
            oid = interrupted[0]
            data = tried[oid]
            batch = c.post(
                "/alice/crash.git/info/lfs/objects/batch",
                json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
                headers=LFS,
            ).json()
            actions = batch["objects"][0].get("actions")
            if actions is None:  # it completed on the server, the kill came before the client heard so
                down = c.post(
                    "/alice/crash.git/info/lfs/objects/batch",
                    json={"operation": "download", "objects": [{"oid": oid, "size": len(data)}]},
                    headers=LFS,
                ).json()
                assert httpx.get(down["objects"][0]["actions"]["download"]["href"]).content == data
            else:
                assert httpx.put(actions["upload"]["href"], content=data).status_code == 200
