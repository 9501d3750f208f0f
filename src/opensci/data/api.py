"""REST routes of the data domain: tables, rows and statistics of a dataset revision."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from opensci.data import service
from opensci.data.schemas import ColumnOut, FileErrorOut, RowsOut, StatsOut, TableOut, TablesOut
from opensci.deps import ActorDep, BlobsDep, SessionDep, SettingsDep, StoreDep

router = APIRouter(prefix="/api/v1/datasets", tags=["data"])

Rev = Annotated[str | None, Query(description="Branch, tag or commit; default: the default branch.")]


@router.get("/{owner}/{name}/tables", response_model=TablesOut)
def list_tables(
    owner: str,
    name: str,
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    rev: Rev = None,
) -> TablesOut:
    cat = service.revision_catalog(actor, session, settings, store, blobs, owner, name, rev)
    if cat is None:
        return TablesOut(commit=None, tables=[], errors=[])
    return TablesOut(
        commit=cat.commit,
        tables=[
            TableOut(
                name=t.name,
                num_rows=t.num_rows,
                columns=[ColumnOut(name=c.name, type=c.type) for c in t.columns],
                sources=t.sources,
                notes=t.notes,
            )
            for t in cat.tables
        ],
        errors=[FileErrorOut(path=e.path, reason=e.reason) for e in cat.errors],
    )


@router.get("/{owner}/{name}/tables/{table}/rows", response_model=RowsOut)
def table_rows(
    owner: str,
    name: str,
    table: str,
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    rev: Rev = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=0, le=service.MAX_ROWS)] = 100,
) -> Response:
    result = service.table_rows(
        actor, session, settings, store, blobs, owner, name, table, rev, offset, limit
    )
    # Rows are already JSON-safe: serialized directly, without a pydantic pass over every cell.
    return Response(json.dumps(result, allow_nan=False), media_type="application/json")


@router.get("/{owner}/{name}/tables/{table}/stats", response_model=StatsOut)
def table_stats(
    owner: str,
    name: str,
    table: str,
    session: SessionDep,
    actor: ActorDep,
    settings: SettingsDep,
    store: StoreDep,
    blobs: BlobsDep,
    rev: Rev = None,
) -> Response:
    result = service.table_stats(actor, session, settings, store, blobs, owner, name, table, rev)
    return Response(json.dumps(result, allow_nan=False), media_type="application/json")
