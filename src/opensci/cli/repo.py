"""`opensci repo create|list|info|delete`: repositories, through the SDK."""

from __future__ import annotations

import itertools
from typing import Annotated

import typer

from opensci.cli import output
from opensci.cli.commands import Kind, RepoArg, connect
from opensci.cli.output import JsonOpt, handle_errors, print_json

repo_app = typer.Typer(help="Repositories: create, list, show, delete.", no_args_is_help=True)


@repo_app.command("create")
@handle_errors
def create(
    repo_id: Annotated[
        str, typer.Argument(metavar="OWNER/NAME|NAME", help="The new repository (default owner: you).")
    ],
    kind: Annotated[Kind, typer.Option("--kind", help="What it holds.")] = Kind.code,
    private: Annotated[bool, typer.Option("--private", help="Visible only to its owner's members.")] = False,
    description: Annotated[str, typer.Option("--description", help="One line about it.")] = "",
    license: Annotated[
        str, typer.Option("--license", help="An SPDX identifier, e.g. MIT or CC-BY-4.0.")
    ] = "",
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Succeed if it exists already (unchanged).")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Create a repository of code, a dataset or a model."""
    with connect() as client:
        repo = client.create_repo(
            repo_id,
            kind=kind.value,
            private=private,
            description=description,
            license=license,
            exist_ok=exist_ok,
        )
    if json_output:
        print_json(repo)
        return
    typer.echo(f"{repo.kind} repository {repo.full_name}{' (private)' if repo.private else ''}: {repo.url}")


@repo_app.command("list")
@handle_errors
def list_(
    owner: Annotated[str | None, typer.Option("--owner", help="Only this user's or organization's.")] = None,
    kind: Annotated[Kind | None, typer.Option("--kind", help="Only this kind.")] = None,
    search: Annotated[
        str | None, typer.Option("--search", "-q", help="Text in the name, owner or description.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    json_output: JsonOpt = False,
) -> None:
    """List the repositories you may read, most recently updated first."""
    with connect() as client:
        found = client.list_repos(
            owner=owner, kind=kind.value if kind else None, q=search, per_page=min(limit, 100)
        )
        repos = list(itertools.islice(found, limit))
    if json_output:
        print_json(repos)
        return
    if not repos:
        output.note("No repositories found.")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False)
    table.add_column("REPOSITORY", no_wrap=True, min_width=max(len(r.full_name) for r in repos))
    for column, width in (("KIND", 7), ("VISIBILITY", 10), ("UPDATED", 16)):
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("DESCRIPTION", no_wrap=True, overflow="ellipsis", ratio=1)
    for r in repos:
        table.add_row(
            Text(r.full_name),
            r.kind,
            "private" if r.private else "public",
            output.short_date(r.updated_at),
            Text(r.description.splitlines()[0] if r.description else ""),
        )
    output.stdout().print(table)


@repo_app.command("info")
@handle_errors
def info(repo_id: RepoArg, json_output: JsonOpt = False) -> None:
    """Show a repository's settings and URLs."""
    with connect() as client:
        repo = client.repo_info(repo_id)
    if json_output:
        print_json(repo)
        return
    rows = {
        "repository": repo.full_name,
        "kind": repo.kind,
        "visibility": "private" if repo.private else "public",
        "description": repo.description,
        "license": repo.license,
        "tags": ", ".join(repo.tags),
        "default branch": repo.default_branch,
        "created": output.short_date(repo.created_at),
        "updated": output.short_date(repo.updated_at),
        "url": repo.url,
        "clone": repo.clone_url,
    }
    for key, value in rows.items():
        if value:
            typer.echo(f"{key + ':':<16}{value}")


@repo_app.command("delete")
@handle_errors
def delete(
    repo_id: RepoArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Delete a repository with all its history. Asks first, unless --yes."""
    with connect() as client:
        repo = client.repo_info(repo_id)
        if not yes:
            typer.confirm(f"Delete {repo.full_name} and all its history? This cannot be undone", abort=True)
        client.delete_repo(repo.full_name)
    if json_output:
        print_json({"deleted": repo.full_name})
        return
    typer.echo(f"Deleted {repo.full_name}.")
