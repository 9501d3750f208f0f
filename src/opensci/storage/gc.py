"""Garbage collection: drop what no repository references, then compact packs that are mostly dead.

Order and grace make it safe to run while uploads go on, in any number of processes:
1. objects that no revision references and nobody uploaded or committed within the grace period;
2. chunks that no remaining object lists and nobody touched within the grace period (an upload in
   flight touches every chunk it relies on, so its chunks survive);
3. packs with no live record are deleted; sealed (or abandoned) packs whose live records fill less
   than half the file are compacted: live chunks are copied to a pack of our own, which is fsynced
   before the index points at the copies, and the old pack is deleted only after that commits.
Each deletion re-checks its condition in the same statement, so a chunk touched meanwhile stays.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, delete, exists, func, select, update

from opensci.db.base import utcnow
from opensci.storage import index
from opensci.storage.index import check_oid, manifest_digests
from opensci.storage.models import RepoObject, StorageChunk, StorageObject, StoragePack, StoragePending
from opensci.storage.packs import (
    HEADER,
    PACK_HEADER,
    PackWriter,
    check_chunk,
    contiguous_runs,
    fsync_dir,
    pack_path,
    read_chunks,
    try_lock_path,
)
from opensci.storage.store import BlobStore

COMPACT_BELOW = 0.5  # compact a pack whose live records fill less than this fraction of it


@dataclass
class GcReport:
    dry_run: bool
    objects_deleted: int = 0
    object_bytes: int = 0  # logical size of the objects deleted
    chunks_deleted: int = 0
    chunk_bytes: int = 0
    packs_deleted: int = 0
    packs_compacted: int = 0
    packs_skipped: int = 0  # in use by a writer, or holding damaged chunks
    bytes_reclaimed: int = 0  # disk space freed (for a dry run: that would be freed)
    errors: list[str] = field(default_factory=list)


def gc(
    store: BlobStore,
    referenced_oids: Iterable[str],
    grace: float | None = None,
    *,
    dry_run: bool = False,
    started: datetime | None = None,
) -> GcReport:
    """Collect unreferenced objects and chunks older than `grace` seconds (default: the setting
    `storage_gc_grace_seconds`), then delete dead packs and compact sparse ones.

    `started`: when the caller began reading `referenced_oids` (default: now). The grace period counts
    back from then, so an object that a commit touched after that moment is spared even if the
    references were read before the commit moved its branch (deletes re-check the time)."""
    grace = store.settings.storage_gc_grace_seconds if grace is None else grace
    cutoff = (started or utcnow()) - timedelta(seconds=grace)
    keep = {check_oid(o) for o in referenced_oids}
    report = GcReport(dry_run=dry_run)

    # 1. Objects.
    with store.db.session() as session:
        old = session.execute(
            select(StorageObject.oid, StorageObject.size).where(StorageObject.touched_at < cutoff)
        ).all()
    doomed = [(oid, size) for oid, size in old if oid not in keep]
    doomed_oids = {oid for oid, _ in doomed}
    if dry_run:
        report.objects_deleted = len(doomed)
        report.object_bytes = sum(size for _, size in doomed)
    else:
        sizes = dict(doomed)
        for part in index.batched(sorted(doomed_oids)):
            with store.db.session() as session:
                gone = session.scalars(
                    delete(StorageObject)
                    .where(StorageObject.oid.in_(part), StorageObject.touched_at < cutoff)
                    .returning(StorageObject.oid)
                ).all()
                session.commit()
            report.objects_deleted += len(gone)
            report.object_bytes += sum(sizes[o] for o in gone)

    # Unfinished uploads older than the grace period no longer count against quotas: their chunks go now.
    if not dry_run:
        with store.db.session() as session:
            session.execute(update(StoragePending).where(StoragePending.updated_at < cutoff).values(size=0))
            session.commit()

    # 2. Chunks that no remaining object lists.
    live: set[bytes] = set()
    with store.db.session() as session:
        for oid, manifest in session.execute(
            select(StorageObject.oid, StorageObject.manifest).execution_options(yield_per=256)
        ):
            if not (dry_run and oid in doomed_oids):
                live.update(manifest_digests(manifest))
        candidates = session.execute(
            select(StorageChunk.digest, StorageChunk.pack_id, StorageChunk.length).where(
                StorageChunk.touched_at < cutoff
            )
        ).all()
    dead = [(bytes(d), p, n) for d, p, n in candidates if bytes(d) not in live]
    dead_per_pack: dict[str, int] = defaultdict(int)
    if dry_run:
        report.chunks_deleted = len(dead)
        report.chunk_bytes = sum(n for _, _, n in dead)
        for _, p, n in dead:
            dead_per_pack[p] += HEADER + n
    else:
        lengths = {d: n for d, _, n in dead}
        for part in index.batched([d for d, _, _ in dead]):
            with store.db.session() as session:
                gone = session.scalars(
                    delete(StorageChunk)
                    .where(StorageChunk.digest.in_(part), StorageChunk.touched_at < cutoff)
                    .returning(StorageChunk.digest)
                ).all()
                session.commit()
            report.chunks_deleted += len(gone)
            report.chunk_bytes += sum(lengths[bytes(d)] for d in gone)
    del live, candidates, dead

    # 3. Packs.
    _collect_packs(store, report, dead_per_pack, cutoff_ts=cutoff.timestamp())
    return report


def _live_bytes(store: BlobStore) -> dict[str, tuple[int, int]]:
    """pack id → (bytes of indexed records, number of damaged chunks)."""
    with store.db.session() as session:
        rows = session.execute(
            select(
                StorageChunk.pack_id,
                func.sum(StorageChunk.length + HEADER),
                func.sum(case((StorageChunk.damaged.is_(True), 1), else_=0)),
            ).group_by(StorageChunk.pack_id)
        ).all()
    return {p: (int(b or 0), int(d or 0)) for p, b, d in rows}


def _collect_packs(
    store: BlobStore, report: GcReport, dead_per_pack: dict[str, int], cutoff_ts: float
) -> None:
    live = _live_bytes(store)
    with store.db.session() as session:
        packs = session.scalars(select(StoragePack.id)).all()
    known = set(packs)
    for pack_id in packs:
        path = pack_path(store.packs_dir, pack_id)
        live_bytes, damaged = live.get(pack_id, (0, 0))
        live_bytes = max(0, live_bytes - dead_per_pack.get(pack_id, 0))
        try:
            fd = try_lock_path(path)
        except FileNotFoundError:
            if live_bytes == 0 and not report.dry_run:
                _drop_pack_row(store, pack_id)
            continue
        if fd is None:  # a writer appends to it, or another collection works on it
            report.packs_skipped += 1
            continue
        try:
            size = os.fstat(fd).st_size
            if not report.dry_run:
                with store.db.session() as session:
                    # Unsealed and unlocked: its writer is gone (the process ended); never appended again.
                    session.execute(
                        update(StoragePack)
                        .where(StoragePack.id == pack_id)
                        .values(live_bytes=live_bytes, sealed=True)
                    )
                    session.commit()
            if live_bytes == 0:
                report.packs_deleted += 1
                report.bytes_reclaimed += size
                if not report.dry_run and not _delete_pack(store, pack_id):
                    report.packs_deleted -= 1
                    report.bytes_reclaimed -= size
            elif live_bytes < COMPACT_BELOW * size:
                if damaged:
                    report.packs_skipped += 1  # keep the evidence; `opensci storage verify` reports it
                    continue
                if report.dry_run:
                    report.packs_compacted += 1
                    report.bytes_reclaimed += size - live_bytes
                else:
                    written = _compact(store, pack_id, fd, report)
                    if written is not None:
                        report.packs_compacted += 1
                        report.bytes_reclaimed += size - written
        finally:
            os.close(fd)
    _sweep_orphans(store, report, known, cutoff_ts)


def _drop_pack_row(store: BlobStore, pack_id: str) -> bool:
    """Delete a pack's row if no chunk points into it (re-checked in the statement)."""
    with store.db.session() as session:
        gone = session.execute(
            delete(StoragePack).where(
                StoragePack.id == pack_id, ~exists().where(StorageChunk.pack_id == pack_id)
            )
        ).rowcount
        session.commit()
    return bool(gone)


def _delete_pack(store: BlobStore, pack_id: str) -> bool:
    if not _drop_pack_row(store, pack_id):
        return False
    pack_path(store.packs_dir, pack_id).unlink(missing_ok=True)
    fsync_dir(store.packs_dir)
    return True


def _compact(store: BlobStore, pack_id: str, fd: int, report: GcReport) -> int | None:
    """Copy the live chunks of a pack (locked by us) to a pack of our own, repoint the index, delete the
    old pack. Returns the bytes written, or None if the pack was left as it was."""
    with store.db.session() as session:
        rows = session.execute(
            select(StorageChunk.digest, StorageChunk.offset, StorageChunk.length)
            .where(StorageChunk.pack_id == pack_id)
            .order_by(StorageChunk.offset)
        ).all()
    writer = store._acquire_writer()
    moves: list[tuple[bytes, int, str, int]] = []  # (digest, old offset, new pack, new offset)
    written = PACK_HEADER.size if writer.empty else 0  # bytes added to disk, new pack headers included
    ok = False
    try:
        for run in contiguous_runs([(bytes(d), o, n) for d, o, n in rows]):
            headers, data, whole = read_chunks(fd, run[0][1], [n for _, _, n in run])
            at = 0
            chunks = []
            for k, (digest, offset, n) in enumerate(run):
                reason = (
                    "the pack ends before the chunk does"
                    if k >= whole
                    else check_chunk(headers[k], data[at : at + n], digest)
                )
                if reason is not None:
                    _mark_damaged(store, digest, pack_id, offset)
                    report.errors.append(f"pack {pack_id}: chunk {digest.hex()} at {offset}: {reason}")
                    return None
                chunks.append((digest, data[at : at + n]))
                at += n
            start = 0
            while start < len(chunks):
                n = writer.fitting(chunks[start:])
                if n == 0:
                    _repoint(store, writer, pack_id, moves)
                    moves = []
                    store._seal_writer(writer)
                    writer = store._new_writer()
                    written += PACK_HEADER.size
                    continue
                offsets = writer.append(chunks[start : start + n])
                moves.extend(
                    (d, o, writer.id, new)
                    for (d, o, _), new in zip(run[start : start + n], offsets, strict=True)
                )
                written += sum(HEADER + len(c) for _, c in chunks[start : start + n])
                start += n
        _repoint(store, writer, pack_id, moves)
        ok = True
    finally:
        store._release_writer(writer, ok)
    _delete_pack(store, pack_id)
    return written


def _repoint(
    store: BlobStore, writer: PackWriter, old_pack: str, moves: list[tuple[bytes, int, str, int]]
) -> None:
    """fsync the copies, then point the index at them (only where it still points at the old copy)."""
    end = writer.sync()
    with store.db.session() as session:
        if moves:
            table = StorageChunk.__table__
            session.execute(
                update(table)
                .where(
                    table.c.digest == bindparam("d"),
                    table.c.pack_id == old_pack,
                    table.c.offset == bindparam("o"),
                )
                .values(pack_id=bindparam("p"), offset=bindparam("n")),
                [{"d": d, "o": o, "p": p, "n": n} for d, o, p, n in moves],
            )
        index.record_pack_size(session, writer.id, end)
        session.commit()
    writer.mark_recorded(end)


def _mark_damaged(store: BlobStore, digest: bytes, pack_id: str, offset: int) -> None:
    with store.db.session() as session:
        session.execute(
            update(StorageChunk)
            .where(
                StorageChunk.digest == digest, StorageChunk.pack_id == pack_id, StorageChunk.offset == offset
            )
            .values(damaged=True)
        )
        session.commit()


def _sweep_orphans(store: BlobStore, report: GcReport, known: set[str], cutoff_ts: float) -> None:
    """Pack files without a row (a crash between creating the file and recording it): delete them once
    older than the grace period and unlocked. They hold nothing the index points at."""
    if not store.packs_dir.is_dir():
        return
    for path in store.packs_dir.glob("*.pack"):
        pack_id = path.stem
        if pack_id in known:
            continue
        try:
            st = path.stat()
            if st.st_mtime >= cutoff_ts:
                continue
            fd = try_lock_path(path)
        except FileNotFoundError:
            continue
        if fd is None:
            continue
        try:
            with store.db.session() as session:
                if session.get(StoragePack, pack_id) is not None:
                    continue  # recorded since we listed the packs
            report.packs_deleted += 1
            report.bytes_reclaimed += st.st_size
            if not report.dry_run:
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def release_holds(
    store: BlobStore,
    referenced: Mapping[str, set[str]],
    grace: float | None = None,
    *,
    dry_run: bool = False,
    started: datetime | None = None,
) -> int:
    """Forget that a repository holds an object no revision of it references (uploaded, never committed;
    or committed on a branch since deleted), once the hold is older than the grace period, and every
    hold of an object no longer stored. Quotas count holds, so this returns unused space to owners.
    `referenced` maps each repository id to the oids its revisions reference, read from `started` on
    (default: now). A hold is dated when its repository last took the object (an upload or a commit:
    see `files.hold_object`), and each delete re-checks that date: a commit that lands while the
    references are being read keeps its hold. Returns the count."""
    started = started or utcnow()
    grace = store.settings.storage_gc_grace_seconds if grace is None else grace
    cutoff = started - timedelta(seconds=grace)
    with store.db.session() as session:
        rows = session.execute(select(RepoObject.repo_id, RepoObject.oid, RepoObject.created_at)).all()
        stored = set(session.scalars(select(StorageObject.oid)))
        doomed = [
            (repo_id, oid, started if oid not in stored else cutoff)  # held before this date
            for repo_id, oid, created in rows
            if (oid not in stored and created < started)
            or (repo_id in referenced and oid not in referenced[repo_id] and created < cutoff)
        ]
        released = 0
        if not dry_run:
            for repo_id, oid, before in doomed:
                released += session.execute(
                    delete(RepoObject).where(
                        RepoObject.repo_id == repo_id, RepoObject.oid == oid, RepoObject.created_at < before
                    )
                ).rowcount
            session.commit()
    return len(doomed) if dry_run else released
