"""Operator work on the blob store: scrub (`verify`), rebuild the chunk index (`reindex`), `stats`.

Both verify and reindex may run while the server uploads and serves: they judge only what was durable
when they looked, and every change they make to a chunk's entry is conditional on the entry still
pointing where they looked (so a concurrent compaction or repair is never undone).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import func, select, update

from opensci.db.base import utcnow
from opensci.storage import index
from opensci.storage.index import Location, manifest_digests
from opensci.storage.models import ObjectState, StorageChunk, StorageObject, StoragePack
from opensci.storage.packs import (
    HEADER,
    check_chunk,
    contiguous_runs,
    pack_path,
    read_chunks,
    scan_pack,
    try_lock_path,
)
from opensci.storage.store import BlobStore

EXAMPLES = 20  # damaged hashes listed in a report (the counts are complete)


@dataclass
class VerifyReport:
    packs: int = 0
    chunks: int = 0
    bytes: int = 0
    objects: int = 0
    damaged_chunks: int = 0  # after the run, found now or before
    damaged_objects: int = 0
    newly_damaged_chunks: int = 0
    repaired_chunks: int = 0  # marked damaged before, healthy now (e.g. a pack restored from backup)
    repaired_objects: int = 0
    missing_packs: list[str] = field(default_factory=list)
    damaged_chunk_examples: list[str] = field(default_factory=list)
    damaged_object_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.damaged_chunks == 0 and self.damaged_objects == 0 and not self.missing_packs


@dataclass
class ReindexReport:
    packs: int = 0
    records: int = 0
    packs_recorded: int = 0  # pack files the database did not know
    chunks_added: int = 0
    chunks_repointed: int = 0
    chunks_damaged: int = 0  # entries pointing at no valid record, and no copy found elsewhere
    chunks_repaired: int = 0
    damaged_objects: int = 0
    repaired_objects: int = 0


def _set_chunk_flag(store: BlobStore, digest: bytes, loc: Location, damaged: bool) -> bool:
    with store.db.session() as session:
        n = session.execute(
            update(StorageChunk)
            .where(
                StorageChunk.digest == digest,
                StorageChunk.pack_id == loc.pack_id,
                StorageChunk.offset == loc.offset,
            )
            .values(damaged=damaged)
        ).rowcount
        session.commit()
    return bool(n)


def check_chunks_now(store: BlobStore, digests: Iterable[bytes]) -> set[bytes]:
    """Read and hash these chunks where the index says they are now; returns the bad or missing ones."""
    with store.db.session() as session:
        found = index.locate(session, list(digests))
    bad = set()
    for digest in digests:
        loc = found.get(digest)
        if loc is None or loc.damaged:
            bad.add(digest)
            continue
        try:
            fd = os.open(pack_path(store.packs_dir, loc.pack_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            bad.add(digest)
            continue
        try:
            headers, data, whole = read_chunks(fd, loc.offset, [loc.length])
        finally:
            os.close(fd)
        if whole < 1 or check_chunk(headers[0], data, digest) is not None:
            bad.add(digest)
    return bad


def _object_states(store: BlobStore, good: set[bytes]) -> tuple[int, int, int, list[str]]:
    """Mark objects damaged (or healthy again) from their chunks. Chunks outside `good` are checked
    again where they are now before an object is condemned (they may have been written or moved since
    the caller looked). Returns (objects, damaged, repaired, damaged examples)."""
    objects = damaged = repaired = 0
    examples: list[str] = []
    verdicts: dict[bytes, bool] = {}  # suspect chunk → bad?
    with store.db.session() as session:
        rows = session.execute(
            select(StorageObject.oid, StorageObject.manifest, StorageObject.state).execution_options(
                yield_per=256
            )
        )
        todo: list[tuple[str, bool, str]] = []
        for oid, manifest, state in rows:
            objects += 1
            suspects = [d for d in set(manifest_digests(manifest)) if d not in good]
            unknown = [d for d in suspects if d not in verdicts]
            if unknown:
                bad = check_chunks_now(store, unknown)
                verdicts.update((d, d in bad) for d in unknown)
            is_bad = any(verdicts[d] for d in suspects)
            todo.append((oid, is_bad, state))
    for oid, is_bad, state in todo:
        if is_bad:
            damaged += 1
            if len(examples) < EXAMPLES:
                examples.append(oid)
        if is_bad != (state == ObjectState.damaged):
            with store.db.session() as session:
                session.execute(
                    update(StorageObject)
                    .where(StorageObject.oid == oid)
                    .values(state=ObjectState.damaged if is_bad else ObjectState.ok)
                )
                session.commit()
            if not is_bad:
                repaired += 1
    return objects, damaged, repaired, examples


def verify(store: BlobStore) -> VerifyReport:
    """Scrub: re-hash every indexed chunk, pack by pack in file order; quarantine damaged chunks and the
    objects that use them (reads refuse them; a fresh upload of the same content repairs them, and
    writing a damaged chunk's good bytes heals every object it kept quarantined: `index.heal_objects`)."""
    report = VerifyReport()
    good: set[bytes] = set()
    with store.db.session() as session:
        packs = session.scalars(select(StoragePack.id).order_by(StoragePack.created_at)).all()
    for pack_id in packs:
        with store.db.session() as session:
            rows = [
                (bytes(d), o, n, bad)
                for d, o, n, bad in session.execute(
                    select(
                        StorageChunk.digest, StorageChunk.offset, StorageChunk.length, StorageChunk.damaged
                    )
                    .where(StorageChunk.pack_id == pack_id)
                    .order_by(StorageChunk.offset)
                )
            ]
        if not rows:
            continue
        report.packs += 1
        try:
            fd = os.open(pack_path(store.packs_dir, pack_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        try:
            for run in contiguous_runs(rows):
                if fd is not None:
                    headers, data, whole = read_chunks(fd, run[0][1], [n for _, _, n, _ in run])
                at = 0
                for k, (digest, offset, n, flagged) in enumerate(run):
                    if fd is None:
                        reason: str | None = "its pack file is missing"
                    elif k >= whole:
                        reason = "the pack ends before the chunk does"
                    else:
                        reason = check_chunk(headers[k], data[at : at + n], digest)
                    at += n
                    report.chunks += 1
                    report.bytes += n
                    loc = Location(pack_id, offset, n)
                    if reason is None:
                        good.add(digest)
                        if flagged and _set_chunk_flag(store, digest, loc, False):
                            report.repaired_chunks += 1
                    elif not flagged and _set_chunk_flag(store, digest, loc, True):
                        report.newly_damaged_chunks += 1
        finally:
            if fd is not None:
                os.close(fd)
        if fd is None:
            # Missing only if the index still points there (compaction may have moved everything).
            with store.db.session() as session:
                if session.scalar(select(func.count()).where(StorageChunk.pack_id == pack_id)):
                    report.missing_packs.append(pack_id)
    with store.db.session() as session:
        bad = session.scalars(select(StorageChunk.digest).where(StorageChunk.damaged.is_(True))).all()
    report.damaged_chunks = len(bad)
    report.damaged_chunk_examples = [bytes(d).hex() for d in bad[:EXAMPLES]]
    report.objects, report.damaged_objects, report.repaired_objects, report.damaged_object_examples = (
        _object_states(store, good)
    )
    return report


def reindex(store: BlobStore) -> ReindexReport:
    """Rebuild the chunk index from the pack files: every valid record found is indexed (entries that
    point at nothing valid are repointed to a valid copy, or marked damaged), unknown pack files are
    recorded, and object states follow. Packs a writer still appends to are read up to their recorded
    size only."""
    report = ReindexReport()
    with store.db.session() as session:
        known = {p.id: p for p in session.scalars(select(StoragePack))}
    found: dict[bytes, Location] = {}
    valid: dict[tuple[str, int], bytes] = {}
    scanned: dict[str, int] = {}  # pack → bytes scanned
    in_use: set[str] = set()  # packs a writer holds: scanned up to their recorded size only
    paths = sorted(store.packs_dir.glob("*.pack")) if store.packs_dir.is_dir() else []
    for path in paths:
        pack_id = path.stem
        row = known.get(pack_id)
        try:
            fd = try_lock_path(path)
        except FileNotFoundError:
            continue
        try:
            if fd is None:  # a writer appends to it: only its recorded part is ours to judge
                end = row.size if row is not None else 0
                in_use.add(pack_id)
            else:
                os.fsync(fd)  # index nothing that could still vanish in a power cut
                end = os.fstat(fd).st_size
            for rec in scan_pack(path, end):
                report.records += 1
                valid[(pack_id, rec.offset)] = rec.digest
                found.setdefault(rec.digest, Location(pack_id, rec.offset, rec.length, legacy=rec.legacy))
            scanned[pack_id] = end
            report.packs += 1
            if fd is not None:
                with store.db.session() as session:
                    if row is None:
                        session.add(StoragePack(id=pack_id, size=end, live_bytes=0, sealed=True))
                        report.packs_recorded += 1
                    elif not row.sealed or row.size != end:
                        session.execute(
                            update(StoragePack).where(StoragePack.id == pack_id).values(sealed=True, size=end)
                        )
                    session.commit()
        finally:
            if fd is not None:
                os.close(fd)

    indexed: set[bytes] = set()
    good: set[bytes] = set()
    with store.db.session() as session:
        rows = session.execute(
            select(
                StorageChunk.digest,
                StorageChunk.pack_id,
                StorageChunk.offset,
                StorageChunk.length,
                StorageChunk.damaged,
            )
        ).all()
    for raw, pack_id, offset, length, damaged in rows:
        digest = bytes(raw)
        indexed.add(digest)
        loc = Location(pack_id, offset, length)
        if pack_id in in_use and offset + HEADER + length > scanned[pack_id]:
            continue  # written after we looked
        if pack_id not in scanned and pack_path(store.packs_dir, pack_id).exists():
            continue  # a pack created after we looked
        if valid.get((pack_id, offset)) == digest:
            good.add(digest)
            if damaged and _set_chunk_flag(store, digest, loc, False):
                report.chunks_repaired += 1
            continue
        copy = found.get(digest)
        with store.db.session() as session:
            stmt = update(StorageChunk).where(
                StorageChunk.digest == digest, StorageChunk.pack_id == pack_id, StorageChunk.offset == offset
            )
            if copy is not None:
                n = session.execute(
                    stmt.values(pack_id=copy.pack_id, offset=copy.offset, length=copy.length, damaged=False)
                ).rowcount
                report.chunks_repointed += n
                good.add(digest)
            else:
                n = session.execute(stmt.values(damaged=True)).rowcount
                report.chunks_damaged += n if not damaged else 0
            session.commit()
    # Records no manifest lists are garbage (collected chunks whose bytes wait for compaction, or an
    # upload that never finished): indexing them again would bring back what gc deleted.
    listed: set[bytes] = set()
    with store.db.session() as session:
        for (manifest,) in session.execute(select(StorageObject.manifest).execution_options(yield_per=256)):
            listed.update(manifest_digests(manifest))
    missing = [
        (d, loc.pack_id, loc.offset, loc.length, None, loc.legacy)
        for d, loc in found.items()
        if d not in indexed and d in listed
    ]
    if missing:
        with store.db.session() as session:
            index.insert_chunks(session, missing, utcnow())
            session.commit()
        report.chunks_added = len(missing)
        good.update(d for d, *_ in missing)
    _, report.damaged_objects, report.repaired_objects, _ = _object_states(store, good)
    return report


@dataclass
class Stats:
    objects: int
    object_bytes: int  # logical: the sum of the objects' sizes
    damaged_objects: int
    chunks: int
    chunk_bytes: int  # stored once each
    damaged_chunks: int
    packs: int
    pack_bytes: int  # every pack file on disk, live and dead records alike


def stats(store: BlobStore) -> Stats:
    with store.db.session() as session:
        objects, object_bytes = session.execute(
            select(func.count(), func.coalesce(func.sum(StorageObject.size), 0))
        ).one()
        damaged_objects = session.scalar(
            select(func.count()).where(StorageObject.state == ObjectState.damaged)
        )
        chunks, chunk_bytes = session.execute(
            select(func.count(), func.coalesce(func.sum(StorageChunk.length), 0))
        ).one()
        damaged_chunks = session.scalar(select(func.count()).where(StorageChunk.damaged.is_(True)))
        packs = session.scalars(select(StoragePack.id)).all()
    pack_bytes = 0
    for path in store.packs_dir.glob("*.pack") if store.packs_dir.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):
            pack_bytes += path.stat().st_size
    return Stats(
        int(objects),
        int(object_bytes),
        int(damaged_objects or 0),
        int(chunks),
        int(chunk_bytes),
        int(damaged_chunks or 0),
        len(packs),
        pack_bytes,
    )
