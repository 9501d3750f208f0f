"""Server-sent events, parsed as the HTML standard says: lines end in CRLF, LF or CR; `data:` lines of one
event are joined with newlines; lines starting with `:` are comments (keep-alives); a blank line
dispatches the event. Only the standard library is needed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One dispatched event: its type (`message` unless the stream named one), data and last id."""

    event: str
    data: str
    id: str = ""


class SSEParser:
    """Feed text as it arrives (in pieces of any size); `feed` returns the events completed so far."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending_cr = False  # the last piece ended in CR: a following LF belongs to the same break
        self._event = ""
        self._data: list[str] = []
        self._id = ""
        self._has_data = False

    def feed(self, text: str) -> list[Event]:
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = False
        events: list[Event] = []
        buffer = self._buffer + text
        start = 0
        i = 0
        n = len(buffer)
        while i < n:
            c = buffer[i]
            if c == "\n" or c == "\r":
                event = self._line(buffer[start:i])
                if event is not None:
                    events.append(event)
                if c == "\r":
                    if i + 1 < n and buffer[i + 1] == "\n":
                        i += 1
                    elif i + 1 == n:
                        self._pending_cr = True
                start = i + 1
            i += 1
        self._buffer = buffer[start:]
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
