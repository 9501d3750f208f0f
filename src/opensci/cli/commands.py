"""User commands over the SDK: login, repo, upload, download, ls, log."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
