"""REST route of the data domain: sandboxed SQL over a dataset revision.

`POST /api/v1/datasets/{owner}/{name}/sql` with `{"sql", "rev", "format"}`, and the same as
`GET …/sql?sql=&rev=&format=` for shareable links and downloads. The query sees the revision's tables by
name; `"owner/name".table` names a table of another dataset the caller may read, at its default branch, and
`"owner/name@rev".table` at a branch, tag or commit. The work (permissions, catalog, reading the answer)
runs in worker threads and DuckDB in a worker process (`sql_worker`), so a heavy query never holds up the
event loop nor takes the server's memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from opensci.accounts.permissions import Actor
from opensci.data import query as query_service
from opensci.data import sql as engine
from opensci.data import sql_formats
from opensci.deps import ActorDep, BlobsDep, SessionDep, SettingsDep, StoreDep
from opensci.errors import InvalidInput
from opensci.repos.gitstore import GitStore
from opensci.repos.models import RepoKind
from opensci.repos.service import get_repo
from opensci.settings import Settings
from opensci.storage.store import BlobStore

router = APIRouter(prefix="/api/v1/datasets", tags=["data"])

Format = Literal["json", "csv", "parquet", "votable"]
MAX_SQL_CHARS = 100_000
MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "votable": "application/x-votable+xml",
}
VOTABLE_MAX_BYTES = 512 * 2**20  # Arrow bytes of a VOTable answer (built in memory by astropy)
EXTENSIONS = {"csv": "csv", "parquet": "parquet", "votable": "vot"}


class SqlQuery(BaseModel):
    sql: str = Field(..., min_length=1, max_length=MAX_SQL_CHARS, description="One SELECT statement.")
    rev: str | None = Field(None, description="Branch, tag or commit; the default branch when absent.")
    format: Format = Field("json", description="json (default), csv, parquet or votable.")


@dataclass
class _Prepared:
    result: engine.Result
    filename: str


def _prepare(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    owner: str,
    name: str,
    query: SqlQuery,
) -> _Prepared:
    repo = get_repo(actor, session, owner, name, "read", kind=RepoKind.dataset)
    commit, result = query_service.start(actor, session, settings, store, blobs, repo, query.sql, query.rev)
    try:
        if query.format in ("csv", "parquet"):
            result.prefetch()  # errors of the query itself still become a 4xx, not a cut-off download
    except BaseException:
        result.close()
        raise
    return _Prepared(result, f"{repo.name}-{commit[:12]}-query")


def _json_reply(result: engine.Result, row_limit: int) -> bytes:
    """The JSON answer, serialized here (in a worker thread), not on the event loop."""
    with result:
        table, truncated = result.take(row_limit)
        body = {"columns": result.columns, "rows": sql_formats.json_rows(table), "truncated": truncated}
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _votable_reply(result: engine.Result, row_limit: int) -> bytes:
    with result:
        table, truncated = result.take(row_limit, VOTABLE_MAX_BYTES)
        return sql_formats.votable_bytes(table, truncated)


def _closing(chunks: Iterator[bytes], result: engine.Result) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        result.close()


async def _answer(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    owner: str,
    name: str,
    query: SqlQuery,
) -> Response:
    prepared = await run_in_threadpool(_prepare, actor, session, settings, store, blobs, owner, name, query)
    result, fmt = prepared.result, query.format
    if fmt == "json":
        body = await run_in_threadpool(_json_reply, result, settings.sql_json_row_limit)
        return Response(body, media_type=MEDIA_TYPES["json"])
    headers = {"Content-Disposition": f'attachment; filename="{prepared.filename}.{EXTENSIONS[fmt]}"'}
    if fmt == "votable":
        data = await run_in_threadpool(_votable_reply, result, settings.sql_votable_row_limit)
        return Response(data, media_type=MEDIA_TYPES[fmt], headers=headers)
    chunks = sql_formats.csv_chunks(result) if fmt == "csv" else sql_formats.parquet_chunks(result)
    # A sync iterator: Starlette pulls each chunk in a worker thread.
    return StreamingResponse(_closing(chunks, result), media_type=MEDIA_TYPES[fmt], headers=headers)


@router.post("/{owner}/{name}/sql", summary="Run one read-only SQL query over a dataset revision")
async def post_sql(
    owner: str,
    name: str,
    query: SqlQuery,
    actor: ActorDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
) -> Response:
    return await _answer(actor, session, settings, store, blobs, owner, name, query)


@router.get("/{owner}/{name}/sql", summary="The same query as a link (shareable, downloadable)")
async def get_sql(
    owner: str,
    name: str,
    actor: ActorDep,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    sql: Annotated[str, Query(max_length=MAX_SQL_CHARS)] = "",
    rev: str | None = None,
    format: Format = "json",
) -> Response:
    if not sql.strip():
        raise InvalidInput("pass the query as ?sql=", code="invalid_sql")
    query = SqlQuery(sql=sql, rev=rev or None, format=format)
    return await _answer(actor, session, settings, store, blobs, owner, name, query)
