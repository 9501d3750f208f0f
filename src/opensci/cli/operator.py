"""Operator commands, run on the server's machine: they act with full rights through the services."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from opensci.settings import Settings

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
user_app = typer.Typer(help="User accounts (operator).", no_args_is_help=True)
org_app = typer.Typer(help="Organizations (operator).", no_args_is_help=True)
demo_app = typer.Typer(help="The demo content.", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)


@contextmanager
def _session(migrate: bool = False) -> Iterator[tuple[Settings, Session]]:
    from opensci.db import Database
    from opensci.errors import OpenSciError
    from opensci.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    if migrate:
        db.upgrade()
    try:
        with db.session() as session:
            yield settings, session
    except OpenSciError as exc:
        _fail(exc.message)
    finally:
        db.dispose()


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Migrate the database and serve the web UI, REST API and git over HTTP."""
    import uvicorn

    from opensci.db import Database
    from opensci.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    db.upgrade()
    db.dispose()
    uvicorn.run(
        "opensci.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
        access_log=False,  # our middleware logs every request with its request id
        proxy_headers=True,
    )


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the database migrations."""
    from opensci.db import Database
    from opensci.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    db.upgrade(revision)
    db.dispose()
    typer.echo(f"database at {revision}")


@user_app.command("create")
def user_create(
    name: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    email: str = "",
    admin: Annotated[bool, typer.Option("--admin", help="Make a site administrator.")] = False,
) -> None:
    """Create a user account (open registration or not)."""
    from opensci.accounts import service

    with _session(migrate=True) as (_, session):
        user = service.create_user(session, name, password, email=email, is_admin=admin)
        session.commit()
        typer.echo(f"created user {user.name}{' (admin)' if admin else ''}")


def token_create_for(user: str, scope: str, name: str) -> None:
    """`opensci token create --user NAME`: a token for any user, made on the server's machine."""
    from opensci.accounts import service

    with _session(migrate=True) as (_, session):
        u = service.get_user(session, user)
        token, secret = service.issue_token(session, u, name, scope)
        session.commit()
        typer.echo(f"token {token.id} ({token.scope}) for {u.name}", err=True)
        typer.echo(secret)


@org_app.command("create")
def org_create(
    name: str,
    owner: Annotated[str, typer.Option(help="The user who becomes the organization's owner.")],
    display_name: str = "",
) -> None:
    """Create an organization owned by a user."""
    from opensci.accounts import service
    from opensci.accounts.permissions import Actor

    with _session(migrate=True) as (_, session):
        actor = Actor.operator(service.get_user(session, owner))
        org = service.create_org(actor, session, name, display_name=display_name)
        session.commit()
        typer.echo(f"created organization {org.name} (owner: {owner})")


@org_app.command("add-member")
def org_add_member(
    org: str,
    user: str,
    role: Annotated[str, typer.Option(help="read, write, admin or owner")] = "write",
) -> None:
    """Add a user to an organization, or change their role."""
    from opensci.accounts import service
    from opensci.accounts.permissions import Actor

    with _session(migrate=True) as (_, session):
        m = service.set_member(
            Actor.operator(), session, service.get_org(session, org), service.get_user(session, user), role
        )
        session.commit()
        typer.echo(f"{user} is now {m.role} of {org}")


@demo_app.command("seed")
def demo_seed(
    password: Annotated[
        str, typer.Option(envvar="OPENSCI_DEMO_PASSWORD", help="The demo admin's password.")
    ] = "opensci-demo",
) -> None:
    """Create the demo (idempotent): an admin, an organization, one public repository of each kind."""
    from opensci.demo import seed
    from opensci.repos.gitstore import GitStore

    with _session(migrate=True) as (settings, session):
        created = seed(session, GitStore(settings.git_dir, settings.git_binary), password, settings.base_url)
        if created:
            typer.echo(f"demo created: log in as 'admin' with password {password!r}")
        else:
            typer.echo("demo already present")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(db_app, name="db")
    app.add_typer(user_app, name="user")
    app.add_typer(org_app, name="org")
    app.add_typer(demo_app, name="demo")
