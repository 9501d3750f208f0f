"""One output layer for the user commands: human text or `--json`, errors with a hint, progress bars.

Results go to stdout; progress, notes and errors go to stderr, so `--json` output can be piped as is.
Only typer and rich are imported here; the SDK (and httpx) load when a command runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (machine-readable).")]

P = ParamSpec("P")
R = TypeVar("R")


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and paths → plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def note(message: str) -> None:
    """A line for the human at the terminal (stderr)."""
    typer.echo(message, err=True)


def fail(message: str, hint: str = "", *, code: str = "error", as_json: bool = False) -> typer.Exit:
    """Print `error: message` (and the hint) on stderr, plus a JSON error on stdout with --json;
    returns the Exit(1) to raise. Control characters in them (a name the server echoes back) are shown,
    not sent to the terminal."""
    from opensci.cli.job_view import visible_lines

    typer.secho(f"error: {visible_lines(message)}", fg="red", err=True)
    if hint:
        typer.echo(f"hint: {visible_lines(hint)}", err=True)
    if as_json:
        print_json({"error": code, "message": message, "hint": hint})
    return typer.Exit(1)


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn SDK errors and local file errors into `error:` + `hint:` lines and exit code 1, never a
    traceback. The command's `json_output` argument decides whether a JSON error goes to stdout too."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from opensci.client.errors import OpenSciError

        as_json = bool(kwargs.get("json_output"))
        try:
            return command(*args, **kwargs)
        except OpenSciError as exc:
            raise fail(exc.message, exc.hint, code=exc.code, as_json=as_json) from None
        except BrokenPipeError:
            # The reader went away (`opensci ls … | head`): stop quietly, as other Unix tools do.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (flushed at exit, which must not fail again)
            raise typer.Exit(141) from None
        except OSError as exc:
            raise fail(str(exc), code="os_error", as_json=as_json) from None
        except KeyboardInterrupt:
            typer.echo("interrupted (run the same command again: it resumes where it stopped)", err=True)
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def transfer_progress(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr (bytes, speed, time left); yields the SDK's `progress(done, total)`."""
    if not enabled:
        yield None
        return
    with _bar() as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


class UploadBars:
    """The progress callbacks of an upload: one bar for the bytes hashed (large files are cut into
    chunks and hashed first), one for the bytes that reached the server or that it already had."""

    def __init__(self, bar: Progress | None, label: str) -> None:
        self.bar = bar
        self.label = label
        self._hash_task: TaskID | None = None
        self._send_task: TaskID | None = None

    def hashed(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self._hash_task is None:
            self._hash_task = self.bar.add_task("Hashing", total=total or None)
        self.bar.update(self._hash_task, completed=done, total=total or None)

    def uploaded(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self._send_task is None:
            self._send_task = self.bar.add_task(self.label, total=total or None)
        self.bar.update(self._send_task, completed=done, total=total or None)


@contextmanager
def upload_progress(label: str, enabled: bool = True) -> Iterator[UploadBars]:
    """Progress bars on stderr for an upload (bytes hashed; bytes uploaded), as `UploadBars` callbacks."""
    if not enabled:
        yield UploadBars(None, label)
        return
    with _bar() as bar:
        yield UploadBars(bar, label)


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr(),
    )


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def short_date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""
