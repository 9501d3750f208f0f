"""REST routes of the accounts domain: registration, tokens, profiles, organizations, avatars."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from opensci.accounts import service
from opensci.accounts.avatars import avatar_svg
from opensci.accounts.models import Owner, OwnerKind, Token, User
from opensci.accounts.permissions import Actor
from opensci.accounts.schemas import (
    LoginIn,
    MemberOut,
    MemberSet,
    MeOut,
    OrgBrief,
    OrgCreate,
    OrgOut,
    ProfileUpdate,
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserOut,
)
from opensci.deps import ActorDep, SessionDep, SettingsDep, UserActorDep
from opensci.errors import Forbidden

router = APIRouter(prefix="/api/v1", tags=["accounts"])
avatars = APIRouter(tags=["accounts"])


def user_out(user: User) -> UserOut:
    o = user.owner
    return UserOut(
        name=o.name,
        display_name=user.display_name,
        description=o.description,
        affiliation=user.affiliation,
        orcid=user.orcid,
        avatar_url=f"/avatars/{o.name}.svg",
        created_at=o.created_at,
    )


def me_out(session: Session, actor: Actor) -> MeOut:
    assert actor.user is not None
    orgs = [
        OrgBrief(name=o.name, display_name=o.display_name or o.name, role=r)
        for o, r in service.list_user_orgs(session, actor.user)
    ]
    return MeOut(
        **user_out(actor.user).model_dump(),
        email=actor.user.email,
        is_admin=actor.user.is_admin,
        orgs=orgs,
        token_scope=actor.scope,
    )


def org_out(org: Owner) -> OrgOut:
    return OrgOut(
        name=org.name,
        display_name=org.display_name or org.name,
        description=org.description,
        avatar_url=f"/avatars/{org.name}.svg",
        created_at=org.created_at,
    )


def token_out(t: Token) -> TokenOut:
    return TokenOut(
        id=t.id,
        name=t.name,
        scope=t.scope,
        prefix=t.prefix,
        created_at=t.created_at,
        last_used_at=t.last_used_at,
    )


@router.post("/users", status_code=201, response_model=UserOut)
def register(body: UserCreate, session: SessionDep, settings: SettingsDep, actor: ActorDep) -> UserOut:
    if not settings.open_registration and not actor.is_admin:
        raise Forbidden(
            "registration is closed on this server; ask an administrator", code="registration_closed"
        )
    user = service.create_user(
        session, body.name, body.password, email=body.email, display_name=body.display_name
    )
    session.commit()
    return user_out(user)


@router.post("/auth/token", status_code=201, response_model=TokenCreated)
def login_for_token(body: LoginIn, session: SessionDep) -> TokenCreated:
    """Exchange a user name and password for a new API token (used by `opensci login`)."""
    user = service.authenticate(session, body.name, body.password)
    token, secret = service.issue_token(session, user, body.token_name, body.scope)
    session.commit()
    return TokenCreated(**token_out(token).model_dump(), token=secret)


@router.get("/user", response_model=MeOut)
def whoami(session: SessionDep, actor: UserActorDep) -> MeOut:
    return me_out(session, actor)


@router.patch("/user", response_model=MeOut)
def update_me(body: ProfileUpdate, session: SessionDep, actor: UserActorDep) -> MeOut:
    service.update_profile(actor, session, **body.model_dump(exclude_unset=True))
    session.commit()
    return me_out(session, actor)


@router.get("/user/tokens", response_model=list[TokenOut])
def list_tokens(session: SessionDep, actor: UserActorDep) -> list[TokenOut]:
    return [token_out(t) for t in service.list_tokens(actor, session)]


@router.post("/user/tokens", status_code=201, response_model=TokenCreated)
def create_token(body: TokenCreate, session: SessionDep, actor: UserActorDep) -> TokenCreated:
    token, secret = service.create_token(actor, session, body.name, body.scope)
    session.commit()
    return TokenCreated(**token_out(token).model_dump(), token=secret)


@router.delete("/user/tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, session: SessionDep, actor: UserActorDep) -> Response:
    service.revoke_token(actor, session, token_id)
    session.commit()
    return Response(status_code=204)


@router.get("/users/{name}", response_model=UserOut)
def get_user(name: str, session: SessionDep) -> UserOut:
    return user_out(service.get_user(session, name))


@router.post("/orgs", status_code=201, response_model=OrgOut)
def create_org(body: OrgCreate, session: SessionDep, actor: UserActorDep) -> OrgOut:
    org = service.create_org(
        actor, session, body.name, display_name=body.display_name, description=body.description
    )
    session.commit()
    return org_out(org)


@router.get("/orgs/{name}", response_model=OrgOut)
def get_org(name: str, session: SessionDep) -> OrgOut:
    return org_out(service.get_org(session, name))


@router.get("/orgs/{name}/members", response_model=list[MemberOut])
def list_members(name: str, session: SessionDep) -> list[MemberOut]:
    org = service.get_org(session, name)
    return [
        MemberOut(name=u.name, display_name=u.display_name, role=r)
        for u, r in service.list_members(session, org)
    ]


@router.put("/orgs/{name}/members/{user}", response_model=MemberOut)
def set_member(name: str, user: str, body: MemberSet, session: SessionDep, actor: UserActorDep) -> MemberOut:
    org = service.get_org(session, name)
    member = service.get_user(session, user)
    m = service.set_member(actor, session, org, member, body.role)
    session.commit()
    return MemberOut(name=member.name, display_name=member.display_name, role=m.role)


@router.delete("/orgs/{name}/members/{user}", status_code=204)
def remove_member(name: str, user: str, session: SessionDep, actor: UserActorDep) -> Response:
    org = service.get_org(session, name)
    service.remove_member(actor, session, org, service.get_user(session, user))
    session.commit()
    return Response(status_code=204)


@avatars.get("/avatars/{name}.svg", include_in_schema=False)
def avatar(name: str, session: SessionDep) -> Response:
    owner = service.get_owner(session, name)
    svg = avatar_svg(owner.display_name, owner.name)
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=3600"})


__all__ = ["OwnerKind", "avatars", "router"]
