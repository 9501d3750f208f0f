"""Wire shapes of the accounts domain."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from opensci.accounts.models import Role, Scope


class UserCreate(BaseModel):
    name: str
    password: str
    email: str = ""
    display_name: str = ""


class LoginIn(BaseModel):
    name: str
    password: str
    token_name: str = Field("cli", description="Name of the API token to create.")
    scope: Scope = Scope.write


class ProfileUpdate(BaseModel):
    display_name: str | None = None
    email: str | None = None
    affiliation: str | None = None
    orcid: str | None = None
    description: str | None = None


class OrgBrief(BaseModel):
    name: str
    display_name: str
    role: Role


class UserOut(BaseModel):
    name: str
    display_name: str
    kind: str = "user"
    description: str
    affiliation: str
    orcid: str
    avatar_url: str
    created_at: datetime


class MeOut(UserOut):
    email: str
    is_admin: bool
    orgs: list[OrgBrief]
    token_scope: Scope


class TokenCreate(BaseModel):
    name: str = "token"
    scope: Scope = Scope.read


class TokenOut(BaseModel):
    id: str
    name: str
    scope: Scope
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself. It is shown only this once.")


class OrgCreate(BaseModel):
    name: str
    display_name: str = ""
    description: str = ""


class OrgOut(BaseModel):
    name: str
    display_name: str
    kind: str = "org"
    description: str
    avatar_url: str
    created_at: datetime


class MemberOut(BaseModel):
    name: str
    display_name: str
    role: Role


class MemberSet(BaseModel):
    role: Role
