"""The one permission function, `can(actor, action, resource)`, called by every door.

Actions on a repository: `read`, `write` (push, commit, refs), `admin` (settings, visibility, delete,
force-push or delete the default branch). Actions on an owner: `read`, `create_repo`, `admin`.
Site administrators may do everything. A token with `read` scope limits its holder to reading.
Callers turn a failed `read` into "not found", never "forbidden".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.orm import Session

from opensci.accounts.models import Membership, OwnerKind, Role, Scope, User

if TYPE_CHECKING:
    from opensci.accounts.models import Owner
    from opensci.repos.models import Repository

Action = Literal["read", "write", "admin", "create_repo"]
WRITE_ACTIONS = {"write", "admin", "create_repo"}


@dataclass
class Actor:
    """Who is acting: a user (or nobody) and the scope of the credential they used."""

    user: User | None = None
    scope: Scope = Scope.write
    # The operator at the server's shell (`opensci user create` …): may do everything.
    system: bool = False
    # org id → role, loaded once per request.
    roles: dict[str, Role] = field(default_factory=dict)

    @property
    def is_anonymous(self) -> bool:
        return self.user is None and not self.system

    @property
    def is_admin(self) -> bool:
        return self.system or (self.user is not None and self.user.is_admin)

    @property
    def name(self) -> str | None:
        return self.user.name if self.user else None

    @classmethod
    def anonymous(cls) -> Actor:
        return cls()

    @classmethod
    def operator(cls, user: User | None = None) -> Actor:
        return cls(user=user, system=True)

    @classmethod
    def for_user(cls, session: Session, user: User, scope: Scope = Scope.write) -> Actor:
        rows = session.execute(
            select(Membership.org_id, Membership.role).where(Membership.user_id == user.id)
        )
        return cls(user=user, scope=scope, roles={org_id: Role(role) for org_id, role in rows})


def owner_role(actor: Actor, owner_id: str) -> Role | None:
    """The actor's role over everything an owner holds: `owner` for oneself, the membership role in an org."""
    if actor.user is None:
        return None
    if actor.user.id == owner_id:
        return Role.owner
    return actor.roles.get(owner_id)


def can(actor: Actor, action: Action, resource: Repository | Owner) -> bool:
    from opensci.accounts.models import Owner

    if action in WRITE_ACTIONS and actor.scope != Scope.write:
        return False
    if actor.is_admin:
        return True
    if isinstance(resource, Owner):
        role = owner_role(actor, resource.id)
        if action == "read":
            return True
        if action == "create_repo":
            return role is not None and role.rank >= Role.write.rank
        return role is not None and role.rank >= Role.admin.rank
    role = owner_role(actor, resource.owner_id)
    if action == "read":
        return not resource.private or role is not None
    if action == "write":
        return role is not None and role.rank >= Role.write.rank
    return role is not None and role.rank >= Role.admin.rank


def readable_repos_clause(actor: Actor) -> ColumnElement[bool]:
    """The SQL form of `can(actor, "read", repo)`, for listings and search. Must agree with `can`."""
    from opensci.repos.models import Repository

    if actor.is_admin:
        return true()
    owners = list(actor.roles) + ([actor.user.id] if actor.user else [])
    return or_(Repository.private.is_(False), Repository.owner_id.in_(owners) if owners else false())


def is_org(owner: Owner) -> bool:
    return owner.kind == OwnerKind.org
