"""REST routes for storage quotas: `/api/v1/owners/{name}/storage` (use and limit of a user or an org)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from opensci.accounts import service as accounts
from opensci.accounts.models import Owner
from opensci.accounts.permissions import Actor, owner_role
from opensci.deps import ActorDep, SessionDep, SettingsDep, UserActorDep
from opensci.errors import Forbidden, Unauthorized
from opensci.settings import Settings
from opensci.storage import quota

router = APIRouter(prefix="/api/v1/owners", tags=["storage"])


class StorageUsageOut(BaseModel):
    owner: str
    used_bytes: int = Field(
        description="Bytes of the distinct blob store objects the owner's repositories hold."
    )
    limit_bytes: int | None = Field(description="The quota in bytes; null means unlimited.")
    available_bytes: int | None = Field(
        description="What the quota still holds: the limit less what is used and what unfinished uploads "
        "hold; null when unlimited."
    )
    objects: int
    pending_bytes: int = Field(
        0,
        description="Bytes of chunks the owner's unfinished uploads stored, counted against the quota until "
        "a file holds them (they stop counting an hour after the owner's last chunk batch).",
    )


class QuotaIn(BaseModel):
    limit_bytes: int | None = Field(
        ge=0, description="Bytes the owner may hold; 0 means unlimited; null returns to the server default."
    )


def may_see_usage(actor: Actor, owner: Owner) -> bool:
    """The owner itself, members of an organization, and site admins see its storage use."""
    return actor.is_admin or owner_role(actor, owner.id) is not None


def usage_out(session: Session, settings: Settings, owner: Owner) -> StorageUsageOut:
    u = quota.usage(session, settings, owner.id)
    return StorageUsageOut(
        owner=owner.name,
        used_bytes=u.used_bytes,
        limit_bytes=u.limit_bytes,
        available_bytes=u.available_bytes,
        objects=u.objects,
        pending_bytes=u.pending_bytes,
    )


@router.get("/{name}/storage", response_model=StorageUsageOut)
def get_usage(name: str, session: SessionDep, settings: SettingsDep, actor: ActorDep) -> StorageUsageOut:
    """Storage use and quota of a user or an organization (for itself, its members and site admins)."""
    owner = accounts.get_owner(session, name)
    if not may_see_usage(actor, owner):
        if actor.user is None:
            raise Unauthorized("log in to see storage use", code="login_required")
        raise Forbidden(f"only {owner.name} and its members see its storage use")
    return usage_out(session, settings, owner)


@router.put("/{name}/storage", response_model=StorageUsageOut)
def set_quota(
    name: str, body: QuotaIn, session: SessionDep, settings: SettingsDep, actor: UserActorDep
) -> StorageUsageOut:
    """Set an owner's quota (site admins only)."""
    owner = accounts.get_owner(session, name)
    if not actor.is_admin or actor.scope != "write":
        raise Forbidden("only site admins (with a write token) set quotas")
    quota.set_limit(session, owner, body.limit_bytes)
    session.commit()
    return usage_out(session, settings, owner)
