"""Quotas per owner: the logical bytes of the distinct blob store objects its repositories hold.

An object shared by several of an owner's repositories counts once; the same object held by two owners
counts for each (deduplication is the platform's saving, not a way around another owner's quota).

Chunks uploaded for a file come before the file: while an owner has a quota, the bytes of new chunks its
uploads stored and no file of its holds yet count too (`StoragePending`), so that chunk batches alone
cannot fill the disk. A file the owner comes to hold settles them (by its size: chunks the owner did not
upload itself are not told apart); they lapse an hour after the owner's last batch (or the garbage
collector's grace period, if shorter), and garbage collection removes the chunks no file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opensci.accounts.models import Owner
from opensci.db.base import utcnow
from opensci.errors import InvalidInput
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage.errors import QuotaExceeded
from opensci.storage.models import RepoObject, StoragePending, StorageQuota


@dataclass(frozen=True)
class Usage:
    used_bytes: int
    limit_bytes: int | None  # None: unlimited
    objects: int
    pending_bytes: int = 0  # of unfinished uploads (counted only while there is a limit)

    @property
    def available_bytes(self) -> int | None:
        if self.limit_bytes is None:
            return None
        return max(0, self.limit_bytes - self.used_bytes - self.pending_bytes)


def _held(owner_id: str):  # type: ignore[no-untyped-def]
    """One row per distinct object held by any repository of the owner."""
    return (
        select(RepoObject.oid, func.max(RepoObject.size).label("size"))
        .join(Repository, Repository.id == RepoObject.repo_id)
        .where(Repository.owner_id == owner_id)
        .group_by(RepoObject.oid)
        .subquery()
    )


def usage(session: Session, settings: Settings, owner_id: str) -> Usage:
    held = _held(owner_id)
    used, count = session.execute(select(func.coalesce(func.sum(held.c.size), 0), func.count())).one()
    limit = limit_for(session, settings, owner_id)
    waiting = pending(session, settings, owner_id) if limit is not None else 0
    return Usage(int(used), limit, int(count), waiting)


def limit_for(session: Session, settings: Settings, owner_id: str) -> int | None:
    """The owner's quota in bytes, or None for unlimited."""
    row = session.get(StorageQuota, owner_id)
    limit = row.limit_bytes if row is not None else settings.storage_default_quota_bytes
    return limit or None


def owner_holds(session: Session, owner_id: str, oid: str) -> bool:
    return (
        session.scalar(
            select(RepoObject.oid)
            .join(Repository, Repository.id == RepoObject.repo_id)
            .where(Repository.owner_id == owner_id, RepoObject.oid == oid)
            .limit(1)
        )
        is not None
    )


def check(session: Session, settings: Settings, owner: Owner, extra_bytes: int) -> None:
    """Raise QuotaExceeded if `extra_bytes` more would take the owner past its quota."""
    limit = limit_for(session, settings, owner.id)
    if limit is None or extra_bytes <= 0:
        return
    used = usage(session, settings, owner.id).used_bytes
    if used + extra_bytes > limit:
        raise QuotaExceeded(
            f"{owner.name} uses {used:,} of its {limit:,}-byte storage quota; {extra_bytes:,} more bytes "
            "do not fit. Delete files or repositories, or ask the operator for a larger quota"
        )


def pending(session: Session, settings: Settings, owner_id: str) -> int:
    """Bytes of new chunks the owner's uploads stored that no file of its holds yet (and not lapsed)."""
    row = session.get(StoragePending, owner_id, populate_existing=True)
    if row is None or row.updated_at < _lapsed(settings):
        return 0
    return row.size


# Chunks of an upload that never became a file stop counting after this long (or the gc grace period if
# it is shorter): an upload that failed, over the quota say, does not keep its owner from the next one
# for a day; garbage collection removes the chunks themselves.
PENDING_SECONDS = 3600


def _lapsed(settings: Settings):  # type: ignore[no-untyped-def]
    return utcnow() - timedelta(seconds=min(PENDING_SECONDS, settings.storage_gc_grace_seconds))


def reserve_chunks(session: Session, settings: Settings, owner: Owner, new_bytes: int) -> None:
    """Count `new_bytes` of chunks about to be stored for the owner's uploads, if they fit its quota with
    what it holds and its unfinished uploads; else raise QuotaExceeded. The check and the count are one
    conditional update, so batches arriving at once cannot together pass the quota. Commits."""
    limit = limit_for(session, settings, owner.id)
    if limit is None or new_bytes <= 0:
        return
    used = usage(session, settings, owner.id).used_bytes
    now, lapsed = utcnow(), _lapsed(settings)
    if session.get(StoragePending, owner.id) is None:
        try:
            with session.begin_nested():
                session.add(StoragePending(owner_id=owner.id, size=0, updated_at=now))
        except IntegrityError:  # another batch of the owner's made it first
            pass
    current = case((StoragePending.updated_at < lapsed, 0), else_=StoragePending.size)
    counted = session.execute(
        update(StoragePending)
        .where(StoragePending.owner_id == owner.id, current + new_bytes + used <= limit)
        .values(size=current + new_bytes, updated_at=now)
    )
    session.commit()
    if counted.rowcount != 1:  # type: ignore[attr-defined]
        waiting = pending(session, settings, owner.id)
        raise QuotaExceeded(
            f"{owner.name} uses {used:,} of its {limit:,}-byte storage quota and its unfinished uploads hold "
            f"{waiting:,} bytes more; these {new_bytes:,} bytes of chunks do not fit. Nothing of this batch "
            "was stored; unfinished uploads stop counting an hour after their last chunk"
        )


def release_chunks(session: Session, owner_id: str, size: int) -> None:
    """Count `size` fewer bytes of unfinished uploads (reserved, then not stored). Commits."""
    if size > 0:
        settle_pending(session, owner_id, size)
        session.commit()


def settle_pending(session: Session, owner_id: str, size: int) -> None:
    """The owner now holds a new file of `size` bytes: its chunks are no longer pending. Flushes only."""
    session.execute(
        update(StoragePending)
        .where(StoragePending.owner_id == owner_id, StoragePending.size > 0)
        .values(size=case((StoragePending.size > size, StoragePending.size - size), else_=0))
    )


def set_limit(session: Session, owner: Owner, limit_bytes: int | None) -> None:
    """Set the owner's quota (0: unlimited); None returns it to the server's default."""
    row = session.get(StorageQuota, owner.id)
    if limit_bytes is None:
        if row is not None:
            session.delete(row)
        return
    if limit_bytes < 0:
        raise InvalidInput("a quota is a number of bytes, 0 or more (0: unlimited)", code="invalid_quota")
    if row is None:
        session.add(StorageQuota(owner_id=owner.id, limit_bytes=limit_bytes, updated_at=utcnow()))
    else:
        row.limit_bytes, row.updated_at = limit_bytes, utcnow()
