"""Operations of the data domain: the tables of a dataset revision, their rows and statistics.

Reads are checked like every other door: `repos.service.get_repo(..., "read", kind=dataset)`, so a
private dataset is not found for whoever may not read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from opensci.accounts.permissions import Actor
from opensci.data import formats, reasons, stats
from opensci.data.catalog import Catalog, Table, catalog, materialize, open_table_file
from opensci.errors import InvalidInput
from opensci.repos import gitstore
from opensci.repos import service as repos
from opensci.repos.gitstore import GitStore
from opensci.repos.models import RepoKind, Repository
from opensci.settings import Settings
from opensci.storage.store import BlobStore

MAX_ROWS = 1000
READ_BUFFER = 1 << 20  # bytes per column read while decoding rows


def revision_catalog(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    owner: str,
    name: str,
    rev: str | None,
) -> Catalog | None:
    """The catalog of dataset `owner/name` at `rev` (default: its default branch). None for a
    repository without commits on its default branch, when no revision is asked for."""
    return _repo_catalog(actor, session, settings, store, blobs, owner, name, rev)[1]


def _repo_catalog(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    owner: str,
    name: str,
    rev: str | None,
) -> tuple[Repository, Catalog | None]:
    repo = repos.get_repo(actor, session, owner, name, "read", kind=RepoKind.dataset)
    if not rev:
        g = store.open(repo.id)
        if gitstore.branch_head(g, repo.default_branch) is None:
            return repo, None
    _, commit = repos.resolve(store, repo, rev)
    return repo, catalog(settings, store, blobs, session, repo, commit)


def opener_for(
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    session: Session,
    repo: Repository | None,
    cat: Catalog,
    table: Table,
) -> Opener | None:
    """How `read_rows` opens the table's files: in place until they are copied to the derived area."""
    if repo is None:
        return None
    return lambda i: open_table_file(settings, store, blobs, session, repo, cat, table, i)


Opener = Callable[[int], "str | BinaryIO"]


def read_rows(table: Table, offset: int, limit: int, opener: Opener | None = None) -> list[dict[str, Any]]:
    """Rows [offset, offset+limit) of a table, in file order then row order, as JSON-safe objects.
    Only the row groups that hold them are read. `opener(i)` gives the i-th file (a path, or a binary
    file the reader closes): by default its derived path (see `catalog.open_table_file`)."""
    if offset < 0 or not 0 <= limit <= MAX_ROWS:
        raise InvalidInput(f"offset must be >= 0 and limit between 0 and {MAX_ROWS}", code="invalid_range")
    out: list[pa.Table] = []
    pos, need = offset, limit
    for i, n in enumerate(table.parquet_rows):
        if need <= 0:
            break
        if pos >= n:
            pos -= n
            continue
        source = opener(i) if opener is not None else table.parquet[i]
        try:
            # Column chunks read page by page through a buffer, not fetched whole (pyarrow's
            # pre_buffer): the first rows of a 128 MB row group cost its first pages only.
            with pq.ParquetFile(source, buffer_size=READ_BUFFER, pre_buffer=False) as f:
                pos, need = _read_file(f, pos, need, out)
        finally:
            if not isinstance(source, str):
                source.close()
    rows: list[dict[str, Any]] = []
    for t in out:
        rows.extend(
            {k: formats.json_value(v) for k, v in r.items()} for r in formats.exact_table(t).to_pylist()
        )
    return rows


def _read_file(f: pq.ParquetFile, pos: int, need: int, out: list[pa.Table]) -> tuple[int, int]:
    """Append up to `need` rows of `f` from row `pos` to `out`; returns what is left of (pos, need)."""
    for rg in range(f.metadata.num_row_groups):
        if need <= 0:
            break
        rn = f.metadata.row_group(rg).num_rows
        if pos >= rn:
            pos -= rn
            continue
        # Pages cannot be skipped without decoding: far into a row group, decode in big batches.
        size = max(need, 1024) if pos < 1024 else max(need, 65536)
        for batch in f.iter_batches(batch_size=size, row_groups=[rg]):
            if pos >= batch.num_rows:
                pos -= batch.num_rows
                continue
            part = batch.slice(pos, need)
            pos = 0
            need -= part.num_rows
            out.append(pa.Table.from_batches([part]))
            if need <= 0:
                break
    return pos, need


def table_rows(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    owner: str,
    name: str,
    table: str,
    rev: str | None,
    offset: int,
    limit: int,
) -> dict[str, Any]:
    repo, cat = _catalog_or_empty(actor, session, settings, store, blobs, owner, name, rev)
    t = cat.table(table)
    try:
        rows = read_rows(t, offset, limit, opener_for(settings, store, blobs, session, repo, cat, t))
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(t, exc) from exc
    return {"rows": rows, "num_rows": t.num_rows, "offset": offset, "limit": limit, "commit": cat.commit}


def table_stats(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    owner: str,
    name: str,
    table: str,
    rev: str | None,
) -> dict[str, Any]:
    repo, cat = _catalog_or_empty(actor, session, settings, store, blobs, owner, name, rev)
    t = cat.table(table)
    try:
        if repo is not None:
            materialize(settings, store, blobs, session, repo, cat, [t])
        result = stats.table_stats(settings, cat.commit, t)
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:
        raise _unreadable(t, exc) from exc
    return {k: v for k, v in result.items() if k != "version"} | {"commit": cat.commit}


def _unreadable(table: Table, exc: Exception) -> InvalidInput:
    """Damage inside a file whose footer looked fine is found only when its pages are read."""
    return InvalidInput(
        f"table {table.name!r} has unreadable data: {reasons.first_line(exc)}", code="unreadable_table"
    )


def _catalog_or_empty(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    owner: str,
    name: str,
    rev: str | None,
) -> tuple[Repository | None, Catalog]:
    repo, cat = _repo_catalog(actor, session, settings, store, blobs, owner, name, rev)
    return (repo, cat) if cat is not None else (None, Catalog("", [], []))
