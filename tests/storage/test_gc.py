"""Garbage collection: unreferenced old objects go; referenced and young ones stay; packs shrink."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

from sqlalchemy import func, select

from opensci.db import Database
from opensci.storage.gc import gc
from opensci.storage.maintenance import stats, verify
from opensci.storage.models import StorageChunk, StoragePack
from opensci.storage.store import BlobStore
from tests.storage.conftest import backdate, chunk_name, random_bytes, sha256

DAY = 86400


def test_unreferenced_old_objects_go_and_packs_are_compacted(
    make_store: Callable[..., BlobStore], db: Database
) -> None:
    store = make_store()
    kept = random_bytes(3_000_000, 40)
    doomed = [random_bytes(3_000_000, 41 + i) for i in range(3)]
    shared_with_kept = kept[:1_500_000] + random_bytes(1_000_000, 45)
    oids = [store.put(io.BytesIO(d)).oid for d in (kept, *doomed, shared_with_kept)]
    store.close()  # seal the pack: the server would keep writing to it, and compaction spares it
    backdate(db, 2 * DAY)
    young = random_bytes(1_000_000, 46)
    young_oid = store.put(io.BytesIO(young)).oid
    store.close()
    before = stats(store)

    # A reader opened before the collection must still work after its chunks moved.
    early_reader = store.open(oids[0])

    report = gc(store, [oids[0]], grace=DAY)
    assert report.objects_deleted == 4
    assert report.object_bytes == 3 * 3_000_000 + len(shared_with_kept)
    assert report.chunks_deleted > 0
    assert report.packs_compacted == 1
    after = stats(store)
    assert after.objects == 2
    assert store.has(oids[0]) and store.has(young_oid)
    assert not any(store.has(o) for o in oids[1:])
    # The pack held ~12.5 MB of which 3 MB stay live: the disk footprint shrinks accordingly.
    assert after.pack_bytes < before.pack_bytes - 8_000_000, (before, after)
    assert report.bytes_reclaimed == before.pack_bytes - after.pack_bytes

    assert early_reader.read() == kept
    early_reader.close()
    assert b"".join(store.iter_range(oids[0])) == kept
    assert b"".join(store.iter_range(young_oid)) == young
    assert verify(store).ok

    # Nothing more to do the second time.
    again = gc(store, [oids[0]], grace=DAY)
    assert (again.objects_deleted, again.chunks_deleted, again.packs_compacted) == (0, 0, 0)


def test_dry_run_changes_nothing(store: BlobStore, db: Database) -> None:
    a, b = random_bytes(2_000_000, 47), random_bytes(2_000_000, 48)
    oa, ob = store.put(io.BytesIO(a)).oid, store.put(io.BytesIO(b)).oid
    store.close()
    backdate(db, 2 * DAY)
    before = stats(store)
    report = gc(store, [oa], grace=DAY, dry_run=True)
    assert report.dry_run
    assert report.objects_deleted == 1 and report.object_bytes == len(b)
    assert report.chunks_deleted > 0 and report.packs_compacted == 0  # half the pack stays live
    assert stats(store) == before
    assert store.has(ob)


def test_grace_protects_young_objects_and_chunks_of_uploads_in_flight(store: BlobStore, db: Database) -> None:
    old = random_bytes(1_000_000, 49)
    old_oid = store.put(io.BytesIO(old)).oid
    backdate(db, 2 * DAY)
    young_oid = store.put(io.BytesIO(random_bytes(1_000_000, 50))).oid
    # An upload in flight through the chunk protocol: chunks stored, manifest not committed yet.
    part1, part2 = random_bytes(100_000, 51), random_bytes(100_000, 52)
    store.put_chunk(chunk_name(part1), part1)
    store.put_chunk(chunk_name(part2), part2)
    # It also reuses a chunk of the old object, which `missing_chunks` touched.
    with store.open(old_oid) as fh:
        reused = fh.read(len(old))
    assert store.missing_chunks([chunk_name(part1)]) == set()

    report = gc(store, [], grace=3600)
    assert report.objects_deleted == 1
    assert not store.has(old_oid) and store.has(young_oid)
    info = store.commit_manifest(sha256(part1 + part2), 200_000, [chunk_name(part1), chunk_name(part2)])
    assert b"".join(store.iter_range(info.oid)) == part1 + part2
    assert reused == old


def test_a_chunk_touched_by_a_new_upload_survives(store: BlobStore, db: Database) -> None:
    data = random_bytes(2_000_000, 53)
    oid = store.put(io.BytesIO(data)).oid
    backdate(db, 2 * DAY)
    # The same content comes again (say, pushed to another repository): it is young again.
    store.put(io.BytesIO(data))
    report = gc(store, [], grace=DAY)
    assert report.objects_deleted == 0 and report.chunks_deleted == 0
    assert b"".join(store.iter_range(oid)) == data


def test_fully_dead_packs_are_deleted(make_store: Callable[..., BlobStore], db: Database) -> None:
    store = make_store(storage_pack_max_bytes=1024 * 1024)
    data = random_bytes(4_000_000, 54)
    store.put(io.BytesIO(data))
    store.close()
    backdate(db, 2 * DAY)
    packs_before = len(list(store.packs_dir.glob("*.pack")))
    assert packs_before >= 4
    report = gc(store, [], grace=DAY)
    assert report.packs_deleted == packs_before
    assert list(store.packs_dir.glob("*.pack")) == []
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(StoragePack)) == 0
        assert session.scalar(select(func.count()).select_from(StorageChunk)) == 0


def test_packs_in_use_by_a_writer_are_left_alone(store: BlobStore, db: Database) -> None:
    data = random_bytes(2_000_000, 55)
    store.put(io.BytesIO(data))  # the store keeps its pack open for the next upload
    backdate(db, 2 * DAY)
    report = gc(store, [], grace=DAY)
    assert report.objects_deleted == 1
    assert report.packs_skipped == 1 and report.packs_deleted == 0
    # Its writer carries on; the next collection, after the store let go of the pack, deletes it.
    store.close()
    assert gc(store, [], grace=DAY).packs_deleted == 1


def test_abandoned_pack_files_without_a_row_are_swept(store: BlobStore, db: Database) -> None:
    store.packs_dir.mkdir(parents=True, exist_ok=True)
    orphan = store.packs_dir / ("ab" * 16 + ".pack")
    orphan.write_bytes(b"OSCIPACK" + bytes(8))
    assert gc(store, [], grace=DAY).packs_deleted == 0  # too young
    assert gc(store, [], grace=0).packs_deleted == 1
    assert not orphan.exists()


def test_collection_racing_with_uploads_of_the_same_old_content(
    make_store: Callable[..., BlobStore], db: Database
) -> None:
    """Uploads that reuse old, unreferenced chunks while collections run: every upload that returns
    is complete and readable afterwards."""
    store = make_store(storage_pack_max_bytes=2 * 1024 * 1024)
    contents = [random_bytes(1_500_000, 90 + i) for i in range(4)]
    contents += [contents[i][:700_000] + contents[(i + 1) % 4][700_000:] for i in range(4)]
    for c in contents[:4]:
        store.put(io.BytesIO(c))
    store.close()
    backdate(db, 2 * DAY)

    uploader = make_store(storage_pack_max_bytes=2 * 1024 * 1024)
    errors: list[BaseException] = []
    done = threading.Event()

    def upload() -> None:
        try:
            for _ in range(3):
                for c in contents:
                    assert uploader.put(io.BytesIO(c), expected_oid=sha256(c)).size == len(c)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def collect() -> None:
        try:
            while not done.is_set():
                gc(store, [], grace=3600)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload), threading.Thread(target=collect)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    uploader.close()
    for c in contents:
        assert b"".join(store.iter_range(sha256(c))) == c
    assert verify(store).ok
