"""Jobs in the SDK: building a spec from short forms, following a log as server-sent events, waiting.

A spec is the JSON body of `POST /api/v1/jobs`: `code` {repo, rev}, `command` (a list of words or one
shell line), `inputs` {name: {repo, rev}}, `output` {repo, branch} or null, `env` {requirements,
variables, network}, `resources` {cpus, memory, time_limit, gpus}, `executor`, `priority`. The SDK also
accepts `"owner/name@rev"` for a repository, `"1h"` for a time limit, and `cpus`, `memory`, `time_limit`,
`gpus`, `requirements`, `variables` and `network` at the top level.
"""

from __future__ import annotations

import codecs
import copy
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from opensci.client import sse
from opensci.client.errors import ConnectionFailed, OpenSciError, ValidationError, WaitTimeout
from opensci.client.types import JOB_FINAL_STATUSES, Job, JobEnd

if TYPE_CHECKING:
    from opensci.client.client import Client

RESOURCE_FIELDS = ("cpus", "memory", "time_limit", "gpus")
ENV_FIELDS = ("requirements", "variables", "network")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(d|h|m|s)", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SIZE = re.compile(r"^\s*[0-9]+(?:\.[0-9]+)?\s*(?:[kmgt]i?)?b?\s*$", re.IGNORECASE)


def _invalid(message: str) -> ValidationError:
    return ValidationError(message, code="invalid_spec")


def parse_duration(value: int | float | str) -> int:
    """Seconds from `3600`, `"3600"`, `"90s"`, `"45m"`, `"1h30m"`, `"2d"` or `"1:30:00"` (h:mm:ss)."""
    if isinstance(value, bool):
        raise _invalid("a time limit must be a number of seconds or a duration such as 1h")
    if isinstance(value, int | float):
        seconds = value
    else:
        text = value.strip().lower()
        if re.fullmatch(r"[0-9]+", text):
            seconds = int(text)
        elif re.fullmatch(r"[0-9]+(:[0-9]{1,2}){1,2}", text):
            seconds = 0
            for part in text.split(":"):
                seconds = seconds * 60 + int(part)
        elif text and _DURATION_PART.sub("", text).strip() == "":
            seconds = sum(float(n) * _SECONDS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise _invalid(f"{value!r} is not a duration; write seconds or e.g. 90s, 45m, 1h30m, 2d")
    if not math.isfinite(seconds) or seconds <= 0 or int(seconds) != seconds:
        raise _invalid(f"a time limit must be a positive whole number of seconds, not {value!r}")
    return int(seconds)


def check_size(value: int | str) -> int | str:
    """A memory size as the server accepts it (bytes, or e.g. `512M`, `4G`, `1.5GiB`); refused early
    when it cannot be one. The server does the converting."""
    if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
        raise _invalid(f"memory must be a positive number of bytes or a size such as 4G, not {value!r}")
    if isinstance(value, str) and not _SIZE.match(value):
        raise _invalid(f"{value!r} is not a size; write bytes or e.g. 512M, 4G")
    return value


def parse_ref(value: str, what: str = "repository") -> tuple[str, str | None]:
    """`owner/name@rev` → (`owner/name`, `rev`); no `@` → (`owner/name`, None)."""
    from opensci.client.client import split_repo_id

    name, at, rev = value.strip().partition("@")
    if at and not rev.strip():
        raise _invalid(f"{what} {value!r}: nothing after '@'; write OWNER/NAME@REVISION or OWNER/NAME")
    try:
        repo = "/".join(split_repo_id(name))
    except ValidationError as exc:
        raise _invalid(f"{what}: {exc.message}") from None
    return repo, rev.strip() or None


def _ref(value: Any, what: str, rev_key: str = "rev") -> Any:
    if isinstance(value, str):
        repo, rev = parse_ref(value, what)
        return {"repo": repo, rev_key: rev} if rev else {"repo": repo}
    return value


def build_spec(spec: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The JSON body for `POST /api/v1/jobs`: `spec` with `fields` laid over it, short forms expanded.
    Fields given as None are left out. Nothing else is checked here: the server validates strictly."""
    body: dict[str, Any] = copy.deepcopy(dict(spec or {}))
    body.update({k: v for k, v in fields.items() if v is not None})
    resources = dict(body.get("resources") or {})
    env = dict(body.get("env") or {})
    for key in RESOURCE_FIELDS:
        if key in body:
            resources[key] = body.pop(key)
    for key in ENV_FIELDS:
        if key in body:
            env[key] = body.pop(key)
    if isinstance(resources.get("time_limit"), str):
        resources["time_limit"] = parse_duration(resources["time_limit"])
    if isinstance(resources.get("memory"), str):
        check_size(resources["memory"])
    if isinstance(env.get("requirements"), str):
        env["requirements"] = [env["requirements"]]
    if resources:
        body["resources"] = resources
    if env:
        body["env"] = env
    if "code" in body:
        body["code"] = _ref(body["code"], "code")
    if isinstance(body.get("inputs"), Mapping):
        body["inputs"] = {name: _ref(ref, f"input {name}") for name, ref in body["inputs"].items()}
    if "output" in body:
        body["output"] = _ref(body["output"], "output", rev_key="branch")
    return body


def job_number(job_id: int | str) -> int:
    """A job id as a number (ValidationError `invalid_job_id` when it is not one)."""
    try:
        number = int(job_id)
    except (TypeError, ValueError):
        number = 0
    if isinstance(job_id, bool) or number <= 0:
        raise ValidationError(f"a job id is a positive number, not {job_id!r}", code="invalid_job_id")
    return number


def job_path(job_id: int | str, *rest: str) -> str:
    return "/".join([f"/api/v1/jobs/{job_number(job_id)}", *rest])


def incomplete_utf8_tail(data: bytes) -> int:
    """How many bytes at the end of `data` begin a UTF-8 character that is not complete yet (0 to 3)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:  # ASCII: whatever came before is complete
            return 0
        if byte >= 0xC0:  # the lead byte of a sequence of 2, 3 or 4 bytes
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if back < length else 0
    return 0  # only continuation bytes: invalid anyway, nothing to wait for


class LogStream:
    """Iterate to get a job's log as text, live, until the job ends; `end` then holds its final status.

    What the log already holds is read first as plain text (`GET /api/v1/jobs/{id}/logs`, a megabyte a
    request), which is fast however long the log; if the job has not ended by then, the stream goes on
    with server-sent events (`?follow=true`) from the byte reached. When the connection breaks before
    the end, it reconnects and goes on from the last byte received, so no line is lost or repeated.
    `offset` is the byte offset reached in the log.

    `iter_bytes()` gives the log as bytes instead, exactly as stored, byte for byte even where it is not
    UTF-8 (events carry text, with such bytes replaced): it never switches to events, but reads on
    plainly from `offset` every `POLL` seconds at most until the job has ended. A stream is read one
    way or the other, not both."""

    RETRIES = 4
    POLL = 0.5  # seconds between two reads of a running job's log that found nothing new (at most)

    def __init__(self, client: Client, job_id: int, offset: int = 0) -> None:
        self.client = client
        self.job_id = job_id
        self.offset = offset
        self.end: JobEnd | None = None
        self._failures = 0
        self._plain = False  # iter_bytes: read plainly until the job ends, never follow with events
        self._pieces = self._read()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._iterator = self._text()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._iterator)

    def iter_bytes(self) -> Iterator[bytes]:
        """The log as bytes, piece by piece, exactly as stored, until the job ends."""
        self._plain = True  # from the next read on (the text of events only if they were being read)
        for piece in self._pieces:
            yield piece if isinstance(piece, bytes) else piece.encode()

    def close(self) -> None:
        """Stop following (the job goes on)."""
        self._iterator.close()
        self._pieces.close()

    def _text(self) -> Iterator[str]:
        for piece in self._pieces:
            text = self._decoder.decode(piece) if isinstance(piece, bytes) else piece
            if text:
                yield text
        rest = self._decoder.decode(b"", final=True)
        if rest:
            yield rest

    def _read(self) -> Iterator[bytes | str]:
        """Bytes read plainly while catching up, then text from events (bytes read plainly again and
        again, with `_plain`). After a broken connection it catches up again from `offset` (quick after
        a long break), then follows."""
        self._failures = 0
        catching_up = True
        idle = 0.0
        while self.end is None:
            try:
                if catching_up or self._plain:
                    before = self.offset
                    catching_up = yield from self._catch_up()
                    if self._plain and self.end is None:
                        self._failures = 0  # the server answers: only failures in a row count
                        # Read again soon after new bytes, less and less often while there are none.
                        idle = (
                            self.POLL / 5
                            if self.offset > before
                            else min(max(idle * 2, self.POLL / 5), self.POLL)
                        )
                        time.sleep(idle)
                    continue
                yield from self._follow()
            except ConnectionFailed:
                self._failures += 1
                if self._failures > self.RETRIES:
                    raise
                time.sleep(min(0.5 * 2**self._failures, 5.0))
                catching_up = True
                continue
            if self.end is None:  # the server closed the stream early (restarted): go on from here
                self._failures += 1
                if self._failures > self.RETRIES:
                    raise ConnectionFailed(
                        f"the log stream of job {self.job_id} ended before the job did",
                        url=self.client.url,
                    )
                time.sleep(min(0.5 * 2**self._failures, 5.0))
                catching_up = True

    def _catch_up(self) -> Iterator[bytes]:
        """Read what the log holds now, plainly. Sets `end` if the job has ended; returns whether to
        read on this way (False: the job runs, so follow it live from `offset`)."""
        while True:
            piece = self.client.job_logs(self.job_id, self.offset)
            # The status is read before the bytes: if the job had ended, its whole log is in them.
            final = piece.status in JOB_FINAL_STATUSES
            data = piece.data
            if not final and not self._plain:
                # A character cut at the end is left for the next read, which gets it whole.
                data = data[: len(data) - incomplete_utf8_tail(data)]
            if not data:
                if final:
                    job = self.client.get_job(self.job_id)
                    self.end = JobEnd(job.status, job.exit_code, job.message)
                return False
            self._failures = 0
            self.offset += len(data)
            yield data

    def _follow(self) -> Iterator[str]:
        # Keep-alive comments come every 15 s of silence: a read waits longer than that before it
        # counts as a broken connection.
        timeout = httpx.Timeout(self.client.timeout, read=max(self.client.timeout, 60.0))
        params = {"follow": "true", "offset": self.offset}
        headers = {"Accept": "text/event-stream"}
        path = job_path(self.job_id, "logs")
        with self.client.stream("GET", path, headers=headers, params=params, timeout=timeout) as r:
            parser = sse.SSEParser()
            for piece in r.iter_text():
                self._failures = 0
                for event in parser.feed(piece):
                    text = self._handle(event)
                    if text:
                        yield text
                    if self.end is not None:
                        return

    def _handle(self, event: sse.Event) -> str:
        import json

        if event.event not in ("log", "end"):
            return ""
        try:
            data = json.loads(event.data)
        except ValueError as exc:
            raise OpenSciError(
                f"the server sent a malformed {event.event} event: {exc}", code="bad_event"
            ) from None
        if event.event == "end":
            self.end = JobEnd(str(data.get("status", "")), data.get("exit_code"), data.get("message") or "")
            return ""
        self.offset = int(data.get("offset", self.offset))
        return str(data.get("text", ""))


def wait(
    client: Client,
    job_id: int,
    timeout: float | None = None,
    poll: float = 1.0,
    progress: Callable[[Job], None] | None = None,
) -> Job:
    """Poll the job until it ends; `progress(job)` is called after each look. WaitTimeout after
    `timeout` seconds (the job goes on)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = min(0.2, poll)
    while True:
        job = client.get_job(job_id)
        if progress is not None:
            progress(job)
        if job.finished:
            return job
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout:g} s", code="wait_timeout")
        pause = delay if deadline is None else min(delay, max(deadline - now, 0.0))
        time.sleep(pause)
        delay = min(delay * 1.5, poll)
