"""A new object that starts like a stored one (a re-upload of an edited file) is hashed from the stored
object's last sha256 checkpoint before the first change: the same oid as hashing it all, less work.

Store level: checkpoints are saved with each object assembled from a manifest, and `ContentReader` resumes
from them (or hashes everything when it cannot). API level: `POST …/uploads/manifests?base=<oid>`."""

from __future__ import annotations

import hashlib
import sys

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from opensci.storage.index import CHECKPOINT, ENTRY, decode_checkpoints
from opensci.storage.models import ObjectState, StorageObject
from opensci.storage.readback import CHECKPOINT_BYTES, ContentReader
from opensci.storage.sha256 import RESUMABLE, STATE_SIZE, Sha256
from opensci.storage.store import BlobStore, ObjectInfo
from tests.api_helpers import create_repo, error_code
from tests.conftest import Account
from tests.storage.test_api_manifests import ids, stream
from tests.storage.test_api_uploads import Uploader, cut, frames, held, random_bytes

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_sha256_state_resumes_where_it_was_saved() -> None:
    if sys.platform == "linux":
        assert RESUMABLE, "the libcrypto that hashlib uses could not be driven: no checkpoints"
    data = random_bytes(3 * MiB + 17, 1)
    for at in (0, 1, 63, 64, 65, MiB + 5, len(data)):
        h = Sha256()
        h.update(data[:at])
        state = h.state()
        h.update(memoryview(bytearray(data))[at:])
        assert h.hexdigest() == sha256(data)
        assert state is not None and len(state) == STATE_SIZE
        resumed = Sha256.resume(state, at)
        resumed.update(data[at:])
        assert resumed.hexdigest() == sha256(data) and resumed.offset == len(data)
        with pytest.raises(ValueError, match="not the SHA-256 state"):
            Sha256.resume(state, at + 1)
    with pytest.raises(ValueError, match="112 bytes"):
        Sha256.resume(b"short", 0)
    h = Sha256()
    h.update(b"abc")
    assert h.hexdigest() == h.hexdigest() == sha256(b"abc")  # a digest does not end the hash
    h.update(b"def")
    assert h.hexdigest() == sha256(b"abcdef")


def store_manifest(store: BlobStore, data: bytes) -> tuple[str, list[bytes]]:
    """Store `data` as the SDK does (chunks, then a manifest read back): its oid and chunk names."""
    chunks = cut(data)
    store.put_chunks([(h, b) for h, b in chunks])
    digests = [bytes.fromhex(h) for h, _ in chunks]
    with store.content_reader("", len(data)) as reader:
        for i in range(0, len(digests), 100):
            reader.feed(digests[i : i + 100])
        info = store.commit_read(reader, len(data))
    return info.oid, digests


def store_like(
    store: BlobStore, old: str, new: bytes, feed: int
) -> tuple[list[tuple[str, bytes]], ContentReader, ObjectInfo]:
    """Store `new` as an upload that names `old` as its base, its manifest fed `feed` chunks at a time:
    its chunks, the reader, and the object."""
    chunks = cut(new)
    store.put_chunks([(h, b) for h, b in chunks])
    base = store.base(old)
    assert base is not None
    with store.content_reader("", len(new)) as reader:
        reader.start_like(base)
        digests = [bytes.fromhex(h) for h, _ in chunks]
        for i in range(0, len(digests), feed):
            reader.feed(digests[i : i + feed])
        return chunks, reader, store.commit_read(reader, len(new))


def checkpoints(store: BlobStore, oid: str) -> bytes | None:
    with store.db.session() as session:
        return session.scalar(select(StorageObject.checkpoints).where(StorageObject.oid == oid))


def test_objects_keep_a_sha256_checkpoint_every_few_mib(store: BlobStore) -> None:
    data = random_bytes(30 * MiB, 2)
    oid, _ = store_manifest(store, data)
    assert oid == sha256(data)
    saved = decode_checkpoints(checkpoints(store, oid) or b"")
    assert 3 <= len(saved) <= 30 // 4 + 1
    with store.db.session() as session:
        manifest = session.scalar(select(StorageObject.manifest).where(StorageObject.oid == oid))
    lengths = [n for _, n in ENTRY.iter_unpack(manifest or b"")]
    previous = 0
    for count, state in saved:
        offset = sum(lengths[:count])  # a checkpoint sits on a chunk boundary
        assert offset - previous >= CHECKPOINT_BYTES
        previous = offset
        h = Sha256.resume(state, offset)
        h.update(data[offset:])
        assert h.hexdigest() == oid
    base = store.base(oid)
    assert base is not None and base.oid == oid


@pytest.mark.parametrize(
    ("label", "edit"),
    [
        ("1 MiB in the middle", lambda d: d[: 15 * MiB] + random_bytes(MiB, 9) + d[16 * MiB :]),
        ("the first byte", lambda d: b"\x00" + d[1:]),
        ("the last bytes", lambda d: d[:-5] + b"12345"),
        ("appended", lambda d: d + random_bytes(3 * MiB, 8)),
        ("truncated", lambda d: d[: 20 * MiB + 123]),
        ("identical", lambda d: d),
        ("bytes inserted", lambda d: d[: 10 * MiB] + b"inserted" + d[10 * MiB :]),
    ],
)
def test_an_edited_file_is_hashed_from_the_last_checkpoint_before_the_change(
    store: BlobStore, label: str, edit: object
) -> None:
    data = random_bytes(30 * MiB, 3)
    old, _ = store_manifest(store, data)
    new = edit(data)  # type: ignore[operator]
    chunks, reader, info = store_like(store, old, new, 37)
    assert info.oid == sha256(new) and info.size == len(new), label
    first_change = next((i for i, (a, b) in enumerate(zip(data, new, strict=False)) if a != b), len(new))
    first_change = min(first_change, len(data), len(new))
    assert reader.resumed_at <= first_change
    if first_change > 8 * MiB + 512 * 1024:  # a checkpoint comes every span (8 MiB) at most
        assert reader.resumed_at >= first_change - 8 * MiB - 512 * 1024, (label, reader.resumed_at)
    # The new object reads back byte for byte, and has checkpoints of its own to resume from.
    assert b"".join(store.iter_range(info.oid)) == new
    own = decode_checkpoints(checkpoints(store, info.oid) or b"")
    assert len(own) >= len(new) // (8 * MiB + 512 * 1024)
    for count, state in own:
        offset = sum(len(b) for _, b in chunks[:count])
        h = Sha256.resume(state, offset)
        h.update(new[offset:])
        assert h.hexdigest() == info.oid


def test_a_damaged_checkpoint_costs_speed_never_a_wrong_oid(store: BlobStore) -> None:
    data = random_bytes(20 * MiB, 4)
    old, _ = store_manifest(store, data)
    saved = decode_checkpoints(checkpoints(store, old) or b"")
    # Each state says how many bytes it hashed: one that does not match its chunk count is not used.
    bad = b"".join(CHECKPOINT.pack(count + 1, state) for count, state in saved)
    with store.db.session() as session:
        session.execute(update(StorageObject).where(StorageObject.oid == old).values(checkpoints=bad))
        session.commit()
    new = data[: 18 * MiB] + b"changed" + data[18 * MiB + 7 :]
    _, reader, info = store_like(store, old, new, 10_000)
    assert info.oid == sha256(new) and reader.resumed_at == 0
    # A record of the wrong length, or a damaged object, is no base at all.
    with store.db.session() as session:
        session.execute(update(StorageObject).where(StorageObject.oid == old).values(checkpoints=b"x" * 5))
        session.commit()
    assert store.base(old) is None
    with store.db.session() as session:
        session.execute(
            update(StorageObject)
            .where(StorageObject.oid == old)
            .values(checkpoints=bad, state=ObjectState.damaged)
        )
        session.commit()
    assert store.base(old) is None


def test_objects_written_whole_have_no_checkpoints(store: BlobStore) -> None:
    import io

    info = store.put(io.BytesIO(random_bytes(5 * MiB, 5)))
    assert checkpoints(store, info.oid) is None and store.base(info.oid) is None


# --- the API ---------------------------------------------------------------------------------------------


@pytest.fixture
def up(client: TestClient, alice: Account) -> Uploader:
    create_repo(client, alice, "data", kind="dataset", private=True)
    return Uploader(client, alice, "alice/data")


def stream_like(up: Uploader, size: int, body: bytes, base: str) -> object:
    headers = {**up.headers, "Content-Type": "application/octet-stream"}
    return up.client.post(
        f"/api/v1/repos/{up.full_name}/uploads/manifests",
        params={"size": size, "base": base},
        content=body,
        headers=headers,
    )


def test_a_manifest_names_the_file_it_replaces_as_its_base(app: FastAPI, up: Uploader) -> None:
    data = random_bytes(24 * MiB, 6)
    chunks = cut(data)
    up.send(frames(chunks))
    r = stream(up, len(data), ids([h for h, _ in chunks]))
    assert r.status_code == 201, r.text
    old = r.json()["oid"]
    new = data[: 12 * MiB] + random_bytes(MiB, 7) + data[13 * MiB :]
    new_chunks = cut(new)
    up.send(frames([c for c in new_chunks if c not in chunks]))
    r = stream_like(up, len(new), ids([h for h, _ in new_chunks]), old)
    assert r.status_code == 201, r.text  # type: ignore[attr-defined]
    assert r.json() == {"oid": sha256(new), "size": len(new)}  # type: ignore[attr-defined]
    assert held(app, "alice/data") == {old, sha256(new)}


def test_a_base_the_repository_does_not_hold_is_ignored(
    app: FastAPI, client: TestClient, up: Uploader, bob: Account
) -> None:
    create_repo(client, bob, "secret", kind="dataset", private=True)
    bobs = Uploader(client, bob, "bob/secret")
    data = random_bytes(12 * MiB, 10)
    chunks = cut(data)
    bobs.send(frames(chunks))
    theirs = stream(bobs, len(data), ids([h for h, _ in chunks])).json()["oid"]
    new = data[:-1] + b"!"
    new_chunks = cut(new)
    up.send(frames(new_chunks))
    r = stream_like(up, len(new), ids([h for h, _ in new_chunks]), theirs)
    assert r.status_code == 201, r.text  # type: ignore[attr-defined]
    assert r.json()["oid"] == sha256(new)  # type: ignore[attr-defined]
    assert held(app, "alice/data") == {sha256(new)}


def test_a_bad_base_is_refused_and_a_manifest_too_long_for_its_size_stores_nothing(
    app: FastAPI, up: Uploader
) -> None:
    data = random_bytes(10 * MiB, 11)
    chunks = cut(data)
    up.send(frames(chunks))
    old = stream(up, len(data), ids([h for h, _ in chunks])).json()["oid"]
    assert error_code(stream_like(up, len(data), b"", "not-a-sha"), 422) == "invalid_oid"  # type: ignore[arg-type]
    # The base's own chunks, announced as a smaller file: refused before anything is held.
    r = stream_like(up, 5 * MiB, ids([h for h, _ in chunks]), old)
    assert error_code(r, 422) == "size_mismatch"  # type: ignore[arg-type]
    assert held(app, "alice/data") == {old}
