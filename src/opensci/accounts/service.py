"""Operations on users, organizations, memberships, tokens and web sessions.

Every function takes the acting identity first (where one acts), then a session; callers commit.
"""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opensci.accounts.models import Membership, Owner, OwnerKind, Role, Scope, Token, User, WebSession
from opensci.accounts.permissions import Actor, can
from opensci.accounts.security import hash_password, new_secret, new_token, sha256_hex, verify_password
from opensci.db.base import utcnow
from opensci.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from opensci.validation import check_orcid, check_owner_name, is_plain_text

MIN_PASSWORD = 8
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


# --- owners -------------------------------------------------------------------------------------------


def get_owner(session: Session, name: str) -> Owner:
    owner = None
    if is_plain_text(name):  # else it names nobody (and PostgreSQL could not even compare a NUL)
        owner = session.scalar(select(Owner).where(Owner.name_key == name.lower()))
    if owner is None:
        raise NotFound(f"no user or organization named {name!r}", code="owner_not_found")
    return owner


def get_user(session: Session, name: str) -> User:
    owner = get_owner(session, name)
    if owner.user is None:
        raise NotFound(f"no user named {name!r}", code="user_not_found")
    return owner.user


def _new_owner(session: Session, name: str, kind: OwnerKind, display_name: str) -> Owner:
    check_owner_name(name)
    if session.scalar(select(Owner.id).where(Owner.name_key == name.lower())):
        raise Conflict(f"the name {name!r} is taken", code="name_taken")
    owner = Owner(name=name, name_key=name.lower(), kind=kind, display_name=display_name.strip()[:200])
    session.add(owner)
    return owner


def _flush_unique(session: Session, name: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent creation of the same name
        session.rollback()
        raise Conflict(f"the name {name!r} is taken", code="name_taken") from exc


# --- users ---------------------------------------------------------------------------------------------


def create_user(
    session: Session,
    name: str,
    password: str,
    *,
    email: str = "",
    display_name: str = "",
    is_admin: bool = False,
) -> User:
    """Create an account. Open registration is checked by the caller (it is a server policy)."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD} characters", code="weak_password")
    email = email.strip()
    if email and not _EMAIL.match(email):
        raise InvalidInput(f"invalid email address {email!r}", code="invalid_email")
    owner = _new_owner(session, name, OwnerKind.user, display_name)
    _flush_unique(session, name)
    user = User(id=owner.id, email=email, password_hash=hash_password(password), is_admin=is_admin)
    user.owner = owner
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, name: str, password: str) -> User:
    owner = (
        session.scalar(select(Owner).where(Owner.name_key == name.lower(), Owner.kind == OwnerKind.user))
        if is_plain_text(name)
        else None
    )
    if owner is None or owner.user is None or not verify_password(owner.user.password_hash, password):
        raise Unauthorized("wrong user name or password", code="bad_credentials")
    return owner.user


def update_profile(
    actor: Actor,
    session: Session,
    *,
    display_name: str | None = None,
    email: str | None = None,
    affiliation: str | None = None,
    orcid: str | None = None,
    description: str | None = None,
) -> User:
    user = _require_user(actor)
    if actor.scope != Scope.write:
        raise Forbidden("a read-only token cannot change the profile", code="insufficient_scope")
    if display_name is not None:
        user.owner.display_name = display_name.strip()[:200]
    if email is not None:
        email = email.strip()
        if email and not _EMAIL.match(email):
            raise InvalidInput(f"invalid email address {email!r}", code="invalid_email")
        user.email = email
    if affiliation is not None:
        user.affiliation = affiliation.strip()[:200]
    if orcid is not None:
        user.orcid = check_orcid(orcid)
    if description is not None:
        user.owner.description = description.strip()[:2000]
    session.flush()
    return user


def change_password(actor: Actor, session: Session, old: str, new: str) -> None:
    user = _require_user(actor)
    if not verify_password(user.password_hash, old):
        raise Forbidden("the current password is wrong", code="bad_credentials")
    if len(new) < MIN_PASSWORD:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD} characters", code="weak_password")
    user.password_hash = hash_password(new)
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))
    session.flush()


def _require_user(actor: Actor) -> User:
    if actor.user is None:
        raise Unauthorized("log in or send an API token", code="login_required")
    return actor.user


# --- tokens --------------------------------------------------------------------------------------------


def create_token(
    actor: Actor, session: Session, name: str, scope: Scope | str = Scope.read
) -> tuple[Token, str]:
    """Create an API token for the acting user. Returns the row and the token, which is never shown again."""
    user = _require_user(actor)
    if actor.scope != Scope.write:
        raise Forbidden("a read-only token cannot create tokens", code="insufficient_scope")
    return issue_token(session, user, name, scope)


def issue_token(
    session: Session, user: User, name: str, scope: Scope | str = Scope.read
) -> tuple[Token, str]:
    """Operator path (`opensci token create`): a token for any user."""
    try:
        scope = Scope(scope)
    except ValueError as exc:
        raise InvalidInput(f"scope must be 'read' or 'write', not {scope!r}", code="invalid_scope") from exc
    name = (name or "").strip() or "token"
    if len(name) > 100:
        raise InvalidInput("a token name has at most 100 characters")
    secret = new_token()
    token = Token(user_id=user.id, name=name, scope=scope, token_hash=sha256_hex(secret), prefix=secret[:12])
    session.add(token)
    session.flush()
    return token, secret


def list_tokens(actor: Actor, session: Session) -> list[Token]:
    user = _require_user(actor)
    return list(session.scalars(select(Token).where(Token.user_id == user.id).order_by(Token.created_at)))


def revoke_token(actor: Actor, session: Session, token_id: str) -> None:
    user = _require_user(actor)
    if actor.scope != Scope.write:
        raise Forbidden("a read-only token cannot revoke tokens", code="insufficient_scope")
    token = session.get(Token, token_id)
    if token is None or token.user_id != user.id:
        raise NotFound(f"no token with id {token_id!r}", code="token_not_found")
    session.delete(token)
    session.flush()


def actor_from_token(session: Session, secret: str) -> Actor:
    token = session.scalar(select(Token).where(Token.token_hash == sha256_hex(secret)))
    if token is None:
        raise Unauthorized("invalid or revoked API token", code="invalid_token")
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=5):
        token.last_used_at = now  # coarse, so reads do not write on every request
        session.commit()
    user = session.get(User, token.user_id)
    assert user is not None
    return Actor.for_user(session, user, Scope(token.scope))


# --- web sessions --------------------------------------------------------------------------------------


def create_web_session(session: Session, user: User, days: int) -> tuple[WebSession, str]:
    secret = new_secret()
    ws = WebSession(
        id_hash=sha256_hex(secret),
        user_id=user.id,
        csrf_token=new_secret(),
        expires_at=utcnow() + timedelta(days=days),
    )
    session.add(ws)
    session.flush()
    return ws, secret


def get_web_session(session: Session, secret: str) -> WebSession | None:
    ws = session.get(WebSession, sha256_hex(secret))
    if ws is None or ws.expires_at < utcnow():
        return None
    return ws


def delete_web_session(session: Session, secret: str) -> None:
    session.execute(delete(WebSession).where(WebSession.id_hash == sha256_hex(secret)))
    session.flush()


# --- organizations -------------------------------------------------------------------------------------


def create_org(
    actor: Actor, session: Session, name: str, *, display_name: str = "", description: str = ""
) -> Owner:
    """Create an organization; its creator becomes its owner."""
    user = _require_user(actor)
    if actor.scope != Scope.write:
        raise Forbidden("a read-only token cannot create organizations", code="insufficient_scope")
    org = _new_owner(session, name, OwnerKind.org, display_name)
    org.description = description.strip()[:2000]
    _flush_unique(session, name)
    session.add(Membership(org_id=org.id, user_id=user.id, role=Role.owner))
    session.flush()
    actor.roles[org.id] = Role.owner
    return org


def get_org(session: Session, name: str) -> Owner:
    owner = get_owner(session, name)
    if owner.kind != OwnerKind.org:
        raise NotFound(f"no organization named {name!r}", code="org_not_found")
    return owner


def list_members(session: Session, org: Owner) -> list[tuple[User, Role]]:
    rows = session.execute(
        select(User, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .join(Owner, Owner.id == User.id)
        .where(Membership.org_id == org.id)
        .order_by(Owner.name_key)
    )
    return [(u, Role(r)) for u, r in rows]


def list_user_orgs(session: Session, user: User) -> list[tuple[Owner, Role]]:
    rows = session.execute(
        select(Owner, Membership.role)
        .join(Membership, Membership.org_id == Owner.id)
        .where(Membership.user_id == user.id)
        .order_by(Owner.name_key)
    )
    return [(o, Role(r)) for o, r in rows]


def set_member(actor: Actor, session: Session, org: Owner, user: User, role: Role | str) -> Membership:
    """Add a member or change a member's role. Needs org admin; only owners grant or remove `owner`."""
    try:
        role = Role(role)
    except ValueError as exc:
        raise InvalidInput(
            f"role must be one of {', '.join(Role)}, not {role!r}", code="invalid_role"
        ) from exc
    _require_org_admin(actor, org)
    current = session.scalar(
        select(Membership).where(Membership.org_id == org.id, Membership.user_id == user.id)
    )
    if (role == Role.owner or (current and current.role == Role.owner)) and not _is_org_owner(actor, org):
        raise Forbidden(
            "only an owner of the organization can grant or change the owner role", code="forbidden"
        )
    if current is None:
        current = Membership(org_id=org.id, user_id=user.id, role=role)
        session.add(current)
    else:
        if current.role == Role.owner and role != Role.owner:
            _check_not_last_owner(session, org)
        current.role = role
    session.flush()
    return current


def remove_member(actor: Actor, session: Session, org: Owner, user: User) -> None:
    current = session.scalar(
        select(Membership).where(Membership.org_id == org.id, Membership.user_id == user.id)
    )
    leaving = actor.user is not None and actor.user.id == user.id
    if not leaving:
        _require_org_admin(actor, org)
    elif actor.scope != Scope.write:
        raise Forbidden("a read-only token cannot leave an organization", code="insufficient_scope")
    if current is None:
        raise NotFound(f"{user.name} is not a member of {org.name}", code="member_not_found")
    if current.role == Role.owner:
        if not leaving and not _is_org_owner(actor, org):
            raise Forbidden("only an owner of the organization can remove an owner", code="forbidden")
        _check_not_last_owner(session, org)
    session.delete(current)
    session.flush()


def _is_org_owner(actor: Actor, org: Owner) -> bool:
    return actor.is_admin or actor.roles.get(org.id) == Role.owner


def _require_org_admin(actor: Actor, org: Owner) -> None:
    if actor.is_anonymous:
        raise Unauthorized("log in or send an API token", code="login_required")
    if not can(actor, "admin", org):
        raise Forbidden(f"you are not an admin of {org.name}", code="forbidden")


def _check_not_last_owner(session: Session, org: Owner) -> None:
    owners = session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.org_id == org.id, Membership.role == Role.owner)
    )
    if (owners or 0) <= 1:
        raise Conflict(f"{org.name} must keep at least one owner", code="last_owner")
