"""create_app(): builds the ASGI app and mounts every domain's routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from opensci import __version__
from opensci.db import Database
from opensci.errors import OpenSciError
from opensci.observability import BodyLimitMiddleware, Metrics, ObservabilityMiddleware, configure_logging
from opensci.repos.gitstore import GitStore
from opensci.settings import Settings, get_settings
from opensci.storage.store import BlobStore

log = logging.getLogger("opensci")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "invalid_input",
    429: "too_many_requests",
}


def error_reply(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The one error envelope. Pages (non-API paths asked for HTML) get the web's error page instead."""
    render = getattr(request.app.state, "render_error_page", None)
    if render is not None and wants_html(request):
        return render(request, status, code, message)
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith("/api/") or path.endswith(
        (".git", "/info/refs", "/git-upload-pack", "/git-receive-pack")
    ):
        return False
    return "text/html" in request.headers.get("accept", "")


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


def _unstorable_text(exc: Exception) -> str | None:
    """What is wrong with a request's text that the database driver refused, if that is why it failed:
    PostgreSQL text cannot hold a NUL (psycopg refuses the query; a JSON value refuses `\\u0000`), and no
    database takes an unpaired surrogate (which a JSON body can spell). None for any other failure."""
    if isinstance(exc, DataError):
        reason = str(exc.orig)
        if "NUL (0x00)" in reason or "\\u0000 cannot be converted" in reason:
            return "the request contains a NUL character, which cannot be stored or looked up; remove it"
    if isinstance(exc, UnicodeEncodeError) and exc.reason == "surrogates not allowed":
        return "the request contains text that is not valid Unicode (an unpaired surrogate)"
    return None


TOO_DEEP = (
    "the request body is nested too deeply: its JSON holds arrays or objects hundreds of levels "
    "inside one another"
)


def _decoding_json(exc: BaseException | None) -> bool:
    """Whether `exc` is Python's recursion limit stopping a JSON decoder (a body of a thousand `[`: the
    caller's mistake), rather than a recursion bug of the server, which stays a 500."""
    if not isinstance(exc, RecursionError):
        return False
    if "while decoding a JSON" in str(exc):  # the C decoder's words
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).parent.name == "json"  # pure Python


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenSciError)
    async def _domain(request: Request, exc: OpenSciError) -> Response:
        headers = dict(exc.headers)
        if exc.status == 401:
            headers.setdefault("WWW-Authenticate", 'Bearer realm="OpenSci"')
        return error_reply(request, exc.status, exc.code, exc.message, headers or None)

    # A safety net: lookups and searches refuse such text before it reaches the database (see
    # `opensci.validation.is_plain_text`); anything that still gets there is the caller's mistake, not a 500.
    @app.exception_handler(DataError)
    @app.exception_handler(UnicodeEncodeError)
    async def _unstorable(request: Request, exc: Exception) -> Response:
        message = _unstorable_text(exc)
        if message is None:
            raise exc
        return error_reply(request, 422, "invalid_input", message)

    # JSON nested deeper than Python's recursion limit, wherever a route decodes it (FastAPI's own body
    # parsing turns it into a 400 "error parsing the body", see `_http`; routes that read the body
    # themselves let it through). Any other RecursionError is a bug: the 500 handler logs it.
    @app.exception_handler(RecursionError)
    async def _recursion(request: Request, exc: RecursionError) -> Response:
        if not _decoding_json(exc):
            raise exc
        return _too_deep(request, exc)

    def _too_deep(request: Request, exc: BaseException) -> Response:
        rid = getattr(request.state, "request_id", "")
        log.warning("JSON nested too deeply (request_id=%s): %s", rid, exc)
        return error_reply(request, 422, "invalid_input", TOO_DEEP)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_reply(request, 422, "invalid_input", _validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if _decoding_json(exc.__cause__):  # FastAPI read a JSON body nested too deeply
            return _too_deep(request, exc.__cause__)  # type: ignore[arg-type]
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404 and message == "Not Found":
            message = f"nothing at {request.url.path}"
        return error_reply(request, exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        rid = getattr(request.state, "request_id", "")
        log.exception("unhandled error (request_id=%s)", rid)
        return error_reply(
            request, 500, "internal_error", f"internal error; quote request id {rid} to the operator"
        )


def create_app(settings: Settings | None = None, *, migrate: bool = False) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    if migrate:
        db.upgrade()
    store = GitStore(settings.git_dir, settings.git_binary)
    blobs = BlobStore(settings, db)

    from opensci.compute.scheduler import Scheduler

    scheduler = Scheduler(settings, db, store, blobs)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.compute_scheduler:
            scheduler.start()
        yield
        scheduler.stop()
        blobs.close()
        db.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="OpenSci",
        version=__version__,
        description="Open code, open data, open compute. Native REST API under /api/v1.",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    metrics = Metrics()
    app.state.settings = settings
    app.state.db = db
    app.state.store = store
    app.state.blobs = blobs
    app.state.metrics = metrics
    app.state.scheduler = scheduler

    from opensci.repos.githttp import install_hooks

    app.state.git_hooks = install_hooks(store, settings.home)
    install_error_handlers(app)

    @app.get("/api/health", tags=["operations"])
    def health() -> dict[str, str]:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    from opensci.accounts.api import avatars as accounts_avatars
    from opensci.accounts.api import router as accounts_router
    from opensci.compute.api import router as compute_router
    from opensci.data.api import router as data_router
    from opensci.data.sql_api import router as sql_router
    from opensci.hub.api import router as hub_router
    from opensci.repos.api import router as repos_router
    from opensci.repos.githttp import router as git_router
    from opensci.storage.api import router as storage_router
    from opensci.storage.lfs import router as lfs_router
    from opensci.storage.quota_api import router as quota_router

    app.include_router(accounts_router)
    app.include_router(repos_router)
    app.include_router(storage_router)
    app.include_router(quota_router)
    app.include_router(data_router)
    app.include_router(compute_router)
    app.include_router(sql_router)
    app.include_router(accounts_avatars)
    app.include_router(lfs_router)  # {repo}.git/info/lfs/...: before git's and the web's catch-alls
    app.include_router(git_router)  # before the web pages: /{owner}/{name}.git/... is git's
    app.include_router(hub_router)  # /api/{models,datasets}/..., .../resolve/...: before the web pages
    from opensci.web import mount as mount_web

    mount_web(app)

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)

    return app
