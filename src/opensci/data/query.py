"""Running one SQL query for a caller: the dataset's revision and any other readable dataset the query
names (`"owner/name".table`, `"owner/name@rev".table`), exposed to the sandboxed engine (`data.sql`),
within the server's per-query limits and its cap on queries running at once. Used by the REST API and
the web console alike."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy.orm import Session

from opensci.accounts.permissions import Actor
from opensci.data import sql as engine
from opensci.data.catalog import catalog, materialize
from opensci.errors import OpenSciError
from opensci.repos.gitstore import GitStore
from opensci.repos.models import RepoKind, Repository
from opensci.repos.service import get_repo, resolve
from opensci.settings import Settings
from opensci.storage.store import BlobStore

SLOT_WAIT_SECONDS = 5.0  # how long a query waits for a free slot before 503

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


class TooManyQueries(OpenSciError):
    status, code = 503, "too_many_queries"


def limits(settings: Settings) -> engine.Limits:
    """The per-query limits, from the settings."""
    return engine.Limits(
        timeout_seconds=settings.sql_timeout_seconds,
        memory_limit=settings.sql_memory_limit,
        threads=settings.sql_threads,
        json_rows=settings.sql_json_row_limit,
        votable_rows=settings.sql_votable_row_limit,
    )


def tables_of(
    settings: Settings, store: GitStore, blobs: BlobStore, session: Session, repo: Repository, rev: str | None
) -> tuple[str, dict[str, list[Path]]]:
    """The commit sha of `rev` and the revision's tables as {name: derived Parquet files}."""
    _, commit = resolve(store, repo, rev)
    found = catalog(settings, store, blobs, session, repo, commit)
    materialize(settings, store, blobs, session, repo, found)
    return str(commit.id), {t.name: [Path(p) for p in t.parquet] for t in found.tables if t.parquet}


def _slot(settings: Settings) -> threading.BoundedSemaphore:
    """The concurrency slots of this server process (per Settings object: one per app)."""
    with _slots_lock:
        return _slots.setdefault(id(settings), threading.BoundedSemaphore(settings.sql_max_concurrent))


def start(
    actor: Actor,
    session: Session,
    settings: Settings,
    store: GitStore,
    blobs: BlobStore,
    repo: Repository,
    sql: str,
    rev: str | None,
) -> tuple[str, engine.Result]:
    """Start `sql` over `repo` at `rev` (the caller checked it may read `repo`): the commit sha and the
    running result, which the caller must close (that frees its slot). Other datasets the query names
    are checked like every door: unreadable ones are not found."""
    commit, tables = tables_of(settings, store, blobs, session, repo, rev)
    extra: dict[str, dict[str, list[Path]]] = {}
    for ref in sorted(engine.referenced_datasets(sql)):
        dataset, _, other_rev = ref.partition("@")
        other_owner, _, other_name = dataset.partition("/")
        other = get_repo(actor, session, other_owner, other_name, "read", kind=RepoKind.dataset)
        extra[ref] = tables_of(settings, store, blobs, session, other, other_rev or None)[1]
    slot = _slot(settings)
    if not slot.acquire(timeout=SLOT_WAIT_SECONDS):
        raise TooManyQueries(
            f"{settings.sql_max_concurrent} SQL queries are running on this server; try again in a moment",
            headers={"Retry-After": "5"},
        )
    try:
        result = engine.run(tables, extra, sql, limits(settings))
    except BaseException:
        slot.release()
        raise
    result.on_close(slot.release)
    return commit, result
