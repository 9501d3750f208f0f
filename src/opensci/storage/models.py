"""Tables of the blob store: the chunk index, object manifests, and the pack files.

The pack files are the truth for bytes; `storage_chunks` is an index over them that
`opensci storage reindex` can rebuild by scanning the packs. An object exists for readers only once
its row commits, which happens after every chunk its manifest lists is durable and indexed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, LargeBinary, String, false
from sqlalchemy.orm import Mapped, mapped_column

from opensci.db.base import Base, UTCDateTime, utcnow


class ObjectState(StrEnum):
    ok = "ok"
    damaged = "damaged"  # quarantined: a chunk failed its checksum; refused on read until repaired


class StoragePack(Base):
    """One append-only pack file, `HOME/blobs/packs/<id>.pack`, written by exactly one writer."""

    __tablename__ = "storage_packs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Bytes of the file that are durable (fsynced) and may be referenced by chunk rows.
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    # Bytes of records still referenced by the index, as of the last garbage collection.
    live_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # A sealed pack is never appended to again; only sealed packs are compacted.
    sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StorageChunk(Base):
    """Where the one stored copy of a chunk lives."""

    __tablename__ = "storage_chunks"

    # The chunk's name: the BLAKE3 of its bytes (the sha256 for chunks stored before BLAKE3 names).
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    pack_id: Mapped[str] = mapped_column(ForeignKey("storage_packs.id", ondelete="RESTRICT"), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)  # of the record (header first) in the pack
    length: Mapped[int] = mapped_column(Integer)  # of the chunk's bytes
    damaged: Mapped[bool] = mapped_column(Boolean, default=False)
    # Named by its sha256, by a server from before BLAKE3 names. Such a chunk of a one-chunk file has the
    # file's Git LFS oid as its name, which others may know without ever having had the bytes: it serves
    # the objects that hold it, but no upload may name it (to an uploader it is missing).
    legacy: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # xxh3-64 of the chunk's bytes: the fast check every read makes (~14 GB/s a core). The name is
    # checked when a chunk is written and by the scrub. Null for chunks indexed by `reindex`: reads
    # check those against their name.
    check: Mapped[bytes | None] = mapped_column(LargeBinary(8), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Last time an upload or a manifest relied on this chunk: garbage collection spares chunks
    # touched within the grace period, so the chunks of an upload in flight are never collected.
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StorageObject(Base):
    """A stored file: its sha256 (the Git LFS oid), its size, and the manifest of its chunks."""

    __tablename__ = "storage_objects"

    oid: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_count: Mapped[int] = mapped_column(Integer)
    # Concatenated entries of 36 bytes: the chunk's name (digest), then its length (4 bytes, big-endian).
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    # The sha256 state at chunk boundaries about every 4 MiB (index.CHECKPOINT entries), so an upload
    # that starts like this object hashes only from its first change on (see readback.Base); None for
    # objects stored by a server that could not save states, or written whole (`BlobStore.put`).
    checkpoints: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    state: Mapped[ObjectState] = mapped_column(String(8), default=ObjectState.ok)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Last upload or commit of this content: young objects survive garbage collection (grace period).
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RepoObject(Base):
    """A repository holds this object: it was uploaded to it, or committed into it as a Git LFS pointer.

    Downloads through a repository are allowed only for the objects it holds, so knowing an oid never
    opens another repository's content; an owner's quota counts the distinct objects its repositories
    hold. Removed with the repository; garbage collection drops rows whose object it collected.
    """

    __tablename__ = "storage_repo_objects"

    repo_id: Mapped[str] = mapped_column(ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True)
    oid: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # When the repository last took the object: its upload, or a commit pointing at it. Garbage
    # collection releases holds that no revision references once this is older than its grace period.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StorageQuota(Base):
    """An operator's quota for one user or organization (else `storage_default_quota_bytes` applies)."""

    __tablename__ = "storage_quotas"

    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True)
    limit_bytes: Mapped[int] = mapped_column(BigInteger)  # 0: unlimited
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoragePending(Base):
    """Bytes of new chunks an owner's uploads stored that no file of the owner holds yet (counted against
    its quota while it has one, so that chunks alone cannot fill the disk). Files the owner comes to hold
    settle them; they lapse after the garbage collector's grace period, when such chunks are collected."""

    __tablename__ = "storage_pending"

    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
