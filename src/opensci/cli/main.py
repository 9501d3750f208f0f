"""Entry point of the `opensci` command. Heavy modules are imported inside commands, so it starts fast."""

from __future__ import annotations

import typer

from opensci.cli import commands, compute, operator, storage, tokens

app = typer.Typer(
    name="opensci",
    help="OpenSci: open code, open data, open compute. Run `opensci COMMAND --help` for details.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
operator.register(app)
commands.register(app)
tokens.register(app)
storage.register(app)
compute.register(app)

if __name__ == "__main__":
    app()
