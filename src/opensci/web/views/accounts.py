"""Pages of the accounts domain: log in, log out, register, and the user's settings (profile, password,
tokens)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from opensci.accounts import service as accounts
from opensci.accounts.models import Scope
from opensci.accounts.permissions import Actor
from opensci.accounts.security import sha256_hex
from opensci.deps import ActorDep, SessionDep, SettingsDep
from opensci.errors import InvalidInput, NotFound, OpenSciError, Unauthorized
from opensci.settings import Settings
from opensci.web.render import render
from opensci.web.session import (
    check_csrf,
    log_in,
    log_out,
    safe_next,
    set_session_cookie,
    start_session,
)

router = APIRouter(include_in_schema=False)

FormStr = Annotated[str, Form()]


def login_redirect(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- log in, log out, register ---------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, actor: ActorDep, next: str = "") -> Response:
    if actor.user is not None:
        return see_other(safe_next(next))
    return render(request, "accounts/login.html", next=safe_next(next, ""), name="", error="")


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    name: FormStr = "",
    password: FormStr = "",
    next: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token, logged_in=False)
    try:
        user = accounts.authenticate(session, name.strip(), password)
    except Unauthorized as exc:
        return render(
            request, "accounts/login.html", status=400, next=safe_next(next, ""), name=name, error=exc.message
        )
    response = see_other(safe_next(next))
    log_in(request, response, session, user)
    return response


@router.get("/logout")
def logout_page(request: Request, actor: ActorDep) -> Response:
    """Logging out is a POST (a link could be followed by anyone); this page holds the button."""
    if getattr(request.state, "web_session", None) is None:
        return see_other("/")
    return render(request, "accounts/logout.html")


@router.post("/logout")
def logout(request: Request, session: SessionDep, actor: ActorDep, csrf_token: FormStr = "") -> Response:
    response = see_other("/")
    if getattr(request.state, "web_session", None) is None:
        return response  # not logged in with a browser session: nothing to end
    check_csrf(request, csrf_token)
    log_out(request, response, session)
    return response


def _require_registration(settings: Settings) -> None:
    if not settings.open_registration:
        raise NotFound("registration is closed on this server; ask an administrator for an account")


@router.get("/register")
def register_page(request: Request, actor: ActorDep, settings: SettingsDep) -> Response:
    _require_registration(settings)
    if actor.user is not None:
        return see_other("/")
    return render(request, "accounts/register.html", form={}, error="")


@router.post("/register")
def register(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    actor: ActorDep,
    name: FormStr = "",
    display_name: FormStr = "",
    email: FormStr = "",
    password: FormStr = "",
    password2: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    _require_registration(settings)
    check_csrf(request, csrf_token, logged_in=False)
    form = {"name": name, "display_name": display_name, "email": email}
    try:
        if password != password2:
            raise InvalidInput("the two passwords differ")
        user = accounts.create_user(session, name.strip(), password, email=email, display_name=display_name)
        session.commit()
    except OpenSciError as exc:
        session.rollback()
        return render(request, "accounts/register.html", status=400, form=form, error=exc.message)
    response = see_other(f"/{user.name}")
    log_in(request, response, session, user)
    return response


# --- settings ----------------------------------------------------------------------------------------------


@router.get("/settings")
def settings_home() -> Response:
    return see_other("/settings/profile")


@router.get("/settings/profile")
def profile_page(request: Request, actor: ActorDep) -> Response:
    if actor.user is None:
        return login_redirect(request)
    u = actor.user
    form = {
        "display_name": u.owner.display_name,
        "email": u.email,
        "affiliation": u.affiliation,
        "orcid": u.orcid,
        "description": u.owner.description,
    }
    return render(request, "accounts/profile.html", tab="profile", form=form, error="", saved=False)


@router.post("/settings/profile")
def update_profile(
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    display_name: FormStr = "",
    email: FormStr = "",
    affiliation: FormStr = "",
    orcid: FormStr = "",
    description: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    form = {
        "display_name": display_name,
        "email": email,
        "affiliation": affiliation,
        "orcid": orcid,
        "description": description,
    }
    try:
        accounts.update_profile(
            actor,
            session,
            display_name=display_name,
            email=email,
            affiliation=affiliation,
            orcid=orcid,
            description=description,
        )
        session.commit()
    except OpenSciError as exc:
        session.rollback()
        return render(
            request, "accounts/profile.html", status=400, tab="profile", form=form, error=exc.message
        )
    return render(request, "accounts/profile.html", tab="profile", form=form, error="", saved=True)


@router.get("/settings/password")
def password_page(request: Request, actor: ActorDep) -> Response:
    if actor.user is None:
        return login_redirect(request)
    return render(request, "accounts/password.html", tab="password", error="", saved=False)


@router.post("/settings/password")
def change_password(
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    old: FormStr = "",
    new: FormStr = "",
    new2: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    assert actor.user is not None  # check_csrf needs a browser login
    try:
        if new != new2:
            raise InvalidInput("the two new passwords differ")
        accounts.change_password(actor, session, old, new)  # ends every browser session of the user
        session.commit()
    except OpenSciError as exc:
        session.rollback()
        return render(request, "accounts/password.html", status=400, tab="password", error=exc.message)
    secret = start_session(request, session, actor.user)  # this browser stays logged in
    response = render(request, "accounts/password.html", tab="password", error="", saved=True)
    set_session_cookie(request, response, secret)
    return response


def _tokens_page(
    request: Request, session: Session, actor: Actor, status: int = 200, **extra: object
) -> Response:
    tokens = accounts.list_tokens(actor, session)
    context: dict[str, object] = {"tab": "tokens", "tokens": tokens, "new_token": None, "error": ""}
    context.update(extra)
    return render(
        request, "accounts/tokens.html", status=status, headers={"Cache-Control": "no-store"}, **context
    )


# A new token travels from the form's POST to the page that shows it once in a short-lived cookie, so
# reloading that page shows the list instead of sending the form again (post/redirect/get).
NEW_TOKEN_COOKIE = "opensci_new_token"
TOKENS_PATH = "/settings/tokens"


@router.get("/settings/tokens")
def tokens_page(request: Request, session: SessionDep, actor: ActorDep) -> Response:
    if actor.user is None:
        return login_redirect(request)
    secret = request.cookies.get(NEW_TOKEN_COOKIE, "")
    row = next((t for t in accounts.list_tokens(actor, session) if t.token_hash == sha256_hex(secret)), None)
    response = _tokens_page(
        request, session, actor, new_token={"row": row, "secret": secret} if row else None
    )
    if secret:
        response.delete_cookie(NEW_TOKEN_COOKIE, path=TOKENS_PATH)
    return response


@router.post("/settings/tokens")
def create_token(
    request: Request,
    session: SessionDep,
    actor: ActorDep,
    name: FormStr = "",
    scope: FormStr = Scope.read.value,
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    try:
        _, secret = accounts.create_token(actor, session, name, scope)
        session.commit()
    except OpenSciError as exc:
        session.rollback()
        return _tokens_page(request, session, actor, status=400, error=exc.message)
    # Shown once, by the page this redirects to: the database keeps only a hash.
    response = see_other(TOKENS_PATH)
    response.set_cookie(
        NEW_TOKEN_COOKIE,
        secret,
        max_age=300,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.cookies_secure,
        path=TOKENS_PATH,
    )
    return response


@router.post("/settings/tokens/{token_id}/revoke")
def revoke_token(
    token_id: str, request: Request, session: SessionDep, actor: ActorDep, csrf_token: FormStr = ""
) -> Response:
    check_csrf(request, csrf_token)
    accounts.revoke_token(actor, session, token_id)
    session.commit()
    return see_other("/settings/tokens")
