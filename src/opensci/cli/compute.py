"""`opensci compute worker`: the job scheduler on its own (operator), e.g. on a login node of a cluster or
as extra schedulers beside web servers started with OPENSCI_COMPUTE_SCHEDULER=false."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

compute_app = typer.Typer(help="Open compute (operator): run the job scheduler.", no_args_is_help=True)


@compute_app.command("worker")
def worker(
    once: Annotated[
        bool, typer.Option(help="Do one round of scheduling and exit (for cron or tests).")
    ] = False,
) -> None:
    """Claim queued jobs, run them with their executors and record how they end, until stopped (Ctrl-C or
    SIGTERM; running jobs go on and a scheduler started later takes them over)."""
    from opensci.compute.scheduler import Scheduler
    from opensci.db import Database
    from opensci.repos.gitstore import GitStore
    from opensci.settings import Settings
    from opensci.storage.store import BlobStore

    settings = Settings()
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    db.upgrade()
    blobs = BlobStore(settings, db)
    scheduler = Scheduler(settings, db, GitStore(settings.git_dir, settings.git_binary), blobs)
    try:
        if once:
            scheduler.tick()
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        typer.echo(f"scheduler {scheduler.id}: executors {', '.join(settings.enabled_executors)}")
        scheduler.start()
        stop.wait()
    finally:
        scheduler.stop()
        blobs.close()
        db.dispose()


def register(app: typer.Typer) -> None:
    app.add_typer(compute_app, name="compute")
