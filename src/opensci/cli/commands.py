"""User commands over the SDK: login, logout, whoami, repo, upload, download, ls, log (and job).

They find the server and token as the SDK does (OPENSCI_URL, OPENSCI_TOKEN, then the file written by
`opensci login`). The SDK is imported inside each command, so `opensci --help` stays fast.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from opensci.cli import output
from opensci.cli.output import JsonOpt, handle_errors, note, print_json

if TYPE_CHECKING:
    from opensci.client import Client, Repo
    from opensci.client.config import SavedLogin


class Kind(StrEnum):
    code = "code"
    dataset = "dataset"
    model = "model"


def _repo_id(value: str) -> str:
    """Check OWNER/NAME before anything runs: a malformed one is a usage error (exit code 2)."""
    from opensci.client import ValidationError, split_repo_id

    try:
        return "/".join(split_repo_id(value))
    except ValidationError as exc:
        raise typer.BadParameter(exc.message) from None


RepoArg = Annotated[str, typer.Argument(metavar="OWNER/NAME", help="The repository.", callback=_repo_id)]
RevOpt = Annotated[
    str | None, typer.Option("--rev", help="Branch, tag or commit id (default: the default branch).")
]


def connect(url: str | None = None, token: str | None = None) -> Client:
    """An SDK client; url and token default as the SDK defines (environment, then the saved login)."""
    from opensci.client import Client

    return Client(url, token)


# --- login -----------------------------------------------------------------------------------------------


@handle_errors
def login(
    url: Annotated[
        str | None, typer.Option("--url", help="The server (default: OPENSCI_URL, then the saved one).")
    ] = None,
    token: Annotated[str | None, typer.Option("--token", help="An API token to use.")] = None,
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="Log in with a password instead of a token.")
    ] = None,
    password: Annotated[
        str | None, typer.Option("--password", help="The password (asked for when not given).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Log in to a server and save its URL and a token in the config file (mode 0600).

    Give --token, or --username (and the password when asked): a new write-scope token is then created
    for this machine. Without either, the token is asked for."""
    import socket

    from opensci.client import config

    if token and username:
        raise typer.BadParameter("give either --token or --username, not both")
    saved = config.load()
    url, _ = config.resolve(url, "")
    token_id = ""
    if username:
        if password is None:
            password = typer.prompt(f"Password for {username}", hide_input=True)
        with connect(url, "") as anonymous:
            created = anonymous.login(username, password, token_name=f"opensci-cli@{socket.gethostname()}")
        token, token_id = created.token, created.id
    elif not token:
        token = typer.prompt(f"API token for {url}", hide_input=True).strip()
    with connect(url, token) as client:
        me = client.whoami()
    if saved.token_id and saved.token != token and config.normalize_url(saved.url) == url:
        _revoke_quietly(saved)  # the token an earlier `opensci login` created on this server
    path = config.save(config.SavedLogin(url=url, token=token, token_id=token_id))
    if json_output:
        print_json({"url": url, "user": me.name, "token_scope": me.token_scope, "config": str(path)})
        return
    typer.echo(f"Logged in to {url} as {me.name} (token scope: {me.token_scope}).")
    note(f"Saved to {path}")


def _revoke_quietly(saved: SavedLogin) -> bool:
    from opensci.client import OpenSciError

    try:
        with connect(saved.url, saved.token) as client:
            client.revoke_token(saved.token_id)
    except OpenSciError:
        return False
    return True


@handle_errors
def logout(json_output: JsonOpt = False) -> None:
    """Forget the saved login; a token that `opensci login` created is revoked on the server too."""
    import os

    from opensci.client import config

    saved = config.load()
    revoked = bool(saved.token_id and saved.token) and _revoke_quietly(saved)
    removed = config.remove()
    if json_output:
        print_json({"logged_out": removed, "token_revoked": revoked, "config": str(config.config_path())})
        return
    typer.echo(f"Logged out of {saved.url}." if removed else "Not logged in: no saved login to remove.")
    if saved.token_id and not revoked:
        note("The token could not be revoked on the server; revoke it under Settings → Tokens.")
    if os.environ.get("OPENSCI_TOKEN"):
        note("OPENSCI_TOKEN is still set in the environment and keeps being used.")


@handle_errors
def whoami(json_output: JsonOpt = False) -> None:
    """Show who the saved or given token acts as, on which server."""
    with connect() as client:
        me = client.whoami()
        url = client.url
    if json_output:
        print_json({"url": url, **output.jsonable(me)})
        return
    admin = ", site admin" if me.is_admin else ""
    typer.echo(f"{me.name} on {url} (token scope: {me.token_scope}{admin})")
    if me.orgs:
        typer.echo("organizations: " + ", ".join(f"{o.name} ({o.role})" for o in me.orgs))


# --- files -----------------------------------------------------------------------------------------------


def _ensure_repo(client: Client, repo_id: str, kind: Kind | None, private: bool) -> tuple[Repo, bool]:
    """The repository, created (of `kind`, default code) when it does not exist yet."""
    from opensci.client import OpenSciError, RepoNotFoundError

    try:
        repo = client.repo_info(repo_id)
    except RepoNotFoundError:
        kind_value = kind.value if kind else "code"
        return client.create_repo(repo_id, kind=kind_value, private=private, exist_ok=True), True
    if kind is not None and repo.kind != kind.value:
        raise OpenSciError(
            f"{repo.full_name} is a {repo.kind} repository, not a {kind.value} one",
            code="kind_mismatch",
        )
    if private and not repo.private:
        note(f"{repo.full_name} exists and is public; --private applies only when creating a repository.")
    return repo, False


@handle_errors
def upload(
    repo_id: RepoArg,
    local: Annotated[Path, typer.Argument(metavar="LOCAL", help="A file or a folder.", exists=True)],
    path_in_repo: Annotated[
        str | None,
        typer.Argument(
            metavar="PATH_IN_REPO",
            help="Where it goes: for a file, its path (default: its name; ending in / means into that "
            "folder); for a folder, the folder its contents go into (default: the root). `.` is the root.",
        ),
    ] = None,
    kind: Annotated[
        Kind | None, typer.Option("--kind", help="Kind of the repository if it is created (default: code).")
    ] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="The commit message.")] = None,
    branch: Annotated[
        str | None, typer.Option("--branch", help="Branch to commit to (default: the default).")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Upload a file or a folder as one commit, creating the repository if it does not exist.

    Folders are walked recursively, without .git/. Prints the commit id and the repository's URL."""
    from opensci.client.transfer import collect

    # Fails early, before the repository is created, if LOCAL is missing or a path in the repository is bad.
    files = collect(local, path_in_repo)
    with connect() as client:
        repo, created = _ensure_repo(client, repo_id, kind, private)
        if created:
            note(f"Created {repo.kind} repository {repo.full_name}{' (private)' if repo.private else ''}")
        with output.upload_progress(f"Uploading {local.name or local}", enabled=not json_output) as bars:
            result = client.upload_with_result(
                repo.full_name,
                local,
                path_in_repo,
                message=message,
                branch=branch,
                progress=bars.uploaded,
                hash_progress=bars.hashed,
            )
    commit = result.commit
    size = sum(f.size for f in files)
    target = branch or repo.default_branch
    if json_output:
        print_json(
            {
                "commit": commit,
                "repo": repo.full_name,
                "branch": target,
                "url": repo.url,
                "created_repo": created,
                "files": [f.path_in_repo for f in files],
                "bytes": size,
                "bytes_sent": result.bytes_sent,
                "chunked_files": result.chunked_files,
                "changed": result.changed,
            }
        )
        return
    if result.changed:
        note(f"Committed {len(files)} file(s), {output.human_size(size)}, to {repo.full_name} ({target})")
    else:
        note(f"Nothing changed: {repo.full_name} ({target}) already has these files; no commit was made")
    if result.chunked_files:
        share = min(result.bytes_sent / size, 1.0) if size else 0.0
        note(
            f"Sent {output.human_size(result.bytes_sent)} (about {share:.1%} of the files' size): only the "
            f"chunks the server lacked; {len(result.chunked_files)} large file(s) stored as Git LFS files"
        )
    typer.echo(commit)
    typer.echo(repo.url)


@handle_errors
def download(
    repo_id: RepoArg,
    path: Annotated[
        str | None, typer.Argument(help="A file or folder in the repository (default: everything).")
    ] = None,
    rev: RevOpt = None,
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Folder to download into (default: ./NAME, as git clone does)."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Download a file, a folder or a whole repository, all read at one commit.

    Files keep their paths in the repository, under the --to folder. Files already there with the same
    content are skipped, and interrupted downloads resume."""
    from opensci.client import split_repo_id
    from opensci.client.transfer import local_target

    _, name = split_repo_id(repo_id)
    local_dir = to if to is not None else Path(name)
    with connect() as client, output.transfer_progress("Downloading", enabled=not json_output) as progress:
        result = client.download(repo_id, path, rev=rev, local_dir=local_dir, progress=progress)
    if json_output:
        print_json(result)
        return
    note(f"{len(result.files)} file(s) at commit {result.commit[:12]} in {result.local_dir}")
    single_file = path is not None and result.files == [local_target(local_dir, path.strip("/"))]
    typer.echo(str(result.files[0] if single_file else result.local_dir))


@handle_errors
def ls(
    repo_id: RepoArg,
    path: Annotated[str, typer.Argument(help="A folder (or file) in the repository.")] = "",
    rev: RevOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="List all files below.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """List the files and folders of a repository at a revision."""
    from opensci.client import ValidationError

    with connect() as client:
        try:
            tree = client.list_tree(repo_id, path, rev=rev, recursive=recursive)
            entries = tree.entries
        except ValidationError as exc:
            if exc.code != "not_a_folder":
                raise
            parent = path.strip("/").rpartition("/")[0]
            tree = client.list_tree(repo_id, parent, rev=rev)
            entries = [e for e in tree.entries if e.path == path.strip("/")]
    if json_output:
        print_json({"commit": tree.commit, "path": tree.path, "entries": entries})
        return
    for e in entries:
        shown = f"{e.path}/" if e.type == "dir" else e.path
        typer.echo(f"{e.type:<9} {output.human_size(e.size):>9}  {shown}")


@handle_errors
def log(
    repo_id: RepoArg,
    rev: RevOpt = None,
    path: Annotated[str | None, typer.Option("--path", help="Only commits that changed this path.")] = None,
    max_count: Annotated[int, typer.Option("-n", "--max-count", min=1, help="How many commits.")] = 20,
    json_output: JsonOpt = False,
) -> None:
    """Show the history of a branch (newest first), optionally of one path."""
    with connect() as client:
        commits = list(
            itertools.islice(
                client.list_commits(repo_id, rev=rev, path=path, per_page=min(max_count, 100)), max_count
            )
        )
    if json_output:
        print_json(commits)
        return
    for c in commits:
        typer.echo(f"{c.id[:12]}  {output.short_date(c.date)}  {c.author_name:<16}  {c.title}")


def register(app: typer.Typer) -> None:
    from opensci.cli.job import job_app
    from opensci.cli.repo import repo_app

    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.add_typer(repo_app, name="repo")
    app.command()(upload)
    app.command()(download)
    app.command()(ls)
    app.command()(log)
    app.add_typer(job_app, name="job")
