"""Server-sent events, parsed as the HTML standard says: lines end in CRLF, LF or CR; `data:` lines of one
event are joined with newlines; lines starting with `:` are comments (keep-alives); a blank line
dispatches the event. Only the standard library is needed."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    """One dispatched event: its type (`message` unless the stream named one), data and last id."""

    event: str
    data: str
    id: str = ""


class SSEParser:
    """Feed text as it arrives (in pieces of any size); `feed` returns the events completed so far.

    Linear in the size of the stream: line breaks are found by the regular expression engine, and an
    unfinished line is kept as a list of pieces joined once, when its end arrives (a 1 MiB `data:` line
    sent in small pieces is neither scanned nor copied again and again)."""

    def __init__(self) -> None:
        self._partial: list[str] = []  # the pieces of the line not ended yet
        self._pending_cr = False  # the last piece ended in CR: a following LF belongs to the same break
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self._has_data = False

    def feed(self, text: str) -> list[Event]:
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = False
        if not text:
            return []
        events: list[Event] = []
        start = 0
        for brk in _LINE_BREAK.finditer(text):
            line = text[start : brk.start()]
            if self._partial:
                self._partial.append(line)
                line = "".join(self._partial)
                self._partial = []
            event = self._line(line)
            if event is not None:
                events.append(event)
            start = brk.end()
        if start < len(text):
            self._partial.append(text[start:])
        self._pending_cr = text.endswith("\r")
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id" and "\x00" not in value:
            self._id = value
        # `retry` and unknown fields are ignored, as the standard says.
        return None

    def _dispatch(self) -> Event | None:
        event, data, has_data = self._event, "\n".join(self._data), self._has_data
        self._event, self._data, self._has_data = "", [], False
        if not has_data:
            return None
        return Event(event or "message", data, self._id)


def parse(pieces: Iterable[str]) -> Iterator[Event]:
    """The events of a stream given as text pieces (an incomplete last event is dropped)."""
    parser = SSEParser()
    for piece in pieces:
        yield from parser.feed(piece)
