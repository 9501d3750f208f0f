"""`opensci token create|list|revoke`: API tokens of the logged-in user, through the SDK.

`token create --user NAME` is the operator's form: run on the server's machine, it makes a token for
any user straight in the database (no login needed).
"""

from __future__ import annotations

from typing import Annotated

import typer

from opensci.cli import output
from opensci.cli.commands import connect
from opensci.cli.output import JsonOpt, handle_errors, print_json

token_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)


@token_app.command("create")
@handle_errors
def create(
    scope: Annotated[str, typer.Option("--scope", help="read or write")] = "read",
    name: Annotated[str, typer.Option("--name", help="A label for the token.")] = "cli",
    user: Annotated[
        str | None,
        typer.Option("--user", help="Operator: make it for this user, on the server's machine."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Create an API token; the token is printed as the last line (it is never shown again)."""
    if scope not in ("read", "write"):
        raise output.fail(
            f"scope must be 'read' or 'write', not {scope!r}", code="usage", as_json=json_output
        )
    if user is not None:
        from opensci.cli.operator import token_create_for

        token_create_for(user, scope, name)
        return
    with connect() as client:
        token = client.create_token(name, scope)
    if json_output:
        print_json(token)
        return
    output.note(f"token {token.id} ({token.scope}) named {token.name!r}; copy it now, it is not shown again")
    typer.echo(token.token)


@token_app.command("list")
@handle_errors
def list_(json_output: JsonOpt = False) -> None:
    """List your tokens: ids, names, scopes and first characters, never the secrets."""
    with connect() as client:
        tokens = client.list_tokens()
    if json_output:
        print_json(tokens)
        return
    if not tokens:
        output.note("No tokens.")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    # The id is what `token revoke` needs: whole even on a narrow terminal or in a pipe (80 columns).
    table.add_column("ID", no_wrap=True, min_width=max(len(t.id) for t in tokens))
    for column in ("NAME", "SCOPE", "STARTS WITH", "CREATED", "LAST USED"):
        table.add_column(column, no_wrap=True)
    for t in tokens:
        table.add_row(
            t.id,
            t.name,
            t.scope,
            t.prefix + "…",
            output.short_date(t.created_at),
            output.short_date(t.last_used_at) if t.last_used_at else "never",
        )
    output.stdout().print(table)


@token_app.command("revoke")
@handle_errors
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id, from `opensci token list`.")],
    json_output: JsonOpt = False,
) -> None:
    """Revoke one of your tokens; it stops working at once."""
    with connect() as client:
        client.revoke_token(token_id)
    if json_output:
        print_json({"revoked": token_id})
        return
    output.note(f"token {token_id} revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
