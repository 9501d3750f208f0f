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


# What a job's fields (command, names, messages) may hold that would drive the terminal or hide text:
# the controls above, and also tabs, carriage returns, the Unicode line separators and the bidirectional
# controls that reorder what is shown ("Trojan Source"). In a field they are all shown: a line feed as
# `⏎` and a tab as `⇥` (a field is one line of a table or of `job status`), the others in caret
# notation or as `\u202e`.
_FIELD_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_FIELD_SHOWN = {0x0A: "⏎", 0x09: "⇥", 0x0D: "^M"}


def _shown(char: str) -> str:
    code = ord(char)
    if code in _FIELD_SHOWN:
        return _FIELD_SHOWN[code]
    return _VISIBLE_CONTROLS.get(code) or f"\\u{code:04x}"


def visible(text: object) -> str:
    """Text a job or the server supplied, for one line of a human display: every control character
    (line feeds and tabs too) and every invisible reordering character shown, never sent."""
    return _FIELD_CONTROL.sub(lambda m: _shown(m[0]), str(text))


def visible_lines(text: object) -> str:
    """Like `visible`, but line feeds stay line breaks (a message of several lines)."""
    return "\n".join(visible(line) for line in str(text).split("\n"))


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
    """The job's command as a shell line on one line of the terminal (its control characters shown)."""
    return visible(shlex.join(job.command))


def status_text(job: Job) -> Text:
    return Text(visible(job.status), style=STATUS_STYLES.get(job.status, ""))


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
    a status. A job is one row: what it supplied (its command, names) is shown with `visible`."""
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
                "SUBMITTER": Text(visible(job.submitter or "-")),
                "CODE": Text(visible(f"{job.code.repo}{short}")),
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


# `job status`: one `key: value` a row, the values lined up after the keys. A value is made of lines,
# each a list of parts (a commit id, a package, a word of the command) packed as many to a line as the
# width allows and never cut: a line that must be longer than the width is left long (the terminal
# wraps it), so ids and shas are never broken, and a commit goes on its own line under its repository.
_KEY_WIDTH = 16  # a longer key (`input some-long-name:`) has its value start on the next line


class _Value:
    """The value of a row of `job status`: lines of parts, each part shown with `visible`."""

    def __init__(self) -> None:
        self.lines: list[tuple[list[str], str]] = []

    def line(self, *parts: object, sep: str = ", ") -> _Value:
        """A new line of `parts` (empty ones left out) joined by `sep`, wrapped between parts."""
        self.lines.append(([visible(p) for p in parts if p != ""] or [""], sep))
        return self

    def wrapped(self, room: int) -> list[str]:
        from rich.cells import cell_len

        out: list[str] = []
        for parts, sep in self.lines:
            mark = sep.rstrip()  # ends a line that goes on: `a, b,` then `c` on the next line
            current = ""
            for i, part in enumerate(parts):
                joined = f"{current}{sep}{part}" if current else part
                if current and cell_len(joined) + (len(mark) if i < len(parts) - 1 else 0) > room:
                    out.append(current + mark)
                    current = part
                else:
                    current = joined
            out.append(current)
        return out


def _ref(repo: str, rev: str | None, commit: str | None) -> _Value:
    value = _Value().line(f"{repo}@{rev}" if rev else repo)
    return value.line(f"commit {commit}") if commit else value


def provenance(job: Job) -> None:
    """Everything recorded about a job, for `opensci job status`: fitted to the console's width (80
    columns into a pipe) without breaking an id, a sha or any other word, and with what the job
    supplied shown with `visible`."""
    headline = Text(f"job {job.id}: ")
    headline.append_text(status_text(job))
    if not job.finished and job.phase:
        headline.append(f" ({visible(job.phase)})")
    if job.exit_code is not None:
        headline.append(f", exit code {job.exit_code}")
    if job.cancel_requested and not job.finished:
        headline.append(", cancel requested")
    rows: list[tuple[str, _Value]] = [
        ("url", _Value().line(job.url)),
        ("submitter", _Value().line(job.submitter or "-")),
        ("command", _Value().line(*(shlex.quote(w) for w in job.command), sep=" ")),
        ("code", _ref(job.code.repo, job.code.rev, job.code.commit)),
    ]
    rows += [(f"input {name}", _ref(r.repo, r.rev, r.commit)) for name, r in job.inputs.items()]
    if job.output is not None:
        out = job.output
        commit = out.commit or ("(none yet)" if not job.finished else "(none)")
        rows.append(("output", _Value().line(out.repo, f"branch {out.branch}").line(f"commit {commit}")))
    else:
        rows.append(("output", _Value().line("none")))
    rows.append(
        ("executor", _Value().line(job.executor, f"priority {job.priority}", f"attempts {job.attempts}"))
    )
    res = job.resources
    rows.append(
        (
            "resources",
            _Value().line(
                f"{res.cpus} CPU{'s' if res.cpus != 1 else ''}",
                f"{binary_size(res.memory)} memory",
                f"time limit {human_seconds(res.time_limit)}",
                f"{res.gpus} GPU{'s' if res.gpus != 1 else ''}",
            ),
        )
    )
    env = job.environment
    rows.append(("requirements", _Value().line(*(env.requirements or ["none"]))))
    variables = (job.spec.get("env") or {}).get("variables") or {}
    if isinstance(variables, dict) and variables:
        rows.append(("variables", _Value().line(*(f"{k}={v}" for k, v in variables.items()))))
    if env.python:
        key = f"key {env.key}" if env.key else ""
        rows.append(
            ("environment", _Value().line(f"Python {env.python}", key, f"{len(env.packages)} package(s)"))
        )
    if env.packages:
        rows.append(("packages", _Value().line(*env.packages)))
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
        rows.append(("usage", _Value().line(*parts)))
    for key, value in (("created", job.created_at), ("started", job.started_at), ("ended", job.ended_at)):
        if value is not None:
            rows.append((key, _Value().line(value.isoformat(timespec="seconds"))))
    if job.reason or job.message:
        reason = f"{job.reason}: {job.message}" if job.reason and job.message else job.reason or job.message
        rows.append(("reason", _Value().line(*reason.split(" "), sep=" ")))  # wrapped between words
    if job.rerun_of is not None:
        rows.append(("rerun of", _Value().line(f"job {job.rerun_of}")))
    console = output.stdout()
    console.print(headline, soft_wrap=True)
    keys = [visible(k) + ":" for k, _ in rows]
    width = min(max(len(k) for k in keys), _KEY_WIDTH - 1) + 1
    room = max(console.width - width, 20)
    lines: list[str] = []
    for key, (_, value) in zip(keys, rows, strict=True):
        shown = value.wrapped(room)
        if len(key) >= width:
            lines.append(key)  # a long key (an input's name) on a line of its own
        else:
            lines.append(f"{key:<{width}}{shown.pop(0)}")
        lines += [" " * width + line for line in shown]
    # Soft wrap: rich writes the lines as they are (never cutting a sha); a terminal wraps a longer one.
    console.print(Text("\n".join(lines)), soft_wrap=True)


def summary(job: Job) -> str:
    """One line on how the job ended (or stands), with what the job supplied shown with `visible`."""
    took = human_seconds(elapsed(job))
    text = f"job {job.id} {job.status}" + (f" in {took}" if took and job.finished else "")
    if job.exit_code is not None:
        text += f" (exit code {job.exit_code})"
    if job.succeeded and job.output is not None and job.output.commit:
        text += f"; outputs committed to {job.output.repo} ({job.output.branch}): {job.output.commit}"
    elif job.finished and not job.succeeded and job.message:
        text += f": {job.message}"
    return visible(text)


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
    def logs_to_terminal(self) -> bool:
        """The log goes to a terminal (so it is shown decoded, not written byte for byte)."""
        return self._output.terminal

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
        return visible(f"job {job.id} {job.status}{phase}{cancel}" + (f", {since}" if since else ""))

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
