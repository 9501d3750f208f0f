"""Browser logins (the session cookie) and CSRF protection for every form.

Forms of a logged-in user carry the web session's `csrf_token`; anonymous forms (login, register) use a
signed double-submit token: a random value in the `opensci_csrf` cookie, repeated in a hidden field.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request, Response
from sqlalchemy.orm import Session

from opensci.accounts import service as accounts
from opensci.accounts.models import User
from opensci.deps import SESSION_COOKIE
from opensci.errors import Forbidden

CSRF_COOKIE = "opensci_csrf"
CSRF_FIELD = "csrf_token"


def _sign(request: Request, nonce: str) -> str:
    key = request.app.state.web_secret.encode()
    return hmac.new(key, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]


def _valid_anonymous_token(request: Request, value: str | None) -> bool:
    if not value or "." not in value:
        return False
    nonce, _, mac = value.partition(".")
    return hmac.compare_digest(mac, _sign(request, nonce))


def csrf_token(request: Request) -> str:
    """The token a form on this page must carry: the session's, or the anonymous double-submit one."""
    ws = getattr(request.state, "web_session", None)
    if ws is not None:
        return ws.csrf_token
    existing = request.cookies.get(CSRF_COOKIE)
    if _valid_anonymous_token(request, existing):
        assert existing is not None
        return existing
    fresh = getattr(request.state, "new_csrf_cookie", None)
    if fresh is None:
        nonce = secrets.token_urlsafe(24)
        fresh = f"{nonce}.{_sign(request, nonce)}"
        request.state.new_csrf_cookie = fresh
    return fresh


def attach_cookies(request: Request, response: Response) -> None:
    """Set the anonymous CSRF cookie if the page handed out a new token."""
    fresh = getattr(request.state, "new_csrf_cookie", None)
    if fresh is not None:
        response.set_cookie(
            CSRF_COOKIE,
            fresh,
            httponly=True,
            samesite="lax",
            secure=request.app.state.settings.cookies_secure,
            path="/",
        )


def check_csrf(request: Request, submitted: str, *, logged_in: bool = True) -> None:
    """Refuse a form whose token is missing or wrong (403). Call before changing anything.

    `logged_in` forms need a browser login: a token sent by the browser on its own (HTTP Basic that
    it remembered from a git prompt) never authorizes a form.
    """
    ws = getattr(request.state, "web_session", None)
    if logged_in or ws is not None:
        ok = ws is not None and bool(submitted) and hmac.compare_digest(submitted, ws.csrf_token)
    else:
        cookie = request.cookies.get(CSRF_COOKIE)
        ok = (
            bool(submitted)
            and _valid_anonymous_token(request, cookie)
            and hmac.compare_digest(submitted, cookie or "")
        )
    if not ok:
        raise Forbidden(
            "the form is out of date or was not sent from this site: reload the page and try again",
            code="csrf_failed",
        )


def start_session(request: Request, session: Session, user: User) -> str:
    """Create a browser session for `user` (commits); the page rendered next uses its CSRF token."""
    ws, secret = accounts.create_web_session(session, user, request.app.state.settings.session_days)
    session.commit()
    request.state.web_session = ws
    return secret


def set_session_cookie(request: Request, response: Response, secret: str) -> None:
    settings = request.app.state.settings
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=settings.session_days * 86400,
        httponly=True,
        samesite="lax",
        secure=settings.cookies_secure,
        path="/",
    )


def log_in(request: Request, response: Response, session: Session, user: User) -> None:
    """Start a browser session for `user` and set its cookie on `response`. Commits."""
    set_session_cookie(request, response, start_session(request, session, user))


def log_out(request: Request, response: Response, session: Session) -> None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        accounts.delete_web_session(session, cookie)
        session.commit()
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


def safe_next(value: str | None, default: str = "/") -> str:
    """Where to go after logging in: only a path on this site (`/x`), never `//host`, `/\\host` or a URL."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 0x21 or c == "\\" for c in value):
        return default
    return value
