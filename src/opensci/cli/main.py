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


def main() -> None:
    """Run the command; a bad setting (an OPENSCI_* variable or opensci.toml) is one clear line each."""
    try:
        app()
    except Exception as exc:
        if type(exc).__name__ != "ValidationError" or getattr(exc, "title", None) != "Settings":
            raise
        for error in exc.errors():  # type: ignore[attr-defined]
            name = "OPENSCI_" + "_".join(str(part) for part in error["loc"]).upper()
            typer.echo(f"opensci: bad setting {name}={error.get('input')!r}: {error['msg']}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
