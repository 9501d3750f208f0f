"""Quotas per owner: the logical bytes of the distinct blob store objects its repositories hold.

An object shared by several of an owner's repositories counts once; the same object held by two owners
counts for each (deduplication is the platform's saving, not a way around another owner's quota).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opensci.accounts.models import Owner
from opensci.db.base import utcnow
from opensci.errors import InvalidInput
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage.errors import QuotaExceeded
from opensci.storage.models import RepoObject, StorageQuota


@dataclass(frozen=True)
class Usage:
    used_bytes: int
    limit_bytes: int | None  # None: unlimited
    objects: int

    @property
    def available_bytes(self) -> int | None:
        return None if self.limit_bytes is None else max(0, self.limit_bytes - self.used_bytes)


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
    return Usage(int(used), limit_for(session, settings, owner_id), int(count))


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
