"""How jobs look in the terminal: the list table, the provenance of `job status`, the end-of-job line, the
live status line (spinner, status, phase, elapsed time) shown while following or waiting, on a terminal
only, and the log itself: written byte for byte to a file or a pipe, but with its control characters
made visible on a terminal, so that a job cannot send escape sequences to the user's terminal."""

from __future__ import annotations

import codecs
import re
import shlex
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING

import typer
from rich.console import Console, ConsoleOptions
from rich.segment import Segment
from rich.text import Text

from opensci.cli import output

if TYPE_CHECKING:
    from rich.live import Live
    from rich.spinner import Spinner

    from opensci.client import Client, Job

STATUS_STYLES = {
    "queued": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "timeout": "red",
    "cancelled": "yellow",
}


def human_seconds(seconds: float | None) -> str:
    """`0.4 s`, `12 s`, `3m05s`, `1h02m`, `2d03h`."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def binary_size(n: int | None) -> str:
    if not n:
        return "-"
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if n >= 1024**power:
            return f"{n / 1024**power:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def elapsed(job: Job, now: datetime | None = None) -> float | None:
    """Seconds the job has run (ended minus started, or up to now while running)."""
    if job.started_at is None:
        return None
    end = job.ended_at or now or datetime.now(UTC)
    return max((end - job.started_at).total_seconds(), 0.0)


def command_line(job: Job) -> str:
    return shlex.join(job.command)


def ref_text(repo: str, rev: str | None, commit: str | None) -> str:
    at = f"@{rev}" if rev else ""
    return f"{repo}{at}" + (f"  {commit}" if commit else "")


def status_text(job: Job) -> Text:
    return Text(job.status, style=STATUS_STYLES.get(job.status, ""))


# `job list` columns. Those of fixed content (id, status, start, duration) are always shown whole; the
# others shrink, with an ellipsis, when the terminal is narrow: each keeps at least its floor, and the
# room left is shared by weight (the command gets the most). If even the floors do not fit, STARTED and
# then DURATION are left out.
_GAP = 2  # spaces between two columns
_SHRINKABLE = {"SUBMITTER": (9, 1), "CODE": (10, 1), "COMMAND": (10, 2)}  # name: (floor, weight)
_DROPPABLE = ("STARTED", "DURATION")


def share_width(natural: list[int], floors: list[int], weights: list[int], room: int) -> list[int]:
    """Widths of shrinkable columns that want `natural` widths, in `room` cells: all of it if it fits,
    else each gets at least min(natural, floor) and the rest is shared out by weight; a column that
    needs less than its share keeps its natural width and leaves the difference to the others."""
    widths = [min(n, f) for n, f in zip(natural, floors, strict=True)]
    extra = room - sum(widths)
    if extra <= 0:
        return widths
    wants = [n - w for n, w in zip(natural, widths, strict=True)]
    order = sorted(range(len(widths)), key=lambda i: wants[i] / weights[i])
    weight_left = sum(weights)
    for i in order:
        given = min(wants[i], extra * weights[i] // weight_left)
        widths[i] += given
        extra -= given
        weight_left -= weights[i]
    return widths


def table(jobs: list[Job], width: int | None = None) -> None:
    """The `job list` table, fitted to `width` (default: the console's) without ever cutting an id or
    a status."""
    from rich.cells import cell_len
    from rich.table import Table

    console = output.stdout()
    width = width or console.width
    rows: list[dict[str, Text]] = []
    for job in jobs:
        short = f"@{job.code.commit[:10]}" if job.code.commit else ""
        rows.append(
            {
                "ID": Text(str(job.id)),
                "STATUS": status_text(job),
                "SUBMITTER": Text(job.submitter or "-"),
                "CODE": Text(f"{job.code.repo}{short}"),
                "COMMAND": Text(command_line(job)),
                "STARTED": Text(output.short_date(job.started_at)),
                "DURATION": Text(human_seconds(elapsed(job))),
            }
        )
    names = ["ID", "STATUS", "SUBMITTER", "CODE", "COMMAND", "STARTED", "DURATION"]
    natural = {n: max([cell_len(n)] + [cell_len(r[n].plain) for r in rows]) for n in names}
    shrinkable = list(_SHRINKABLE)
    floors = [_SHRINKABLE[n][0] for n in shrinkable]
    weights = [_SHRINKABLE[n][1] for n in shrinkable]
    for dropped in range(len(_DROPPABLE) + 1):
        shown = [n for n in names if n not in _DROPPABLE[:dropped]]
        fixed = sum(natural[n] for n in shown if n not in _SHRINKABLE)
        room = width - fixed - _GAP * (len(shown) - 1)
        if room >= sum(min(natural[n], f) for n, f in zip(shrinkable, floors, strict=True)):
            break
    widths = dict(natural)
    shared = share_width([natural[n] for n in shrinkable], floors, weights, room)
    widths.update(zip(shrinkable, shared, strict=True))

    t = Table(box=None, pad_edge=False, padding=(0, _GAP // 2), expand=False)
    for name in shown:
        t.add_column(
            name,
            justify="right" if name in ("ID", "DURATION") else "left",
            no_wrap=True,
            overflow="ellipsis",
            width=widths[name],
        )
    for row in rows:
        t.add_row(*(row[name] for name in shown))
    # Never narrower than the columns' floors: on a very narrow terminal lines wrap, ids stay whole.
    console.width = max(width, sum(widths[n] for n in shown) + _GAP * (len(shown) - 1))
    console.print(t)


def provenance(job: Job) -> None:
    """Everything recorded about a job, one `key: value` a line, for `opensci job status`."""
    headline = Text(f"job {job.id}: ")
    headline.append_text(status_text(job))
    if not job.finished and job.phase:
        headline.append(f" ({job.phase})")
    if job.exit_code is not None:
        headline.append(f", exit code {job.exit_code}")
    if job.cancel_requested and not job.finished:
        headline.append(", cancel requested")
    rows: list[tuple[str, str]] = [
        ("url", job.url),
        ("submitter", job.submitter or "-"),
        ("command", command_line(job)),
        ("code", ref_text(job.code.repo, job.code.rev, job.code.commit)),
    ]
    rows += [(f"input {name}", ref_text(r.repo, r.rev, r.commit)) for name, r in job.inputs.items()]
    if job.output is not None:
        out = job.output
        commit = out.commit or ("(none yet)" if not job.finished else "(none)")
        rows.append(("output", f"{out.repo} branch {out.branch}  commit {commit}"))
    else:
        rows.append(("output", "none"))
    rows.append(("executor", f"{job.executor}, priority {job.priority}, attempts {job.attempts}"))
    res = job.resources
    time_limit = human_seconds(res.time_limit)
    rows.append(
        (
            "resources",
            f"{res.cpus} CPU{'s' if res.cpus != 1 else ''}, {binary_size(res.memory)} memory, "
            f"time limit {time_limit}, {res.gpus} GPU{'s' if res.gpus != 1 else ''}",
        )
    )
    env = job.environment
    rows.append(("requirements", ", ".join(env.requirements) or "none"))
    if env.python:
        rows.append(("environment", f"Python {env.python}, key {env.key}, {len(env.packages)} package(s)"))
    if env.packages:
        rows.append(("packages", ", ".join(env.packages)))
    use = job.usage
    if use.wall_seconds is not None or use.cpu_seconds is not None:
        parts = [
            f"wall {human_seconds(use.wall_seconds) or '-'}",
            f"CPU {human_seconds(use.cpu_seconds) or '-'}",
        ]
        if use.max_rss_bytes:
            parts.append(f"max memory {binary_size(use.max_rss_bytes)}")
        if use.host:
            parts.append(f"host {use.host}")
        if use.signal:
            parts.append(f"signal {use.signal}")
        rows.append(("usage", ", ".join(parts)))
    for key, value in (("created", job.created_at), ("started", job.started_at), ("ended", job.ended_at)):
        if value is not None:
            rows.append((key, value.isoformat(timespec="seconds")))
    if job.reason or job.message:
        rows.append(("reason", f"{job.reason}: {job.message}" if job.reason else job.message))
    if job.rerun_of is not None:
        rows.append(("rerun of", f"job {job.rerun_of}"))
    console = output.stdout()
    console.print(headline)
    width = max(len(k) for k, _ in rows) + 2
    for key, value in rows:
        console.print(Text(f"{key + ':':<{width}}{value}"))


def summary(job: Job) -> str:
    """One line on how the job ended (or stands)."""
    took = human_seconds(elapsed(job))
    text = f"job {job.id} {job.status}" + (f" in {took}" if took and job.finished else "")
    if job.exit_code is not None:
        text += f" (exit code {job.exit_code})"
    if job.succeeded and job.output is not None and job.output.commit:
        text += f"; outputs committed to {job.output.repo} ({job.output.branch}): {job.output.commit}"
    elif job.finished and not job.succeeded and job.message:
        text += f": {job.message}"
    return text


# Control characters a job's output could use to drive the terminal (escape sequences move the
# cursor, clear the screen, retitle the window, write to the clipboard, make the terminal answer as if
# typed): shown in caret notation (ESC as `^[`, DEL as `^?`) and C1 controls as `\x9b`. Line feeds,
# tabs and carriage returns (progress bars redraw their line with them) pass.
_VISIBLE_CONTROLS = {
    **{c: f"^{chr(c + 64)}" for c in range(0x20) if chr(c) not in "\t\n\r"},
    0x7F: "^?",
    **{c: f"\\x{c:02x}" for c in range(0x80, 0xA0)},
}


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # the keys of _VISIBLE_CONTROLS


def terminal_safe(text: str) -> str:
    """Log text as it may be shown on a terminal: control characters but \\n, \\t and \\r made visible."""
    return _CONTROL.sub(lambda m: _VISIBLE_CONTROLS[ord(m[0])], text)


def last_rewrite(line: str) -> str:
    """A line redrawn with carriage returns (a progress bar) as its last non-empty version, which is
    about what a terminal ends up showing."""
    if "\r" not in line:
        return line
    versions = [part for part in line.split("\r") if part]
    return versions[-1] if versions else ""


class LogOutput:
    """Writes a job's log to stdout (or stderr): the bytes as they are to a file or a pipe; decoded,
    with control characters made visible (`terminal_safe`), to a terminal."""

    def __init__(self, err: bool = False) -> None:
        self.err = err
        self.terminal = (sys.stderr if err else sys.stdout).isatty()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> None:
        if not self.terminal:
            typer.echo(data, nl=False, err=self.err)  # bytes: written as they are, nothing stripped
            return
        text = terminal_safe(self._decoder.decode(data))
        if text:
            typer.echo(text, nl=False, err=self.err)

    def close(self) -> None:
        """Write what is left of a character cut at the very end (as U+FFFD)."""
        if self.terminal:
            rest = self._decoder.decode(b"", final=True)
            if rest:
                typer.echo(rest, nl=False, err=self.err)


class CommandStart:
    """Tells from the log, as it streams, whether the job's command has started printing: a line that
    is not one of the platform's `[opensci] ` notes, nor pip's output while an environment is built
    (what follows the note `[opensci] building environment` up to the next note). The job's phase is
    read separately and may lag behind; once the command has printed, `preparing` is no longer true."""

    NOTE = b"[opensci] "
    BUILDING = b"[opensci] building environment"
    HEAD = 64  # bytes of a line enough to judge it (fewer if they are not the start of a note)

    def __init__(self) -> None:
        self.seen = False
        self._head = b""
        self._judged = False  # the current line is judged already (its head was long enough)
        self._building = False

    def feed(self, data: bytes) -> None:
        pos = 0
        while not self.seen and pos < len(data):
            end = data.find(b"\n", pos)
            if not self._judged:
                stop = len(data) if end < 0 else end
                self._head += data[pos : min(stop, pos + self.HEAD - len(self._head))]
                head = self._head
                if end >= 0 or len(head) >= self.HEAD or not self.NOTE.startswith(head[: len(self.NOTE)]):
                    self._judge(self._head)
                    self._judged = True
            if end < 0:
                return
            self._head, self._judged = b"", False
            pos = end + 1

    def _judge(self, head: bytes) -> None:
        if head.startswith(self.NOTE):
            self._building = head.startswith(self.BUILDING)
        elif not self._building:
            self.seen = True


# Phases that say the command has not started: not true once it has printed.
_BEFORE_COMMAND = frozenset({"waiting", "preparing", "pending"})


class LiveStatus:
    """The status line under the log while a job is followed or waited for: a spinner, the job's status
    and phase, and how long it has been waiting or running. Shown only on a terminal, never with
    --json; when stdout is a terminal the line lives there and log lines are printed above it, else it
    lives on stderr (if that is a terminal) and logs go to stdout as `LogOutput` writes them.

    The phase shown is the job's, except that one saying the command has not started yet is left out
    once the log shows the command's own output (the phase is updated a moment after the command
    starts)."""

    def __init__(self, job: Job, enabled: bool = True, logs_to_stderr: bool = False) -> None:
        self.job = job
        self.logs_to_stderr = logs_to_stderr
        self.console: Console | None = None
        self._live: Live | None = None
        self._spinner: Spinner | None = None
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._output = LogOutput(err=logs_to_stderr)
        self.command_start = CommandStart()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if enabled:
            out, err = Console(highlight=False), Console(stderr=True, highlight=False)
            if out.is_terminal and not logs_to_stderr:
                self.console = out
            elif err.is_terminal:
                self.console = err

    @property
    def shared(self) -> bool:
        """Log lines and the status line share one console: logs are printed above the line."""
        return self.console is not None and self.console.stderr == self.logs_to_stderr

    def update(self, job: Job) -> None:
        self.job = job

    def line(self) -> str:
        job = self.job
        now = datetime.now(UTC)
        if job.started_at is not None:
            since = f"{'ran' if job.finished else 'running'} for {human_seconds(elapsed(job, now))}"
        elif job.created_at is not None:
            since = f"waiting for {human_seconds(max((now - job.created_at).total_seconds(), 0.0))}"
        else:
            since = ""
        shown = job.phase and not job.finished
        if job.phase in _BEFORE_COMMAND and self.command_start.seen:
            shown = False  # the log shows the command's output: the phase read has not caught up yet
        phase = f" ({job.phase})" if shown else ""
        cancel = ", cancel requested" if job.cancel_requested and not job.finished else ""
        return f"job {job.id} {job.status}{phase}{cancel}" + (f", {since}" if since else "")

    def __rich__(self) -> Spinner:
        assert self._spinner is not None
        self._spinner.update(text=Text(self.line(), style=STATUS_STYLES.get(self.job.status, "")))
        return self._spinner

    def __enter__(self) -> LiveStatus:
        if self.console is not None:
            from rich.live import Live
            from rich.spinner import Spinner

            self._spinner = Spinner("dots")
            self._live = Live(
                self,
                console=self.console,
                transient=True,
                refresh_per_second=8,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self.shared:
            rest = self._partial + terminal_safe(self._decoder.decode(b"", final=True))
            if rest:
                self._emit(last_rewrite(rest))
            self._partial = ""
        else:
            self._output.close()
        if self._live is not None:
            self._live.stop()

    def watch(self, client: Client, every: float = 1.0) -> None:
        """Keep the status line current from a background thread (only while it is shown)."""
        if self._live is None:
            return

        def poll() -> None:
            from contextlib import suppress

            from opensci.client import OpenSciError

            while True:
                # A failed look leaves the line as it was: the log stream reports lasting trouble.
                with suppress(OpenSciError):
                    self.update(client.get_job(self.job.id))
                if self._stop.wait(every):
                    return

        self._poller = threading.Thread(target=poll, name=f"opensci-job-{self.job.id}", daemon=True)
        self._poller.start()

    def write(self, data: bytes) -> None:
        """Log bytes, as they arrive. Above a shared status line only whole lines are printed, made
        terminal-safe, all those of one piece at once."""
        self.command_start.feed(data)
        if not self.shared:
            self._output.write(data)
            return
        text = self._partial + terminal_safe(self._decoder.decode(data))
        lines = text.split("\n")
        self._partial = lines.pop()
        if lines:
            self._emit("\n".join(last_rewrite(line) for line in lines))

    def _emit(self, text: str) -> None:
        assert self.console is not None
        self.console.print(Verbatim(text + "\n"), soft_wrap=True, markup=False, highlight=False)


class Verbatim:
    """Text the console writes as it is, in one segment: not split into lines nor measured, which
    for a long log is many times faster than a rich Text. For text already made terminal-safe and
    without carriage returns; the terminal wraps long lines itself."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        yield Segment(self.text)
