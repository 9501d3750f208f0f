"""The streamed manifest (`POST /api/v1/repos/{owner}/{name}/uploads/manifests`): the server assembles and
hashes a file from a manifest that arrives while its chunks are still being sent, answers with the
file's sha256, and refuses every bad manifest with a clear 4xx that leaves nothing held or stored."""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.repos.models import Repository
from opensci.storage import quota
from opensci.storage.api import _Feeder
from opensci.storage.store import BlobStore
from tests.api_helpers import create_repo, error_code
from tests.conftest import Account, LiveServer
from tests.storage.test_api_uploads import Uploader, _repo_id, cut, frames, held, random_bytes, uploads
from tests.storage.test_corruption import chunk_locations, flip_byte

MiB = 1024 * 1024


@pytest.fixture
def up(client: TestClient, alice: Account) -> Uploader:
    create_repo(client, alice, "data", kind="dataset", private=True)
    return Uploader(client, alice, "alice/data")


def stream(up: Uploader, size: int, body: bytes | Iterator[bytes], oid: str | None = None) -> httpx.Response:
    params: dict[str, str | int] = {"size": size, **({"oid": oid} if oid else {})}
    headers = {**up.headers, "Content-Type": "application/octet-stream"}
    return up.client.post(uploads(up.full_name, "manifests"), params=params, content=body, headers=headers)


def ids(hashes: list[str]) -> bytes:
    return b"".join(bytes.fromhex(h) for h in hashes)


def test_the_server_answers_with_the_sha256_of_the_file_the_manifest_makes(
    app: FastAPI, up: Uploader
) -> None:
    data = random_bytes(2 * MiB, 20)
    chunks = cut(data) * 2  # repeats are allowed: the file is twice the same content
    data *= 2
    up.send(frames(chunks[: len(chunks) // 2]))
    r = stream(up, len(data), ids([h for h, _ in chunks]))
    assert r.status_code == 201, r.text
    oid = hashlib.sha256(data).hexdigest()
    assert r.json() == {"oid": oid, "size": len(data)}
    assert held(app, "alice/data") == {oid}
    assert up.commit_lfs("f.bin", oid, len(data)).status_code == 201
    assert stream(up, 0, b"").json() == {"oid": hashlib.sha256(b"").hexdigest(), "size": 0}


def test_an_oid_given_with_the_manifest_is_checked(app: FastAPI, up: Uploader) -> None:
    data = random_bytes(MiB, 21)
    chunks = cut(data)
    up.send(frames(chunks))
    wrong = hashlib.sha256(b"other").hexdigest()
    assert error_code(stream(up, len(data), ids([h for h, _ in chunks]), wrong), 422) == "digest_mismatch"
    assert held(app, "alice/data") == set() and not app.state.blobs.has(wrong)
    right = hashlib.sha256(data).hexdigest()
    assert stream(up, len(data), ids([h for h, _ in chunks]), right).json()["oid"] == right


def test_chunks_not_stored_are_listed_and_the_manifest_can_be_sent_again(app: FastAPI, up: Uploader) -> None:
    data = random_bytes(MiB, 22)
    chunks = cut(data)
    hashes = [h for h, _ in chunks]
    up.send(frames(chunks[::2]))
    r = stream(up, len(data), ids(hashes))
    assert r.status_code == 422
    assert r.json()["error"] == "missing_chunks" and r.json()["missing"] == sorted(hashes[1::2])
    assert held(app, "alice/data") == set()
    up.send(frames(chunks[1::2]))
    assert stream(up, len(data), ids(hashes)).status_code == 201


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("cut in a hash", 422, "invalid_manifest"),
        ("more chunks than bytes", 422, "invalid_manifest"),
        ("wrong size", 422, "size_mismatch"),
        ("bad oid", 422, "invalid_oid"),
        ("larger than the server takes", 413, "payload_too_large"),
        ("no size", 422, "invalid_input"),
    ],
)
def test_bad_manifests_are_refused_and_nothing_is_held(
    app: FastAPI, up: Uploader, case: str, status: int, code: str
) -> None:
    data = random_bytes(MiB, 23)
    chunks = cut(data)
    up.send(frames(chunks))
    body, size, oid = ids([h for h, _ in chunks]), len(data), None
    if case == "cut in a hash":
        body = body[:-5]
    elif case == "more chunks than bytes":
        body, size = body * 2, 3
    elif case == "wrong size":
        size += 1
    elif case == "bad oid":
        oid = "not-a-sha256"
    elif case == "larger than the server takes":
        size = app.state.settings.max_upload_bytes + 1
    if case == "no size":
        headers = {**up.headers, "Content-Type": "application/octet-stream"}
        r = up.client.post(uploads(up.full_name, "manifests"), content=body, headers=headers)
    else:
        r = stream(up, size, body, oid)
    assert error_code(r, status) == code
    assert held(app, "alice/data") == set()
    assert not app.state.blobs.has(hashlib.sha256(data).hexdigest())


def test_over_quota_is_413_and_nothing_is_stored(app: FastAPI, up: Uploader) -> None:
    data = random_bytes(2 * MiB, 24)
    chunks = cut(data)
    assert up.send(frames(chunks)).status_code == 200  # before the quota was set
    with app.state.db.session() as session:
        owner = session.get(Repository, _repo_id(app, "data")).owner
        quota.set_limit(session, owner, MiB)
        session.commit()
    assert error_code(stream(up, len(data), ids([h for h, _ in chunks])), 413) == "quota_exceeded"
    assert held(app, "alice/data") == set()
    assert not app.state.blobs.has(hashlib.sha256(data).hexdigest())


def test_a_damaged_chunk_is_reported_quarantined_and_repaired_by_sending_it_again(
    app: FastAPI, up: Uploader
) -> None:
    data = random_bytes(2 * MiB, 25)
    oid, size = up.upload(data)
    digest, loc = chunk_locations(app.state.blobs, oid)[5]
    flip_byte(app.state.blobs, loc)
    chunks = cut(data)
    hashes = [h for h, _ in chunks]
    assert error_code(stream(up, size, ids(hashes)), 409) == "object_damaged"
    assert up.missing(hashes).json()["missing"] == [digest.hex()]  # quarantined: asked for again
    up.send(frames([c for c in chunks if c[0] == digest.hex()]))
    assert stream(up, size, ids(hashes)).json()["oid"] == oid


def test_the_manifest_streams_while_the_chunks_are_sent(
    app: FastAPI, live_server: LiveServer, up: Uploader, alice: Account
) -> None:
    """A real socket, the manifest's parts released one by one as their batches are acknowledged (what
    the SDK does): the server hashes each part as it comes and answers once the stream ends."""
    data = random_bytes(6 * MiB, 26)
    chunks = cut(data)
    parts = [chunks[i : i + 20] for i in range(0, len(chunks), 20)]
    released: queue.Queue[bytes | None] = queue.Queue()

    def body() -> Iterator[bytes]:
        while (part := released.get()) is not None:
            yield part

    reply: list[httpx.Response] = []
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        live = Uploader(http, alice, "alice/data")
        thread = threading.Thread(target=lambda: reply.append(stream(live, len(data), body())))
        thread.start()
        for part in parts:
            assert live.send(frames(part)).status_code == 200
            released.put(ids([h for h, _ in part]))
        released.put(None)
        thread.join(60)
    assert reply[0].status_code == 201, reply[0].text
    assert reply[0].json() == {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_a_legacy_chunk_named_by_a_files_oid_cannot_be_claimed_by_knowing_the_oid(
    app: FastAPI, client: TestClient, up: Uploader, bob: Account
) -> None:
    """An older server named chunks by their sha256, so a one-chunk file's chunk is named by the file's
    Git LFS oid, which others may know (a pointer in a mirror, a log). Naming it must not give its bytes
    to someone who never had them: to an upload, a legacy chunk is missing."""
    from sqlalchemy import update

    from opensci.storage.models import StorageChunk
    from opensci.storage.store import _Lease

    secret = random_bytes(10_000, 41)
    oid = hashlib.sha256(secret).hexdigest()
    lease = _Lease(app.state.blobs)  # alice's private file, as an older server stored it
    lease.append([(bytes.fromhex(oid), memoryview(secret))])
    lease.flush()
    lease.release(True)
    with app.state.db.session() as session:
        session.execute(update(StorageChunk).values(legacy=True))
        session.commit()
    create_repo(client, bob, "steal", kind="dataset")
    thief = Uploader(client, bob, "bob/steal")
    assert thief.missing([oid]).json()["missing"] == [oid]
    r = stream(thief, len(secret), bytes.fromhex(oid))
    assert r.status_code == 422 and r.json()["error"] == "missing_chunks" and r.json()["missing"] == [oid]
    r = client.post(
        uploads("bob/steal", "objects"),
        json={"oid": oid, "size": len(secret), "chunks": [oid]},
        headers=bob.headers,
    )
    assert r.status_code == 422 and r.json()["error"] == "missing_chunks", r.text
    assert held(app, "bob/steal") == set()


def test_a_chunk_found_damaged_while_the_manifest_still_streams_ends_it_with_409(
    app: FastAPI, live_server: LiveServer, up: Uploader, alice: Account
) -> None:
    """Parts go on arriving while earlier ones are read in the background (the server feeds its reader
    with whatever arrived meanwhile): a failure of such a read is the answer, and nothing more is held."""
    data = random_bytes(6 * MiB, 27)
    oid, size = up.upload(data)
    digest, loc = chunk_locations(app.state.blobs, oid)[4]
    flip_byte(app.state.blobs, loc)
    hashes = [h for h, _ in cut(data)]

    def body() -> Iterator[bytes]:
        for i in range(0, len(hashes), 3):
            yield ids(hashes[i : i + 3])

    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        r = stream(Uploader(http, alice, "alice/data"), size, body())
    assert error_code(r, 409) == "object_damaged"
    assert digest.hex() in r.json()["message"]
    assert held(app, "alice/data") == {oid}  # from the first upload only


def test_draining_the_feeds_never_spins_on_one_that_has_ended(store: BlobStore) -> None:
    """A feed that has ended but whose done-callback has not run yet (the event loop runs it later): the
    stream's end must go on from it. (Awaiting a finished future does not yield to the event loop, so a
    drain that waited for the callback once spun forever, hanging the upload.)"""
    data = random_bytes(2 * MiB, 30)
    chunks = cut(data)
    store.put_chunks(chunks)
    digests = [bytes.fromhex(h) for h, _ in chunks]
    reader = store.content_reader("", len(data))
    result: dict[str, str] = {}

    async def main() -> str:
        feeder = _Feeder(reader)
        await feeder.add(digests[:5])
        task = feeder.task
        assert task is not None
        task.remove_done_callback(feeder._done)  # as if the loop had not come to it yet
        await asyncio.wait([task])
        feeder.queued += digests[5:]
        await feeder.drain()
        return reader.hexdigest()

    thread = threading.Thread(target=lambda: result.update(oid=asyncio.run(main())), daemon=True)
    thread.start()
    thread.join(30)
    reader.close()
    assert not thread.is_alive(), "the drain spins on a feed that has ended"
    assert result["oid"] == hashlib.sha256(data).hexdigest()
