"""Rebuilding the chunk index from the pack files."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable

import pytest
from sqlalchemy import delete, func, select, update
from typer.testing import CliRunner

from opensci.cli.main import app as cli
from opensci.db import Database
from opensci.settings import Settings
from opensci.storage.errors import ObjectDamaged
from opensci.storage.maintenance import reindex, verify
from opensci.storage.models import StorageChunk, StoragePack
from opensci.storage.packs import HEADER, pack_path
from opensci.storage.store import BlobStore
from tests.storage.conftest import random_bytes


def chunk_count(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(StorageChunk)) or 0


def test_reindex_rebuilds_a_lost_index(make_store: Callable[..., BlobStore], db: Database) -> None:
    store = make_store(storage_pack_max_bytes=2 * 1024 * 1024)
    contents = [random_bytes(3_000_000, 70 + i) for i in range(3)]
    oids = [store.put(io.BytesIO(c)).oid for c in contents]
    store.close()
    n = chunk_count(db)
    with db.session() as session:
        session.execute(delete(StorageChunk))
        session.commit()
    with pytest.raises(ObjectDamaged):
        store.open(oids[0]).read()

    report = reindex(store)
    assert report.chunks_added == n
    assert report.records == n
    assert report.repaired_objects >= 1  # the read above had quarantined the first object
    assert chunk_count(db) == n
    for oid, content in zip(oids, contents, strict=True):
        assert b"".join(store.iter_range(oid)) == content
    assert verify(store).ok


def test_reindex_records_unknown_packs_and_repoints_to_healthy_copies(
    make_store: Callable[..., BlobStore], db: Database
) -> None:
    store = make_store()
    data = random_bytes(2_000_000, 80)
    oid = store.put(io.BytesIO(data)).oid
    store.close()
    with db.session() as session:
        (pack_id,) = session.scalars(select(StoragePack.id)).all()
        first = (
            session.execute(
                select(StorageChunk.offset)
                .where(StorageChunk.pack_id == pack_id)
                .order_by(StorageChunk.offset)
            )
            .scalars()
            .first()
        )
    # A copy of the pack the database does not know (say, restored from a backup) …
    copy = store.packs_dir / ("c0" * 16 + ".pack")
    shutil.copyfile(pack_path(store.packs_dir, pack_id), copy)
    # … and damage in the original.
    with open(pack_path(store.packs_dir, pack_id), "r+b") as fh:
        fh.seek(first + HEADER + 5)
        fh.write(b"\xff\xfe\xfd")

    report = reindex(store)
    assert report.packs == 2 and report.packs_recorded == 1
    assert report.chunks_repointed == 1
    assert report.chunks_damaged == 0
    assert b"".join(store.iter_range(oid)) == data
    assert verify(store).ok


def test_reindex_marks_entries_without_any_valid_record(store: BlobStore, db: Database) -> None:
    data = random_bytes(1_000_000, 81)
    oid = store.put(io.BytesIO(data)).oid
    store.close()
    with db.session() as session:
        session.execute(update(StorageChunk).values(offset=StorageChunk.offset + 1))
        session.commit()
    report = reindex(store)
    assert report.chunks_repointed == chunk_count(db)  # each record is found where it really is
    assert b"".join(store.iter_range(oid)) == data
    with open(next(store.packs_dir.glob("*.pack")), "r+b") as fh:
        fh.truncate(16)
    report = reindex(store)
    assert report.chunks_damaged == chunk_count(db)
    assert report.damaged_objects == 1
    assert not store.has(oid)


def test_reindex_command(settings: Settings, store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENSCI_HOME", str(settings.home))
    monkeypatch.setenv("OPENSCI_DATABASE_URL", settings.effective_database_url)
    store.put(io.BytesIO(random_bytes(300_000, 82)))
    store.close()
    result = CliRunner().invoke(cli, ["storage", "reindex"])
    assert result.exit_code == 0, result.output
    assert "scanned 1 packs" in result.output


def test_chunks_named_by_sha256_before_blake3_stay_readable_verifiable_and_reindexable(
    store: BlobStore, db: Database
) -> None:
    """Stores written before chunks were named by BLAKE3 hold sha256-named records: they keep working
    (read, scrub, reindex), while new chunks must carry BLAKE3 names."""
    import hashlib

    from opensci.storage.errors import DigestMismatch, MissingChunks
    from opensci.storage.store import _Lease

    pieces = [random_bytes(100_000, 90), random_bytes(120_000, 91)]
    old_names = [hashlib.sha256(p).digest() for p in pieces]
    lease = _Lease(store)  # as an older server wrote them
    lease.append([(n, memoryview(p)) for n, p in zip(old_names, pieces, strict=True)])
    lease.flush()
    lease.release(True)
    content = b"".join(pieces)
    oid = store.commit_manifest(hashlib.sha256(content).hexdigest(), len(content), old_names).oid
    with db.session() as session:  # what migration 0005 makes of every chunk an older server stored
        session.execute(update(StorageChunk).values(legacy=True))
        session.commit()
    assert b"".join(store.iter_range(oid)) == content
    assert verify(store).ok
    store.close()
    with db.session() as session:
        session.execute(delete(StorageChunk))
        session.commit()
    assert reindex(store).chunks_added == 2
    with db.session() as session:  # reindex tells sha256 names from BLAKE3 ones
        assert set(session.scalars(select(StorageChunk.legacy))) == {True}
    assert b"".join(store.iter_range(oid)) == content  # read checks them against their sha256 names now
    assert verify(store).ok
    # No upload may name them: a sha256 name is no proof of having the bytes (for a one-chunk file it is
    # the file's Git LFS oid, which others may know).
    assert store.missing_chunks(old_names) == set(old_names)
    with pytest.raises(MissingChunks):
        store.commit_manifest(oid, len(content), old_names)
    with pytest.raises(DigestMismatch, match="BLAKE3"):
        store.put_chunk(hashlib.sha256(b"new content").digest(), b"new content")
