"""`opensci storage verify|gc|reindex|stats`: operator commands for the blob store, run on the server's
machine against its home and database. Safe to run while the server is up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from opensci.cli.output import JsonOpt, print_json

if TYPE_CHECKING:
    from opensci.storage.store import BlobStore

storage_app = typer.Typer(
    help="The blob store (operator): scrub, garbage collection, index.", no_args_is_help=True
)


@contextmanager
def _store() -> Iterator[BlobStore]:
    from opensci.db import Database
    from opensci.settings import Settings
    from opensci.storage.store import BlobStore

    settings = Settings()
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    db.upgrade()
    store = BlobStore(settings, db)
    try:
        yield store
    finally:
        store.close()
        db.dispose()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@storage_app.command("verify")
def verify(json_output: JsonOpt = False) -> None:
    """Re-hash every stored chunk; quarantine damaged chunks and the objects using them.

    Exits with status 1 if anything is damaged (a fresh upload of a damaged file repairs it)."""
    from opensci.storage.maintenance import verify as run

    with _store() as store:
        report = run(store)
    if json_output:
        print_json({**vars(report), "ok": report.ok})
    else:
        typer.echo(
            f"checked {report.chunks} chunks ({_size(report.bytes)}) in {report.packs} packs, "
            f"{report.objects} objects"
        )
        if report.repaired_chunks or report.repaired_objects:
            typer.echo(f"healthy again: {report.repaired_chunks} chunks, {report.repaired_objects} objects")
        if report.ok:
            typer.echo("no damage found")
        else:
            typer.secho(
                f"DAMAGED: {report.damaged_chunks} chunks ({report.newly_damaged_chunks} found now), "
                f"{report.damaged_objects} objects quarantined",
                fg="red",
                err=True,
            )
            for pack in report.missing_packs:
                typer.echo(f"missing pack file: {pack}", err=True)
            for oid in report.damaged_object_examples:
                typer.echo(f"damaged object: {oid}", err=True)
            typer.echo("hint: upload the damaged files again to repair them", err=True)
    if not report.ok:
        raise typer.Exit(1)


@storage_app.command("gc")
def gc(
    grace: Annotated[
        float | None,
        typer.Option(
            "--grace", help="Spare what was used this many seconds ago or less (default: the setting)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would go; change nothing.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Delete blobs that no revision of any repository references, then compact sparse packs."""
    from sqlalchemy import select

    from opensci.db.base import utcnow
    from opensci.repos.gitstore import GitStore
    from opensci.repos.models import Repository
    from opensci.storage.gc import gc as run
    from opensci.storage.gc import release_holds
    from opensci.storage.references import referenced_by_repo

    with _store() as store:
        started = utcnow()  # the grace period counts back from before the references are read
        with store.db.session() as session:
            repo_ids = session.scalars(select(Repository.id)).all()
        settings = store.settings
        try:
            per_repo = referenced_by_repo(GitStore(settings.git_dir, settings.git_binary), repo_ids)
        except (FileNotFoundError, RuntimeError) as exc:
            typer.secho(f"error: {exc}; nothing was collected", fg="red", err=True)
            raise typer.Exit(1) from None
        referenced = set().union(*per_repo.values())
        report = run(store, referenced, grace, dry_run=dry_run, started=started)
        released = release_holds(store, per_repo, grace, dry_run=dry_run, started=started)
    if json_output:
        print_json(
            {
                **vars(report),
                "referenced_objects": len(referenced),
                "repositories": len(repo_ids),
                "holds_released": released,
            }
        )
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{len(repo_ids)} repositories reference {len(referenced)} objects")
    typer.echo(
        f"{verb} {report.objects_deleted} objects ({_size(report.object_bytes)}), "
        f"{report.chunks_deleted} chunks ({_size(report.chunk_bytes)}), {report.packs_deleted} packs; "
        f"{'would compact' if dry_run else 'compacted'} {report.packs_compacted} packs"
    )
    typer.echo(f"{'would reclaim' if dry_run else 'reclaimed'} {_size(report.bytes_reclaimed)} on disk")
    if report.packs_skipped:
        typer.echo(
            f"{report.packs_skipped} packs left as they are: in use by a writer (a running server; run gc "
            "again later) or holding damaged chunks (see `opensci storage verify`)"
        )
    typer.echo(f"{'would release' if dry_run else 'released'} {released} unreferenced objects from quotas")
    for error in report.errors:
        typer.echo(f"warning: {error}", err=True)


@storage_app.command("reindex")
def reindex(json_output: JsonOpt = False) -> None:
    """Rebuild the chunk index by scanning every pack file."""
    from opensci.storage.maintenance import reindex as run

    with _store() as store:
        report = run(store)
    if json_output:
        print_json(vars(report))
        return
    typer.echo(f"scanned {report.packs} packs, {report.records} valid records")
    typer.echo(
        f"chunks: {report.chunks_added} added, {report.chunks_repointed} repointed, "
        f"{report.chunks_repaired} healthy again, {report.chunks_damaged} damaged; "
        f"{report.packs_recorded} unknown packs recorded"
    )
    typer.echo(f"objects: {report.damaged_objects} damaged, {report.repaired_objects} healthy again")


@storage_app.command("stats")
def stats(json_output: JsonOpt = False) -> None:
    """Objects, chunks and packs: counts, logical and stored bytes."""
    from opensci.storage.maintenance import stats as run

    with _store() as store:
        s = run(store)
    if json_output:
        print_json(s)
        return
    typer.echo(f"objects: {s.objects} ({_size(s.object_bytes)}), {s.damaged_objects} damaged")
    typer.echo(f"chunks:  {s.chunks} ({_size(s.chunk_bytes)}), {s.damaged_chunks} damaged")
    typer.echo(f"packs:   {s.packs} ({_size(s.pack_bytes)} on disk)")


def register(app: typer.Typer) -> None:
    app.add_typer(storage_app, name="storage")


def _parse_bytes(text: str) -> int:
    """`1000`, `500MB`, `10GiB`, `2TB` → bytes."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    units |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 500MB, 10GiB, 0 for unlimited)") from None
    if unit not in units or value < 0:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 500MB, 10GiB, 0 for unlimited)")
    return int(value * units[unit])


@storage_app.command("quota")
def quota_command(
    owner: Annotated[str, typer.Argument(help="A user or organization.")],
    limit: Annotated[
        str | None, typer.Option("--limit", help="Set the quota: bytes or e.g. 500MB, 10GiB; 0 = unlimited.")
    ] = None,
    default: Annotated[bool, typer.Option("--default", help="Return to the server's default quota.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Show an owner's storage use and quota; with --limit or --default, change the quota."""
    from opensci.accounts.service import get_owner
    from opensci.errors import OpenSciError
    from opensci.storage import quota

    if limit is not None and default:
        raise typer.BadParameter("give --limit or --default, not both")
    new = _parse_bytes(limit) if limit is not None else None
    with _store() as store, store.db.session() as session:
        try:
            row = get_owner(session, owner)
        except OpenSciError as exc:
            typer.secho(f"error: {exc.message}", fg="red", err=True)
            raise typer.Exit(1) from None
        if limit is not None or default:
            quota.set_limit(session, row, new)
            session.commit()
        u = quota.usage(session, store.settings, row.id)
    if json_output:
        print_json(
            {
                "owner": row.name,
                "used_bytes": u.used_bytes,
                "limit_bytes": u.limit_bytes,
                "objects": u.objects,
                "pending_bytes": u.pending_bytes,
            }
        )
        return
    cap = "unlimited" if u.limit_bytes is None else _size(u.limit_bytes)
    unfinished = f"; unfinished uploads hold {_size(u.pending_bytes)} more" if u.pending_bytes else ""
    typer.echo(f"{row.name}: {_size(u.used_bytes)} used of {cap} ({u.objects} objects){unfinished}")
