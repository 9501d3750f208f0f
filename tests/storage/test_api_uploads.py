"""The chunk upload protocol over HTTP (`/api/v1/repos/{owner}/{name}/uploads/...`) and the `lfs` field of
the commit endpoint: what works, every bad input (each a clear 4xx that leaves storage consistent), and
who may use them. Chunks are cut here with the server's own chunker, independently of the SDK."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import threading
from typing import Any

import httpx
import pytest
from blake3 import blake3
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from opensci.repos.models import Repository
from opensci.storage import api as storage_api
from opensci.storage import files, quota
from opensci.storage.chunking import ChunkedStream
from opensci.storage.maintenance import stats
from opensci.storage.models import RepoObject, StorageObject
from tests.api_helpers import API, commit, committed, create_repo, error_code
from tests.conftest import Account, LiveServer

FRAME = struct.Struct(">32sI")
MiB = 1024 * 1024


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def cut(data: bytes) -> list[tuple[str, bytes]]:
    """(name hex, bytes) of each chunk, as the blob store cuts and names them."""
    return [(d.hex(), bytes(b)) for block in ChunkedStream(io.BytesIO(data)).blocks() for d, b in block]


def frames(chunks: list[tuple[str, bytes]]) -> bytes:
    return b"".join(FRAME.pack(bytes.fromhex(h), len(b)) + b for h, b in chunks)


def uploads(full_name: str, rest: str) -> str:
    return f"{API}/repos/{full_name}/uploads/{rest}"


class Uploader:
    """The protocol's three calls for one account and repository."""

    def __init__(self, client: Any, who: Account, full_name: str) -> None:
        self.client, self.headers, self.full_name = client, who.headers, full_name

    def missing(self, hashes: list[str]) -> httpx.Response:
        return self.client.post(
            uploads(self.full_name, "chunks/missing"), json={"chunks": hashes}, headers=self.headers
        )

    def send(self, body: bytes) -> httpx.Response:
        headers = {**self.headers, "Content-Type": "application/octet-stream"}
        return self.client.post(uploads(self.full_name, "chunks"), content=body, headers=headers)

    def assemble(self, oid: str, size: int, hashes: list[str]) -> httpx.Response:
        body = {"oid": oid, "size": size, "chunks": hashes}
        return self.client.post(uploads(self.full_name, "objects"), json=body, headers=self.headers)

    def upload(self, data: bytes) -> tuple[str, int]:
        """The whole protocol: ask, send what is missing, assemble. Returns (oid, size)."""
        chunks = cut(data)
        hashes = [h for h, _ in chunks]
        r = self.missing(hashes)
        assert r.status_code == 200, r.text
        wanted = set(r.json()["missing"])
        todo = list({h: b for h, b in chunks if h in wanted}.items())
        if todo:
            r = self.send(frames(todo))
            assert r.status_code == 200, r.text
        oid = hashlib.sha256(data).hexdigest()
        r = self.assemble(oid, len(data), hashes)
        assert r.status_code == 201, r.text
        assert r.json() == {"oid": oid, "size": len(data)}
        return oid, len(data)

    def commit_lfs(self, path: str, oid: str, size: int, **extra: str) -> httpx.Response:
        data: dict[str, Any] = {
            "message": f"add {path}",
            "lfs": json.dumps({"path": path, "oid": oid, "size": size}),
        }
        return self.client.post(
            f"{API}/repos/{self.full_name}/commits", data={**data, **extra}, headers=self.headers
        )


@pytest.fixture
def up(client: TestClient, alice: Account) -> Uploader:
    create_repo(client, alice, "data", kind="dataset", private=True)
    return Uploader(client, alice, "alice/data")


def pack_bytes(app: FastAPI) -> int:
    packs = app.state.settings.home / "blobs" / "packs"
    return sum(p.stat().st_size for p in packs.glob("*.pack")) if packs.exists() else 0


def held(app: FastAPI, full_name: str) -> set[str]:
    """The objects the repository holds."""
    repo_id = _repo_id(app, full_name.split("/")[1])
    with app.state.db.session() as session:
        return set(session.scalars(select(RepoObject.oid).where(RepoObject.repo_id == repo_id)))


# --- the protocol ----------------------------------------------------------------------------------------


def test_upload_asks_sends_only_missing_chunks_then_commits_a_pointer(
    app: FastAPI, client: TestClient, alice: Account, up: Uploader
) -> None:
    data = random_bytes(3 * 1024 * 1024, 1)
    chunks = cut(data)
    hashes = [h for h, _ in chunks]
    assert up.missing(hashes).json() == {"missing": hashes}

    half = chunks[: len(chunks) // 2]
    r = up.send(frames(half))
    assert r.status_code == 200 and r.json() == {"received": len(half), "stored": len(half)}
    assert up.missing(hashes).json()["missing"] == hashes[len(half) :]
    again = up.send(frames(half[:2]))  # duplicates are accepted, and cost nothing
    assert again.json() == {"received": 2, "stored": 0}

    oid, size = up.upload(data)  # asks again: sends only the second half
    assert up.missing(hashes).json() == {"missing": []}
    assert held(app, "alice/data") == {oid}

    r = up.commit_lfs("big/file.bin", oid, size)
    assert r.status_code == 201, r.text
    head = r.json()["commit"]
    raw = client.get(f"{API}/repos/alice/data/raw/{head}/big/file.bin", headers=alice.headers)
    assert raw.status_code == 200 and raw.content == data
    assert raw.headers["etag"] == f'"{oid}"'
    part = client.get(
        f"{API}/repos/alice/data/raw/{head}/big/file.bin", headers={**alice.headers, "Range": "bytes=1000-"}
    )
    assert part.status_code == 206 and part.content == data[1000:]
    for validator, status in ((f'"{oid}"', 206), ('"another-version"', 200)):
        resumed = client.get(
            f"{API}/repos/alice/data/raw/{head}/big/file.bin",
            headers={**alice.headers, "Range": "bytes=1000-", "If-Range": validator},
        )
        assert resumed.status_code == status
        assert resumed.content == (data[1000:] if status == 206 else data)
    attrs = client.get(f"{API}/repos/alice/data/raw/{head}/.gitattributes", headers=alice.headers)
    assert "filter=lfs" in attrs.text
    g = app.state.store.open(_repo_id(app, "data"))
    pointer = g.revparse_single(f"{head}:big/file.bin")
    assert files.parse_pointer(pointer.data) == (oid, size)


def _repo_id(app: FastAPI, name: str) -> str:
    with app.state.db.session() as session:
        return session.query(Repository).filter(Repository.name == name).one().id


def test_a_file_with_repeated_content_lists_each_chunk_once_in_missing(up: Uploader) -> None:
    block = random_bytes(300 * 1024, 2)
    data = block * 6
    hashes = [h for h, _ in cut(data)]
    missing = up.missing(hashes).json()["missing"]
    assert len(missing) == len(set(hashes)) < len(hashes)
    up.upload(data)


def test_a_second_repository_of_the_same_content_sends_nothing_new(
    app: FastAPI, client: TestClient, alice: Account, up: Uploader
) -> None:
    data = random_bytes(2 * 1024 * 1024, 3)
    up.upload(data)
    before = pack_bytes(app)
    create_repo(client, alice, "copy")
    other = Uploader(client, alice, "alice/copy")
    assert other.missing([h for h, _ in cut(data)]).json() == {"missing": []}
    oid, size = other.upload(data)
    assert pack_bytes(app) == before
    assert other.commit_lfs("x.bin", oid, size).status_code == 201


def test_multipart_files_over_the_lfs_threshold_are_stored_in_the_blob_store(
    app: FastAPI, client: TestClient, alice: Account, up: Uploader
) -> None:
    app.state.settings.lfs_threshold_bytes = 100_000
    data = random_bytes(400_000, 4)
    head = committed(client, alice, "alice/data", {"big.bin": data, "small.txt": "small\n"})
    g = app.state.store.open(_repo_id(app, "data"))
    oid = hashlib.sha256(data).hexdigest()
    assert files.parse_pointer(g.revparse_single(f"{head}:big.bin").data) == (oid, len(data))
    assert g.revparse_single(f"{head}:small.txt").data == b"small\n"
    raw = client.get(f"{API}/repos/alice/data/raw/{head}/big.bin", headers=alice.headers)
    assert raw.content == data
    assert held(app, "alice/data") == {oid}
    # The same content again, as chunks: already there.
    assert up.missing([h for h, _ in cut(data)]).json() == {"missing": []}
    # Several large files in one commit (on SQLite, each hold must not block the next file's storing).
    more = {f"more/{i}.bin": random_bytes(200_000, 40 + i) for i in range(3)}
    head = committed(client, alice, "alice/data", more)
    for path, content in more.items():
        raw = client.get(f"{API}/repos/alice/data/raw/{head}/{path}", headers=alice.headers)
        assert raw.content == content
    assert len(held(app, "alice/data")) == 4


# --- bad input -------------------------------------------------------------------------------------------


def test_a_chunk_whose_bytes_do_not_match_its_hash_stores_nothing_of_the_batch(
    app: FastAPI, up: Uploader
) -> None:
    chunks = cut(random_bytes(1024 * 1024, 5))
    hashes = [h for h, _ in chunks]
    bad = [*chunks[:3], (chunks[3][0], chunks[3][1][:-1] + b"!"), *chunks[4:]]
    assert error_code(up.send(frames(bad)), 422) == "digest_mismatch"
    assert up.missing(hashes).json()["missing"] == hashes
    assert pack_bytes(app) == 0


def test_chunks_named_by_sha256_ask_for_a_newer_sdk(app: FastAPI, up: Uploader) -> None:
    """An SDK from before BLAKE3 chunk names: told to upgrade, not to send the same bytes again."""
    chunks = cut(random_bytes(300_000, 5))
    old = [(hashlib.sha256(b).hexdigest(), b) for _, b in chunks]
    r = up.send(frames(old))
    assert error_code(r, 422) == "outdated_client"
    assert "pip install -U opensci" in r.json()["message"]
    assert pack_bytes(app) == 0


def test_another_user_cannot_recut_an_object_others_hold(
    app: FastAPI, client: TestClient, alice: Account, bob: Account, up: Uploader
) -> None:
    """What QA saw: bob uploaded content alice holds privately as tiny chunks, and alice's copy became 40
    times slower to read. Short chunks are refused; a manifest of other (valid) chunks is accepted, but
    the object keeps the manifest it has."""
    data = random_bytes(2 * 1024 * 1024, 50)
    oid, size = up.upload(data)
    with app.state.db.session() as session:
        before = session.get(StorageObject, oid).manifest
    create_repo(client, bob, "copy", kind="dataset")
    bobs = Uploader(client, bob, "bob/copy")
    tiny = [(blake3(data[i : i + 64]).hexdigest(), data[i : i + 64]) for i in range(0, 64 * 2000, 64)]
    assert bobs.send(frames(tiny)).status_code == 200
    rest = data[64 * 2000 :]
    tiny.append((blake3(rest).hexdigest(), rest))
    assert bobs.send(frames(tiny[-1:])).status_code == 200
    r = bobs.assemble(oid, size, [h for h, _ in tiny])
    assert error_code(r, 422) == "invalid_manifest" and "64 bytes" in r.json()["message"]
    step = 20_000
    other = [(blake3(data[i : i + step]).hexdigest(), data[i : i + step]) for i in range(0, size, step)]
    assert bobs.send(frames(other)).status_code == 200
    assert bobs.assemble(oid, size, [h for h, _ in other]).status_code == 201
    with app.state.db.session() as session:
        assert session.get(StorageObject, oid).manifest == before
    assert held(app, "bob/copy") == {oid} and held(app, "alice/data") == {oid}


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("cut in the data", "truncated_batch"),
        ("cut in a header", "truncated_batch"),
        ("zero length", "invalid_chunk_size"),
        ("huge length", "invalid_chunk_size"),
        ("empty", "empty_batch"),
    ],
)
def test_malformed_batches_are_refused(app: FastAPI, up: Uploader, case: str, code: str) -> None:
    chunks = cut(random_bytes(200_000, 6))
    good = frames(chunks)
    body = {
        "cut in the data": good[:-10],
        "cut in a header": good + FRAME.pack(bytes(32), 10)[:20],
        "zero length": good + FRAME.pack(hashlib.sha256(b"").digest(), 0),
        "huge length": FRAME.pack(bytes(32), 2**32 - 1) + b"x" * 100,
        "empty": b"",
    }[case]
    assert error_code(up.send(body), 422) == code
    assert up.missing([h for h, _ in chunks]).json()["missing"] == [h for h, _ in chunks]
    assert pack_bytes(app) == 0


def test_a_batch_over_the_limit_is_payload_too_large(up: Uploader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_api, "MAX_BATCH_BYTES", 100_000)
    chunks = cut(random_bytes(300_000, 7))
    assert error_code(up.send(frames(chunks)), 413) == "payload_too_large"
    assert up.missing([h for h, _ in chunks]).json()["missing"] == [h for h, _ in chunks]


def test_bad_hash_lists_are_refused(up: Uploader) -> None:
    assert error_code(up.missing(["xyz"]), 422) == "invalid_chunk_hash"
    r = up.client.post(uploads(up.full_name, "chunks/missing"), json={"chunks": "ab"}, headers=up.headers)
    assert error_code(r, 422) == "invalid_input"
    too_many = ["0" * 64] * (storage_api.MAX_HASHES + 1)
    assert error_code(up.missing(too_many), 422) == "invalid_input"


def test_a_manifest_naming_chunks_not_stored_lists_them(app: FastAPI, up: Uploader) -> None:
    data = random_bytes(1024 * 1024, 8)
    chunks = cut(data)
    hashes = [h for h, _ in chunks]
    up.send(frames(chunks[::2]))
    oid = hashlib.sha256(data).hexdigest()
    r = up.assemble(oid, len(data), hashes)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "missing_chunks" and body["message"]
    assert body["missing"] == sorted(hashes[1::2])
    assert held(app, "alice/data") == set()
    up.send(frames(chunks[1::2]))  # send what was listed, and ask again
    assert up.assemble(oid, len(data), hashes).status_code == 201


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("oid", "digest_mismatch"),
        ("size", "size_mismatch"),
        ("order", "digest_mismatch"),
        ("bad oid", "invalid_oid"),
    ],
)
def test_a_manifest_that_does_not_make_the_announced_file_is_refused(
    app: FastAPI, up: Uploader, change: str, code: str
) -> None:
    data = random_bytes(1024 * 1024, 9)
    chunks = cut(data)
    hashes = [h for h, _ in chunks]
    up.send(frames(chunks))
    oid, size = hashlib.sha256(data).hexdigest(), len(data)
    if change == "oid":
        oid = hashlib.sha256(b"other").hexdigest()
    elif change == "size":
        size += 1
    elif change == "order":
        hashes = hashes[::-1]
    else:
        oid = "not-a-sha256"
    assert error_code(up.assemble(oid, size, hashes), 422) == code
    assert held(app, "alice/data") == set()
    assert not app.state.blobs.has(hashlib.sha256(b"other").hexdigest())


def test_more_chunks_than_bytes_is_an_invalid_manifest(up: Uploader) -> None:
    r = up.assemble(hashlib.sha256(b"ab").hexdigest(), 2, ["0" * 64] * 3)
    assert error_code(r, 422) == "invalid_manifest"


def test_over_quota_is_413_and_nothing_is_held_or_committed(
    app: FastAPI, client: TestClient, alice: Account, up: Uploader
) -> None:
    data = random_bytes(2 * 1024 * 1024, 10)
    chunks = cut(data)
    hashes = [h for h, _ in chunks]
    assert up.send(frames(chunks)).status_code == 200  # before the quota was set
    with app.state.db.session() as session:
        owner = session.get(Repository, _repo_id(app, "data")).owner
        quota.set_limit(session, owner, 1024 * 1024)
        session.commit()
    oid = hashlib.sha256(data).hexdigest()
    assert error_code(up.assemble(oid, len(data), hashes), 413) == "quota_exceeded"
    assert held(app, "alice/data") == set()
    assert not app.state.blobs.has(oid)
    assert error_code(up.commit_lfs("f.bin", oid, len(data)), 422) == "lfs_object_missing"
    assert client.get(f"{API}/repos/alice/data/commits", headers=alice.headers).json()["items"] == []
    with app.state.db.session() as session:
        assert quota.usage(session, app.state.settings, owner.id).used_bytes == 0
        quota.set_limit(session, session.merge(owner), 0)  # unlimited: now it fits
        session.commit()
    assert up.assemble(oid, len(data), hashes).status_code == 201


def set_quota(app: FastAPI, name: str, limit: int) -> str:
    """Give the owner of repository `name` a quota; returns the owner's id."""
    with app.state.db.session() as session:
        owner = session.get(Repository, _repo_id(app, name)).owner
        quota.set_limit(session, owner, limit)
        session.commit()
        return owner.id


def storage_of(client: TestClient, who: Account) -> dict[str, Any]:
    r = client.get(f"{API}/owners/{who.name}/storage", headers=who.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_chunks_beyond_the_quota_are_refused_and_nothing_of_the_batch_is_stored(
    app: FastAPI, client: TestClient, alice: Account, up: Uploader
) -> None:
    """The QA repro: a write token and a quota of 1 MiB filled the disk with chunk batches no file held."""
    set_quota(app, "data", MiB)
    chunks = cut(random_bytes(2 * MiB, 12))
    r = up.send(frames(chunks))
    assert error_code(r, 413) == "quota_exceeded"
    assert (
        "1,048,576-byte storage quota" in r.json()["message"]
        and "Nothing of this batch" in r.json()["message"]
    )
    assert app.state.blobs.missing_chunks([h for h, _ in chunks]) == {h for h, _ in chunks}
    assert storage_of(client, alice)["pending_bytes"] == 0


def test_chunks_count_against_the_quota_until_a_file_holds_them(
    app: FastAPI, client: TestClient, alice: Account, up: Uploader
) -> None:
    owner_id = set_quota(app, "data", 4 * MiB)
    first = random_bytes(MiB, 13)
    chunks = cut(first)
    assert up.send(frames(chunks)).status_code == 200
    assert up.send(frames(chunks)).status_code == 200  # chunks stored already count once
    assert storage_of(client, alice)["pending_bytes"] == len(first)
    second = cut(random_bytes(7 * MiB // 2, 14))  # 1 + 3.5 MiB do not fit in 4
    assert error_code(up.send(frames(second)), 413) == "quota_exceeded"
    up.upload(first)  # a file holds the first chunks: they are counted as the file now
    usage = storage_of(client, alice)
    assert (usage["used_bytes"], usage["pending_bytes"]) == (len(first), 0)
    assert up.send(frames(cut(random_bytes(MiB, 15)))).status_code == 200
    third = cut(random_bytes(5 * MiB // 2, 16))  # 1 held + 1 pending + 2.5 MiB do not fit in 4
    assert error_code(up.send(frames(third)), 413) == "quota_exceeded"
    # Unfinished uploads lapse with the garbage collector's grace period (their chunks are collected).
    app.state.settings.storage_gc_grace_seconds = 0
    with app.state.db.session() as session:
        assert quota.pending(session, app.state.settings, owner_id) == 0
    assert up.send(frames(third)).status_code == 200


def test_lfs_fields_must_name_an_object_the_repository_may_use(
    client: TestClient, alice: Account, bob: Account, up: Uploader
) -> None:
    oid, size = up.upload(random_bytes(1024 * 1024, 11))
    create_repo(client, bob, "mine")
    bobs = Uploader(client, bob, "bob/mine")
    # Knowing the oid of alice's private file gives bob nothing.
    assert error_code(bobs.commit_lfs("stolen.bin", oid, size), 422) == "lfs_object_missing"
    never = hashlib.sha256(b"never uploaded").hexdigest()
    assert error_code(up.commit_lfs("x.bin", never, 14), 422) == "lfs_object_missing"
    assert error_code(up.commit_lfs("x.bin", oid, size + 1), 422) == "size_mismatch"
    r = client.post(
        f"{API}/repos/alice/data/commits", data={"message": "m", "lfs": "{not json"}, headers=alice.headers
    )
    assert error_code(r, 422) == "invalid_form"
    r = client.post(
        f"{API}/repos/alice/data/commits",
        data={"message": "m", "lfs": json.dumps({"path": "a", "oid": oid, "size": "12"})},
        headers=alice.headers,
    )
    assert error_code(r, 422) == "invalid_form"
    both = commit(client, alice, "alice/data", {"x.bin": "x"}, message="m")
    assert both.status_code == 201
    r = client.post(
        f"{API}/repos/alice/data/commits",
        data={
            "message": "m",
            "lfs": json.dumps({"path": "y.bin", "oid": oid, "size": size}),
            "delete": "y.bin",
        },
        headers=alice.headers,
    )
    assert error_code(r, 422) == "duplicate_path"


def test_who_may_upload(client: TestClient, alice: Account, bob: Account, up: Uploader) -> None:
    data = random_bytes(100_000, 12)
    chunks = cut(data)
    hashes = [h for h, _ in chunks]
    oid = hashlib.sha256(data).hexdigest()
    for who, status, code in (
        (bob.headers, 404, "repo_not_found"),
        (alice.read_headers, 403, None),
        ({}, 401, None),
    ):
        for r in (
            client.post(uploads("alice/data", "chunks/missing"), json={"chunks": hashes}, headers=who),
            client.post(uploads("alice/data", "chunks"), content=frames(chunks), headers=who),
            client.post(
                uploads("alice/data", "objects"),
                json={"oid": oid, "size": len(data), "chunks": hashes},
                headers=who,
            ),
        ):
            got = error_code(r, status)
            if code:
                assert got == code
    assert up.missing(hashes).json()["missing"] == hashes  # nothing of theirs was stored


# --- concurrency, on a live server -------------------------------------------------------------------------


def test_two_concurrent_uploads_of_the_same_object_both_succeed(
    app: FastAPI, live_server: LiveServer, client: TestClient, alice: Account
) -> None:
    create_repo(client, alice, "race", kind="dataset")
    data = random_bytes(4 * 1024 * 1024, 13)
    results: list[Any] = []

    def run() -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as http:
            try:
                results.append(Uploader(http, alice, "alice/race").upload(data))
            except BaseException as exc:
                results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    oid = hashlib.sha256(data).hexdigest()
    assert results == [(oid, len(data))] * 3
    assert held(app, "alice/race") == {oid}
    # Racing batches may each write a chunk (dead copies that compaction reclaims); the index holds
    # each chunk once, and the one object is whole.
    st = stats(app.state.blobs)
    assert (st.objects, st.object_bytes, st.chunk_bytes) == (1, len(data), len(data))
    assert app.state.blobs.verify().ok
    up = Uploader(client, alice, "alice/race")
    r = up.commit_lfs("f.bin", oid, len(data))
    assert r.status_code == 201, r.text
    raw = client.get(f"{API}/repos/alice/race/raw/main/f.bin", headers=alice.headers)
    assert raw.content == data


def test_garbage_collection_ends_what_unfinished_uploads_count(
    app: FastAPI, client: TestClient, alice: Account, up: Uploader
) -> None:
    """QA: `opensci storage gc --grace 0` removed the chunks of a failed upload, yet they still counted
    against the quota; what gc collects stops counting."""
    from opensci.storage.gc import gc

    set_quota(app, "data", 4 * MiB)
    assert up.send(frames(cut(random_bytes(MiB, 17)))).status_code == 200
    usage = storage_of(client, alice)
    assert (usage["pending_bytes"], usage["available_bytes"]) == (MiB, 3 * MiB)
    gc(app.state.blobs, [], grace=0)
    usage = storage_of(client, alice)
    assert (usage["pending_bytes"], usage["available_bytes"]) == (0, 4 * MiB)
