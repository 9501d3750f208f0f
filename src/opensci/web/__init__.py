"""Server-rendered pages (Jinja2 + htmx): one views module per domain, templates/<domain>/, static/."""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("opensci.web")

_TITLES = {
    400: "Bad request",
    401: "Log in required",
    403: "Forbidden",
    404: "Page not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Too large",
    422: "Invalid input",
    500: "Something went wrong",
}


def render_error_page(request: Request, status: int, code: str, message: str) -> Response:
    """The HTML error page for browsers. A private repository and a missing one give the same page."""
    from opensci.accounts.permissions import Actor
    from opensci.deps import resolve_actor
    from opensci.web.render import render
    from opensci.web.views.accounts import login_redirect

    if status == 401 and code == "login_required" and request.method in ("GET", "HEAD"):
        return login_redirect(request)
    context = {
        "title": _TITLES.get(status, "Error"),
        "code": code,
        "message": message,
        "status_code": status,
        "request_id": getattr(request.state, "request_id", ""),
    }
    # The view's database session is gone (rolled back, its rows expired): look the viewer up again, for
    # the page header, in a session that stays open while the page renders.
    request.state.actor = None
    request.state.web_session = None
    try:
        with request.app.state.db.session() as session:
            try:
                resolve_actor(request, session)
            except Exception:  # a bad token: the header shows a visitor
                request.state.actor = Actor.anonymous()
            return render(request, "error.html", status=status, **context)
    except Exception:  # the database is down: still an error page, for a visitor
        log.exception("rendering the error page with the viewer failed")
        request.state.actor = Actor.anonymous()
        request.state.web_session = None
        return render(request, "error.html", status=status, **context)


def mount(app: FastAPI) -> None:
    """Mount the pages, their static files and the HTML error page on the app."""
    from opensci.web.render import STATIC
    from opensci.web.routing import OwnerPageRoute
    from opensci.web.views import accounts, data, jobs, owners, repo_admin, repos

    app.state.web_secret = app.state.settings.effective_secret_key()
    app.state.render_error_page = render_error_page
    # Order matters: fixed paths first, then repository pages (every "/datasets/…" one before the others,
    # which would otherwise take "datasets" for an owner), then owner pages.
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    app.include_router(accounts.router)
    app.include_router(repos.explore_router)
    app.include_router(repo_admin.router)
    app.include_router(data.router)  # /datasets/{owner}/{name}/viewer…: before the repository pages
    app.include_router(jobs.router)  # /jobs, /jobs/{id}
    pages = APIRouter(include_in_schema=False, route_class=OwnerPageRoute)
    for prefix in ("/datasets", ""):
        for path, endpoint, methods in [*repos.PAGES, *repo_admin.PAGES]:
            pages.add_api_route(prefix + path, endpoint, methods=methods)
    for path, endpoint, methods in jobs.RUN_PAGES:  # code repositories only: never under /datasets
        pages.add_api_route(path, endpoint, methods=methods)
    app.include_router(pages)
    app.include_router(owners.router)
