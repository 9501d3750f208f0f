"""The dataset viewer: the tables of a revision, their rows (paged), column statistics with histograms, a
sky density map for tables with sky coordinates, and an SQL console.

One page, `/datasets/{owner}/{name}/viewer[/{rev}]`, with the state in its query string so that every
view is a link: `?table=` (the table shown), `?offset=` (its rows), `?sql=` (the console's query, run
when the page opens — a shareable link). htmx swaps only the changed part (`part=rows` or `part=sql`,
asked for by htmx and answered with the fragment, pushing the clean address); without JavaScript the
same links and the console's GET form load the whole page.

The work is done by the data domain's services (catalog, rows, statistics, the SQL sandbox), called
directly; the handlers are sync functions, so FastAPI runs them in worker threads and a slow query never
holds up the event loop. Queries are read-only, so the console uses GET (no CSRF token needed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from markupsafe import Markup
from sqlalchemy.orm import Session

from opensci.accounts.permissions import Actor
from opensci.data import plots, sky, sql_formats
from opensci.data import query as query_service
from opensci.data.catalog import Catalog, Table, catalog, materialize
from opensci.data.service import Opener, opener_for, read_rows
from opensci.data.sql_api import EXTENSIONS, MAX_SQL_CHARS
from opensci.data.stats import table_stats
from opensci.deps import ActorDep, BlobsDep, SessionDep, SettingsDep, StoreDep
from opensci.errors import OpenSciError
from opensci.repos import gitstore
from opensci.repos import service as repos
from opensci.repos.gitstore import GitStore
from opensci.repos.models import RepoKind, Repository
from opensci.settings import Settings
from opensci.storage.store import BlobStore
from opensci.web.render import render, repo_href, urlpath
from opensci.web.views.repos import repo_page

router = APIRouter(include_in_schema=False)

ROWS_PER_PAGE = 50
SQL_PREVIEW_ROWS = 200  # rows of a console result shown on the page (downloads have them all)
MAX_CELL_CHARS = 200
FORMATS = ("json", "csv", "parquet", "votable")


@dataclass
class SqlOutcome:
    sql: str
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    error: str  # the 4xx message, shown inline
    error_code: str


def cell(value: Any) -> str:
    """A value as grid text: JSON-ish, long values cut."""
    if isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)  # the shortest text that reads back as the same number
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _viewer_url(repo: Repository, rev: str, **params: Any) -> str:
    query = {k: v for k, v in params.items() if v not in (None, "", 0)}
    base = repo_href(repo, "viewer", rev)
    return base + (f"?{urlencode(query)}" if query else "")


def _sql_links(request: Request, repo: Repository, rev: str, table: str, sql: str) -> dict[str, Any]:
    api = f"/api/v1/datasets/{urlpath(repo.owner.name)}/{urlpath(repo.name)}/sql"
    downloads = {fmt: f"{api}?{urlencode({'sql': sql, 'rev': rev, 'format': fmt})}" for fmt in FORMATS}
    share = request.app.state.settings.base_url.rstrip("/") + _viewer_url(repo, rev, table=table, sql=sql)
    return {"downloads": downloads, "share": share + "#sql", "extensions": EXTENSIONS}


def _run_sql(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    repo: Repository,
    rev: str,
    sql: str,
) -> SqlOutcome:
    """The query's first rows, or its error (a 4xx of the sandbox: shown, not raised)."""
    try:
        _, result = query_service.start(actor, session, settings, store, blobs, repo, sql, rev)
        with result:
            table, truncated = result.take(SQL_PREVIEW_ROWS)
            return SqlOutcome(sql, result.columns, sql_formats.json_rows(table), truncated, "", "")
    except OpenSciError as exc:
        if exc.status >= 500:
            raise
        return SqlOutcome(sql, [], [], False, exc.message, exc.code)


def _table_view(table: Table, offset: int, opener: Opener | None) -> dict[str, Any]:
    offset = max(0, min(offset, max(table.num_rows - 1, 0)))
    rows = read_rows(table, offset, ROWS_PER_PAGE, opener)
    return {"table": table, "rows": rows, "offset": offset, "per_page": ROWS_PER_PAGE}


def _plots(settings: Settings, commit: str, table: Table) -> dict[str, Any]:
    """Statistics per column (with a histogram SVG for numbers) and the sky map, if any."""
    found = table_stats(settings, commit, table)
    columns = []
    for i, col in enumerate(found.get("columns", [])):
        col = dict(col)
        hist = col.get("histogram")
        if hist:
            svg = plots.histogram_svg(hist["edges"], hist["counts"], title=col["name"], id_prefix=f"hist-{i}")
            col["histogram_svg"] = Markup(svg)
        columns.append(col)
    sky_svg = None
    sky_cols = sky.find_sky_columns(table.columns)
    grid = None
    if sky_cols is not None and table.parquet:
        grid = sky.cached_density_grid(settings.home, commit, table.name, table.parquet, sky_cols)
        title = f"{table.name} ({sky_cols.ra}, {sky_cols.dec})"
        sky_svg = Markup(plots.sky_map_svg(grid.array(), grid.ra_edges, grid.dec_edges, title=title))
    return {"stats": columns, "sky": sky_cols, "sky_svg": sky_svg, "sky_grid": grid}


def viewer(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    actor: ActorDep,
    rev: str = "",
    table: Annotated[str, Query(max_length=1000)] = "",
    offset: Annotated[int, Query(ge=0, le=10**15)] = 0,
    sql: Annotated[str, Query(max_length=MAX_SQL_CHARS)] = "",
    part: str = "",
) -> Response:
    repo = repos.get_repo(actor, session, owner, name, "read", kind=RepoKind.dataset)
    g = repos.open_git(store, repo)
    rev = rev.strip("/") or repo.default_branch
    if rev == repo.default_branch and gitstore.branch_head(g, rev) is None:
        return repo_page(request, "repos/empty.html", actor, repo, g, "data")
    _, commit = repos.resolve(store, repo, rev)
    sha = str(commit.id)
    found: Catalog = catalog(settings, store, blobs, session, repo, commit)
    selected = next((t for t in found.tables if t.name == table), None)
    if selected is None and not table and found.tables:
        selected = found.tables[0]
    sql = sql.strip()
    context: dict[str, Any] = {
        "rev": rev,
        "sha": sha,
        "catalog": found,
        "selected": selected,
        "missing_table": table if table and selected is None else "",
        "sql": sql,
        "sql_default": f'SELECT * FROM "{selected.name.replace(chr(34), chr(34) * 2)}" LIMIT 10'
        if selected
        else "",
        "viewer_url": lambda **params: _viewer_url(repo, rev, **params),
        "cell": cell,
        "selector_view": "viewer",
    }
    is_htmx = bool(request.headers.get("hx-request")) and not request.headers.get(
        "hx-history-restore-request"
    )
    if selected is not None and part != "sql":
        opener = opener_for(settings, store, blobs, session, repo, found, selected)
        context.update(_table_view(selected, offset, opener))
    if sql:
        context["outcome"] = _run_sql(actor, session, settings, store, blobs, repo, rev, sql)
        context.update(_sql_links(request, repo, rev, selected.name if selected else "", sql))
    headers = {"Vary": "HX-Request"}
    if is_htmx and part in ("rows", "sql"):
        # The address bar shows the state (without `part`), so the view can be shared or reloaded.
        keep = {"table": table, "offset": offset if part == "rows" else context.get("offset", 0), "sql": sql}
        headers["HX-Push-Url"] = _viewer_url(repo, rev, **keep)
        template = "data/_rows.html" if part == "rows" else "data/_sql_result.html"
        return render(request, template, headers=headers, repo=repo, **context)
    if selected is not None:
        materialize(settings, store, blobs, session, repo, found, [selected])  # DuckDB reads by path
        context.update(_plots(settings, sha, selected))
    return repo_page(request, "data/viewer.html", actor, repo, g, "data", headers=headers, **context)


def viewer_at(
    owner: str,
    name: str,
    rev: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    actor: ActorDep,
    table: Annotated[str, Query(max_length=1000)] = "",
    offset: Annotated[int, Query(ge=0, le=10**15)] = 0,
    sql: Annotated[str, Query(max_length=MAX_SQL_CHARS)] = "",
    part: str = "",
) -> Response:
    return viewer(owner, name, request, session, settings, store, blobs, actor, rev, table, offset, sql, part)


router.add_api_route("/datasets/{owner}/{name}/viewer", viewer, methods=["GET"])
router.add_api_route("/datasets/{owner}/{name}/viewer/{rev:path}", viewer_at, methods=["GET"])
