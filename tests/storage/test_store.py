"""BlobStore on real files and the test database: round trips, reads, dedup, checks, concurrency."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import delete, func, select, update

from opensci.db import Database
from opensci.errors import InvalidInput
from opensci.storage.chunking import MAX_SIZE, MIN_SIZE, new_chunker
from opensci.storage.errors import DigestMismatch, MissingChunks, ObjectNotFound, OutdatedClient
from opensci.storage.maintenance import stats, verify
from opensci.storage.models import ObjectState, StorageChunk, StorageObject
from opensci.storage.store import BlobStore
from tests.storage.conftest import chunk_name, random_bytes, sha256


def first_chunk(data: bytes) -> bytes:
    """The bytes of the first chunk FastCDC cuts from `data`: stored alone, they make exactly one chunk."""
    chunk = next(iter(new_chunker().cut_buf(data)))
    return data[: chunk.length]


def objects(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(StorageObject)) or 0


def chunks(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(StorageChunk)) or 0


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty", b""),
        ("tiny", b"hello, blob store\n"),
        ("one chunk", first_chunk(random_bytes(MAX_SIZE * 2, 1))),
        ("multi-chunk 20 MB", random_bytes(20_000_000, 2)),
    ],
)
def test_round_trip(store: BlobStore, name: str, data: bytes) -> None:
    info = store.put(io.BytesIO(data))
    assert info.oid == sha256(data)
    assert info.size == len(data)
    assert info.state == "ok"
    if name == "empty":
        assert info.chunk_count == 0
    elif name in ("tiny", "one chunk"):
        assert info.chunk_count == 1
    else:
        assert info.chunk_count > 200  # ~64 KiB chunks
    assert store.has(info.oid)
    assert store.stat(info.oid) == info
    with store.open(info.oid) as fh:
        assert fh.read() == data
        assert fh.read() == b""
    assert b"".join(store.iter_range(info.oid)) == data
    assert verify(store).ok


def test_one_chunk_content_is_one_record(store: BlobStore, db: Database) -> None:
    data = first_chunk(random_bytes(MAX_SIZE * 2, 3))
    assert MIN_SIZE <= len(data) <= MAX_SIZE
    store.put(io.BytesIO(data))
    assert chunks(db) == 1


def test_seek_and_partial_reads_match_the_bytes(store: BlobStore) -> None:
    data = random_bytes(3_000_000, 4)
    oid = store.put(io.BytesIO(data)).oid
    with store.open(oid) as fh:
        assert fh.seekable() and fh.readable()
        for start, n in [
            (0, 1),
            (1, 70_000),
            (65_535, 3),
            (1_000_000, 1_500_000),
            (2_999_999, 10),
            (3_000_000, 5),
        ]:
            assert fh.seek(start) == start
            assert fh.read(n) == data[start : start + n]
        assert fh.seek(-100, io.SEEK_END) == len(data) - 100
        assert fh.read() == data[-100:]
        fh.seek(10)
        fh.seek(5, io.SEEK_CUR)
        assert fh.tell() == 15
        buf = bytearray(1000)
        assert fh.readinto(buf) == 1000 and bytes(buf) == data[15:1015]
        # Many small sequential reads, as a copy loop does.
        fh.seek(0)
        assert b"".join(iter(lambda: fh.read(8192), b"")) == data
    # Through the standard buffered layer, as libraries use files.
    with io.BufferedReader(store.open(oid), buffer_size=32768) as buffered:
        buffered.seek(123_456)
        assert buffered.read(200_000) == data[123_456:323_456]
    for start, end in [(0, 0), (0, 1), (5, 1_000_005), (2_999_990, None), (100, 10**9)]:
        stop = len(data) if end is None else min(end, len(data))
        assert b"".join(store.iter_range(oid, start, end)) == data[start:stop]
    with pytest.raises(InvalidInput):
        list(store.iter_range(oid, 10, 5))


def test_unknown_and_invalid_oids(store: BlobStore) -> None:
    missing = "0" * 64
    assert not store.has(missing)
    with pytest.raises(ObjectNotFound) as exc:
        store.open(missing)
    assert exc.value.status == 404 and exc.value.code == "object_not_found"
    with pytest.raises(InvalidInput):
        store.stat("not-a-sha256")


def test_same_content_twice_is_stored_once(store: BlobStore) -> None:
    data = random_bytes(5_000_000, 5)
    store.put(io.BytesIO(data))
    before = stats(store)
    again = store.put(io.BytesIO(data))
    after = stats(store)
    assert after.pack_bytes == before.pack_bytes
    assert (after.objects, after.chunks) == (before.objects, before.chunks)
    assert again.oid == sha256(data)


def test_repeated_chunks_inside_one_file_are_stored_once(store: BlobStore) -> None:
    data = bytes(10 * 1024 * 1024)  # zeros: the same maximal chunk, over and over
    info = store.put(io.BytesIO(data))
    s = stats(store)
    assert info.chunk_count >= 40
    assert s.chunks <= 2
    assert s.pack_bytes < 600_000
    assert b"".join(store.iter_range(info.oid)) == data


def test_one_mib_edit_in_the_middle_grows_storage_by_at_most_two_percent(store: BlobStore) -> None:
    size = 64 * 1024 * 1024
    original = random_bytes(size, 6)
    store.put(io.BytesIO(original))
    before = stats(store).pack_bytes
    middle = size // 2
    edited = original[:middle] + random_bytes(1024 * 1024, 7) + original[middle + 1024 * 1024 :]
    info = store.put(io.BytesIO(edited))
    growth = stats(store).pack_bytes - before
    assert 1024 * 1024 <= growth <= 0.02 * size, f"storage grew by {growth} bytes ({growth / size:.2%})"
    with store.open(info.oid) as fh:
        assert fh.read() == edited


def test_two_files_sharing_a_region_share_its_chunks(store: BlobStore) -> None:
    shared = random_bytes(16 * 1024 * 1024, 8)
    a = random_bytes(4 * 1024 * 1024, 9) + shared
    b = shared + random_bytes(8 * 1024 * 1024, 10)
    store.put(io.BytesIO(a))
    before = stats(store).pack_bytes
    info = store.put(io.BytesIO(b))
    growth = stats(store).pack_bytes - before
    assert growth <= 8 * 1024 * 1024 + 0.01 * len(b), growth
    assert b"".join(store.iter_range(info.oid)) == b


@pytest.mark.parametrize("wrong", ["oid", "size_smaller", "size_larger"])
def test_wrong_expectation_is_refused_and_leaves_nothing_visible(
    store: BlobStore, db: Database, wrong: str
) -> None:
    data = random_bytes(6_000_000, 11)
    kwargs: dict[str, object] = {"expected_oid": sha256(data), "expected_size": len(data)}
    if wrong == "oid":
        kwargs["expected_oid"] = sha256(b"something else")
    elif wrong == "size_smaller":
        kwargs["expected_size"] = len(data) - 1
    else:
        kwargs["expected_size"] = len(data) + 1
    with pytest.raises(DigestMismatch) as exc:
        store.put(io.BytesIO(data), **kwargs)  # type: ignore[arg-type]
    assert isinstance(exc.value, InvalidInput) and exc.value.status == 422
    assert "nothing was stored" in exc.value.message
    assert objects(db) == 0
    assert not store.has(sha256(data))
    # The right expectation then works.
    info = store.put(io.BytesIO(data), expected_oid=sha256(data).upper(), expected_size=len(data))
    assert info.oid == sha256(data)


def test_invalid_expected_oid(store: BlobStore) -> None:
    with pytest.raises(InvalidInput) as exc:
        store.put(io.BytesIO(b"x"), expected_oid="sha256:abc")
    assert exc.value.code == "invalid_oid"


def test_concurrent_puts_of_the_same_content(make_store: Callable[..., BlobStore], db: Database) -> None:
    data = random_bytes(12_000_000, 12)
    stores = [make_store() for _ in range(4)]  # one store per thread, as separate server processes have
    shared = stores[0]
    barrier = threading.Barrier(4)
    results: list[object] = [None] * 4

    def put(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = (stores[i] if i % 2 else shared).put(io.BytesIO(data), expected_oid=sha256(data))
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(getattr(r, "oid", None) == sha256(data) for r in results), results
    assert objects(db) == 1
    assert b"".join(shared.iter_range(sha256(data))) == data
    assert verify(shared).ok


def test_resumable_protocol_sends_only_missing_chunks(store: BlobStore) -> None:
    base = random_bytes(4_000_000, 13)
    store.put(io.BytesIO(base))
    edited = base[:2_000_000] + b"inserted" + base[2_000_000:]
    pieces = [edited[c.offset : c.offset + c.length] for c in new_chunker().cut_buf(edited)]
    hashes = [chunk_name(p) for p in pieces]
    missing = store.missing_chunks(hashes)
    assert 0 < len(missing) <= 3, "only the chunks around the edit are new"
    for h, p in zip(hashes, pieces, strict=True):
        if h in missing:
            assert store.put_chunk(h, p) is True
    assert store.put_chunk(hashes[0], pieces[0]) is False  # already there
    assert store.missing_chunks(hashes) == set()
    info = store.commit_manifest(sha256(edited), len(edited), hashes)
    assert info.size == len(edited)
    assert b"".join(store.iter_range(info.oid)) == edited
    # Raw hashes work as well as hex.
    raw = [bytes.fromhex(h) for h in hashes]
    assert store.missing_chunks(raw) == set()


def test_commit_manifest_refuses_missing_chunks_and_wrong_digests(store: BlobStore, db: Database) -> None:
    a, b = random_bytes(100_000, 14), random_bytes(100_000, 15)
    store.put_chunk(chunk_name(a), a)
    with pytest.raises(MissingChunks) as exc:
        store.commit_manifest(sha256(a + b), len(a + b), [chunk_name(a), chunk_name(b)])
    assert exc.value.missing == [chunk_name(b)]
    store.put_chunk(chunk_name(b), b)
    with pytest.raises(DigestMismatch):
        store.commit_manifest(sha256(b + a), len(a + b), [chunk_name(a), chunk_name(b)])
    with pytest.raises(DigestMismatch):
        store.commit_manifest(sha256(a + b), len(a + b) + 1, [chunk_name(a), chunk_name(b)])
    assert objects(db) == 0
    assert store.commit_manifest(sha256(a + b), len(a + b), [chunk_name(a), chunk_name(b)]).oid == sha256(
        a + b
    )
    assert store.commit_manifest(sha256(b""), 0, []).size == 0


def test_put_chunk_checks_the_hash(store: BlobStore, db: Database) -> None:
    with pytest.raises(DigestMismatch):
        store.put_chunk(chunk_name(b"one"), b"two")
    with pytest.raises(InvalidInput):
        store.put_chunk(chunk_name(b""), b"")
    with pytest.raises(InvalidInput):
        store.put_chunk("xyz", b"two")
    assert chunks(db) == 0
    assert (
        store.put_chunks(
            [(chunk_name(b"one"), b"one"), (chunk_name(b"two"), b"two"), (chunk_name(b"one"), b"one")]
        )
        == 2
    )


def manifest_of(db: Database, oid: str) -> bytes:
    with db.session() as session:
        return session.scalars(select(StorageObject.manifest).where(StorageObject.oid == oid)).one()


def fixed_cut(data: bytes, size: int) -> list[tuple[str, bytes]]:
    """`data` in pieces of `size` bytes (the last shorter): chunks no chunker of ours cuts."""
    return [(chunk_name(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size)]


def test_an_object_stored_healthy_keeps_its_manifest(store: BlobStore, db: Database) -> None:
    """Another upload of the same content, however cut, only touches the object: its manifest, which every
    holder of the object reads, stays as it was."""
    data = random_bytes(1_000_000, 40)
    before = manifest_of(db, store.put(io.BytesIO(data)).oid)
    pieces = fixed_cut(data, 20_000)
    store.put_chunks(pieces)
    info = store.commit_manifest(sha256(data), len(data), [h for h, _ in pieces])
    assert manifest_of(db, info.oid) == before and info.chunk_count == len(before) // 36
    assert b"".join(store.iter_range(info.oid)) == data


@pytest.mark.parametrize("damage", ["chunk damaged", "chunk gone", "object damaged"])
def test_an_upload_replaces_the_manifest_of_a_damaged_object(
    store: BlobStore, db: Database, damage: str
) -> None:
    data = random_bytes(1_000_000, 41)
    oid = store.put(io.BytesIO(data)).oid
    victim = manifest_of(db, oid)[:32]
    with db.session() as session:
        if damage == "chunk damaged":
            session.execute(update(StorageChunk).where(StorageChunk.digest == victim).values(damaged=True))
        elif damage == "chunk gone":
            session.execute(delete(StorageChunk).where(StorageChunk.digest == victim))
        else:
            session.execute(update(StorageObject).values(state=ObjectState.damaged))
        session.commit()
    pieces = fixed_cut(data, 20_000)
    store.put_chunks(pieces)
    info = store.commit_manifest(oid, len(data), [h for h, _ in pieces])
    assert info.state == "ok" and info.chunk_count == len(pieces)
    assert b"".join(store.iter_range(oid)) == data


def test_a_manifest_with_a_short_chunk_before_its_last_is_refused(store: BlobStore, db: Database) -> None:
    """What QA saw: public content uploaded as 327,680 chunks of 64 bytes made every holder's reads 40
    times slower. No chunker of ours cuts a chunk shorter than MIN_SIZE except a file's last one."""
    data = random_bytes(MIN_SIZE * 3, 42)
    tiny = fixed_cut(data, 64)
    store.put_chunks(tiny)
    with pytest.raises(InvalidInput) as exc:
        store.commit_manifest(sha256(data), len(data), [h for h, _ in tiny])
    assert exc.value.code == "invalid_manifest" and "64 bytes" in exc.value.message
    assert objects(db) == 0
    fine = fixed_cut(data, MIN_SIZE + 100)  # two chunks of at least MIN_SIZE, and a short last one
    store.put_chunks(fine)
    assert store.commit_manifest(sha256(data), len(data), [h for h, _ in fine]).chunk_count == 3


def test_a_manifest_of_short_chunks_stored_before_is_replaced_by_a_fresh_upload(
    store: BlobStore, db: Database
) -> None:
    data = random_bytes(500_000, 43)
    tiny = fixed_cut(data, 64)
    store.put_chunks(tiny)
    with store.content_reader(sha256(data), len(data), min_chunk=0) as reader:  # as servers took them
        reader.feed([bytes.fromhex(h) for h, _ in tiny])
        assert store.commit_read(reader, len(data)).chunk_count == len(tiny)
    info = store.put(io.BytesIO(data))
    assert 0 < info.chunk_count < 20 and b"".join(store.iter_range(info.oid)) == data


def test_a_chunk_named_by_its_sha256_asks_for_a_newer_sdk(store: BlobStore, db: Database) -> None:
    """SDKs before BLAKE3 chunk names send sha256 names: sending again never helps, upgrading does."""
    data = random_bytes(50_000, 44)
    with pytest.raises(OutdatedClient) as exc:
        store.put_chunk(hashlib.sha256(data).digest(), data)
    assert exc.value.code == "outdated_client" and exc.value.status == 422
    assert "pip install -U opensci" in exc.value.message
    with pytest.raises(DigestMismatch) as other:  # neither name: the bytes changed on the way
        store.put_chunk(chunk_name(data), data[1:])
    assert other.value.code == "digest_mismatch"
    assert chunks(db) == 0


def test_packs_roll_over_at_their_size_limit(make_store: Callable[..., BlobStore]) -> None:
    store = make_store(storage_pack_max_bytes=1024 * 1024)
    data = random_bytes(5_000_000, 16)
    oid = store.put(io.BytesIO(data)).oid
    store.close()
    packs = sorted(store.packs_dir.glob("*.pack"))
    assert len(packs) >= 5
    assert all(p.stat().st_size <= 1024 * 1024 for p in packs)
    assert b"".join(store.iter_range(oid)) == data
    assert verify(store).ok


def test_usage_counts_distinct_objects(store: BlobStore) -> None:
    a, b = random_bytes(1000, 17), random_bytes(3000, 18)
    oa, ob = store.put(io.BytesIO(a)).oid, store.put(io.BytesIO(b)).oid
    assert store.usage([oa, ob, oa]) == 4000
    assert store.usage([oa, "f" * 64]) == 1000
    assert store.usage([]) == 0


def test_reads_without_verification_still_return_the_bytes(make_store: Callable[..., BlobStore]) -> None:
    store = make_store(storage_verify_reads=False)
    data = random_bytes(2_000_000, 19)
    oid = store.put(io.BytesIO(data)).oid
    assert b"".join(store.iter_range(oid)) == data


def test_concurrent_puts_of_overlapping_contents(make_store: Callable[..., BlobStore]) -> None:
    """Four writers whose files share most chunks, in different orders (rows locked in different orders)."""
    blocks = [random_bytes(1_000_000, 20 + i) for i in range(4)]
    orders = [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)]
    contents = [b"".join(blocks[k] for k in order) for order in orders]
    stores = [make_store() for _ in contents]
    barrier = threading.Barrier(len(contents))
    errors: list[BaseException] = []

    def put(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            for _ in range(3):
                stores[i].put(io.BytesIO(contents[i]), expected_oid=sha256(contents[i]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(contents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for c in contents:
        assert b"".join(stores[0].iter_range(sha256(c))) == c
    assert verify(stores[0]).ok
