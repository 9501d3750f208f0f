"""FastAPI dependencies shared by every domain's routes, as annotated aliases (SessionDep, ActorDep…)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from pydantic import AfterValidator
from sqlalchemy.orm import Session

from opensci.accounts import service as accounts
from opensci.accounts.models import User
from opensci.accounts.permissions import Actor
from opensci.errors import Forbidden, Unauthorized
from opensci.repos.gitstore import GitStore
from opensci.settings import Settings
from opensci.storage.store import BlobStore

SESSION_COOKIE = "opensci_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

# Integer ids (the `id` column of a table keyed by a number) lie in 1..MAX_ROW_ID: PostgreSQL's
# `integer`. SQLite's are wider, but one bound keeps both databases answering alike. A number outside
# names no row, and must not reach the database driver, which fails on it (OverflowError on SQLite,
# "integer out of range" on PostgreSQL).
MAX_ROW_ID = 2**31 - 1


def is_row_id(value: int) -> bool:
    """Whether `value` can be the id of a row. A route answers an id in its path that cannot be with
    "not found", as it does any unknown id, without asking the database."""
    return 1 <= value <= MAX_ROW_ID


def _id_bound(value: int | None) -> int | None:
    if value is None or value > MAX_ROW_ID:
        return None  # every id is smaller: no bound
    return max(value, 0)  # no id is smaller than 1: `id < 0` selects nothing, as `id < value` would


# A query parameter that bounds ids from above (`before=` paging: "ids smaller than this"), brought into
# the range the database can compare with, without changing which rows it selects.
IdBound = Annotated[int | None, AfterValidator(_id_bound)]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.db.session() as session:
        yield session


def get_store(request: Request) -> GitStore:
    return request.app.state.store


def get_blobs(request: Request) -> BlobStore:
    return request.app.state.blobs


def credentials(request: Request) -> tuple[str, str] | None:
    """The token from `Authorization: Bearer T`, or from HTTP Basic (any user name, the token as password)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value.strip():
        return "bearer", value.strip()
    if scheme == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise Unauthorized("malformed Basic credentials", code="invalid_token") from exc
        user, _, password = decoded.partition(":")
        return "basic", password or user
    return None


def resolve_actor(request: Request, session: Session) -> Actor:
    """Who is calling: a token holder, a logged-in browser, or nobody. Cached on the request."""
    cached = getattr(request.state, "actor", None)
    if cached is not None:
        return cached
    creds = credentials(request)
    actor = Actor.anonymous()
    if creds is not None:
        actor = accounts.actor_from_token(session, creds[1])
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        ws = accounts.get_web_session(session, cookie) if cookie else None
        if ws is not None:
            user = session.get(User, ws.user_id)
            if user is not None:
                actor = Actor.for_user(session, user)
                request.state.web_session = ws
                if (
                    request.url.path.startswith("/api/")
                    and request.method not in SAFE_METHODS
                    and request.headers.get("x-csrf-token") != ws.csrf_token
                ):
                    raise Forbidden(
                        "missing or wrong X-CSRF-Token header for a cookie-authenticated request",
                        code="csrf_failed",
                    )
    request.state.actor = actor
    return actor


def get_actor(request: Request, session: Annotated[Session, Depends(get_session)]) -> Actor:
    return resolve_actor(request, session)


def get_user_actor(actor: Annotated[Actor, Depends(get_actor)]) -> Actor:
    if actor.user is None:
        raise Unauthorized("log in or send an API token", code="login_required")
    return actor


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[GitStore, Depends(get_store)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
ActorDep = Annotated[Actor, Depends(get_actor)]
UserActorDep = Annotated[Actor, Depends(get_user_actor)]
