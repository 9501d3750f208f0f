"""BlobStore: put, dedupe, commit and read content-addressed objects.

Writing: bytes are cut into chunks; chunks the index lacks are appended to a pack of this writer's
own; the pack is fsynced; then one transaction indexes the chunks. The object's row (its manifest)
commits last, after the whole content's sha256 and size were checked, in a transaction that also
re-checks every chunk it lists (an object already stored healthy keeps the manifest it has: uploading
the same content again, however it is cut, only touches it). So an object is either entirely durable
and readable, or invisible;
a crash at any point leaves at most dead bytes in a pack and unreferenced chunks in the index, which
garbage collection removes after the grace period.

Our own client's resumable protocol uses `missing_chunks` → `put_chunks` → `commit_manifest`, or, with
a manifest streamed during the upload, a `content_reader` fed as it arrives → `commit_read`.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from xxhash import xxh3_64_digest

from opensci.db import Database
from opensci.db.base import utcnow
from opensci.errors import InvalidInput, OpenSciError
from opensci.settings import Settings
from opensci.storage import index
from opensci.storage.chunking import MIN_SIZE, Chunk, ChunkedStream, chunk_id
from opensci.storage.errors import (
    ChunksGone,
    DigestMismatch,
    MissingChunks,
    ObjectDamaged,
    ObjectNotFound,
    OutdatedClient,
)
from opensci.storage.index import ENTRY, check_oid, chunk_digest, encode_manifest
from opensci.storage.models import ObjectState, StorageChunk, StorageObject, StoragePack
from opensci.storage.packs import MAX_CHUNK, PackWriter
from opensci.storage.readback import Base, ContentReader
from opensci.storage.reader import BlobReader
from opensci.storage.recent import RecentChunks

if TYPE_CHECKING:
    from opensci.storage.gc import GcReport
    from opensci.storage.maintenance import ReindexReport, VerifyReport

FLUSH_BYTES = 64 * 1024 * 1024  # index what a put wrote at least this often (and fsync before)

H = TypeVar("H", str, bytes)
T = TypeVar("T")
TRANSACTION_ATTEMPTS = 6


def _transient(exc: DBAPIError) -> bool:
    """A deadlock or serialization failure (PostgreSQL), or a lock timeout (SQLite): worth retrying."""
    state = getattr(exc.orig, "sqlstate", None)
    return state in ("40P01", "40001") or "database is locked" in str(exc.orig)


@dataclass(frozen=True)
class ObjectInfo:
    oid: str
    size: int
    chunk_count: int
    state: str
    created_at: datetime


def _info(row: StorageObject) -> ObjectInfo:
    return ObjectInfo(row.oid, row.size, row.chunk_count, str(row.state), row.created_at)


def _stream(reader: BlobReader, start: int, stop: int) -> Iterator[memoryview]:
    try:
        yield from reader.blocks(start, stop, prefetch=True)
    finally:
        reader.close()


class _Lease:
    """A pack writer held by one operation (taken at its first write), and the chunks it appended that
    the index does not know yet."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.writer: PackWriter | None = None
        self.rows: list[index.ChunkRow] = []

    @property
    def unflushed(self) -> int:
        return 0 if self.writer is None else self.writer.offset - self.writer.recorded

    def append(self, chunks: Sequence[Chunk]) -> None:
        """Append records, rolling over to a new pack when this one would pass its size limit."""
        if self.writer is None:
            self.writer = self.store._acquire_writer()
        start = 0
        while start < len(chunks):
            n = self.writer.fitting(chunks[start:])
            if n == 0:  # this pack is full
                self.flush()
                self.store._seal_writer(self.writer)
                self.writer = None
                self.writer = self.store._new_writer()
                continue
            part = chunks[start : start + n]
            offsets = self.writer.append(part)
            self.rows.extend(
                (d, self.writer.id, o, len(data), xxh3_64_digest(data))
                for (d, data), o in zip(part, offsets, strict=True)
            )
            start += n

    def flush(self, then: Callable[[Session, datetime], None] | None = None) -> None:
        """fsync the pack, then index its new chunks (and run `then` in the same transaction)."""
        end = self.writer.sync() if self.writer is not None else 0
        now = utcnow()
        writer, rows = self.writer, self.rows

        def work(session: Session) -> None:
            if rows and writer is not None:
                index.insert_chunks(session, rows, now)
                index.record_pack_size(session, writer.id, end)
            if then is not None:
                then(session, now)

        if writer is not None:
            writer.uncertain = True
        try:
            self.store._transaction(work)
        except OpenSciError:
            if writer is not None:  # refused by `then` before any commit: certainly not recorded
                writer.uncertain = False
            raise
        if writer is not None:
            writer.mark_recorded(end)
            writer.uncertain = False
        self.rows = []

    def release(self, ok: bool) -> None:
        if self.writer is not None:
            self.store._release_writer(self.writer, ok)
            self.writer = None


class BlobStore:
    """The blob store below `HOME/blobs`, indexed in the database. Safe to share between threads;
    any number of processes may use the same store at once."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.root = settings.home / "blobs"
        self.packs_dir = self.root / "packs"
        self.pack_max_bytes = settings.storage_pack_max_bytes
        self.verify_reads = settings.storage_verify_reads
        self.direct_io = settings.storage_direct_io
        self._idle: list[PackWriter] = []
        self._lock = threading.Lock()
        self.recent = RecentChunks()  # chunks just stored, for the manifest that follows them

    # --- transactions -------------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a transaction and commit; again, from the start, when the database chose it as
        the victim of a deadlock or a busy lock (concurrent uploads of overlapping content on PostgreSQL
        can lock the same chunk rows in different orders). `work` must be idempotent, as ours are."""
        for attempt in range(TRANSACTION_ATTEMPTS):
            try:
                with self.db.session() as session:
                    result = work(session)
                    session.commit()
                    return result
            except DBAPIError as exc:
                if attempt == TRANSACTION_ATTEMPTS - 1 or not _transient(exc):
                    raise
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def _touch(self, digests: list[bytes]) -> set[bytes]:
        return self._transaction(lambda session: index.touch_chunks(session, digests, utcnow()))

    # --- pack writers: each operation appends to a pack of its own ----------------------------------------

    def _new_writer(self) -> PackWriter:
        writer = PackWriter(self.packs_dir, self.pack_max_bytes, direct=self.direct_io)
        try:
            with self.db.session() as session:
                session.add(StoragePack(id=writer.id, size=writer.offset, live_bytes=0, sealed=False))
                session.commit()
        except BaseException:
            writer.close()
            writer.path.unlink(missing_ok=True)
            raise
        return writer

    def _acquire_writer(self) -> PackWriter:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_writer()

    def _release_writer(self, writer: PackWriter, ok: bool) -> None:
        """Back to the pool. After a failure, bytes the index never learned about are cut off, unless a
        commit failed in a way that leaves unknown whether it happened: then the pack is sealed as is."""
        if not ok:
            try:
                if writer.uncertain:
                    raise OSError("the last index commit may or may not have happened")
                writer.rewind()
            except OSError:
                self._seal_writer(writer)
                return
        with self._lock:
            self._idle.append(writer)

    def _seal_writer(self, writer: PackWriter) -> None:
        """Close a pack for good: never appended to again, open to compaction."""
        try:
            try:
                size = writer.sync()
            except OSError:
                size = writer.recorded
            with self.db.session() as session:
                index.record_pack_size(session, writer.id, size, sealed=True)
                session.commit()
        finally:
            writer.close()

    def close(self) -> None:
        """Seal the packs this store holds open. The store stays usable (it opens new packs)."""
        self.recent.clear()
        with self._lock:
            idle, self._idle = self._idle, []
        for writer in idle:
            self._seal_writer(writer)

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------------

    def put(
        self, stream: BinaryIO, expected_oid: str | None = None, expected_size: int | None = None
    ) -> ObjectInfo:
        """Store the content of a binary stream (read to its end) and return the object.

        With `expected_oid` / `expected_size` (what a Git LFS client announces), content whose sha256 or
        size differs raises DigestMismatch and no object becomes visible. Content already stored costs
        one read and hashing pass and no new bytes on disk.
        """
        if expected_oid is not None:
            expected_oid = check_oid(expected_oid)
        if expected_size is not None and expected_size < 0:
            raise InvalidInput("expected size must not be negative", code="invalid_size")
        chunked = ChunkedStream(stream, limit=expected_size)
        entries: list[tuple[bytes, int]] = []
        stored: set[bytes] = set()  # chunks of this object known present (written or touched)
        lease = _Lease(self)
        ok = False
        try:
            for block in chunked.blocks():
                entries.extend((d, len(data)) for d, data in block)
                fresh: dict[bytes, memoryview] = {}
                for d, data in block:
                    if d not in stored:
                        fresh.setdefault(d, data)
                if fresh:
                    present = self._touch(list(fresh))
                    lease.append([(d, data) for d, data in fresh.items() if d not in present])
                    stored.update(fresh)
                if lease.unflushed >= FLUSH_BYTES:
                    lease.flush()
            if expected_size is not None and chunked.size != expected_size:
                raise DigestMismatch(
                    f"the upload has {'at least ' if chunked.size > expected_size else ''}"
                    f"{chunked.size} bytes, not the announced {expected_size}; nothing was stored",
                    code="size_mismatch",
                )
            oid = chunked.oid
            if expected_oid is not None and oid != expected_oid:
                raise DigestMismatch(
                    f"the upload's sha256 is {oid}, not the announced {expected_oid}; nothing was stored"
                )
            manifest = encode_manifest(entries)
            lease.flush(
                then=lambda session, now: self._commit_object(session, now, oid, chunked.size, manifest)
            )
            ok = True
        finally:
            lease.release(ok)
        return self.stat(oid)

    def _commit_object(
        self,
        session: Session,
        now: datetime,
        oid: str,
        size: int,
        manifest: bytes,
        checkpoints: bytes | None = None,
    ) -> None:
        """In the caller's transaction: keep the object if it is already stored healthy (its manifest
        stays, whoever uploads the same content again, however cut: see `index.keep_object`); else
        re-check (and touch) every chunk of `manifest`, then make the object visible with it (which also
        repairs a damaged object, or one with chunks missing)."""
        if index.keep_object(session, oid, now):
            return
        digests = set(index.manifest_digests(manifest))
        present = index.touch_chunks(session, list(digests), now)
        if len(present) != len(digests):
            missing = sorted(d.hex() for d in digests - present)
            raise ChunksGone(
                f"{len(missing)} chunks of {oid} were collected or found damaged during the upload; "
                "upload it again",
                missing,
            )
        index.upsert_object(session, oid, size, manifest, now, checkpoints)

    def missing_chunks(self, hashes: Iterable[H]) -> set[H]:
        """Which of these chunk hashes (hex or raw) the store lacks, or holds only damaged. The ones it has
        are touched, so garbage collection spares them until the manifest that uses them commits."""
        wanted = {h: chunk_digest(h) for h in hashes}
        present = self._touch(list(set(wanted.values())))
        return {h for h, d in wanted.items() if d not in present}

    def put_chunk(self, name: str | bytes, data: bytes) -> bool:
        """Store one chunk, checked against its name; returns False if it was already stored."""
        return self.put_chunks([(name, data)]) == 1

    def put_chunks(
        self,
        chunks: Iterable[tuple[str | bytes, bytes | memoryview]],
        *,
        release: Callable[[], None] | None = None,
        held: int = 0,
    ) -> int:
        """Store chunks (name, bytes), each checked against its name (the BLAKE3 of its bytes) before
        anything is written, with one fsync for all; returns how many were new.

        With `release`, the chunks are views of a buffer the caller hands over: the new ones stay in
        memory a little while for the manifest that names them next (see `recent`), and `release` is
        called once the buffer may be reused (perhaps before this returns); `held` is the buffer's size,
        what keeping it costs."""
        return self.put_chunks_counted(chunks, release=release, held=held)[0]

    def put_chunks_counted(
        self,
        chunks: Iterable[tuple[str | bytes, bytes | memoryview]],
        *,
        release: Callable[[], None] | None = None,
        held: int = 0,
    ) -> tuple[int, int]:
        """`put_chunks`, answering how many chunks were new and how many bytes they hold."""
        try:
            new = self._put_chunks(chunks)
        except BaseException:
            if release is not None:
                release()
            raise
        stored = sum(len(data) for _, data in new)
        if release is not None:
            self.recent.keep(new, release, held)
        return len(new), stored

    def _put_chunks(self, chunks: Iterable[tuple[str | bytes, bytes | memoryview]]) -> list[Chunk]:
        checked: dict[bytes, memoryview] = {}
        for h, data in chunks:
            digest = chunk_digest(h)
            view = memoryview(data).cast("B")
            if not 0 < len(view) <= MAX_CHUNK:
                raise InvalidInput(
                    f"a chunk holds 1 to {MAX_CHUNK} bytes, not {len(view)}", code="invalid_chunk_size"
                )
            actual = chunk_id(view)
            if actual != digest:
                if hashlib.sha256(view).digest() == digest:
                    raise OutdatedClient(
                        f"chunk {digest.hex()} is named by the sha256 of its bytes, as SDKs before BLAKE3 "
                        "chunk names sent them; this server names chunks by their BLAKE3: upgrade the "
                        "opensci package (pip install -U opensci) and upload again. Nothing was stored"
                    )
                raise DigestMismatch(
                    f"chunk {digest.hex()} has the BLAKE3 hash {actual.hex()}; nothing was stored (the "
                    "bytes changed while they were sent, or were damaged)"
                )
            checked[digest] = view
        if not checked:
            return []
        # A read, not a touch: these were just reported missing to the sender (a chunk found here was
        # stored by a concurrent upload moments ago), and the manifest that uses them touches them all.
        with self.db.session() as session:
            present = index.present_chunks(session, list(checked))
        new = [(d, v) for d, v in checked.items() if d not in present]
        if new:
            lease = _Lease(self)
            ok = False
            try:
                lease.append(new)
                lease.flush()
                ok = True
            finally:
                lease.release(ok)
        return new

    def commit_manifest(self, oid: str, size: int, chunk_hashes: Sequence[str | bytes]) -> ObjectInfo:
        """Make an object of stored chunks: every chunk must be present and healthy (else MissingChunks
        lists those to send), and their concatenation must have this size and sha256 (else
        DigestMismatch). Reads every chunk back once to check it."""
        oid = check_oid(oid)
        digests = [chunk_digest(h) for h in chunk_hashes]
        with self.db.session() as session:
            locations = index.locate(session, digests)
        missing = sorted(
            {d.hex() for d in digests if d not in locations or locations[d].damaged or locations[d].legacy}
        )
        if missing:
            raise MissingChunks(f"{len(missing)} chunks of {oid} are not stored; send them first", missing)
        total = sum(locations[d].length for d in digests)
        if total != size:
            raise DigestMismatch(
                f"the chunks add up to {total} bytes, not the announced {size}", code="size_mismatch"
            )
        with self.content_reader(oid, size) as reader:
            reader.feed(digests)  # chunks still in memory from their upload are hashed from there
            return self.commit_read(reader, size, oid)

    def content_reader(
        self, oid: str = "", size: int | None = None, *, min_chunk: int = MIN_SIZE
    ) -> ContentReader:
        """A reader that checks and hashes the content of chunks fed to it in order (a streamed manifest:
        see `commit_read`); with `size`, the announced size, it refuses chunks that make more. It refuses
        chunks shorter than `min_chunk` before the last one (see `readback`)."""
        return ContentReader(self, oid, size, min_chunk=min_chunk)

    def base(self, oid: str) -> Base | None:
        """The stored object `oid` as the base of a new one (see `readback.Base`), if it is healthy, cut
        by our chunker, and has sha256 checkpoints; else None."""
        with self.db.session() as session:
            row = session.execute(
                select(StorageObject.state, StorageObject.manifest, StorageObject.checkpoints).where(
                    StorageObject.oid == check_oid(oid)
                )
            ).one_or_none()
        if row is None or row.state != ObjectState.ok or not row.checkpoints:
            return None
        if index.short_chunk(row.manifest):
            return None
        try:
            return Base(oid, row.manifest, row.checkpoints)
        except ValueError:
            return None

    def commit_read(self, reader: ContentReader, size: int, expected_oid: str | None = None) -> ObjectInfo:
        """Make an object of the chunks a ContentReader was fed: its oid is the sha256 the reader
        computed. MissingChunks for chunks it did not find; DigestMismatch when the content does not
        have `size` bytes or the `expected_oid`."""
        reader.end()
        if reader.missing:
            missing = sorted(d.hex() for d in reader.missing)
            raise MissingChunks(
                f"{len(missing)} chunks of the manifest are not stored; send them first", missing
            )
        if reader.size != size:
            raise DigestMismatch(
                f"the chunks add up to {reader.size} bytes, not the announced {size}", code="size_mismatch"
            )
        oid = reader.hexdigest()
        if expected_oid is not None and oid != expected_oid:
            raise DigestMismatch(f"the chunks' content has the sha256 {oid}, not {expected_oid}")
        manifest, checkpoints = reader.manifest, reader.checkpoints
        try:
            self._transaction(
                lambda session: self._commit_object(session, utcnow(), oid, size, manifest, checkpoints)
            )
        except ChunksGone as exc:  # chunks collected or quarantined since they were read: send them again
            raise MissingChunks(
                exc.message.replace("upload it again", "send them again"), exc.missing
            ) from None
        return self.stat(oid)

    # --- reading ----------------------------------------------------------------------------------------

    def _row(self, oid: str) -> StorageObject:
        oid = check_oid(oid)
        with self.db.session() as session:
            row = session.get(StorageObject, oid)
        if row is None:
            raise ObjectNotFound(f"object {oid} is not stored")
        return row

    def has(self, oid: str) -> bool:
        """Whether the object is stored and not quarantined as damaged."""
        try:
            return self._row(oid).state == ObjectState.ok
        except ObjectNotFound:
            return False

    def stat(self, oid: str) -> ObjectInfo:
        return _info(self._row(oid))

    def open(self, oid: str) -> BlobReader:
        """A readable, seekable binary file of the object's content. Every chunk read is checked
        against its hash (setting `storage_verify_reads`); damage raises ObjectDamaged, never wrong bytes."""
        row = self._row(oid)
        if row.state != ObjectState.ok:
            raise ObjectDamaged(
                f"object {row.oid} is quarantined: some of its stored bytes are damaged. "
                "Upload the file again to repair it; `opensci storage verify` lists the damage"
            )
        return BlobReader(self, row.oid, row.size, row.manifest, verify=self.verify_reads)

    def iter_range(self, oid: str, start: int = 0, end: int | None = None) -> Iterator[memoryview]:
        """The bytes [start, end) of an object (end exclusive; None: to the end) in blocks of up to
        several MiB, for streaming responses and HTTP Range. Each block is a read-only memoryview of
        its own buffer (never reused), so it may be kept or sent as is. A missing or quarantined object
        raises here, before the first block; damage found later raises while iterating."""
        reader = self.open(oid)
        stop = reader.size if end is None else min(end, reader.size)
        if start < 0 or start > stop:
            reader.close()
            raise InvalidInput(
                f"invalid range {start}-{end} of a {reader.size}-byte object", code="invalid_range"
            )
        return _stream(reader, start, stop)

    def usage(self, oids: Iterable[str]) -> int:
        """Logical bytes of the distinct stored objects among `oids` (the measure of owner quotas)."""
        wanted = sorted({check_oid(o) for o in oids})
        total = 0
        with self.db.session() as session:
            for part in index.batched(wanted):
                total += (
                    session.scalar(
                        select(func.coalesce(func.sum(StorageObject.size), 0)).where(
                            StorageObject.oid.in_(part)
                        )
                    )
                    or 0
                )
        return int(total)

    # --- maintenance (the modules `maintenance` and `gc` do the work) -------------------------------------

    def verify(self) -> VerifyReport:
        """Scrub every chunk; quarantine damage. See `maintenance.verify`."""
        from opensci.storage.maintenance import verify

        return verify(self)

    def gc(
        self, referenced_oids: Iterable[str], grace: float | None = None, *, dry_run: bool = False
    ) -> GcReport:
        """Collect what `referenced_oids` does not keep, older than `grace` seconds. See `gc.gc`."""
        from opensci.storage.gc import gc

        return gc(self, referenced_oids, grace, dry_run=dry_run)

    def reindex(self) -> ReindexReport:
        """Rebuild the chunk index from the packs. See `maintenance.reindex`."""
        from opensci.storage.maintenance import reindex

        return reindex(self)

    # --- used by readers --------------------------------------------------------------------------------

    def _locate(self, digests: Sequence[bytes]) -> dict[bytes, index.Location]:
        with self.db.session() as session:
            return index.locate(session, digests)

    def _quarantine(self, oid: str, damaged: tuple[bytes, index.Location] | None = None) -> None:
        """A read found the object damaged (a chunk that fails its check, or is missing): mark it, and
        the chunk, so that `has` says no and a fresh upload repairs them."""

        def work(session: Session) -> None:
            if damaged is not None:
                digest, location = damaged
                session.execute(
                    update(StorageChunk)
                    .where(
                        StorageChunk.digest == digest,
                        StorageChunk.pack_id == location.pack_id,
                        StorageChunk.offset == location.offset,
                    )
                    .values(damaged=True)
                )
            session.execute(
                update(StorageObject).where(StorageObject.oid == oid).values(state=ObjectState.damaged)
            )

        self._transaction(work)


__all__ = ["ENTRY", "BlobStore", "ObjectInfo"]
